"""Test metrics of one row's predictions, the ground-truth EF reference, and CPU streaming frames/s."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import LV
from .data import SHARED


def lv_area_change(masks_NHWT: np.ndarray, spacing_N2: np.ndarray) -> np.ndarray:
    """Per clip, the mean absolute frame-to-frame change of the LV area, mm^2: ``[N]``."""
    pixel_mm2 = spacing_N2[:, 0].astype(np.float64) * spacing_N2[:, 1]
    areas_NT = (masks_NHWT == LV).sum(axis=(1, 2)) * pixel_mm2[:, None]
    return np.abs(np.diff(areas_NT, axis=1)).mean(axis=1)


def flagged_rows(rows: list[dict[str, Any]], flags_NT: np.ndarray, value: bool = True) -> list[dict[str, Any]]:
    """The per-frame rows (``case_metrics`` rows with a ``clip`` index) of frames whose flag is ``value``."""
    return [r for r in rows if bool(flags_NT[r["clip"], r["frame"]]) == value]


def frame_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean Dice and HD95 (mm) of per-frame rows, and how many frames they are (NaN means when there are none)."""
    from scripts.metrics import summarize

    if not rows:
        return {"dice": math.nan, "hd95_mm": math.nan, "n_frames": 0}
    overall = summarize(rows)["overall"]["all"]
    return {"dice": overall["dice"]["mean"], "hd95_mm": overall["hd95"]["mean"], "n_frames": overall["n_items"]}


def evaluate(pred_NHWT: np.ndarray, data: dict[str, np.ndarray], split: str) -> dict[str, Any]:
    """Test metrics of one row's predictions ``[N, H, W, T]`` on a test split (clip order of ``data[f"{split}_*"]``).

    Every frame is scored; ``*_occluded`` on the frames flagged in ``{split}_occluded`` (part of the LV border not
    visible), ``*_visible`` on the others (NaN where a split has none).
    """
    from scripts.clinical.evaluation import clip_ef
    from scripts.clinical.stats import agreement
    from scripts.metrics import case_metrics, summarize

    labels, spacing = data[f"{split}_label"], data[f"{split}_spacing"]
    occluded = data[f"{split}_occluded"]
    rows, pred_ef = [], []
    t = labels.shape[-1]
    for i in range(len(labels)):
        sp = (float(spacing[i, 0]), float(spacing[i, 1]))
        clip_rows = case_metrics(pred_NHWT[i], labels[i], np.ones(t, bool), sp, 0, t - 1, structures={LV: "lv"})
        rows.extend({**r, "case_id": f"{split}{i:03d}", "clip": i} for r in clip_rows)
        pred_ef.append(clip_ef(pred_NHWT[i], labels[i], sp, 0, t - 1)["pred_ef"])
    overall = summarize(rows)["overall"]["all"]
    hidden = frame_summary(flagged_rows(rows, occluded, True))
    shown = frame_summary(flagged_rows(rows, occluded, False))
    ef = agreement(pred_ef, data[f"{split}_ef"])
    area_pred = lv_area_change(pred_NHWT, spacing)
    area_gt = lv_area_change(labels, spacing)
    return {
        "dice": overall["dice"]["mean"],
        "iou": overall["iou"]["mean"],
        "hd95_mm": overall["hd95"]["mean"],
        "asd_mm": overall["asd"]["mean"],
        "n_frames_scored": overall["n_items"],
        "n_one_empty": overall["n_one_empty"],
        "dice_occluded": hidden["dice"],
        "hd95_occluded_mm": hidden["hd95_mm"],
        "n_frames_occluded": hidden["n_frames"],
        "dice_visible": shown["dice"],
        "hd95_visible_mm": shown["hd95_mm"],
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


def reference_ef(data: dict[str, np.ndarray], split: str) -> dict[str, Any]:
    """EF of the ground-truth masks (same method) against the phantom's EF: the floor of the EF method here."""
    from scripts.clinical.evaluation import clip_ef
    from scripts.clinical.stats import agreement

    labels, spacing = data[f"{split}_label"], data[f"{split}_spacing"]
    t = labels.shape[-1]
    gt = [clip_ef(labels[i], labels[i], tuple(spacing[i]), 0, t - 1)["gt_ef"] for i in range(len(labels))]
    ef = agreement(gt, data[f"{split}_ef"])
    return {
        "ef_r": ef["r"],
        "ef_bias": ef["bias"],
        "ef_sd": ef["sd"],
        "ef_mae": ef["mae"],
        "area_change_gt_mm2": float(lv_area_change(labels, spacing).mean()),
    }


def evaluate_job(split: str, pred_NHWT: np.ndarray) -> dict[str, Any]:
    """Pool job: :func:`evaluate` on a split of the shared data."""
    return evaluate(pred_NHWT, SHARED, split)


def reference_job(splits: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Pool job: :func:`reference_ef` of each test split of the shared data."""
    return {split: reference_ef(SHARED, split) for split in splits}


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
