"""Aggregation over seeds, the Markdown tables (one per test split), the machine and the JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model as cpu_model_name

from .config import ROWS

# (key, header, format); per-row keys come from the training record, the others from one test split's metrics.
ROW_KEYS = ("params_m", "train_s", "cpu_fps", "val_dice")
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("params_m", "Params (M)", "{:.2f}"),
    ("dice", "Dice", "{:.3f}"),
    ("dice_occluded", "Dice occluded", "{:.3f}"),
    ("dice_visible", "Dice visible", "{:.3f}"),
    ("dice_reset", "Dice, state reset (same weights)", "{:.3f}"),
    ("dice_occluded_reset", "Dice occluded, state reset", "{:.3f}"),
    ("iou", "IoU", "{:.3f}"),
    ("hd95_mm", "HD95 (mm)", "{:.2f}"),
    ("hd95_occluded_mm", "HD95 occluded (mm)", "{:.2f}"),
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
OCCLUSION_KEYS = ("dice_occluded", "dice_visible", "hd95_occluded_mm", "dice_occluded_reset")
SPLIT_KEYS = tuple(c[0] for c in COLUMNS if c[0] not in ROW_KEYS) + ("ef_mae", "n_frames_occluded")
NO_SD = ("params_m", "cpu_fps", "area_change_gt_mm2")
# paired per seed: a memory row's Dice minus its own weights' Dice with the state reset before every frame
GAIN_KEYS = {"memory_gain": ("dice", "dice_reset"), "memory_gain_occluded": ("dice_occluded", "dice_occluded_reset")}


def stat(values: list[Any]) -> dict[str, float]:
    """``{"mean", "sd", "n"}`` of the finite values (sd with ddof 1; NaN where undefined)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean = float(np.mean(finite)) if finite else math.nan
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return {"mean": mean, "sd": sd, "n": len(finite)}


def aggregate(runs: list[dict[str, Any]], splits: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per row over seeds: ``entry[key]`` (training keys) and ``entry["test"][split][key]`` as :func:`stat`, plus
    failures. A run contributes to a split's statistics once that split's evaluation is in (``run["test"]``)."""
    out = []
    for spec in ROWS:
        mine = [r for r in runs if r["row"] == spec.name]
        if not mine:
            continue
        ok = [r for r in mine if not r.get("failed")]
        entry: dict[str, Any] = {
            "row": spec.name,
            "label": spec.label,
            "kind": spec.kind,
            "n_seeds": len(ok),
            "failed": [{"seed": r["seed"], "error": r["error"]} for r in mine if r.get("failed")],
        }
        for key in ROW_KEYS:
            entry[key] = stat([r.get(key) for r in ok])
        entry["test"] = {
            split: {key: stat([r.get("test", {}).get(split, {}).get(key) for r in ok]) for key in SPLIT_KEYS}
            for split in splits
        }
        for split in splits:  # the memory's worth per seed (same weights, state reset), then over seeds
            for gain, (with_memory, reset) in GAIN_KEYS.items():
                pairs = [r.get("test", {}).get(split, {}) for r in ok]
                entry["test"][split][gain] = stat([_difference(p.get(with_memory), p.get(reset)) for p in pairs])
        out.append(entry)
    return out


def _difference(a: Any, b: Any) -> float | None:
    """``a - b``, or None when either is missing."""
    return None if a is None or b is None else float(a) - float(b)


def has_occlusion(summary: list[dict[str, Any]], split: str) -> bool:
    """Whether any row scored occluded frames on ``split`` (then its table shows the occlusion columns)."""
    return any(e["test"][split]["dice_occluded"]["n"] > 0 for e in summary)


def markdown_table(summary: list[dict[str, Any]], split: str) -> str:
    """One row per model on one test split; ``mean ± sd`` where several seeds ran."""
    columns = [c for c in COLUMNS if c[0] not in OCCLUSION_KEYS or has_occlusion(summary, split)]
    header = ["Model"] + [c[1] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for entry in summary:
        if entry["n_seeds"] == 0:
            error = entry["failed"][0]["error"] if entry["failed"] else "no result"
            lines.append(f"| {entry['label']} | FAILED: {error.splitlines()[0][:150]} |" + " |" * (len(columns) - 1))
            continue
        cells = [entry["label"] + (f" ({len(entry['failed'])} seed(s) failed)" if entry["failed"] else "")]
        for key, _, fmt in columns:
            s = entry[key] if key in ROW_KEYS else entry["test"][split][key]
            if s["n"] == 0:
                cells.append("n/a")
            elif s["n"] > 1 and key not in NO_SD:
                cells.append(f"{fmt.format(s['mean'])} ± {fmt.format(s['sd']).lstrip('+')}")
            else:
                cells.append(fmt.format(s["mean"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(summary: list[dict[str, Any]], splits: tuple[str, ...]) -> dict[str, str]:
    """``{split: markdown table}``."""
    return {split: markdown_table(summary, split) for split in splits}


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
