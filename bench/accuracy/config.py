"""What the benchmark compares and how: the split, the training budget and the rows of the table."""

from __future__ import annotations

import dataclasses
import hashlib
import json

DATA_FORMAT = 2
TEST_SPLITS = ("clean", "hard")
SPLITS = ("train", "val", *TEST_SPLITS)
LV = 1
# How each split calls ``scripts.synthetic.generate_sequence`` (part of the data key): every split uses the realistic
# default failure modes (``failures=None``); the hard test split asks for a guaranteed occluded stretch of frames.
SPLIT_GENERATOR_ARGS: dict[str, dict[str, bool]] = {
    "train": {"hard": False},
    "val": {"hard": False},
    "clean": {"hard": False},
    "hard": {"hard": True},
}
SPLIT_TITLES = {
    "clean": "clean test split (realistic generator)",
    "hard": "hard test split (every cine has occluded frames)",
}


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The synthetic splits: clip counts, sizes and the generator's seeds (``seed_base[split] + index``).

    ``n_test`` clips in each test split (clean and hard). A hard clip whose sampled frames keep no occluded frame is
    generated again from the seed ``[seed, attempt]``, at most ``hard_attempts`` times in all.
    """

    n_train: int = 96
    n_val: int = 16
    n_test: int = 32
    size: int = 128
    gen_size: int = 256
    clip_frames: int = 10
    min_frames: int = 10
    max_frames: int = 16
    seed_base: tuple[int, int, int, int] = (710_000, 720_000, 730_000, 740_000)
    views: tuple[str, ...] = ("2CH", "4CH")
    hard_attempts: int = 5

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val}.get(split, self.n_test)

    def key(self) -> str:
        """Short hash of the parameters and of the generator's source: a cached file must match it."""
        text = json.dumps(
            {
                "format": DATA_FORMAT,
                **dataclasses.asdict(self),
                "splits": SPLIT_GENERATOR_ARGS,
                "generator": generator_digest(),
            }
        )
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every row gets: iterations of ``batch`` clips, optimiser, schedule, clipping, validation checks."""

    iterations: int = 200
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    lr_drop_at: float = 2 / 3
    lr_drop_factor: float = 0.1
    grad_clip: float = 3.0
    val_checks: int = 5
    amp_bf16: bool = False
    augment_prob: float = 0.5

    def describe(self, split: SplitConfig) -> str:
        precision = (
            "bf16 autocast" if self.amp_bf16 else "float32 (TF32 convolutions where cuDNN allows, torch default)"
        )
        return (
            f"{self.iterations} iterations x {self.batch} clips of {split.clip_frames} frames at {split.size} x "
            f"{split.size}; AdamW lr {self.lr:g}, weight decay {self.weight_decay:g}, lr x{self.lr_drop_factor:g} "
            f"after {round(self.lr_drop_at * self.iterations)} iterations; gradient norm clipped at "
            f"{self.grad_clip:g}; "
            f"DiceCELoss (softmax, one-hot) on every annotated frame; RandGamma/RandScale/RandRotate/RandContrast "
            f"cine augmentations p={self.augment_prob:g}, one draw per clip; best of "
            f"{min(self.val_checks, self.iterations)} validation checks (mean LV Dice); {precision}"
        )


# The smoke run: tiny everything (8 training clips at 64 x 64, 3 iterations of 2 clips); numbers are meaningless.
QUICK_SPLIT = SplitConfig(n_train=8, n_val=2, n_test=4, size=64, gen_size=128, max_frames=12)
QUICK_BUDGET = Budget(iterations=3, batch=2, val_checks=1)


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One model of the table."""

    name: str
    label: str
    kind: str  # "gdkvm", "softmax" (memory rows), "unet", "segresnet" (per-frame rows)
    update_rule: str = "gated_delta"
    kpff: bool = True


ROWS: tuple[RowSpec, ...] = (
    RowSpec("gdkvm-additive", "GDKVM small, additive, KPFF", "gdkvm", "additive"),
    RowSpec("gdkvm-delta", "GDKVM small, delta, KPFF", "gdkvm", "delta"),
    RowSpec("gdkvm-delta_beta", "GDKVM small, delta_beta (w/o alpha), KPFF", "gdkvm", "delta_beta"),
    RowSpec("gdkvm-decay_alpha", "GDKVM small, decay_alpha (w/o beta), KPFF", "gdkvm", "decay_alpha"),
    RowSpec("gdkvm-gated_delta", "GDKVM small, gated_delta, KPFF (paper)", "gdkvm", "gated_delta"),
    RowSpec("gdkvm-gated_delta-nokpff", "GDKVM small, gated_delta, no KPFF", "gdkvm", "gated_delta", kpff=False),
    RowSpec("softmax-memory", "Softmax space-time memory (small)", "softmax"),
    RowSpec("unet2d-perframe", "MONAI UNet 2D, per frame", "unet"),
    RowSpec("segresnet2d-perframe", "MONAI SegResNet 2D, per frame", "segresnet"),
)
REFERENCE_ROW = "gdkvm-gated_delta"
MEMORY_KINDS = ("gdkvm", "softmax")
RESET_SUFFIX = "_reset"  # test metrics of a memory row's weights with the state reset before every frame


def generator_digest() -> str:
    """The synthetic generator's version (sha1 of its sources): a cached data file from another one is refused."""
    from scripts.synthetic import generator_version

    return generator_version()
