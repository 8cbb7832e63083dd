"""Pieces that let MONAI's SupervisedTrainer train a recurrent clip network as the paper does (section 4.1).

- :class:`PrepareClipBatch` marks the frames that are *not* supervised with :data:`IGNORE_LABEL` in the label
  (unannotated frames, and with ``mode="first_last"`` every frame except the clip's first and last), so the
  standard ``SupervisedTrainer`` iteration can be used unchanged;
- :class:`SupervisedFramesLoss` computes a loss (``DiceCELoss``) only on the frames that carry labels;
- :class:`GradientClipHandler` clips the global gradient norm after ``backward`` (unscaling first under AMP);
- :class:`EpochSeeder` reseeds the sampler, the random transforms and torch at every epoch start, so a run that is
  resumed from a checkpoint at an epoch boundary draws exactly the same data as an uninterrupted run;
- :func:`latest_checkpoint` finds the checkpoint to resume from; :func:`ensure_synthetic_data` generates the
  embedded default data set on first use.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scripts.checkpoint import config_key
from scripts.gdkvm.description import CheckpointMismatchError

IGNORE_LABEL = -1
SUPERVISION_MODES = ("annotated", "first_last")
logger = logging.getLogger(__name__)


def supervised_frame_mask(label_frames_BT: torch.Tensor, mode: str) -> torch.Tensor:
    """Which frames the loss sees.

    Args:
        label_frames_BT: ``[B, T]`` bool, True where the frame is annotated.
        mode: ``"annotated"`` (every annotated frame) or ``"first_last"`` (annotated frames among the clip's first
            and last, the paper's protocol).

    Returns:
        ``[B, T]`` bool.
    """
    if mode not in SUPERVISION_MODES:
        raise ValueError(f"unknown supervision mode {mode!r}; expected one of {SUPERVISION_MODES}")
    mask = label_frames_BT.bool().clone()
    if mode == "first_last" and mask.shape[1] > 2:
        mask[:, 1:-1] = False
    return mask


class PrepareClipBatch:
    """``prepare_batch`` for MONAI engines: ``(image [B, 1, H, W, T], label [B, 1, H, W, T] long)``.

    Frames outside the supervised set get :data:`IGNORE_LABEL` in every pixel of the returned label.

    ``given_mask_prob > 0`` (training only; off in the paper's recipe): each annotated frame but the clip's last is,
    with this probability, followed by its true mask as the next frame's previous-mask input (perturbed with
    probability ``perturb_prob``: shifted by up to ``max(3, perturb_px)`` px and grown or shrunk by 1..``perturb_px``
    px, as a user's rough correction
    would be), so that the value encoder learns to use the mask it is given. ``empty_mask_prob > 0``: after other
    frames, with this probability, an empty previous mask (as every cine's first frame has), so that the network reads
    an empty mask as "nothing known" (:func:`given_true_masks`). The batch is then
    ``(image, label, (), {"given_masks_BNHWT": ..., "given_frames_BT": ...})``, which ``SupervisedTrainer`` passes
    through its inferer to :meth:`scripts.gdkvm.GDKVM.forward`. Draws use torch's global generator (reseeded every
    epoch by :class:`EpochSeeder`, so a resumed run draws the same).
    """

    def __init__(
        self,
        mode: str = "annotated",
        image_key: str = "image",
        label_key: str = "label",
        given_mask_prob: float = 0.0,
        perturb_prob: float = 0.5,
        perturb_px: int = 2,
        num_objects: int = 1,
        empty_mask_prob: float = 0.0,
    ) -> None:
        if mode not in SUPERVISION_MODES:
            raise ValueError(f"unknown supervision mode {mode!r}; expected one of {SUPERVISION_MODES}")
        probs = (given_mask_prob, perturb_prob, empty_mask_prob)
        if not all(0.0 <= v <= 1.0 for v in probs):
            raise ValueError(f"given_mask_prob, perturb_prob and empty_mask_prob must be in [0, 1], got {probs}")
        self.mode = mode
        self.image_key = image_key
        self.label_key = label_key
        self.given_mask_prob = float(given_mask_prob)
        self.perturb_prob = float(perturb_prob)
        if int(perturb_px) < 1:
            raise ValueError(f"perturb_px must be a positive number of pixels, got {perturb_px!r}")
        self.perturb_px = int(perturb_px)
        self.num_objects = int(num_objects)
        self.empty_mask_prob = float(empty_mask_prob)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        # Plain tensors: MetaTensor's per-operation bookkeeping slows a recurrent network down several-fold.
        image = _plain(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        label = _plain(batchdata[self.label_key]).long()
        frames = torch.as_tensor(batchdata["label_frames"]).bool().reshape(label.shape[0], label.shape[-1])
        supervised = supervised_frame_mask(frames, self.mode)
        given = None
        if self.given_mask_prob > 0 or self.empty_mask_prob > 0:
            given = given_true_masks(
                label,
                frames,
                self.num_objects,
                self.given_mask_prob,
                self.perturb_prob,
                self.empty_mask_prob,
                self.perturb_px,
            )
        label = label.masked_fill(~supervised[:, None, None, None, :], IGNORE_LABEL)
        label = label.to(device=device, non_blocking=non_blocking)
        if given is None:
            return image, label
        masks, flags = given
        extra = {"given_masks_BNHWT": masks.to(device=device), "given_frames_BT": flags.to(device=device)}
        return image, label, (), extra


def given_true_masks(
    label_B1HWT: torch.Tensor,
    annotated_BT: torch.Tensor,
    num_objects: int,
    prob: float,
    perturb_prob: float,
    empty_prob: float = 0.0,
    perturb_px: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the frames whose true (or an empty) mask becomes the next previous mask (see :class:`PrepareClipBatch`).

    ``empty_prob``: of the other frames, those drawn with this probability hand the next frame an *empty* previous
    mask, as the first frame of every cine gets one; so an empty mask means "nothing known" to the network, not "no
    LV here".

    Returns:
        ``masks [B, N, H, W, T]`` float (one-hot of labels 1..N, some perturbed, zeros where an empty mask was drawn)
        and ``flags [B, T]`` bool (never the last frame, whose mask would feed nothing).
    """
    from scripts.corrections import object_masks

    masks = object_masks(label_B1HWT[:, 0], num_objects)
    flags = annotated_BT & (torch.rand(annotated_BT.shape) < prob)
    if empty_prob > 0:  # drawn only when asked, so that the other options' draws stay as they were
        empty = ~flags & (torch.rand(annotated_BT.shape) < empty_prob)
        masks = masks * (~empty).to(masks.dtype)[:, None, None, None, :]
        flags = flags | empty
    flags[:, -1] = False
    b, n, h, w, t = masks.shape
    frames = masks.permute(0, 4, 1, 2, 3).reshape(b * t, n, h, w)
    chosen = (flags.reshape(-1) & (torch.rand(b * t) < perturb_prob)).nonzero().flatten().tolist()
    for i in chosen:
        frames[i] = perturb_mask(frames[i], max_shift=max(3, perturb_px), max_radius=perturb_px)
    return frames.reshape(b, t, n, h, w).permute(0, 2, 3, 4, 1).contiguous(), flags


def perturb_mask(mask_NHW: torch.Tensor, max_shift: int = 3, max_radius: int = 2) -> torch.Tensor:
    """A rough copy of a ``[N, H, W]`` binary mask: shifted by up to ``max_shift`` px, then grown or shrunk by
    1..``max_radius`` px."""
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    shifted = torch.roll(mask_NHW, shifts=(dy, dx), dims=(-2, -1))
    radius = int(torch.randint(1, max_radius + 1, (1,)))
    kernel = 2 * radius + 1
    if bool(torch.rand(1) < 0.5):
        return F.max_pool2d(shifted[None], kernel, stride=1, padding=radius)[0]
    return 1.0 - F.max_pool2d(1.0 - shifted[None], kernel, stride=1, padding=radius)[0]


def _plain(tensor: Any) -> torch.Tensor:
    tensor = torch.as_tensor(tensor)
    return tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor


class PrepareImageBatch:
    """``prepare_batch`` for inference engines: ``(image [B, 1, H, W, T] plain tensor, None)``.

    With a user's corrections in the batch (``corrections`` ``[1, 1, H, W, T]`` and ``corrected_frames`` ``[1, F]``,
    from :class:`scripts.corrections.LoadCorrectionsd`): ``(image, None, (), {"corrections_HWT", "corrected_frames"})``,
    which the inferer passes on.
    """

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, None] | tuple[torch.Tensor, None, tuple, dict[str, Any]]:
        image = _plain(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        if "corrections" not in batchdata:
            return image, None
        if image.shape[0] != 1:
            raise ValueError(f"corrections need one cine per batch, got a batch of {image.shape[0]}")
        corrections = _plain(batchdata["corrections"])[0, 0].to(device=device)
        frames = [int(f) for f in torch.as_tensor(batchdata["corrected_frames"]).reshape(-1)]
        return image, None, (), {"corrections_HWT": corrections, "corrected_frames": frames}


class PerFrameInferer:
    """An inferer that segments every frame as a first frame (empty memory and previous mask): no memory at all.

    ``[B, 1, H, W, T]`` is folded into ``[B*T, 1, H, W, 1]``, so the recurrent network becomes a per-frame network with
    the same weights; given previous masks (``given_mask_prob``) are dropped. Use it as ``train#inferer`` and
    ``validate#inferer``, with ``--warm_start False``, to train the memory-off reference of bench/memory.py with the
    same budget (in eval mode a network with ``warm_start`` would warm-start every frame, feeding back a mask this
    reference never learnt to read).
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        b, c, h, w, t = inputs.shape
        frames_N1HW1 = inputs.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w).unsqueeze(-1)
        logits_NKHW = network(frames_N1HW1)[..., 0]
        return logits_NKHW.reshape(b, t, -1, h, w).permute(0, 2, 3, 4, 1)


def gather_supervised_frames(pred_BKHWT: torch.Tensor, label_B1HWT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the supervised frames of a batch as 2D samples.

    Returns:
        ``pred [F, K, H, W]`` and ``label [F, 1, H, W]`` for the F frames whose label is not :data:`IGNORE_LABEL`.
    """
    supervised_BT = (label_B1HWT != IGNORE_LABEL).flatten(1, 3).all(dim=1)
    pred_frames = pred_BKHWT.permute(0, 4, 1, 2, 3)[supervised_BT]
    label_frames = label_B1HWT.permute(0, 4, 1, 2, 3)[supervised_BT]
    return pred_frames, label_frames


class SupervisedFramesLoss(nn.Module):
    """Applies a 2D segmentation loss to the supervised frames only (label != IGNORE_LABEL).

    Args:
        loss: e.g. ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``; called on ``[F, K, H, W]`` logits
            and ``[F, 1, H, W]`` labels (a loss that averages over its samples).
        first_frame_weight: weight of each clip's first frame against the others (1: all equal, the paper's recipe).
            The first frame is the one the network segments with an empty memory and an empty previous mask, as
            every cine's first frame at inference; it is 1 of T supervised frames of a clip, so a recurrent network
            learns it less well than the frames after (bench/memory.py, frame 0). With weight w the result is the
            loss of the supervised frames with each first frame counted w times.
    """

    def __init__(
        self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], first_frame_weight: float = 1.0
    ) -> None:
        super().__init__()
        if not first_frame_weight >= 1.0:
            raise ValueError(f"first_frame_weight must be >= 1, got {first_frame_weight!r}")
        self.loss = loss
        self.first_frame_weight = float(first_frame_weight)

    def forward(self, pred_BKHWT: torch.Tensor, label_B1HWT: torch.Tensor) -> torch.Tensor:
        pred_BKHWT, label_B1HWT = torch.as_tensor(pred_BKHWT), torch.as_tensor(label_B1HWT)
        pred, label = gather_supervised_frames(pred_BKHWT, label_B1HWT)
        if pred.shape[0] == 0:  # no supervised frame in this batch: a zero that keeps the graph
            return pred_BKHWT.sum() * 0.0
        value = self.loss(pred, label)
        if self.first_frame_weight == 1.0:
            return value
        first_pred, first_label = gather_supervised_frames(pred_BKHWT[..., :1], label_B1HWT[..., :1])
        if first_pred.shape[0] == 0:
            return value
        extra = (self.first_frame_weight - 1.0) * first_pred.shape[0]
        return (value * pred.shape[0] + self.loss(first_pred, first_label) * extra) / (pred.shape[0] + extra)


class GradientClipHandler:
    """Clips the global gradient norm of the trainer's network after every backward pass (paper: lambda = 3)."""

    def __init__(self, max_norm: float = 3.0) -> None:
        self.max_norm = float(max_norm)

    def attach(self, engine: Any) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if engine.amp and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class EpochSeeder:
    """Reseeds everything random at each epoch start from ``seed + epoch``.

    The sampler's generator, the random transforms (MONAI ``Randomizable.set_random_state``) and torch/numpy get
    seeds that depend only on the epoch, so resuming from a checkpoint taken at an epoch boundary reproduces the
    uninterrupted run exactly (with ``num_workers=0``; with workers MONAI's DataLoader seeds them from torch).
    """

    def __init__(self, seed: int, transform: Any = None, generator: torch.Generator | None = None) -> None:
        self.seed = int(seed)
        self.transform = transform
        self.generator = generator

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        epoch_seed = self.seed + 1000 * int(engine.state.epoch)
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed % 2**32)
        if self.generator is not None:
            self.generator.manual_seed(epoch_seed)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=epoch_seed % 2**32)


def seeded_generator(seed: int) -> torch.Generator:
    """A torch Generator for samplers (the :class:`EpochSeeder` reseeds it every epoch)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


_EPOCH_PATTERN = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> str | None:
    """Path of the newest complete training checkpoint ``<prefix>_epoch=N.pt`` in ``ckpt_dir``, or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.glob(f"{prefix}*_epoch=*.pt"):
        match = _EPOCH_PATTERN.search(path.name)
        if match and path.stat().st_size > 0:
            candidates.append((int(match.group(1)), path))
    return str(max(candidates)[1]) if candidates else None


def ensure_synthetic_data(
    dataset_dir: str | Path,
    patients: int = 50,
    seed: int = 0,
    size: int = 256,
    progress: bool = True,
    hard: bool = False,
) -> str:
    """Generate the embedded synthetic CAMUS-layout data set into ``dataset_dir`` unless it is already there.

    ``hard=True`` writes the hard split instead: only the test patients (the same phantoms as the default data's
    test split), each cine with a stretch of frames where part of the LV border is not visible (see
    ``docs/synthetic.md``); the truth files flag those frames, and the evaluation reports them apart.

    A complete synthetic data set from the same generator version and arguments (its ``synthetic_generator.json``)
    is kept; an interrupted one resumes. Asking for the default data where the hard split lies (or the reverse) is
    refused (``EchoDataError`` naming the folder and the ``synthetic_hard`` to pass), never regenerated over it. One
    written by another version of the generator, or before data sets were stamped (it has the generator's
    ``*_phantom.json`` truth files but no stamp), is written again, with a warning. A folder that is not synthetic
    (no stamp, no phantom files: e.g. real CAMUS) is never touched when complete.

    Returns:
        ``dataset_dir`` as a string (so configs can use the call as the data root).
    """
    from scripts.data.camus import read_split
    from scripts.synthetic import dataset_stamp, write_camus_dataset
    from scripts.synthetic.writers import read_stamp, same_patients

    root = Path(dataset_dir)
    nifti = root / "database_nifti"
    split_files = [root / "database_split" / f"subgroup_{s}.txt" for s in ("training", "validation", "testing")]
    subsets = ("testing",) if hard else None
    needed = len(read_split(root, "testing")) if hard and split_files[2].is_file() else patients
    complete = all(f.is_file() for f in split_files) and len(list(nifti.glob("patient*"))) >= needed
    stamp, wanted = read_stamp(root), dataset_stamp(patients, seed, size, hard=hard)
    if hard:
        wanted["subsets"] = list(subsets)
    synthetic = stamp is not None or any(nifti.glob("patient*/*_phantom.json"))
    if complete and (not synthetic or same_patients(stamp, wanted)):
        return str(root)
    if stamp is not None and bool(stamp.get("hard", False)) != hard:
        # One split asked for where the other lies: a forgotten --synthetic_hard, not a stale data set; regenerating
        # would replace the user's split without asking
        held, flag = ("the hard split", "True") if stamp.get("hard") else ("the default synthetic data", "False")
        from scripts.data.errors import EchoDataError

        raise EchoDataError(
            root,
            f"holds {held} (its synthetic_generator.json); pass --synthetic_hard {flag} to use it, "
            "or another --dataset_dir",
        )
    if synthetic and not same_patients(stamp, wanted):
        logger.warning(
            "%s: synthetic data from another generator version or other arguments (%s); regenerating", root, stamp
        )
    logger.info("generating %d synthetic patients into %s", patients, root)
    write_camus_dataset(root, patients, seed=seed, size=size, progress=progress, hard=hard, subsets=subsets)
    return str(root)


def model_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """Plain state dict of a network, unwrapped from DistributedDataParallel if needed."""
    return getattr(network, "module", network).state_dict()


def first_existing(paths: Sequence[str | Path | None]) -> str | None:
    """The first path in ``paths`` that exists (configs use it to pick an optional file)."""
    for path in paths:
        if path and Path(path).exists():
            return str(path)
    return None


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a kill never leaves a partial file. The
    file keeps the mode of the one it replaces (a new one is 0644, readable like the rest of the bundle's files)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(obj, tmp_name)
        # mkstemp makes the file private (0600); the weights keep the mode of the file they replace, else 0644
        os.chmod(tmp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


class BestModelSaver:
    """Saves the network's plain state dict to ``path`` whenever the evaluator's key metric improves.

    Attach it to the validation evaluator. The write is atomic. Its ``state_dict`` (best value and epoch) goes
    into the training checkpoint so a resumed run keeps comparing against the right best value. With
    ``keep_start=True`` a validation before the first epoch (``ValidationHandler(exec_at_start=True)``, epoch 0) sets
    the bar without saving: the weights training started from (e.g. the served model being fine-tuned) are replaced
    only by an epoch that beats them.
    """

    def __init__(
        self, path: str | Path, network: nn.Module, metric_name: str | None = None, keep_start: bool = False
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.metric_name = metric_name
        self.keep_start = bool(keep_start)
        self.best_metric = -float("inf")
        self.best_epoch = -1
        self.history: list[tuple[int, float]] = []  # (epoch, metric) of every validation, 0 = before training

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        name = self.metric_name or engine.state.key_metric_name
        value = float(engine.state.metrics[name])
        epoch = int(getattr(engine.state, "train_epoch", None) or engine.state.epoch)
        trainer = getattr(engine, "trainer", None)
        if trainer is not None:
            epoch = int(trainer.state.epoch)
        self.history.append((epoch, value))
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, epoch
            if self.keep_start and epoch == 0:
                logger.info("%s = %.4f before training: the weights to beat", name, value)
                return
            if _is_main_process():
                atomic_torch_save(model_state_dict(self.network), self.path)
                logger.info("new best %s = %.4f at epoch %d: saved %s", name, value, epoch, self.path)

    def state_dict(self) -> dict[str, float]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])


class ResumableCheckpoint:
    """Saves the full training state at every ``every_n_epochs`` epoch end and resumes from it at start.

    Saved (atomically, keeping the ``n_saved`` newest): network, optimizer, lr scheduler, the trainer's ignite
    state (epoch, iteration), the AMP grad scaler and any extra objects with ``state_dict`` (e.g. the
    :class:`BestModelSaver`). On ``STARTED`` the newest complete ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` is loaded
    on every rank, so the run continues at epoch N + 1; only rank 0 writes.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        extra: Mapping[str, Any] | None = None,
        every_n_epochs: int = 1,
        n_saved: int = 1,
        resume: bool = True,
        prefix: str = "checkpoint",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects: dict[str, Any] = {"network": network, "optimizer": optimizer}
        if lr_scheduler is not None:
            self.objects["lr_scheduler"] = lr_scheduler
        self.objects.update(dict(extra or {}))
        self.every_n_epochs = int(every_n_epochs)
        self.n_saved = int(n_saved)
        self.resume = bool(resume)
        self.prefix = prefix

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self.save)

    def _to_save(self, engine: Any) -> dict[str, Any]:
        objects = dict(self.objects)
        objects["network"] = getattr(objects["network"], "module", objects["network"])
        objects["trainer"] = engine
        if getattr(engine, "scaler", None) is not None:
            objects["scaler"] = engine.scaler
        return objects

    def save(self, engine: Any) -> None:
        if not _is_main_process():
            return
        path = self.ckpt_dir / f"{self.prefix}_epoch={engine.state.epoch}.pt"
        atomic_torch_save({k: v.state_dict() for k, v in self._to_save(engine).items()}, path)
        kept = sorted(
            (int(m.group(1)), p)
            for p in self.ckpt_dir.glob(f"{self.prefix}_epoch=*.pt")
            if (m := _EPOCH_PATTERN.search(p.name))
        )
        for _, old in kept[: -self.n_saved]:
            old.unlink(missing_ok=True)

    def load(self, engine: Any) -> None:
        path = latest_checkpoint(self.ckpt_dir, self.prefix) if self.resume else None
        if path is None:
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        objects = self._to_save(engine)
        try:  # first, so that nothing is loaded from a training of another configuration
            objects["network"].load_state_dict(checkpoint["network"])
        except CheckpointMismatchError as e:
            self._set_aside(path, e)
            return
        for name, obj in objects.items():
            if name in ("trainer", "network"):
                continue
            if name not in checkpoint:
                raise KeyError(f"{path}: checkpoint has no '{name}' entry to resume from")
            obj.load_state_dict(checkpoint[name])
        trainer_state = checkpoint["trainer"]
        if int(trainer_state["epoch_length"]) != int(engine.state.epoch_length):
            raise ValueError(
                f"{path}: saved with {trainer_state['epoch_length']} iterations per epoch, this run has "
                f"{engine.state.epoch_length}; resume with the same iterations_per_epoch or start a new ckpt_dir"
            )
        engine.state.iteration = int(trainer_state["iteration"])
        engine.state.epoch = engine.state.iteration // int(trainer_state["epoch_length"])
        logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)

    def _set_aside(self, path: Path | str, mismatch: CheckpointMismatchError) -> None:
        """A training of another configuration is in ``ckpt_dir``: move it aside and start a new one (rank 0 moves)."""
        changes = ", ".join(f"{config_key(n)} {a!r} there, {b!r} now" for n, a, b in mismatch.differences)
        if not _is_main_process():
            logger.warning("%s was made with other settings (%s): starting a new training", path, changes)
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.ckpt_dir.with_name(f"{self.ckpt_dir.name}.previous-{stamp}")
        self.ckpt_dir.rename(aside)
        logger.warning(
            "%s holds a training made with other settings (%s): moved it to %s and starting a new training",
            self.ckpt_dir,
            changes,
            aside,
        )


class DistributedRandomSampler(torch.utils.data.Sampler):
    """Random sampling with replacement, split across DDP ranks.

    Every rank draws the same ``num_samples`` indices (the total over all ranks) from the shared, epoch-seeded
    generator and keeps every ``world_size``-th one, so ranks see disjoint, reproducible parts of one draw. With
    ``num_samples = iterations_per_epoch * batch_size * world_size`` every rank runs ``iterations_per_epoch``
    iterations of ``batch_size`` clips (global batch ``batch_size * world_size``).
    """

    def __init__(self, dataset: Any, num_samples: int, generator: torch.Generator | None = None) -> None:
        self.dataset_size = len(dataset)
        self.num_samples = int(num_samples)
        self.generator = generator
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.world_size = torch.distributed.get_world_size() if distributed else 1
        if self.num_samples % self.world_size:
            raise ValueError(f"num_samples {self.num_samples} must be divisible by the world size {self.world_size}")

    def __iter__(self):
        indices = torch.randint(self.dataset_size, (self.num_samples,), generator=self.generator).tolist()
        return iter(indices[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.num_samples // self.world_size
