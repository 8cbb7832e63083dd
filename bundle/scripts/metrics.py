"""Segmentation metrics of echo cines on annotated frames: Dice, IoU, HD, HD95 and ASD per structure, ED/ES split.

Protocol (the re-release's, see ``docs``): one *atomic item* is one (case, structure, annotated frame). Masks are
binary per structure (``label == k``). Dice and IoU come from MONAI ``DiceMetric`` / ``MeanIoU``; HD, HD95 and ASD
from MONAI ``HausdorffDistanceMetric`` (``percentile=None`` and ``95``) and ``SurfaceDistanceMetric(symmetric=True)``
with the pixel spacing, so distances are in mm. MONAI 1.6 computes them exactly as the re-release defines them:

- surface = ``mask XOR binary_erosion(mask)`` (scipy, default cross-shaped element, outside the image = background;
  MONAI crops to the union's bounding box with a one-pixel margin first, which does not change the surface);
- distances from every surface pixel of one mask to the nearest surface pixel of the other, Euclidean, each axis
  scaled by its spacing ``(row_mm, col_mm)``;
- HD = max of the two directed maxima; HD95 = max of the two directed 95th percentiles (linear interpolation,
  ``torch.quantile``, the same as numpy's default); ASD = mean of the pooled distances of both directions.

``tests/test_metrics.py`` checks this agreement against a direct scipy implementation of the re-release's formulas.

Empty masks (the re-release's rules; MONAI itself returns NaN or inf there, which is overridden):

- both empty: every metric is N/A (NaN); the item is counted in ``n_both_empty`` and left out of the means;
- exactly one empty: Dice = IoU = 0 and HD = HD95 = ASD = the field-of-view diagonal
  ``sqrt(((H - 1) * row_mm) ** 2 + ((W - 1) * col_mm) ** 2)``.

Spacing: ``(row_mm, col_mm)``; when it is unknown (NaN or None, e.g. EchoNet AVIs) distances are in pixels
(spacing 1, 1) and every row says ``unit = "px"``.

Frames whose ``label_frames`` flag is False are never scored (they are not background). Phase: ``"ED"`` for the
frame ``ed_index``, ``"ES"`` for ``es_index`` (``"ED"`` wins if both are the same frame), ``"other"`` otherwise.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.data import decollate_batch
from monai.handlers import from_engine
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric

from scripts.clinical._io import atomic_paths, json_safe

logger = logging.getLogger(__name__)

DEFAULT_STRUCTURES: dict[int, str] = {1: "lv", 2: "myo", 3: "la"}
METRIC_NAMES = ("dice", "iou", "hd", "hd95", "asd")
CSV_COLUMNS = ("case_id", "structure", "frame", "phase", "occluded", "dice", "iou", "hd", "hd95", "asd", "unit")
PHASES = ("all", "ED", "ES")  # summary blocks; "occluded"/"visible" are added when the rows carry occlusion flags
PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "metrics_summary.json"
PROTOCOL = (
    "atomic item = case x structure x annotated frame; MONAI DiceMetric, MeanIoU, HausdorffDistanceMetric "
    "(max and 95th percentile, symmetric), SurfaceDistanceMetric(symmetric=True) = ASD; surfaces = mask XOR "
    "erosion; distances in mm from the pixel spacing (px where unknown); both masks empty -> N/A (excluded, "
    "n_both_empty); one empty -> Dice = IoU = 0, HD = HD95 = ASD = field-of-view diagonal; means are macro means "
    "over atomic items; std is the sample SD (ddof=1); dice_pooled = 2 sum|P&R| / (sum|P| + sum|R|) (EchoNet's)"
)

StructureMap = Mapping[int, str] | Mapping[str, str]


def _structures(structures: StructureMap | None) -> dict[int, str]:
    """``{label: name}`` with integer labels (JSON configs give string keys)."""
    items = (structures or DEFAULT_STRUCTURES).items()
    out = {int(k): str(v) for k, v in items}
    if 0 in out:
        raise ValueError("structures must not contain the background label 0")
    return out


def _numpy(x: Any) -> np.ndarray:
    """A numpy array from a tensor (any device, MetaTensor included), an array or a sequence."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(x)


def resolve_spacing(spacing: Any) -> tuple[tuple[float, float] | None, str]:
    """``((row_mm, col_mm), "mm")`` for a known spacing, ``(None, "px")`` for None or any NaN; a number is isotropic.

    Raises:
        ValueError: the spacing has not two entries, or an entry is finite but not positive.
    """
    if spacing is None:
        return None, "px"
    sp = _numpy(spacing).astype(np.float64).ravel()
    if sp.size == 1:  # one number: isotropic (or NaN: unknown)
        sp = np.repeat(sp, 2)
    if sp.size != 2:
        raise ValueError(f"spacing must be (row_mm, col_mm), got {sp.tolist()}")
    if np.isnan(sp).any():
        return None, "px"
    if not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing must be positive and finite (or NaN when unknown), got {sp.tolist()}")
    return (float(sp[0]), float(sp[1])), "mm"


def fov_diagonal(shape_HW: Sequence[int], spacing: tuple[float, float] | None) -> float:
    """Field-of-view diagonal ``sqrt(((H-1) row)^2 + ((W-1) col)^2)``, in mm (or px when ``spacing`` is None)."""
    sy, sx = spacing or (1.0, 1.0)
    return math.hypot((shape_HW[0] - 1) * sy, (shape_HW[1] - 1) * sx)


def _batch_metrics(
    pred_NHW: np.ndarray, ref_NHW: np.ndarray, spacing: Any, structures: dict[int, str]
) -> list[dict[str, dict[str, Any]]]:
    """Metrics of N frames at once: one ``{name: {metric: value}}`` dict per frame (see ``frame_metrics``)."""
    if pred_NHW.shape != ref_NHW.shape or pred_NHW.ndim != 3:
        raise ValueError(
            f"pred and reference must have the same [N, H, W] shape, got {pred_NHW.shape}, {ref_NHW.shape}"
        )
    sp, unit = resolve_spacing(spacing)
    labels = list(structures)
    pred_NSHW = np.stack([pred_NHW == k for k in labels], axis=1)
    ref_NSHW = np.stack([ref_NHW == k for k in labels], axis=1)
    n_pred, n_ref = pred_NSHW.sum(axis=(2, 3)), ref_NSHW.sum(axis=(2, 3))
    n_inter = (pred_NSHW & ref_NSHW).sum(axis=(2, 3))
    # The structure channels are the one-hot channels of interest (no background channel is passed).
    kwargs = {"include_background": True, "reduction": "none"}
    yp, y = torch.from_numpy(pred_NSHW).float(), torch.from_numpy(ref_NSHW).float()
    # Distances only where both masks are non-empty (the other items follow the rules below); each such
    # (frame, structure) pair is one single-channel item [M, 1, H, W] of MONAI's batch.
    both_NS = (n_pred > 0) & (n_ref > 0)
    yp_d, y_d = yp[torch.from_numpy(both_NS)][:, None], y[torch.from_numpy(both_NS)][:, None]
    values_NS = {k: np.full(both_NS.shape, np.nan) for k in METRIC_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; the rules below handle them
        values_NS["dice"] = _numpy(DiceMetric(ignore_empty=False, **kwargs)(yp, y)).astype(np.float64)
        values_NS["iou"] = _numpy(MeanIoU(ignore_empty=False, **kwargs)(yp, y)).astype(np.float64)
        if both_NS.any():
            distances = {
                "hd": HausdorffDistanceMetric(percentile=None, **kwargs)(yp_d, y_d, spacing=sp),
                "hd95": HausdorffDistanceMetric(percentile=95, **kwargs)(yp_d, y_d, spacing=sp),
                "asd": SurfaceDistanceMetric(symmetric=True, **kwargs)(yp_d, y_d, spacing=sp),
            }
            for k, v in distances.items():
                values_NS[k][both_NS] = _numpy(v).astype(np.float64).ravel()
    diagonal = fov_diagonal(pred_NHW.shape[1:], sp)
    out: list[dict[str, dict[str, Any]]] = []
    for n in range(len(pred_NHW)):
        frame: dict[str, dict[str, Any]] = {}
        for s, name in enumerate(structures.values()):
            has_pred, has_ref = bool(n_pred[n, s]), bool(n_ref[n, s])
            item: dict[str, Any] = {k: float(values_NS[k][n, s]) for k in METRIC_NAMES}
            if not has_pred and not has_ref:
                item, status = dict.fromkeys(METRIC_NAMES, math.nan), "both_empty"
            elif has_pred != has_ref:
                item = {"dice": 0.0, "iou": 0.0, "hd": diagonal, "hd95": diagonal, "asd": diagonal}
                status = "one_empty"
            else:
                status = "ok"
            item.update(
                unit=unit, status=status, n_pred=int(n_pred[n, s]), n_ref=int(n_ref[n, s]), n_inter=int(n_inter[n, s])
            )
            frame[name] = item
        out.append(frame)
    return out


def frame_metrics(
    pred_HW: Any, ref_HW: Any, spacing: Any, structures: StructureMap | None = None
) -> dict[str, dict[str, Any]]:
    """Dice, IoU, HD, HD95 and ASD of one frame, per structure.

    Args:
        pred_HW: ``[H, W]`` integer label map (0 background, CAMUS labels), numpy or torch.
        ref_HW: ``[H, W]`` integer reference label map.
        spacing: ``(row_mm, col_mm)``; None or NaN -> distances in pixels.
        structures: ``{label: name}``, default ``{1: "lv", 2: "myo", 3: "la"}``.

    Returns:
        ``{name: {"dice", "iou", "hd", "hd95", "asd": float, "unit": "mm" | "px",
        "status": "ok" | "one_empty" | "both_empty", "n_pred", "n_ref", "n_inter": pixel counts}}``;
        Dice and IoU in [0, 1], distances in ``unit``; the empty-mask rules of the module docstring apply.
    """
    pred, ref = _numpy(pred_HW), _numpy(ref_HW)
    if pred.ndim != 2 or pred.shape != ref.shape:
        raise ValueError(f"frame_metrics needs two [H, W] label maps of one shape, got {pred.shape} and {ref.shape}")
    return _batch_metrics(pred[None], ref[None], spacing, _structures(structures))[0]


def _phase(frame: int, ed_index: int | None, es_index: int | None) -> str:
    if ed_index is not None and frame == ed_index:
        return "ED"
    if es_index is not None and frame == es_index:
        return "ES"
    return "other"


def _optional_index(value: Any) -> int | None:
    """An ED/ES index as int, or None when absent or negative (unknown)."""
    if value is None:
        return None
    arr = _numpy(value).ravel()
    if arr.size != 1 or not np.isfinite(arr[0]):
        return None
    idx = int(arr[0])
    return idx if idx >= 0 else None


def case_metrics(
    pred_HWT: Any,
    label_HWT: Any,
    label_frames_T: Any,
    spacing: Any,
    ed_index: int | None,
    es_index: int | None,
    structures: StructureMap | None = None,
    occluded_T: Any = None,
) -> list[dict[str, Any]]:
    """Metrics of one cine on its annotated frames: one row per (structure, annotated frame).

    Args:
        pred_HWT: ``[H, W, T]`` (or ``[1, H, W, T]``) integer label map predicted by the network.
        label_HWT: ``[H, W, T]`` (or ``[1, H, W, T]``) integer ground truth.
        label_frames_T: ``[T]`` bool, True where the frame is annotated; other frames are never scored.
        spacing: ``(row_mm, col_mm)``; None or NaN -> pixels.
        ed_index, es_index: ED and ES frame indices in the clip (None or negative when unknown).
        structures: ``{label: name}``, default ``{1: "lv", 2: "myo", 3: "la"}``.
        occluded_T: ``[T]`` flags, 1 where part of the LV border is not visible in the image (the synthetic hard
            split), 0 where it is, -1 (or None for the whole cine) unknown.

    Returns:
        Rows ``{"structure", "frame", "phase" ("ED" | "ES" | "other"), "occluded" (True | False | None), "dice",
        "iou", "hd", "hd95", "asd", "unit", "status", "n_pred", "n_ref", "n_inter"}``, frames in time order,
        structures in ``structures`` order.
    """
    pred, ref = _squeeze_channel(_numpy(pred_HWT), "pred"), _squeeze_channel(_numpy(label_HWT), "label")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and label {ref.shape} must have the same [H, W, T] shape")
    frames = _numpy(label_frames_T).astype(bool).ravel()
    if frames.size != ref.shape[-1]:
        raise ValueError(f"label_frames has {frames.size} entries for {ref.shape[-1]} frames")
    annotated = np.flatnonzero(frames)
    if annotated.size == 0:
        return []
    occluded = np.full(frames.size, -1) if occluded_T is None else _numpy(occluded_T).astype(np.int64).ravel()
    if occluded.size != frames.size:
        raise ValueError(f"occluded has {occluded.size} entries for {frames.size} frames")
    ed, es = _optional_index(ed_index), _optional_index(es_index)
    per_frame = _batch_metrics(
        np.moveaxis(pred[..., annotated], -1, 0),
        np.moveaxis(ref[..., annotated], -1, 0),
        spacing,
        _structures(structures),
    )
    rows = []
    for name in _structures(structures).values():
        for t, metrics in zip(annotated.tolist(), per_frame):
            flag = None if occluded[t] < 0 else bool(occluded[t])
            rows.append({"structure": name, "frame": t, "phase": _phase(t, ed, es), "occluded": flag, **metrics[name]})
    return rows


def _squeeze_channel(arr: np.ndarray, name: str) -> np.ndarray:
    """``[H, W, T]`` from ``[H, W, T]`` or ``[1, H, W, T]``."""
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be [H, W, T] or [1, H, W, T] (time last), got shape {arr.shape}")
    return arr


def _stats(values: Iterable[float]) -> dict[str, float | int]:
    """``{"mean", "std" (ddof=1), "median", "n"}`` over the finite values (NaN where there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return {"mean": float(np.mean(v)), "std": std, "median": float(np.median(v)), "n": int(v.size)}


def _block(rows: list[dict[str, Any]], with_distances: bool = True) -> dict[str, Any]:
    """Summary of a set of atomic items."""
    both = sum(1 for r in rows if _is_nan(r.get("dice")))
    out: dict[str, Any] = {
        "n_items": len(rows),
        "n_both_empty": both,
        "n_one_empty": sum(1 for r in rows if r.get("status") == "one_empty"),
    }
    for m in METRIC_NAMES:
        if with_distances or m in ("dice", "iou"):
            out[m] = _stats(float(r[m]) for r in rows)
        else:
            out[m] = _stats([])
    counts = [(r.get("n_inter"), r.get("n_pred"), r.get("n_ref")) for r in rows]
    if rows and all(c[0] is not None for c in counts):
        denominator = sum(c[1] + c[2] for c in counts)
        out["dice_pooled"] = 2.0 * sum(c[0] for c in counts) / denominator if denominator else math.nan
    else:
        out["dice_pooled"] = math.nan
    return out


def _is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _summary_by_structure(rows: list[dict[str, Any]], with_distances: bool) -> dict[str, Any]:
    names = list(dict.fromkeys(r["structure"] for r in rows))
    subsets = {
        "all": rows,
        "ED": [r for r in rows if r["phase"] == "ED"],
        "ES": [r for r in rows if r["phase"] == "ES"],
    }
    if any(r.get("occluded") is not None for r in rows):  # the hard split's flags: read the hidden frames alone
        subsets["occluded"] = [r for r in rows if r.get("occluded") is True]
        subsets["visible"] = [r for r in rows if r.get("occluded") is False]
    return {
        "structures": {
            name: {p: _block([r for r in sub if r["structure"] == name], with_distances) for p, sub in subsets.items()}
            for name in names
        },
        "overall": {p: _block(sub, with_distances) for p, sub in subsets.items()},
    }


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of atomic-item rows (from ``case_metrics``, optionally with ``case_id``).

    Returns:
        ``{"protocol": str, "unit": "mm" | "px" | "mixed" | None, "n_cases": int, "n_items": int,
        "structures": {name: {phase: block}}, "overall": {phase: block}}`` with phase in ``"all"`` (every annotated
        frame), ``"ED"``, ``"ES"`` (and ``"occluded"``/``"visible"`` when rows carry occlusion flags: the frames
        where part of the LV border is hidden, and the others) and ``block = {"n_items", "n_both_empty",
        "n_one_empty", "dice", "iou", "hd", "hd95", "asd": {"mean", "std", "median", "n"}, "dice_pooled"}``.
        Means are macro means over atomic items; both-empty items are left out (``n`` counts the items used).
        ``"overall"`` pools all structures. When rows mix mm and px, the distance stats of the main blocks are empty
        (``n`` = 0) and ``"by_unit"`` holds one full summary per unit.
    """
    rows = [dict(r) for r in rows]
    units = sorted({r["unit"] for r in rows})
    unit = units[0] if len(units) == 1 else ("mixed" if units else None)
    out: dict[str, Any] = {
        "protocol": PROTOCOL,
        "unit": unit,
        "n_cases": len({r.get("case_id") for r in rows}),
        "n_items": len(rows),
        **_summary_by_structure(rows, with_distances=unit != "mixed"),
    }
    if unit == "mixed":
        out["by_unit"] = {u: summarize([r for r in rows if r["unit"] == u]) for u in units}
    return out


def _csv_value(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if math.isnan(x) else f"{float(x):.6g}"
    return str(x)


def write_metric_reports(case_rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics_per_case.csv`` and ``metrics_summary.json`` into ``out_dir``, both or neither.

    Args:
        case_rows: rows of ``case_metrics`` with a ``case_id`` key added.
        out_dir: folder (created if absent).

    Returns:
        ``{"csv": path, "json": path}``. The CSV has exactly the columns ``CSV_COLUMNS`` (one row per case x
        structure x annotated frame; NaN written as ``nan``; ``occluded`` 1, 0 or empty when unknown); the JSON
        is ``summarize(case_rows)`` (NaN -> null).
    """
    rows = [dict(r) for r in case_rows]
    missing = [c for c in CSV_COLUMNS if rows and c not in rows[0] and c != "occluded"]
    if missing:
        raise KeyError(f"metric rows lack the columns {missing}")
    summary = json_safe(summarize(rows))
    out = Path(out_dir)
    targets = {"csv": out / PER_CASE_CSV, "json": out / SUMMARY_JSON}
    with atomic_paths(*targets.values()) as (csv_tmp, json_tmp):
        with open(csv_tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for r in rows:
                writer.writerow([_csv_value(r.get(c)) for c in CSV_COLUMNS])
        with open(json_tmp, "w") as f:
            json.dump(summary, f, indent=2, allow_nan=False)
            f.write("\n")
    return targets


# --------------------------------------------------------------------------------------------------------------------
# Ignite pieces for a MONAI SupervisedEvaluator


def _as_label_map(x: Any, name: str) -> np.ndarray:
    """``[H, W, T]`` labels from ``[1, H, W, T]`` (label map) or ``[K, H, W, T]`` (one-hot, probabilities, logits)."""
    arr = _numpy(x)
    if arr.ndim != 4:
        raise ValueError(f"{name} must be channel-first [C, H, W, T] per sample, got shape {arr.shape}")
    return arr[0] if arr.shape[0] == 1 else arr.argmax(axis=0)


def _per_sample(output: Any, batch: Any) -> list[dict[str, Any]]:
    """Per-sample dicts of ``engine.state.output`` with the keys of ``engine.state.batch`` that it lacks.

    Accepts decollated lists of dicts (MONAI ``decollate=True``) or batch dicts (first dimension = batch).
    """
    if isinstance(output, Mapping):
        output = decollate_batch(dict(output), detach=True)
    if isinstance(batch, Mapping):
        batch = decollate_batch(dict(batch), detach=True)
    if not isinstance(output, list):
        raise TypeError(f"engine output must be a dict or a list of dicts, got {type(output).__name__}")
    if not isinstance(batch, list) or len(batch) != len(output):
        batch = [{}] * len(output)
    return [{**b, **o} for b, o in zip(batch, output)]


class EchoSegmentationMetricSaver:
    """Computes ``case_metrics`` for every sample an evaluator sees; writes the reports when the run completes.

    Reads per sample, from ``engine.state.output`` and then ``engine.state.batch``: ``pred`` (``[1, H, W, T]``
    labels or ``[K, H, W, T]`` one-hot/logits, arg-maxed), ``label`` (same forms), ``label_frames`` ``[T]`` bool,
    ``spacing`` ``(row_mm, col_mm)`` (NaN -> px), ``ed_index``, ``es_index``, ``occluded`` ``[T]`` (optional, see
    ``case_metrics``) and ``case_id`` (else the label's
    ``filename_or_obj``). With several processes the rows are gathered and rank 0 writes. After the run
    ``self.rows``, ``self.summary`` and ``self.paths`` hold the results.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        structures: StructureMap | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        frames_key: str = "label_frames",
        spacing_key: str = "spacing",
        ed_key: str = "ed_index",
        es_key: str = "es_index",
        case_id_key: str = "case_id",
        occluded_key: str = "occluded",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.structures = _structures(structures)
        self.pred_key, self.label_key, self.frames_key = pred_key, label_key, frames_key
        self.spacing_key, self.ed_key, self.es_key, self.case_id_key = spacing_key, ed_key, es_key, case_id_key
        self.occluded_key = occluded_key
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self.paths: dict[str, Path] | None = None
        self._n_samples = 0

    def attach(self, engine: Engine) -> None:
        """Register on STARTED (reset), ITERATION_COMPLETED (compute) and COMPLETED (write)."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self.summary, self.paths, self._n_samples = [], None, None, 0

    def _case_id(self, sample: Mapping[str, Any]) -> str:
        if sample.get(self.case_id_key) is not None:
            return str(sample[self.case_id_key])
        meta = getattr(sample.get(self.label_key), "meta", {}) or {}
        if meta.get("filename_or_obj"):
            return Path(str(meta["filename_or_obj"])).name
        return f"case{self._n_samples:05d}"

    def iteration_completed(self, engine: Engine) -> None:
        for sample in _per_sample(engine.state.output, engine.state.batch):
            case_id = self._case_id(sample)
            self._n_samples += 1
            if sample.get(self.frames_key) is None:
                raise KeyError(f"{case_id}: no '{self.frames_key}' in the evaluator's output or batch")
            rows = case_metrics(
                _as_label_map(sample[self.pred_key], f"{case_id}: {self.pred_key}"),
                _as_label_map(sample[self.label_key], f"{case_id}: {self.label_key}"),
                sample[self.frames_key],
                sample.get(self.spacing_key),
                sample.get(self.ed_key),
                sample.get(self.es_key),
                self.structures,
                sample.get(self.occluded_key),
            )
            self.rows.extend({"case_id": case_id, **r} for r in rows)

    def completed(self, engine: Engine | None = None) -> None:
        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
            if torch.distributed.get_rank() != 0:
                return
        self.summary = summarize(rows)
        self.paths = write_metric_reports(rows, self.output_dir)
        logger.info("segmentation metrics of %d cases written to %s", self.summary["n_cases"], self.output_dir)


class AnnotatedFrameDice(Metric):
    """Mean Dice over annotated frames and foreground structures, for ``key_val_metric`` (checkpoint selection).

    Each (sample, structure, annotated frame) is one item; the empty-mask rules of the module apply (both empty:
    skipped; one empty: 0). ``output_transform`` maps the per-sample dicts (``engine.state.output`` merged with the
    ``engine.state.batch`` keys it lacks, so ``label_frames`` is found) to ``(pred, label, label_frames)``: lists of
    ``[C, H, W, T]``, ``[C, H, W, T]`` and ``[T]`` per sample, or batch tensors ``[B, ...]``. ``compute()`` is a float
    in [0, 1] (NaN if every item was both-empty); it is summed over processes.
    """

    def __init__(
        self,
        structures: StructureMap | None = None,
        output_transform: Callable = from_engine(["pred", "label", "label_frames"]),  # noqa: B008
        device: str | torch.device = "cpu",
    ) -> None:
        self.labels = list(_structures(structures))
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)
        self._updated = False

    def iteration_completed(self, engine: Engine) -> None:  # reads the batch keys too, unlike ignite's default
        samples = _per_sample(engine.state.output, engine.state.batch)
        if samples:  # none when the case failed (scripts.evaluation.CaseEvaluator)
            self.update(self._output_transform(samples))

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        preds, labels, frames = output
        for pred, label, flags in zip(preds, labels, frames):
            self._updated = True
            keep = np.flatnonzero(_numpy(flags).astype(bool).ravel())
            p, r = _as_label_map(pred, "pred")[..., keep], _as_label_map(label, "label")[..., keep]
            for k in self.labels:
                pk, rk = p == k, r == k
                inter, n_p, n_r = (pk & rk).sum(axis=(0, 1)), pk.sum(axis=(0, 1)), rk.sum(axis=(0, 1))
                scored = (n_p + n_r) > 0
                self._sum += float((2.0 * inter[scored] / (n_p[scored] + n_r[scored])).sum())
                self._count += int(scored.sum())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if not self._updated and int(self._count) == 0:
            raise NotComputableError("AnnotatedFrameDice needs at least one sample before compute()")
        return float(self._sum / self._count) if int(self._count) else math.nan
