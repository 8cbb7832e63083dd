"""Accuracy benchmark (issue 7): the paper's ablations, per-frame MONAI baselines and a softmax memory, same budget.

Every row is trained from scratch on one fixed synthetic train/validation/test split from the project's generator
(``scripts.synthetic.generate_sequence``, ``mode="systole"``, 2CH and 4CH alternating, a random EF per clip), with
exactly the same data, budget and seed:

- rows: GDKVM ``small`` with each update rule of the paper's Table 4 (``additive``, ``delta``, ``delta_beta``,
  ``decay_alpha``, ``gated_delta``) and KPFF on; ``gated_delta`` with KPFF off (Table 3); the softmax space-time
  memory variant (``GDKVMSoftmaxMemory(size="small")``: the same encoders, the state replaced by attention over
  every past frame); a per-frame MONAI 2D ``UNet`` and a per-frame MONAI ``SegResNet`` (frames folded into the
  batch, ``[B, 1, H, W, T] -> [B*T, 1, H, W]``);
- data: clips of ``n_total`` in [10, 16] frames generated at 256 x 256, ED..ES sampled to 10 frames (both ends
  included, as the bundle's ``SampleClipd``), resized to 128 x 128 (the bundle's ``ResizeCined``), LV-only labels
  {0, 1}; every frame is annotated; images are stored as uint8;
- budget: the same iterations and batch of clips for every row, AdamW (lr 1e-3, weight decay 1e-3), the learning
  rate divided by 10 after 2/3 of the iterations (as the bundle's MultiStepLR), gradient norm clipped at 3, loss
  ``DiceCELoss`` on every annotated frame (the bundle's ``SupervisedFramesLoss``), the bundle's four clip
  augmentations (``RandGammaCined``, ``RandScaleCined``, ``RandRotateCined``, ``RandContrastCined``, p = 0.5
  each, one draw per clip). The augmented batches of a seed are drawn once, before any row trains, and every row
  of that seed trains on exactly these batches (stored as uint8). The weights with the best validation Dice
  (checked 5 times, evenly spaced) are tested. The seed sets the initialisation, the batch order and the
  augmentation draws; the data split is the same for every seed.

Per row on the test split: Dice, IoU, HD95 and ASD in mm (``scripts.metrics.case_metrics`` on every frame, with
the clip's spacing); EF from the predicted ED (first) and ES (last) frame masks (``clip_ef``, single-plane
Simpson) against the phantom's exact EF (``agreement``: r, bias, SD of the differences); temporal consistency:
the mean absolute frame-to-frame change of the LV area (mm^2) of the prediction and of the ground truth, and their
ratio (1 = as smooth as the truth); parameters; training time (the iterations only, on ``--device``); CPU
frames/s of streaming inference (batch 1, one stream through ``step``, ``--fps-frames`` frames after 5 warm-up
frames, ``--cpu-threads`` threads, on a CPU float32 copy of the row's first trained model even when training ran on
CUDA, measured after all training with nothing else running; the per-frame baselines run their 2D network per
frame). A reference line gives EF from the ground-truth masks against the phantom (the floor of the EF method on
these data).

Run layout: the data split is cached in ``--data`` (uint8, about 10 MiB compressed); a pool of forked worker
processes (forked before CUDA starts) draws the augmented batches of every seed, then computes each row's test
metrics (CPU) while the next row trains; the training device only trains, validates and predicts. ``--fit-minutes``
times 3 iterations of every row first and lowers the iterations (equally for every row) to fit the wall time.

Usage (from the repository root):
    python bench/accuracy.py --generate-only --data results/accuracy_data.npz    # data only (CPU, cached)
    python bench/accuracy.py --device cuda --data results/accuracy_data.npz      # all rows, one seed
    python bench/accuracy.py --device cuda --seeds 0 1 2 --fit-minutes 15        # several seeds, capped time
    python bench/accuracy.py --quick                                             # tiny CPU smoke run (< 2 min)
    python bench/accuracy.py --docs-from a.json b.json --docs page.md            # docs page of saved (partial) runs
Writes ``results/bench_accuracy.json`` (``--out``; the JSON is rewritten after every row) and, unless
``--quick``, ``docs/benchmarks_accuracy.md`` (``--docs``); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model as cpu_model_name
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))

DATA_FORMAT = 1
SPLITS = ("train", "val", "test")
LV = 1


# ---------------------------------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The synthetic split: clip counts, sizes and the generator's seeds (``seed_base[split] + index``)."""

    n_train: int = 96
    n_val: int = 16
    n_test: int = 32
    size: int = 128
    gen_size: int = 256
    clip_frames: int = 10
    min_frames: int = 10
    max_frames: int = 16
    seed_base: tuple[int, int, int] = (710_000, 720_000, 730_000)
    views: tuple[str, ...] = ("2CH", "4CH")

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def key(self) -> str:
        """Short hash of the parameters and of the generator's source: a cached file must match it."""
        text = json.dumps({"format": DATA_FORMAT, **dataclasses.asdict(self), "generator": generator_digest()})
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
    kind: str  # "gdkvm", "softmax", "unet", "segresnet"
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


# ---------------------------------------------------------------------------------------------------- models
class PerFrame(nn.Module):
    """A 2D segmentation network applied to every frame of a clip independently (no temporal context).

    ``forward(video [B, 1, H, W, T]) -> logits [B, K, H, W, T]`` folds the frames into the batch; ``step(frame
    [B, 1, H, W], state) -> (logits [B, K, H, W], None)`` is the per-frame streaming call.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, video_B1HWT: torch.Tensor) -> torch.Tensor:
        b, c, h, w, t = video_B1HWT.shape
        frames = video_B1HWT.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)
        logits = self.net(frames)
        return logits.reshape(b, t, logits.shape[1], h, w).permute(0, 2, 3, 4, 1)

    def step(self, frame_B1HW: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        return self.net(frame_B1HW), None


def build_model(spec: RowSpec) -> nn.Module:
    """The network of one row, 2 classes (background, LV); random initialisation from torch's current seed."""
    if spec.kind == "gdkvm":
        from scripts.gdkvm import GDKVM

        return GDKVM(size="small", out_channels=2, update_rule=spec.update_rule, kpff=spec.kpff)
    if spec.kind == "softmax":
        from scripts.gdkvm import GDKVMSoftmaxMemory

        return GDKVMSoftmaxMemory(size="small", out_channels=2, kpff=spec.kpff)
    if spec.kind == "unet":
        from monai.networks.nets import UNet

        return PerFrame(
            UNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=2,
                channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2),
                num_res_units=2,
            )
        )
    if spec.kind == "segresnet":
        from monai.networks.nets import SegResNet

        return PerFrame(SegResNet(spatial_dims=2, in_channels=1, out_channels=2, init_filters=16))
    raise ValueError(f"unknown row kind {spec.kind!r}")


# ---------------------------------------------------------------------------------------------------- data
def generator_digest() -> str:
    """The synthetic generator's version (sha1 of its sources): a cached data file from another one is refused."""
    from scripts.synthetic import generator_version

    return generator_version()


def _worker_init() -> None:
    torch.set_num_threads(1)


def _generate_clip(job: tuple[int, str, int, int, int, int]) -> dict[str, Any]:
    """One clip: ``image``/``label`` ``[H, W, T]`` uint8 (label LV 0/1), ``ef`` (%), ``spacing`` (row, col) mm."""
    from scripts.data.transforms import ResizeCined, clip_frame_indices
    from scripts.synthetic import generate_sequence

    seed, view, n_total, clip_frames, gen_size, size = job
    seq = generate_sequence(seed, view=view, size=gen_size, n_frames=n_total, mode="systole")
    idx = clip_frame_indices(int(seq["ed"]), int(seq["es"]), clip_frames)
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(seq["image"][None][..., idx])),
        "label": torch.from_numpy(np.ascontiguousarray((seq["label"][None][..., idx] == LV).astype(np.uint8))),
        "spacing": np.asarray(seq["spacing_mm"], dtype=np.float32),
    }
    if size != gen_size:
        sample = ResizeCined(spatial_size=size)(sample)
    image = np.rint(sample["image"][0].numpy().clip(0, 1) * 255).astype(np.uint8)
    return {
        "image": image,
        "label": sample["label"][0].numpy().astype(np.uint8),
        "ef": float(seq["ef"]),
        "spacing": np.asarray(sample["spacing"], dtype=np.float32),
        "view": view,
        "seed": seed,
        "n_total": n_total,
    }


def generate_data(split: SplitConfig, workers: int) -> dict[str, np.ndarray]:
    """Generate the three splits (a process pool over clips).

    Returns:
        ``{split}_image``/``{split}_label`` ``[N, H, W, T]`` uint8, ``{split}_ef`` ``[N]`` (phantom EF, %),
        ``{split}_spacing`` ``[N, 2]`` mm, ``{split}_view``, ``{split}_seed``, ``{split}_n_total`` ``[N]``, ``key``,
        ``config`` (JSON).
    """
    jobs, owners = [], []
    for s, name in enumerate(SPLITS):
        rng = np.random.default_rng(split.seed_base[s])
        for i in range(split.count(name)):
            n_total = int(rng.integers(split.min_frames, split.max_frames + 1))
            view = split.views[i % len(split.views)]
            jobs.append((split.seed_base[s] + i, view, n_total, split.clip_frames, split.gen_size, split.size))
            owners.append(name)
    start = time.perf_counter()
    with mp.get_context("fork").Pool(max(1, min(workers, len(jobs))), initializer=_worker_init) as pool:
        clips = pool.map(_generate_clip, jobs, chunksize=1)
    out: dict[str, np.ndarray] = {
        "key": np.asarray(split.key()),
        "config": np.asarray(json.dumps(dataclasses.asdict(split))),
    }
    for name in SPLITS:
        mine = [c for c, o in zip(clips, owners) if o == name]
        out[f"{name}_image"] = np.stack([c["image"] for c in mine])
        out[f"{name}_label"] = np.stack([c["label"] for c in mine])
        out[f"{name}_ef"] = np.asarray([c["ef"] for c in mine], dtype=np.float64)
        out[f"{name}_spacing"] = np.stack([c["spacing"] for c in mine])
        out[f"{name}_view"] = np.asarray([c["view"] for c in mine])
        out[f"{name}_seed"] = np.asarray([c["seed"] for c in mine], dtype=np.int64)
        out[f"{name}_n_total"] = np.asarray([c["n_total"] for c in mine], dtype=np.int64)
    print(f"generated {len(jobs)} clips in {time.perf_counter() - start:.1f} s with {workers} processes", flush=True)
    return out


def load_or_generate(path: Path, split: SplitConfig, workers: int, regenerate: bool) -> dict[str, np.ndarray]:
    """The cached split at ``path`` if it matches ``split`` (and the generator), else generate and save it."""
    key = split.key()
    if path.is_file() and not regenerate:
        with np.load(path) as stored:
            data = {k: stored[k] for k in stored.files}
        if str(data.get("key")) != key:
            raise SystemExit(
                f"{path}: made with other split parameters or another generator (key {data.get('key')}, this run "
                f"needs {key}); pass --regenerate to overwrite it, or another --data path"
            )
        print(f"data: {path} (key {key})", flush=True)
        return data
    data = generate_data(split, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez_compressed(tmp, **data)
        os.replace(tmp, path)
        path.chmod(0o644)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"data: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, key {key})", flush=True)
    return data


# The data split, for the forked pool workers (set before the pool is created, inherited by fork): augmentation
# reads the training clips, evaluation the test labels, spacings and EFs.
_SHARED: dict[str, np.ndarray] = {}


def _augmented_batch(job: tuple[int, int, int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``iteration`` of seed ``seed``: clip indices and augmentation draws depend only on (seed, iteration).

    Returns:
        image ``[B, H, W, T]`` uint8 (augmented, re-quantised) and label ``[B, H, W, T]`` uint8.
    """
    from monai.transforms import Compose

    from scripts.data.transforms import RandContrastCined, RandGammaCined, RandRotateCined, RandScaleCined

    seed, iteration, batch, prob = job
    rng = np.random.default_rng([seed, iteration])
    augment = Compose(
        [RandGammaCined(prob=prob), RandScaleCined(prob=prob), RandRotateCined(prob=prob), RandContrastCined(prob=prob)]
    )
    images, labels = [], []
    for index in rng.integers(0, len(_SHARED["train_image"]), batch):
        augment.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        sample = {
            "image": torch.from_numpy(_SHARED["train_image"][index][None]).float() / 255.0,
            "label": torch.from_numpy(_SHARED["train_label"][index][None]),
        }
        sample = augment(sample)
        images.append(np.rint(sample["image"][0].numpy().clip(0, 1) * 255).astype(np.uint8))
        labels.append(sample["label"][0].numpy().astype(np.uint8))
    return np.stack(images), np.stack(labels)


def draw_batches(pool: Any, seed: int, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """All training batches of one seed: image and label ``[iterations, B, H, W, T]`` uint8."""
    jobs = [(seed, it, budget.batch, budget.augment_prob) for it in range(budget.iterations)]
    results = pool.map(_augmented_batch, jobs, chunksize=max(1, len(jobs) // 64))
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])


# ---------------------------------------------------------------------------------------------------- training
def to_video(images_NHWT: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, H, W, T]`` -> float ``[N, 1, H, W, T]`` in [0, 1] on ``device``."""
    return torch.from_numpy(images_NHWT).to(device, non_blocking=True)[:, None].float() / 255.0


def autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(model: nn.Module, images_NHWT: np.ndarray, device: torch.device, batch: int, amp: bool) -> np.ndarray:
    """Label maps ``[N, H, W, T]`` uint8 (argmax) of every clip, ``batch`` clips at a time."""
    model.eval()
    out = []
    for start in range(0, len(images_NHWT), batch):
        with autocast(device, amp):
            logits = model(to_video(images_NHWT[start : start + batch], device))
        out.append(logits.float().argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def mean_dice(pred_NHWT: np.ndarray, label_NHWT: np.ndarray) -> float:
    """Mean LV Dice over every frame (a frame with both masks empty counts 1)."""
    p, r = pred_NHWT == LV, label_NHWT == LV
    inter = (p & r).sum(axis=(1, 2))
    total = p.sum(axis=(1, 2)) + r.sum(axis=(1, 2))
    return float(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean())


def train_row(
    spec: RowSpec,
    seed: int,
    batches: tuple[torch.Tensor, torch.Tensor],
    val: tuple[np.ndarray, np.ndarray],
    budget: Budget,
    device: torch.device,
    log: Callable[[str], None],
    iterations: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one row on the seed's batches; returns the model with the best validation weights and a record.

    Args:
        batches: image and label ``[iterations, B, H, W, T]`` uint8, already on ``device`` (no host copies in the
            timed loop).
        val: validation image and label ``[N, H, W, T]`` uint8 (numpy).
        iterations: default ``budget.iterations``; only lowered for the ``--fit-minutes`` calibration.

    The loss is read back (a device synchronisation) only every ``n_iter // 5`` iterations and at validation
    checks, so the host can queue work ahead of the device; a non-finite loss fails the row at the next read.
    """
    from monai.losses import DiceCELoss

    from scripts.training import SupervisedFramesLoss

    n_iter = budget.iterations if iterations is None else iterations
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    model = build_model(spec).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    milestone = max(1, round(budget.lr_drop_at * n_iter))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [milestone], gamma=budget.lr_drop_factor)
    loss_fn = SupervisedFramesLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    checks = sorted({max(1, round(n_iter * (k + 1) / budget.val_checks)) for k in range(budget.val_checks)})
    log_every = max(1, n_iter // 5)
    best = {"dice": -1.0, "iteration": 0, "state": None}
    history = []
    train_s = 0.0
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    sync(device)
    start = time.perf_counter()
    for it in range(n_iter):
        video = batches[0][it][:, None].float() / 255.0
        label = batches[1][it][:, None].long()
        with autocast(device, budget.amp_bf16):
            logits = model(video)
        loss = loss_fn(logits.float(), label)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        optimiser.step()
        scheduler.step()
        pending.append(loss.detach())
        log_now = (it + 1) % log_every == 0 or it + 1 == n_iter
        if not (log_now or it + 1 in checks):
            continue
        values = torch.stack(pending).float().cpu().tolist()  # synchronises
        train_s += time.perf_counter() - start
        pending = []
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            first = it + 2 - len(values) + bad[0]
            raise FloatingPointError(f"non-finite training loss {values[bad[0]]} at iteration {first}")
        losses.extend(values)
        if log_now:
            log(f"it {it + 1}/{n_iter} loss {np.mean(losses[-log_every:]):.4f} ({train_s:.1f} s)")
        if it + 1 in checks:
            dice = mean_dice(predict(model, val[0], device, budget.batch, budget.amp_bf16), val[1])
            model.train()
            history.append({"iteration": it + 1, "val_dice": dice})
            if dice > best["dice"]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"dice": dice, "iteration": it + 1, "state": state}
        sync(device)
        start = time.perf_counter()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    record = {
        "iterations": n_iter,
        "train_s": train_s,
        "s_per_iteration": train_s / max(1, n_iter),
        "final_loss": losses[-1] if losses else math.nan,
        "val_dice": best["dice"],
        "best_iteration": best["iteration"],
        "val_history": history,
    }
    return model.eval(), record


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- evaluation
def lv_area_change(masks_NHWT: np.ndarray, spacing_N2: np.ndarray) -> np.ndarray:
    """Per clip, the mean absolute frame-to-frame change of the LV area, mm^2: ``[N]``."""
    pixel_mm2 = spacing_N2[:, 0].astype(np.float64) * spacing_N2[:, 1]
    areas_NT = (masks_NHWT == LV).sum(axis=(1, 2)) * pixel_mm2[:, None]
    return np.abs(np.diff(areas_NT, axis=1)).mean(axis=1)


def evaluate(pred_NHWT: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Test metrics of one row's predictions ``[N, H, W, T]`` (clip order of ``data["test_*"]``)."""
    from scripts.clinical.evaluation import clip_ef
    from scripts.clinical.stats import agreement
    from scripts.metrics import case_metrics, summarize

    labels, spacing = data["test_label"], data["test_spacing"]
    rows, pred_ef = [], []
    t = labels.shape[-1]
    for i in range(len(labels)):
        sp = (float(spacing[i, 0]), float(spacing[i, 1]))
        clip_rows = case_metrics(pred_NHWT[i], labels[i], np.ones(t, bool), sp, 0, t - 1, structures={LV: "lv"})
        rows.extend({**r, "case_id": f"test{i:03d}"} for r in clip_rows)
        pred_ef.append(clip_ef(pred_NHWT[i], labels[i], sp, 0, t - 1)["pred_ef"])
    overall = summarize(rows)["overall"]["all"]
    ef = agreement(pred_ef, data["test_ef"])
    area_pred = lv_area_change(pred_NHWT, spacing)
    area_gt = lv_area_change(labels, spacing)
    return {
        "dice": overall["dice"]["mean"],
        "iou": overall["iou"]["mean"],
        "hd95_mm": overall["hd95"]["mean"],
        "asd_mm": overall["asd"]["mean"],
        "n_frames_scored": overall["n_items"],
        "n_one_empty": overall["n_one_empty"],
        "ef_r": ef["r"],
        "ef_bias": ef["bias"],
        "ef_sd": ef["sd"],
        "ef_mae": ef["mae"],
        "ef_n": ef["n"],
        "ef_n_dropped": ef["n_dropped"],
        "area_change_pred_mm2": float(area_pred.mean()),
        "area_change_gt_mm2": float(area_gt.mean()),
        "area_change_ratio": float(area_pred.mean() / area_gt.mean()) if area_gt.mean() > 0 else math.nan,
    }


def reference_ef(data: dict[str, np.ndarray]) -> dict[str, Any]:
    """EF of the ground-truth masks (same method) against the phantom's EF: the floor of the EF method here."""
    from scripts.clinical.evaluation import clip_ef
    from scripts.clinical.stats import agreement

    labels, spacing = data["test_label"], data["test_spacing"]
    t = labels.shape[-1]
    gt = [clip_ef(labels[i], labels[i], tuple(spacing[i]), 0, t - 1)["gt_ef"] for i in range(len(labels))]
    ef = agreement(gt, data["test_ef"])
    return {
        "ef_r": ef["r"],
        "ef_bias": ef["bias"],
        "ef_sd": ef["sd"],
        "ef_mae": ef["mae"],
        "area_change_gt_mm2": float(lv_area_change(labels, spacing).mean()),
    }


def _evaluate_job(pred_NHWT: np.ndarray) -> dict[str, Any]:
    """Pool job: :func:`evaluate` on the shared split."""
    return evaluate(pred_NHWT, _SHARED)


def _reference_job() -> dict[str, Any]:
    """Pool job: :func:`reference_ef` on the shared split."""
    return reference_ef(_SHARED)


@torch.inference_mode()
def cpu_frames_per_s(model: nn.Module, frames_NHW: np.ndarray, threads: int, warmup: int = 5) -> float:
    """Streaming frames/s of a CPU float32 copy of ``model``: batch 1, one stream through ``step``.

    Args:
        frames_NHW: uint8 ``[N, H, W]`` frames of one or more test clips played as one stream (``warmup`` first).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cpu_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
        frames = torch.from_numpy(frames_NHW)[:, None, None].float() / 255.0  # [N, 1, 1, H, W]
        state = None
        for frame in frames[:warmup]:
            state = cpu_model.step(frame, state)[1]
        start = time.perf_counter()
        for frame in frames[warmup:]:
            state = cpu_model.step(frame, state)[1]
        return (len(frames) - warmup) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def stream_frames(images_NHWT: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` frames of the test clips played one after another: ``[count, H, W]`` uint8."""
    frames = np.moveaxis(images_NHWT, -1, 1).reshape(-1, *images_NHWT.shape[1:3])
    reps = math.ceil(count / len(frames))
    return np.concatenate([frames] * reps)[:count]


# ---------------------------------------------------------------------------------------------------- reporting
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("params_m", "Params (M)", "{:.2f}"),
    ("dice", "Dice", "{:.3f}"),
    ("iou", "IoU", "{:.3f}"),
    ("hd95_mm", "HD95 (mm)", "{:.2f}"),
    ("asd_mm", "ASD (mm)", "{:.2f}"),
    ("ef_r", "EF r", "{:.3f}"),
    ("ef_bias", "EF bias (%)", "{:+.2f}"),
    ("ef_sd", "EF SD (%)", "{:.2f}"),
    ("area_change_pred_mm2", "dA/frame pred (mm^2)", "{:.1f}"),
    ("area_change_gt_mm2", "dA/frame GT (mm^2)", "{:.1f}"),
    ("area_change_ratio", "dA ratio", "{:.2f}"),
    ("train_s", "Train (s)", "{:.0f}"),
    ("cpu_fps", "CPU fps", "{:.1f}"),
)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row over seeds: ``{key: {"mean", "sd", "n"}}`` of the numeric results, plus failures."""
    out = []
    for spec in ROWS:
        mine = [r for r in runs if r["row"] == spec.name]
        if not mine:
            continue
        ok = [r for r in mine if not r.get("failed")]
        entry: dict[str, Any] = {
            "row": spec.name,
            "label": spec.label,
            "n_seeds": len(ok),
            "failed": [{"seed": r["seed"], "error": r["error"]} for r in mine if r.get("failed")],
        }
        for key in [c[0] for c in COLUMNS] + ["val_dice", "ef_mae"]:
            values = [float(r[key]) for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
            mean = float(np.mean(values)) if values else math.nan
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            entry[key] = {"mean": mean, "sd": sd, "n": len(values)}
        out.append(entry)
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """One row per model; ``mean ± sd`` where several seeds ran."""
    header = ["Model"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
    for entry in summary:
        if entry["n_seeds"] == 0:
            error = entry["failed"][0]["error"] if entry["failed"] else "no result"
            lines.append(f"| {entry['label']} | FAILED: {error.splitlines()[0][:150]} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [entry["label"] + (f" ({len(entry['failed'])} seed(s) failed)" if entry["failed"] else "")]
        for key, _, fmt in COLUMNS:
            stat = entry[key]
            if stat["n"] == 0:
                cells.append("n/a")
            elif stat["n"] > 1 and key not in ("params_m", "cpu_fps", "area_change_gt_mm2"):
                cells.append(f"{fmt.format(stat['mean'])} ± {fmt.format(stat['sd']).lstrip('+')}")
            else:
                cells.append(fmt.format(stat["mean"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(summary: list[dict[str, Any]]) -> list[str]:
    """Plain statements: the ranking by Dice and which rows lose against the paper's configuration."""
    done = [e for e in summary if e["n_seeds"] > 0 and e["dice"]["n"] > 0]
    if not done:
        return ["No row produced results."]
    ranked = sorted(done, key=lambda e: -e["dice"]["mean"])
    lines = ["Ranking by test Dice: " + " > ".join(f"{e['label']} ({e['dice']['mean']:.3f})" for e in ranked) + "."]
    reference = next((e for e in done if e["row"] == REFERENCE_ROW), None)
    if reference is not None:
        ref = reference["dice"]
        for e in done:
            if e is reference:
                continue
            diff = e["dice"]["mean"] - ref["mean"]
            spread = max(x for x in (ref["sd"], e["dice"]["sd"], 0.0) if math.isfinite(x))
            if spread > 0 and abs(diff) <= spread:
                verdict = f"within the larger seed SD, {spread:.3f}"
            else:
                verdict = "higher" if diff > 0 else "lower" if diff < 0 else "equal"
            lines.append(f"{e['label']}: Dice {diff:+.3f} against {reference['label']} ({verdict}).")
    if max(e["n_seeds"] for e in done) < 2:
        lines.append("One seed only: no seed SD, so small differences cannot be told from noise (run --seeds 0 1 2).")
    for e in summary:
        for failure in e["failed"]:
            lines.append(f"{e['label']} FAILED (seed {failure['seed']}): {failure['error'].splitlines()[0]}")
    return lines


def machine_description(device: torch.device) -> dict[str, str]:
    cpu = cpu_model_name()
    info = {
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def json_safe(x: Any) -> Any:
    """NaN/inf -> None recursively, numpy scalars and arrays -> Python."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic JSON write (NaN and inf -> null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        json.dump(json_safe(payload), f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_docs(path: Path, payload: dict[str, Any], table: str) -> None:
    """``docs/benchmarks_accuracy.md``: the table with the command, machine, run time, budget and data."""
    machine = payload["machine"]
    where = f"{machine['gpu']} (training), " if "gpu" in machine else ""
    ref = payload["reference_gt_masks"]
    split = payload["split"]
    lines = [
        "# Accuracy benchmark: update rules, KPFF, softmax memory and per-frame MONAI baselines",
        "",
        "Produced by `bench/accuracy.py` (issue 7); every row trained from scratch in the same run, with the same "
        "data, budget and seed(s). Regenerate with:",
        "",
        "```",
        payload["command"],
        "```",
        "",
        *([payload["partial_note"], ""] if payload.get("partial_note") else []),
        f"- Machine: {where}{machine['cpu']} (CPU frames/s, {payload['cpu_threads']} threads); torch "
        f"{machine['torch']}, MONAI {machine.get('monai', '?')}, Python {machine['python']}.",
        f"- Run time: {payload['run_time_s'] / 60:.1f} min on {payload['device']} ({payload['date']}); "
        f"seeds {payload['seeds']}.",
        f"- Budget (every row): {payload['budget_text']}.",
        f"- Data: synthetic generator, {split['n_train']} train / {split['n_val']} validation / {split['n_test']} "
        f"test clips (2CH and 4CH alternating, EF drawn per clip), ED..ES sampled to {split['clip_frames']} frames "
        f"from {split['min_frames']}-{split['max_frames']}-frame systoles, generated at {split['gen_size']} and "
        f"resized to {split['size']} x {split['size']}, LV labels; data key `{payload['data_key']}`.",
        "- Metrics on every test frame (all are annotated): Dice, IoU, HD95 and ASD in mm (`scripts.metrics`); EF "
        "from the predicted first (ED) and last (ES) frame masks by single-plane Simpson (`clip_ef`) against the "
        "phantom's exact EF (r, bias = mean of pred - true, SD of the differences); dA/frame = mean absolute "
        "frame-to-frame change of the LV area (prediction, ground truth, ratio: 1 is as smooth as the truth); "
        f"CPU fps = streaming, batch 1, {payload['fps_frames']} frames after 5 warm-up frames on a CPU copy of the "
        "row's first trained model; Train (s) = the training iterations on the training device.",
        "",
        table,
        "",
        f"Reference, EF of the ground-truth masks against the phantom (the floor of the EF method on these data): "
        f"r {ref['ef_r']:.3f}, bias {ref['ef_bias']:+.2f} %, SD {ref['ef_sd']:.2f} %; ground-truth dA/frame "
        f"{ref['area_change_gt_mm2']:.1f} mm^2.",
        "",
        "## Findings (generated)",
        "",
        *[f"- {line}" for line in payload["findings"]],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        f.write("\n".join(lines))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- main
def fit_iterations(
    rows: Sequence[RowSpec],
    batches: tuple[torch.Tensor, torch.Tensor],
    val: tuple[np.ndarray, np.ndarray],
    budget: Budget,
    device: torch.device,
    seconds_left: float,
    n_seeds: int,
) -> tuple[int, dict[str, float]]:
    """Iterations that make all rows x seeds fit ``seconds_left`` (never more than ``budget.iterations``).

    Per row: a warm-up call (2 iterations: cuDNN autotuning, allocator, lazy initialisation), then calls of 1 and
    ``n_timed + 1`` iterations whose difference divided by ``n_timed`` is the time per iteration (both calls carry the
    same fixed cost of set-up and validation). Keeps 4 s per row and seed for validation and testing, and 30 s for
    the CPU frames/s and the end of the run (the evaluations overlap training).
    """
    per_it: dict[str, float] = {}
    calibration = dataclasses.replace(budget, val_checks=1)
    n_timed = min(3, len(batches[0]) - 1)
    if n_timed < 1:
        return budget.iterations, per_it
    for spec in rows:
        try:
            train_row(spec, 0, batches, val, calibration, device, lambda _: None, iterations=2)
            _, one = train_row(spec, 0, batches, val, calibration, device, lambda _: None, iterations=1)
            _, rec = train_row(spec, 0, batches, val, calibration, device, lambda _: None, iterations=n_timed + 1)
            difference = (rec["train_s"] - one["train_s"]) / n_timed
            # Timing noise can make the difference meaningless; never count an iteration as cheaper than this.
            per_it[spec.name] = max(difference, rec["train_s"] / (n_timed + 1) / 2)
        except Exception as error:  # a failing row fails again later and is reported there
            print(f"calibration of {spec.name} failed: {error!r}", flush=True)
    overhead = 4.0 * len(rows) * n_seeds + 30.0
    total_per_it = sum(per_it.values()) * n_seeds
    fit = int((seconds_left - overhead) / total_per_it) if total_per_it > 0 else budget.iterations
    return min(budget.iterations, max(10, fit)), per_it


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda, cuda:1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one full set of rows per seed")
    parser.add_argument("--rows", nargs="+", default=None, choices=[r.name for r in ROWS], help="subset of rows")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; never writes the docs table")
    parser.add_argument("--data", type=Path, default=None, help="cached split (.npz); generated there if missing")
    parser.add_argument("--generate-only", action="store_true", help="only generate/verify the data file")
    parser.add_argument("--regenerate", action="store_true", help="overwrite --data even if it exists")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per row (default 200)")
    parser.add_argument("--batch", type=int, default=None, help="clips per iteration (default 32)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for training and testing (default fp32)")
    parser.add_argument("--fit-minutes", type=float, default=None, help="lower --iterations to fit this wall time")
    parser.add_argument("--cpu-threads", type=int, default=2, help="threads for the CPU frames/s")
    parser.add_argument("--fps-frames", type=int, default=None, help="timed CPU frames per row (default 50)")
    parser.add_argument("--workers", type=int, default=None, help="processes for data generation/augmentation")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/bench_accuracy[_quick].json)")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks_accuracy.md")
    parser.add_argument(
        "--docs-from",
        type=Path,
        nargs="+",
        default=None,
        help="only write --docs from saved JSONs of one or more runs (also partial ones, stopped by a time limit)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    split = QUICK_SPLIT if args.quick else SplitConfig()
    budget = QUICK_BUDGET if args.quick else Budget()
    budget = dataclasses.replace(
        budget,
        iterations=args.iterations or budget.iterations,
        batch=args.batch or budget.batch,
        amp_bf16=args.amp,
    )
    fps_frames = args.fps_frames or (10 if args.quick else 50)
    suffix = "_quick" if args.quick else ""
    data_path = args.data or REPO_ROOT / "results" / f"accuracy_data{suffix}.npz"
    out_path = args.out or REPO_ROOT / "results" / f"bench_accuracy{suffix}.json"
    workers = args.workers or len(os.sched_getaffinity(0))
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]

    if args.docs_from is not None:  # the saved runs name their data file's key; the generator may have moved on
        with np.load(data_path) as stored:
            docs_from_json(args.docs_from, args.docs, {k: stored[k] for k in stored.files})
        return
    data = load_or_generate(data_path, split, workers, args.regenerate)
    if args.generate_only:
        return
    # Fail now, not after training, if a package the evaluation needs is missing (e.g. pytorch-ignite for metrics).
    try:
        import scripts.clinical.evaluation  # noqa: F401
        import scripts.metrics  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"bench/accuracy.py needs the bundle's evaluation dependencies (monai, pytorch-ignite, scikit-image, "
            f"matplotlib): {error}"
        ) from error

    # One pool of forked workers for the whole run, forked before CUDA is initialised: it draws the augmented
    # batches, then evaluates each row's test predictions while the next row trains.
    _SHARED.update(data)
    pool = mp.get_context("fork").Pool(max(1, workers), initializer=_worker_init)
    try:
        payload = run_rows(args, argv, pool, data, data_path, split, budget, rows, fps_frames, out_path, t0)
    finally:
        pool.terminate()
        pool.join()

    summary = aggregate(payload["runs"])
    table = markdown_table(summary)
    payload.update(summary=summary, findings=findings(summary), table=table, run_time_s=time.perf_counter() - t0)
    write_json(out_path, payload)
    ref = payload["reference_gt_masks"]
    print()
    print(table)
    print()
    print(
        f"Reference (ground-truth masks vs phantom EF): r {ref['ef_r']:.3f}, bias {ref['ef_bias']:+.2f}, "
        f"SD {ref['ef_sd']:.2f}; GT dA/frame {ref['area_change_gt_mm2']:.1f} mm^2"
    )
    for line in payload["findings"]:
        print(f"- {line}")
    print(f"\nwrote {out_path}; run time {payload['run_time_s']:.0f} s", flush=True)
    if not args.quick:
        write_docs(args.docs, payload, table)
        print(f"wrote {args.docs}", flush=True)


def run_rows(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    pool: Any,
    data: dict[str, np.ndarray],
    data_path: Path,
    split: SplitConfig,
    budget: Budget,
    rows: Sequence[RowSpec],
    fps_frames: int,
    out_path: Path,
    t0: float,
) -> dict[str, Any]:
    """Train and test every row for every seed; returns the JSON payload with one record per (seed, row)."""
    all_batches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for seed in args.seeds:
        start = time.perf_counter()
        all_batches[seed] = draw_batches(pool, seed, budget)
        size_mb = sum(a.nbytes for a in all_batches[seed]) / 2**20
        print(
            f"seed {seed}: {budget.iterations} augmented batches ({size_mb:.0f} MiB) in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
    reference = pool.apply_async(_reference_job)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.zeros(1, device=device)
    val = (data["val_image"], data["val_label"])
    calibration: dict[str, float] = {}
    if args.fit_minutes is not None:
        seconds_left = args.fit_minutes * 60 - (time.perf_counter() - t0)
        first = tuple(torch.from_numpy(b[:4]).to(device) for b in all_batches[args.seeds[0]])
        iterations, calibration = fit_iterations(rows, first, val, budget, device, seconds_left, len(args.seeds))
        del first
        print(
            f"--fit-minutes {args.fit_minutes}: {iterations} iterations per row (of {budget.iterations}); measured "
            f"s/iteration {json.dumps({k: round(v, 4) for k, v in calibration.items()})}",
            flush=True,
        )
        all_batches = {s: (b[0][:iterations], b[1][:iterations]) for s, b in all_batches.items()}
        budget = dataclasses.replace(budget, iterations=iterations)

    command = "python bench/accuracy.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    payload: dict[str, Any] = {
        "benchmark": "accuracy",
        "command": command.strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "device": str(device),
        "machine": machine_description(device),
        "cpu_threads": args.cpu_threads,
        "fps_frames": fps_frames,
        "seeds": args.seeds,
        "split": dataclasses.asdict(split),
        "data_key": str(data["key"]),
        "data_path": str(data_path),
        "budget": dataclasses.asdict(budget),
        "budget_text": budget.describe(split),
        "calibration_s_per_iteration": calibration,
        "precision": {
            "amp_bf16": budget.amp_bf16,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "runs": [],
    }
    print(f"budget: {payload['budget_text']}", flush=True)
    pending: list[tuple[dict[str, Any], Any]] = []
    cpu_models: dict[str, tuple[int, nn.Module]] = {}
    total = len(rows) * len(args.seeds)
    done = 0
    for seed in args.seeds:
        # The seed's batches go to the device once (about 2 GiB of uint8 for the default budget).
        seed_batches = tuple(torch.from_numpy(b).to(device) for b in all_batches.pop(seed))
        for spec in rows:
            done += 1
            tag = f"[{done}/{total} seed {seed}] {spec.name}"
            print(f"{tag}: training", flush=True)
            record: dict[str, Any] = {"row": spec.name, "label": spec.label, "seed": seed, "tag": tag}
            model = None
            try:
                model, train_record = train_row(
                    spec, seed, seed_batches, val, budget, device, lambda m, t=tag: print(f"{t}: {m}", flush=True)
                )
                record.update(train_record)
                record["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
                start = time.perf_counter()
                pred = predict(model, data["test_image"], device, budget.batch, budget.amp_bf16)
                record["test_inference_s"] = time.perf_counter() - start
                pending.append((record, pool.apply_async(_evaluate_job, (pred,))))
                if spec.name not in cpu_models:
                    cpu_models[spec.name] = (seed, copy.deepcopy(model).to("cpu", torch.float32).eval())
                print(
                    f"{tag}: trained in {record['train_s']:.1f} s ({record['s_per_iteration'] * 1000:.0f} ms/it), "
                    f"best val Dice {record['val_dice']:.3f} at it {record['best_iteration']}; "
                    f"elapsed {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            except Exception as error:
                record.update(failed=True, error=f"{type(error).__name__}: {error}")
                print(f"{tag}: FAILED {record['error']}", flush=True)
                traceback.print_exc()
            finally:
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            payload["runs"].append(record)
            collect_evaluations(pending, block=False)
            payload["run_time_s"] = time.perf_counter() - t0
            write_json(out_path, payload)
        del seed_batches

    collect_evaluations(pending, block=True)
    payload["reference_gt_masks"] = reference.get()
    # CPU frames/s last, with nothing else running: one trained model per row (speed does not depend on the seed).
    frames = stream_frames(data["test_image"], fps_frames + 5)
    for name, (seed, cpu_model) in cpu_models.items():
        try:
            fps = cpu_frames_per_s(cpu_model, frames, args.cpu_threads)
            error = None
        except Exception as exc:
            fps, error = math.nan, f"{type(exc).__name__}: {exc}"
        print(f"{name}: CPU {fps:.1f} frames/s ({args.cpu_threads} threads, seed {seed}'s model)", flush=True)
        for record in payload["runs"]:
            if record["row"] == name and not record.get("failed"):
                record.update(cpu_fps=fps, cpu_fps_model_seed=seed, cpu_fps_error=error)
    payload["run_time_s"] = time.perf_counter() - t0
    write_json(out_path, payload)
    return payload


def docs_from_json(json_paths: Sequence[Path], docs_path: Path, data: dict[str, np.ndarray]) -> None:
    """Write the docs page from saved JSONs of one or more runs (also partial ones, stopped by a time limit).

    Runs are merged per (row, seed): a record with test metrics wins over one without, a later file over an earlier
    one. All files must come from the same data (``data``'s key) and budget. Rows whose test evaluation never
    finished show n/a and are named with their validation Dice; the ground-truth reference EF (computed at the end
    of a run) is recomputed from ``data`` when missing.
    """
    payloads = [json.loads(Path(path).read_text()) for path in json_paths]
    for path, payload in zip(json_paths, payloads, strict=True):
        if payload.get("data_key") != str(data["key"]):
            raise SystemExit(f"{path}: data key {payload.get('data_key')} is not that of the data file {data['key']}")
        if payload["budget"] != payloads[0]["budget"]:
            raise SystemExit(
                f"{path}: budget {payload['budget']} differs from {json_paths[0]}'s {payloads[0]['budget']}"
            )
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for payload in payloads:
        for record in payload["runs"]:
            key = (record["row"], record["seed"])
            if key not in merged or record.get("dice") is not None or merged[key].get("dice") is None:
                merged[key] = record
    payload = dict(payloads[0])
    payload["runs"] = list(merged.values())
    payload["command"] = "\n".join(p["command"] for p in payloads)
    payload["run_time_s"] = sum(p.get("run_time_s", 0.0) for p in payloads)
    payload["seeds"] = sorted({s for p in payloads for s in p["seeds"]})
    payload["reference_gt_masks"] = next(
        (p["reference_gt_masks"] for p in payloads if "reference_gt_masks" in p), None
    ) or reference_ef(data)
    summary = aggregate(payload["runs"])
    payload.update(summary=summary, findings=findings(summary), table=markdown_table(summary))
    done = [r for r in payload["runs"] if not r.get("failed")]
    unevaluated = "; ".join(
        f"{r['label']} (seed {r['seed']}): best validation Dice {r['val_dice']:.3f}"
        for r in done
        if r.get("dice") is None and r.get("val_dice") is not None
    )
    stopped = [Path(path).name for path, p in zip(json_paths, payloads, strict=True) if "summary" not in p]
    notes = []
    if len(payloads) > 1:
        notes.append(f"Merged from {len(payloads)} runs (one command each, above).")
    if stopped:
        notes.append(f"Stopped by a time limit: {', '.join(stopped)} (rows it had not tested show n/a).")
    if unevaluated:
        notes.append(f"Trained but not tested: {unevaluated}.")
    if any(r.get("cpu_fps") is None for r in done):
        notes.append("CPU frames/s are measured at the end of a run: rows from a stopped run have none.")
    notes.append(
        "Page written by `python bench/accuracy.py --docs-from "
        + " ".join(Path(path).name for path in json_paths)
        + " ...` from the runs' JSON."
    )
    payload["partial_note"] = " ".join(notes)
    write_docs(docs_path, payload, payload["table"])
    print(payload["table"])
    print(f"wrote {docs_path} from {', '.join(str(p) for p in json_paths)}", flush=True)


def collect_evaluations(pending: list[tuple[dict[str, Any], Any]], block: bool) -> None:
    """Merge finished test evaluations into their records (all of them, waiting, with ``block``); prints each."""
    for item in list(pending):
        record, result = item
        if not block and not result.ready():
            continue
        pending.remove(item)
        try:
            record.update(result.get())
        except Exception as error:
            record.update(failed=True, error=f"evaluation: {type(error).__name__}: {error}")
            print(f"{record['tag']}: evaluation FAILED {record['error']}", flush=True)
            continue
        print(
            f"{record['tag']}: test Dice {record['dice']:.3f} IoU {record['iou']:.3f} HD95 {record['hd95_mm']:.2f} mm "
            f"ASD {record['asd_mm']:.2f} mm; EF r {record['ef_r']:.3f} bias {record['ef_bias']:+.2f} "
            f"SD {record['ef_sd']:.2f}; dA ratio {record['area_change_ratio']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
