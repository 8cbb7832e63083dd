"""Whether the numbers of one segmented cine can be trusted: the measurement every door reports, with its verdict.

:func:`measure_cine` is the one call that the bundle's inference, MONAI Label and the MONAI Deploy app make: it
measures the cine (:func:`scripts.clinical.cine_report` on the largest LV component of each frame, with the period
of the images) and adds ``quality = {"verdict": "ok" | "review" | "reject", "reasons": [...], "checks": {...}}``:

- ``reject``: the cine is not something this bundle can measure (not ultrasound, Doppler, no LV in most frames, no
  beating heart, no accepted beat): no EF leaves the bundle as a measurement.
- ``review``: the numbers exist but something a reader must know about makes them doubtful (the LV curve does not
  follow the heart, the beats disagree, an odd LV shape or place, low network confidence, the memory drifting from
  the images (:mod:`scripts.memory_check`), a broken header): they are
  reported with the reasons, and marked as such wherever they go.
- ``ok``: none of the checks fired.

Each check's threshold is a module constant; ``docs/clinical.md`` ("Verdict") gives where each comes from
(``bench/trust.py`` measures them on the synthetic test splits and the real cines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .cycle import LONG_CINE_FRAMES, LONG_CINE_S, motion_period
from .evaluation import largest_component
from .report import cine_report

# --- thresholds (docs/clinical.md "Verdict") ---------------------------------------------------------------------
MIN_FRAMES = 6  # fewer frames cannot hold an ED and an ES
MIN_DURATION_S = 0.2  # shorter than any systole
MEASURABLE_REJECT, MEASURABLE_REVIEW = 0.5, 0.9  # fraction of frames with a measurable LV
FRAGMENTED_REVIEW, FRAGMENTED_REJECT = 0.05, 0.5  # median fraction of LV pixels outside the largest component
AREA_FRACTION_RANGE = (0.01, 0.35)  # median LV area / image area (the ultrasound region when the DICOM has one)
MIN_ELONGATION = 1.3  # median long axis / width of the LV (an apical view; a short-axis ring is ~1)
MAX_AXIS_ANGLE_DEG = 50.0  # the LV long axis (base -> apex) within this of the beam (up, toward the probe)
ONE_CYCLE_S = 1.2  # a cine this long holds a cycle at 50 beats/min: without a period its single pair is doubtful
MIN_CURVE_PERIODICITY = 0.3  # the LV curve's correlation one image period later
MAX_BEAT_EF_SD = 8.0  # EF points between accepted beats
MIN_CONFIDENCE_REVIEW, MIN_CONFIDENCE_REJECT = 0.85, 0.6  # median per-frame confidence (see lv_confidence)
MIN_MEMORY_AGREEMENT = 0.85  # LV Dice between the stepped mask and the same frame segmented alone (worst checked frame)
ABRUPT_FRAME_FACTOR = 4.0  # a frame differing from both neighbours this many times the median frame change
DOPPLER_REGION_TYPES = {2: "colour flow", 3: "PW spectral Doppler", 4: "CW spectral Doppler", 5: "Doppler mean trace"}


def largest_lv(labels_HWT: np.ndarray, lv_label: int = 1) -> np.ndarray:
    """``[H, W, T]`` labels with the LV of each frame reduced to its largest connected component (specks dropped)."""
    measured = np.array(labels_HWT, copy=True)
    for t in range(measured.shape[-1]):
        lv = measured[..., t] == lv_label
        measured[..., t][lv & ~largest_component(lv)] = 0
    return measured


def lv_confidence(probabilities_CHWT: Any, lv_label: int = 1) -> list[float]:
    """Per-frame confidence of the network in its LV: the soft Dice between the LV probability and its argmax mask.

    1.0 when every pixel's LV probability is 0 or 1; lower the more probability mass lies in an uncertain band or
    outside the mask. Frames without LV probability above 0.5 anywhere get 0.0.

    Args:
        probabilities_CHWT: ``[C, H, W, T]`` class probabilities (softmax over C).

    Returns:
        ``[T]`` confidences in [0, 1].
    """
    probs = np.asarray(probabilities_CHWT, dtype=np.float64)
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be [C, H, W, T], got shape {probs.shape}")
    lv = probs[lv_label]
    mask = (probs.argmax(axis=0) == lv_label).astype(np.float64)
    overlap = (lv * mask).sum(axis=(0, 1))
    total = lv.sum(axis=(0, 1)) + mask.sum(axis=(0, 1))
    return [float(2.0 * o / t) if t > 0 and m > 0 else 0.0 for o, t, m in zip(overlap, total, mask.sum(axis=(0, 1)))]


def abrupt_frames(image_HWT: np.ndarray) -> list[int]:
    """Frames that differ from both neighbours by ``ABRUPT_FRAME_FACTOR`` times the cine's median frame change.

    A corrupt or missing frame shows as one jump away and one back; a cut in the cine (a new view) is a single jump
    and is not listed.

    Args:
        image_HWT: ``[H, W, T]`` grey frames.
    """
    image = np.asarray(image_HWT, dtype=np.float32)
    if image.shape[-1] < 3:
        return []
    change = np.abs(np.diff(image, axis=-1)).mean(axis=(0, 1))  # [T - 1], change from frame t to t + 1
    limit = ABRUPT_FRAME_FACTOR * max(float(np.median(change)), 1e-4)
    return [t for t in range(1, image.shape[-1] - 1) if change[t - 1] > limit and change[t] > limit]


def _lv_shape(labels_HWT: np.ndarray, lv_label: int, frames: Sequence[int]) -> dict[str, float]:
    """Median elongation (major / minor axis) and long-axis angle from the beam (degrees) over ``frames``."""
    from skimage.measure import regionprops

    elongation, angle = [], []
    for t in frames:
        mask = labels_HWT[..., t] == lv_label  # one component per frame (largest_lv)
        if mask.sum() < 20:
            continue
        props = regionprops(mask.astype(np.uint8))[0]
        if props.axis_minor_length > 0:
            elongation.append(props.axis_major_length / props.axis_minor_length)
        # regionprops' orientation: angle between the row axis and the major axis, in (-pi/2, pi/2]
        angle.append(abs(math.degrees(props.orientation)))
    return {
        "lv_elongation": float(np.median(elongation)) if elongation else math.nan,
        "lv_axis_angle_deg": float(np.median(angle)) if angle else math.nan,
    }


def _apex_up(report: Mapping[str, Any], labels_HWT: np.ndarray, lv_label: int) -> float:
    """Fraction of the accepted (else all) ED/ES frames whose LV narrows upwards: its mean width over the top
    quarter of its rows is below the bottom quarter's (an apical LV: apex toward the probe, base below)."""
    frames = [b[k] for b in report["beats"] if b["accepted"] for k in ("ed", "es")] or [
        b[k] for b in report["beats"] for k in ("ed", "es")
    ]
    up = []
    for t in frames:
        widths = (labels_HWT[..., t] == lv_label).sum(axis=1)  # one component per frame (largest_lv)
        rows = np.nonzero(widths)[0]
        if len(rows) < 8:
            continue
        quarter = max(1, len(rows) // 4)
        up.append(widths[rows[:quarter]].mean() < widths[rows[-quarter:]].mean())
    return float(np.mean(up)) if up else math.nan


def source_reasons(meta: Mapping[str, Any], n_frames: int) -> list[tuple[str, str]]:
    """``[(severity, reason)]`` from the loader's ``meta``: modality, Doppler regions, timing, calibration, length."""
    found: list[tuple[str, str]] = []
    modality = meta.get("modality")
    if modality not in (None, "", "US"):
        found.append(("reject", f"Modality is {modality}, not US: not an ultrasound cine"))
    for region in meta.get("ultrasound_regions") or []:
        kind = DOPPLER_REGION_TYPES.get(int(region.get("data_type", 0)))
        if kind:
            found.append(("reject", f"the DICOM has a {kind} ultrasound region: LV volumes need a B-mode cine"))
            break
    if meta.get("frame_rate_problem"):
        found.append(("review", f"frame rate unknown ({meta['frame_rate_problem']}): heart rate and timing unchecked"))
    if meta.get("spacing_problem"):
        found.append(("review", str(meta["spacing_problem"])))
    rate = meta.get("frame_rate")
    rate = float(rate) if rate is not None and math.isfinite(float(rate)) and float(rate) > 0 else None
    if n_frames < MIN_FRAMES or (rate and n_frames / rate < MIN_DURATION_S):
        length = f"{n_frames} frames" + (f" ({n_frames / rate:.2f} s)" if rate else "")
        found.append(("reject", f"the cine ({length}) is too short to hold an ED and an ES"))
    return found


def cine_quality(
    report: Mapping[str, Any],
    labels_HWT: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    image_HWT: np.ndarray | None = None,
    confidence_T: Sequence[float] | None = None,
    measured_HWT: np.ndarray | None = None,
    memory_check: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict on one measured cine (see the module's docstring).

    Args:
        report: :func:`scripts.clinical.cine_report` of the cine.
        labels_HWT: ``[H, W, T]`` predicted labels as segmented (before keeping the largest LV component).
        meta: the loader's metadata (``format``, ``modality``, ``ultrasound_regions``, ``frame_rate``,
            ``frame_rate_problem``, ``spacing_problem``); ``None`` skips the source checks.
        image_HWT: ``[H, W, T]`` grey frames in [0, 1], for the abrupt-frame check.
        confidence_T: ``[T]`` per-frame network confidence (:func:`lv_confidence`).
        measured_HWT: :func:`largest_lv` of ``labels_HWT`` when the caller has it (computed otherwise).
        memory_check: :func:`scripts.memory_check.memory_check` of the cine (``{"frames", "lv_dice"}``), or
            ``None`` when it was not run (turned off, corrections given).

    Returns:
        ``{"verdict", "reasons": [str], "checks": {name: value}}``.
    """
    lv_label = int(report.get("lv_label", 1))
    n = int(report["n_frames"])
    found = source_reasons(meta or {}, n)
    checks: dict[str, Any] = {}
    volumes = np.asarray(report["volume_ml"], dtype=float)
    measurable = float(np.isfinite(volumes).mean()) if n else 0.0
    checks["measurable_fraction"] = measurable
    if measurable < MEASURABLE_REJECT:
        found.append(("reject", f"an LV is measurable in only {measurable:.0%} of the frames"))
    elif measurable < MEASURABLE_REVIEW:
        found.append(("review", f"an LV is measurable in only {measurable:.0%} of the frames"))
    measured = largest_lv(labels_HWT, lv_label) if measured_HWT is None else measured_HWT
    lv = labels_HWT == lv_label
    counts = lv.sum(axis=(0, 1)).astype(float)
    kept = (measured == lv_label).sum(axis=(0, 1)).astype(float)
    outside = np.where(counts > 0, 1.0 - kept / np.maximum(counts, 1.0), 0.0)
    checks["fragmented_fraction"] = float(np.median(outside))
    if checks["fragmented_fraction"] > FRAGMENTED_REJECT:
        found.append(
            ("reject", f"no single LV: {checks['fragmented_fraction']:.0%} of the mask is outside its main part")
        )
    elif checks["fragmented_fraction"] > FRAGMENTED_REVIEW:
        found.append(
            ("review", f"the LV mask is in pieces ({checks['fragmented_fraction']:.0%} outside its main part)")
        )
    area = float(np.median(kept)) / float(lv.shape[0] * lv.shape[1])
    checks["lv_area_fraction"] = area
    lo, hi = AREA_FRACTION_RANGE
    if measurable >= MEASURABLE_REJECT and not lo <= area <= hi:
        found.append(("review", f"the LV covers {area:.1%} of the image (plausible {lo:.0%}-{hi:.0%})"))
    present = [t for t in range(n) if kept[t] >= 20]
    checks.update(_lv_shape(measured, lv_label, present[:: max(1, len(present) // 12)]))
    if math.isfinite(checks["lv_elongation"]) and checks["lv_elongation"] < MIN_ELONGATION:
        found.append(
            ("review", f"the LV is not elongated (long/short axis {checks['lv_elongation']:.2f}): not an apical view?")
        )
    if math.isfinite(checks["lv_axis_angle_deg"]) and checks["lv_axis_angle_deg"] > MAX_AXIS_ANGLE_DEG:
        found.append(("review", f"the LV long axis lies {checks['lv_axis_angle_deg']:.0f} degrees from the beam"))
    checks["apex_up_fraction"] = _apex_up(report, measured, lv_label) if report["beats"] else math.nan
    if checks["apex_up_fraction"] < 0.5:
        found.append(("review", "the LV apex points away from the probe: not an apical view?"))
    rate = report.get("frame_rate")
    long_cine = (n / rate >= LONG_CINE_S) if rate else n >= LONG_CINE_FRAMES
    checks["period_frames"] = report.get("period_frames")
    checks["periodicity"] = report.get("periodicity")
    if report.get("period_frames") is None and long_cine:
        found.append(("reject", "no cardiac cycle in the images or the LV curve of a cine longer than a cycle"))
    elif report.get("period_frames") is None and rate and n / rate >= ONE_CYCLE_S:
        found.append(
            (
                "review",
                f"no cardiac period found in a {n / rate:.1f} s cine (a cycle at 50 beats/min lasts {ONE_CYCLE_S} s): "
                "its ED and ES are the curve's extremes, not checked against a beat",
            )
        )
    elif report.get("period_source") == "images" and not report["periodicity"] >= MIN_CURVE_PERIODICITY:
        found.append(
            (
                "review",
                f"the LV curve does not follow the heart's period in the images ({report['period_frames']} frames; "
                f"correlation {report['periodicity']:.2f} < {MIN_CURVE_PERIODICITY})",
            )
        )
    if report["beats_accepted"] == 0:
        found.append(("reject", f"no accepted beat ({report.get('reason')})"))
    elif report["beats_accepted"] >= 2 and report["ef_sd"] > MAX_BEAT_EF_SD:
        found.append(("review", f"the accepted beats disagree (EF SD {report['ef_sd']:.1f} points)"))
    rejected = len(report["beats"]) - report["beats_accepted"]
    if report["beats_accepted"] and rejected > report["beats_accepted"]:
        found.append(("review", f"{rejected} of {len(report['beats'])} beats rejected"))
    if confidence_T is not None and len(confidence_T):
        checks["confidence"] = float(np.median(confidence_T))
        if checks["confidence"] < MIN_CONFIDENCE_REJECT:
            found.append(("reject", f"the network is unsure of the LV (confidence {checks['confidence']:.2f})"))
        elif checks["confidence"] < MIN_CONFIDENCE_REVIEW:
            found.append(("review", f"the network is unsure of the LV (confidence {checks['confidence']:.2f})"))
    found += _memory_reasons(memory_check, checks)
    if image_HWT is not None:
        jumps = abrupt_frames(image_HWT)
        checks["abrupt_frames"] = jumps
        if jumps:
            shown = ", ".join(map(str, jumps[:5])) + (" ..." if len(jumps) > 5 else "")
            found.append(("review", f"frame(s) {shown} differ abruptly from their neighbours (corrupt frames?)"))
    severities = [s for s, _ in found]
    verdict = "reject" if "reject" in severities else "review" if "review" in severities else "ok"
    return {"verdict": verdict, "reasons": [r for _, r in found], "checks": checks}


def _memory_reasons(memory_check: Mapping[str, Any] | None, checks: dict[str, Any]) -> list[tuple[str, str]]:
    """``checks["memory_agreement"]`` (the worst checked frame's LV Dice, stepped vs alone; None when not checked)
    and ``checks["memory_checked_frames"]``; "review" below :data:`MIN_MEMORY_AGREEMENT`."""
    frames = list((memory_check or {}).get("frames") or [])
    dice = [float(d) for d in (memory_check or {}).get("lv_dice") or []]
    if len(frames) != len(dice):
        raise ValueError(f"memory_check has {len(frames)} frames and {len(dice)} Dice values")
    checks["memory_checked_frames"] = frames
    checks["memory_agreement"] = min(dice) if dice else None
    if not dice or min(dice) >= MIN_MEMORY_AGREEMENT:
        return []
    worst = int(np.argmin(dice))
    low = [f for f, d in zip(frames, dice) if d < MIN_MEMORY_AGREEMENT]
    return [
        (
            "review",
            f"the memory drifted from the images: frame {frames[worst]} segmented alone differs from the stepped "
            f"mask (LV Dice {dice[worst]:.2f} < {MIN_MEMORY_AGREEMENT}; {len(low)} of {len(frames)} checked frames)",
        )
    ]


def measure_cine(
    labels_HWT: np.ndarray,
    spacing_mm: Sequence[float] | None,
    frame_rate: float | None = None,
    meta: Mapping[str, Any] | None = None,
    image_HWT: np.ndarray | None = None,
    confidence_T: Sequence[float] | None = None,
    lv_label: int = 1,
    memory_check: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure one segmented cine and judge it: what every door (bundle, MONAI Label, MONAI Deploy) reports.

    The LV of each frame is reduced to its largest connected component (specks dropped); volumes are single-plane
    Simpson in ml with ``spacing_mm`` (``None``: unknown, measured in pixel units so EF stays measurable, and
    ``volumes_calibrated`` is False); beats use the period of the images when ``image_HWT`` is given.

    Args:
        labels_HWT: ``[H, W, T]`` labels on the image's grid.
        spacing_mm: (row, column) mm, or ``None`` when unknown.
        frame_rate: frames per second, or ``None``.
        meta: the loader's metadata for the source checks.
        image_HWT: ``[H, W, T]`` grey frames in [0, 1] on the labels' grid.
        confidence_T: ``[T]`` per-frame network confidence.
        memory_check: :func:`scripts.memory_check.memory_check` of the cine, or ``None``.

    Returns:
        the :func:`scripts.clinical.cine_report` dict plus ``volumes_calibrated``, ``image_period_frames`` and
        ``quality`` (:func:`cine_quality`).
    """
    labels = np.asarray(labels_HWT)
    if labels.ndim != 3:
        raise ValueError(f"labels must be [H, W, T], got shape {labels.shape}")
    measured = largest_lv(labels, lv_label)
    calibrated = spacing_mm is not None and all(math.isfinite(float(s)) and float(s) > 0 for s in spacing_mm)
    period = None
    if image_HWT is not None:
        if np.shape(image_HWT) != labels.shape:
            raise ValueError(f"image shape {np.shape(image_HWT)} differs from the labels' {labels.shape}")
        period = motion_period(image_HWT, frame_rate)
    report = cine_report(
        measured,
        tuple(float(s) for s in spacing_mm) if calibrated else (1.0, 1.0),
        frame_rate=frame_rate,
        lv_label=lv_label,
        image_period=period,
    )
    report["volumes_calibrated"] = calibrated
    report["image_period_frames"] = period
    report["quality"] = cine_quality(report, labels, meta, image_HWT, confidence_T, measured, memory_check)
    return report


def measurement_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The measurement as every door reports it (the bundle's ``<stem>_seg.json``, MONAI Label's result JSON).

    Keys: ``quality``, ``ed_es_pairs`` (accepted beats), ``ed_index``/``es_index``, ``edv_ml``/``esv_ml`` (means over
    accepted beats; ``None`` when the volumes are not calibrated), ``ef_percent`` (mean over accepted beats),
    ``ef_sd``, ``beats_accepted``, ``period_frames``, ``heart_rate_bpm``, ``beats`` (every beat with ``accepted`` and
    ``reason``; volumes ``None`` when not calibrated) and ``reason`` (why there is no EF).

    Args:
        report: :func:`measure_cine` of the cine.
    """
    calibrated = bool(report.get("volumes_calibrated", True))
    beats = [b if calibrated else {**b, "edv_ml": None, "esv_ml": None} for b in report["beats"]]
    return {
        "quality": report["quality"],
        "ed_es_pairs": [[b["ed"], b["es"]] for b in report["beats"] if b["accepted"]],
        "ed_index": report["ed_index"],
        "es_index": report["es_index"],
        "edv_ml": report["edv_ml"] if calibrated else None,
        "esv_ml": report["esv_ml"] if calibrated else None,
        "ef_percent": report["ef_percent"],
        "ef_sd": report["ef_sd"],
        "beats_accepted": report["beats_accepted"],
        "period_frames": report["period_frames"],
        "heart_rate_bpm": report["heart_rate_bpm"],
        "beats": beats,
        "reason": report["reason"],
    }
