"""Training one row on a seed's batches (best validation weights), prediction, and the --fit-minutes timing."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import LV, Budget, RowSpec
from .models import build_model


def to_video(images_NHWT: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, H, W, T]`` -> float ``[N, 1, H, W, T]`` in [0, 1] on ``device``."""
    return torch.from_numpy(images_NHWT).to(device, non_blocking=True)[:, None].float() / 255.0


def autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(
    model: nn.Module,
    images_NHWT: np.ndarray,
    device: torch.device,
    batch: int,
    amp: bool,
    frames_alone: bool = False,
) -> np.ndarray:
    """Label maps ``[N, H, W, T]`` uint8 (argmax) of every clip, ``batch`` clips at a time.

    ``frames_alone``: every frame segmented as a one-frame clip (the state reset before each frame, as inference
    segments a cine's first frame; ``scripts.training.PerFrameInferer``): the same weights without their memory.
    """
    from scripts.training import PerFrameInferer

    model.eval()
    out = []
    for start in range(0, len(images_NHWT), batch):
        video = to_video(images_NHWT[start : start + batch], device)
        with autocast(device, amp):
            logits = PerFrameInferer()(video, model) if frames_alone else model(video)
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
