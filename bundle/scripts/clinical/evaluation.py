"""Ejection fraction from predicted masks during evaluation, against references, with agreement plots.

Per evaluated clip (ordered ED -> ES as the loaders deliver CAMUS and EchoNet clips): EDV and ESV by single-plane
Simpson (method of disks) on the LV (label 1) of the ED and ES frames, of the prediction and of the ground-truth
masks, and EF = 100 (EDV - ESV) / EDV. Per CAMUS patient with both views: biplane Simpson. Predicted LV masks keep
their largest connected component per frame before measuring (specks would make the LV contour ambiguous).

Two references are reported and always named: ``gt_masks`` (the same method on the ground-truth masks: measures
segmentation error only) and ``dataset`` (the EF stored with the data: CAMUS ``Info_*.cfg`` EF, EchoNet
``FileList.csv`` EF, the synthetic phantom's exact EF). Files: ``ef_per_case.csv``, ``ef_agreement.json``,
``ef_correlation.png`` and ``ef_bland_altman.png`` (prediction vs ``gt_masks``), plus ``*_dataset.png`` plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as connected_components

from ._io import atomic_paths, json_safe
from .plots import plot_bland_altman, plot_correlation
from .stats import agreement
from .volumes import biplane_volume, ejection_fraction, lv_volume

logger = logging.getLogger(__name__)

EF_COLUMNS = (
    "case_id",
    "patient",
    "view",
    "ed_index",
    "es_index",
    "pred_edv_ml",
    "pred_esv_ml",
    "pred_ef",
    "gt_edv_ml",
    "gt_esv_ml",
    "gt_ef",
    "dataset_ef",
    "volume_unit",
)


def largest_component(mask_HW: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask ``[H, W]`` (empty stays empty)."""
    components = connected_components(mask_HW.astype(bool), connectivity=2)
    if components.max() == 0:
        return mask_HW.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def clip_ef(
    pred_HWT: np.ndarray,
    label_HWT: np.ndarray,
    spacing: tuple[float, float],
    ed_index: int,
    es_index: int,
    lv_label: int = 1,
) -> dict[str, float]:
    """EDV, ESV and EF of one clip from the prediction and the ground truth (single-plane Simpson).

    Args:
        pred_HWT, label_HWT: ``[H, W, T]`` label maps.
        spacing: (row, col) mm; NaN spacing (EchoNet AVI) is replaced by (1, 1): EF is unchanged for square
            pixels, and volumes are then in cubic pixels / 1000 (``volume_unit`` says which).
        ed_index, es_index: frames of the clip.
    """
    known = all(math.isfinite(float(s)) and float(s) > 0 for s in spacing)
    sp = tuple(float(s) for s in spacing) if known else (1.0, 1.0)
    out: dict[str, Any] = {"volume_unit": "mL" if known else "px^3/1000"}
    for prefix, labels, clean in (("pred", pred_HWT, True), ("gt", label_HWT, False)):
        volumes = []
        for frame in (ed_index, es_index):
            mask = labels[..., frame] == lv_label
            volumes.append(lv_volume(largest_component(mask) if clean else mask, sp))
        out[f"{prefix}_edv_ml"], out[f"{prefix}_esv_ml"] = volumes
        out[f"{prefix}_ef"] = ejection_fraction(*volumes)
    return out


class EjectionFractionSaver:
    """Ignite handler for a MONAI evaluator: EF per clip and per patient (biplane), agreement, plots.

    Reads per sample (``engine.state.output`` merged with ``engine.state.batch``): ``pred``, ``label``
    (``[1, H, W, T]`` maps or ``[K, H, W, T]`` one-hot/logits), ``spacing``, ``ed_index``, ``es_index``, ``ef``
    (dataset EF, optional), ``case_id``, ``patient``, ``view``.
    """

    def __init__(self, output_dir: str | os.PathLike, lv_label: int = 1) -> None:
        self.output_dir = Path(output_dir)
        self.lv_label = int(lv_label)
        self.rows: list[dict[str, Any]] = []
        self.masks: dict[str, dict[str, Any]] = defaultdict(dict)
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Any = None) -> None:
        self.rows, self.masks, self.summary = [], defaultdict(dict), None

    def iteration_completed(self, engine: Any) -> None:
        from scripts.metrics import _as_label_map, _numpy, _per_sample

        for sample in _per_sample(engine.state.output, engine.state.batch):
            pred = _as_label_map(sample["pred"], "pred")
            label = _as_label_map(sample["label"], "label")
            spacing = tuple(float(s) for s in _numpy(sample.get("spacing", [math.nan, math.nan])).ravel()[:2])
            ed, es = int(_numpy(sample.get("ed_index", 0))), int(_numpy(sample.get("es_index", pred.shape[-1] - 1)))
            ed, es = ed % pred.shape[-1], es % pred.shape[-1]
            row = {
                "case_id": str(sample.get("case_id", len(self.rows))),
                "patient": str(sample.get("patient", "")),
                "view": str(sample.get("view", "")),
                "ed_index": ed,
                "es_index": es,
                "dataset_ef": _float(sample.get("ef")),
            }
            row.update(clip_ef(pred, label, spacing, ed, es, self.lv_label))
            self.rows.append(row)
            if row["patient"] and row["view"] in ("2CH", "4CH"):
                self.masks[row["patient"]][row["view"]] = (pred, label, spacing, ed, es)

    def completed(self, engine: Any = None) -> None:
        import torch.distributed as dist

        rows, masks = self.rows, dict(self.masks)
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (rows, masks))
            rows = [r for part in gathered for r in part[0]]
            masks = {k: v for part in gathered for k, v in part[1].items()}
            if dist.get_rank() != 0:
                return
        biplane = [self._biplane(patient, views) for patient, views in masks.items() if len(views) == 2]
        self.summary = self.write(rows, [b for b in biplane if b is not None])

    def _biplane(self, patient: str, views: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {"patient": patient}
        for prefix, index in (("pred", 0), ("gt", 1)):
            volumes = []
            for phase in (3, 4):  # ED, ES frame positions in the stored tuple
                m2, m4 = (views[v][index][..., views[v][phase]] == self.lv_label for v in ("2CH", "4CH"))
                if prefix == "pred":
                    m2, m4 = largest_component(m2), largest_component(m4)
                volumes.append(biplane_volume(m2, views["2CH"][2], m4, views["4CH"][2]))
            out[f"{prefix}_edv_ml"], out[f"{prefix}_esv_ml"] = volumes
            out[f"{prefix}_ef"] = ejection_fraction(*volumes)
        return out

    def write(self, rows: list[dict[str, Any]], biplane: list[dict[str, Any]]) -> dict[str, Any]:
        pred = np.array([r["pred_ef"] for r in rows], dtype=float)
        summary: dict[str, Any] = {
            "method": "single-plane Simpson (20 disks) per clip on the ED and ES frames; biplane per patient",
            "postprocessing": "largest connected LV component per predicted frame",
            "n_clips": len(rows),
            "per_clip": {
                "vs_gt_masks": agreement(pred, np.array([r["gt_ef"] for r in rows], dtype=float)),
                "vs_dataset": agreement(pred, np.array([r["dataset_ef"] for r in rows], dtype=float)),
                "gt_masks_vs_dataset": agreement(
                    np.array([r["gt_ef"] for r in rows], dtype=float),
                    np.array([r["dataset_ef"] for r in rows], dtype=float),
                ),
            },
        }
        if biplane:
            summary["biplane_per_patient"] = {
                "n_patients": len(biplane),
                "vs_gt_masks": agreement(
                    np.array([b["pred_ef"] for b in biplane], dtype=float),
                    np.array([b["gt_ef"] for b in biplane], dtype=float),
                ),
                "patients": biplane,
            }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        targets = (self.output_dir / "ef_per_case.csv", self.output_dir / "ef_agreement.json")
        with atomic_paths(*targets) as (csv_tmp, json_tmp):
            with open(csv_tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(EF_COLUMNS)
                for r in rows:
                    writer.writerow([_csv(r.get(c)) for c in EF_COLUMNS])
            json_tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
        gt = np.array([r["gt_ef"] for r in rows], dtype=float)
        dataset = np.array([r["dataset_ef"] for r in rows], dtype=float)
        for reference, suffix, name in ((gt, "", "EF from ground-truth masks"), (dataset, "_dataset", "dataset EF")):
            if np.isfinite(pred).sum() >= 3 and np.isfinite(reference).sum() >= 3:
                plot_correlation(pred, reference, self.output_dir / f"ef_correlation{suffix}.png", quantity="LVEF")
                plot_bland_altman(pred, reference, self.output_dir / f"ef_bland_altman{suffix}.png", quantity="LVEF")
                logger.info("EF agreement plots against %s written to %s", name, self.output_dir)
        stats = summary["per_clip"]["vs_gt_masks"]
        logger.info("EF of %d clips vs ground-truth masks: r %.3f, bias %.2f, SD %.2f", len(rows), *_values(stats))
        return summary


def _values(stats: dict[str, Any]) -> tuple[float, float, float]:
    return tuple(float(stats.get(k, math.nan)) for k in ("r", "bias", "sd"))


def _float(value: Any) -> float:
    try:
        return float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return math.nan


def _csv(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)
