"""Per-cine clinical report (LV area/volume curve, ED/ES, EDV, ESV, EF) and contour overlays (PNG sheet, GIF)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image, ImageDraw
from skimage.draw import polygon_perimeter
from skimage.measure import find_contours

from ._io import atomic_paths, json_safe
from .cycle import analyse_beats
from .plots import volume_curve_figure
from .volumes import lv_volume_details

STRUCTURE_NAMES = {1: "LV", 2: "myocardium", 3: "LA"}
STRUCTURE_COLOURS = {1: (230, 50, 50), 2: (40, 200, 60), 3: (60, 140, 255)}  # CAMUS label -> RGB
REPORT_KEYS = ("n_frames", "frame_rate", "time_s", "area_mm2", "volume_ml", "beats", "edv_ml", "esv_ml", "ef_percent")


def _as_hwt(array, name: str) -> np.ndarray:
    """``[H, W, T]`` view of an ``[H, W, T]`` or channel-first ``[1, H, W, T]`` array."""
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be [H, W, T] or [1, H, W, T] (time last), got shape {np.shape(array)}")
    return arr


def cine_report(
    labels_HWT,
    spacing_mm,
    frame_rate: float | None = None,
    lv_label: int = 1,
    n_disks: int = 20,
    image_period: int | None = None,
) -> dict:
    """Clinical numbers of one segmented cine: per-frame LV area and volume, beats, EDV, ESV and EF.

    Volumes are single-plane Simpson (method of disks) per frame; beats come from the volume curve
    (:func:`scripts.clinical.cycle.analyse_beats`: period, ED/ES per beat, each accepted or rejected with a
    reason); EDV/ESV/EF at the top level are the means over the accepted beats.

    Args:
        labels_HWT: ``[H, W, T]`` (or channel-first ``[1, H, W, T]``, the data contract's layout) integer labels,
            time last; the LV cavity is ``lv_label``.
        spacing_mm: (row, column) pixel spacing in mm.
        frame_rate: frames per second (for ``time_s`` and the plausible heart rates), if known.
        lv_label: label value of the LV cavity (1 in CAMUS numbering).
        image_period: the period of the cine's images in frames (:func:`scripts.clinical.motion_period`), if known.

    Returns:
        dict with ``n_frames``, ``frame_rate``, ``spacing_mm``, ``lv_label``, ``volume_method``, ``n_disks``,
        ``time_s`` (``[T]`` or ``None``), ``area_mm2``/``volume_ml``/``length_mm`` (``[T]`` floats, NaN where not
        measurable), ``frame_reasons`` (``{frame: reason}`` for NaN volumes), the keys of ``analyse_beats``
        (``period_frames``, ``period_source``, ``periodicity``, ``heart_rate_bpm``, ``beats`` with ``accepted`` and
        ``reason``, ``beats_accepted``, ``ef_percent``, ``ef_sd``, ``edv_ml``, ``esv_ml``, ``reason``) and
        ``ed_index``/``es_index`` (first accepted beat, else first beat, else ``None``).
    """
    labels = _as_hwt(labels_HWT, "labels")
    spacing = tuple(float(s) for s in np.asarray(spacing_mm, dtype=float).ravel())
    n_frames = labels.shape[-1]
    results = [lv_volume_details(labels[..., t] == lv_label, spacing, n_disks=n_disks) for t in range(n_frames)]
    volumes = [r.volume_ml for r in results]
    frame_reasons = {t: r.reason for t, r in enumerate(results) if r.reason is not None}
    beats = analyse_beats(volumes, frame_rate=frame_rate, frame_problems=frame_reasons, image_period=image_period)
    first = ([b for b in beats["beats"] if b["accepted"]] or beats["beats"] or [{"ed": None, "es": None}])[0]
    return {
        "n_frames": n_frames,
        "frame_rate": frame_rate,
        "spacing_mm": list(spacing),
        "lv_label": lv_label,
        "volume_method": "simpson_single_plane",
        "n_disks": n_disks,
        "time_s": [t / frame_rate for t in range(n_frames)] if frame_rate else None,
        "area_mm2": [r.area_mm2 if r.area_mm2 > 0 else math.nan for r in results],
        "volume_ml": volumes,
        "length_mm": [r.length_mm for r in results],
        "frame_reasons": frame_reasons,
        **beats,
        "ed_index": first["ed"],
        "es_index": first["es"],
    }


def write_cine_report(report: dict, out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write a ``cine_report`` as ``<stem>_lv_curve.csv``, ``<stem>_report.json`` and ``<stem>_lv_curve.png``.

    The CSV has columns ``frame, time_s, area_mm2, volume_ml`` (empty cells for unknown time and NaN values). All
    three files appear together or not at all (written to temporary names, then renamed).

    Returns:
        ``{"csv": path, "json": path, "png": path}``.
    """
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"not a cine_report dict: missing keys {missing}")
    n = report["n_frames"]
    if len(report["area_mm2"]) != n or len(report["volume_ml"]) != n:
        raise ValueError(f"report curves have {len(report['area_mm2'])}/{len(report['volume_ml'])} values, not {n}")
    out = Path(out_dir)
    paths = {
        "csv": out / f"{stem}_lv_curve.csv",
        "json": out / f"{stem}_report.json",
        "png": out / f"{stem}_lv_curve.png",
    }
    pairs = [(b["ed"], b["es"]) for b in report["beats"] if b.get("accepted", True)]
    rejected = [(b["ed"], b["es"]) for b in report["beats"] if not b.get("accepted", True)]
    ef = report["ef_percent"]
    title = f"{stem}: EF {ef:.1f} %" if math.isfinite(ef) else f"{stem}: EF not measurable"
    if "beats_accepted" in report:
        title += f" ({report['beats_accepted']} of {len(report['beats'])} beats)"
    verdict = (report.get("quality") or {}).get("verdict")
    if verdict and verdict != "ok":
        title += f", {verdict.upper()}"
    fig = volume_curve_figure(report["volume_ml"], pairs, report["frame_rate"], title=title, rejected_pairs=rejected)
    FigureCanvasAgg(fig)
    times = report["time_s"] or [None] * n

    def cell(v) -> str:
        return "" if v is None or not math.isfinite(v) else f"{v:.6g}"

    with atomic_paths(paths["csv"], paths["json"], paths["png"]) as (tmp_csv, tmp_json, tmp_png):
        with open(tmp_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["frame", "time_s", "area_mm2", "volume_ml"])
            for t in range(n):
                writer.writerow([t, cell(times[t]), cell(report["area_mm2"][t]), cell(report["volume_ml"][t])])
        with open(tmp_json, "w") as f:
            json.dump(json_safe(report), f, indent=2, allow_nan=False)
        fig.savefig(tmp_png, dpi=120, format="png")
    return paths


def _frame_marks(ed_es_pairs) -> dict[int, str]:
    marks: dict[int, str] = {}
    for ed, es in ed_es_pairs or []:
        marks[int(ed)] = "ED"
        marks[int(es)] = "ES"
    return marks


def _sheet_frames(n_frames: int, max_frames: int, marks: dict[int, str]) -> list[int]:
    """Up to ``max_frames`` frame indices spread over the cine, the ED/ES frames always included."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    chosen = set(list(marks)[:max_frames])
    for t in np.linspace(0, n_frames - 1, max_frames).round().astype(int):
        if len(chosen) >= max_frames:
            break
        chosen.add(int(t))
    return sorted(chosen)


# the overlays' palette: GREY_LEVELS greys, then the structures' colours and the caption's yellow
GREY_LEVELS = 251
CAPTION_INDEX = GREY_LEVELS + len(STRUCTURE_COLOURS)
OVERLAY_PALETTE = [v for g in np.linspace(0, 255, GREY_LEVELS).round().astype(int) for v in (g, g, g)]
OVERLAY_PALETTE += [v for colour in STRUCTURE_COLOURS.values() for v in colour] + [255, 255, 0]
MARKED_INDEX = GREY_LEVELS  # ED/ES captions in the sheet: the LV's red


def _palette_frame(image_HW: np.ndarray, labels_HW: np.ndarray, scale: int) -> np.ndarray:
    """``[H*scale, W*scale]`` uint8 indices into :data:`OVERLAY_PALETTE`: the grey frame (``GREY_LEVELS`` levels)
    with the structure contours drawn in their colours."""
    grey = np.clip(np.nan_to_num(image_HW), 0.0, 1.0)
    index = np.rint(grey * (GREY_LEVELS - 1)).astype(np.uint8)
    index = np.repeat(np.repeat(index, scale, axis=0), scale, axis=1)
    for k, label in enumerate(STRUCTURE_COLOURS):
        mask = labels_HW == label
        if not mask.any():
            continue
        for contour in find_contours(np.pad(mask, 1).astype(np.float32), 0.5):
            pts = (contour - 1.0 + 0.5) * scale - 0.5
            rr, cc = polygon_perimeter(pts[:, 0].round(), pts[:, 1].round(), shape=index.shape, clip=False)
            index[rr, cc] = GREY_LEVELS + k
    return index


def _picture(index_HW: np.ndarray, caption: str, colour: int, band: int = 0) -> Image.Image:
    """A palette image of ``index_HW`` under a ``band``-pixel caption strip (0: the caption over the picture)."""
    picture = Image.new("P", (index_HW.shape[1], index_HW.shape[0] + band), GREY_LEVELS - 1)
    picture.putpalette(OVERLAY_PALETTE)
    picture.paste(Image.fromarray(index_HW, "P"), (0, band))
    ImageDraw.Draw(picture).text((4, 2 if band else 4), caption, fill=colour)
    return picture


def save_overlay(
    image_HWT,
    labels_HWT,
    out_dir: str | os.PathLike,
    stem: str,
    ed_es_pairs=None,
    frame_rate: float | None = None,
    max_frames: int = 16,
    columns: int = 4,
) -> dict[str, Path]:
    """Predicted contours over the frames: ``<stem>_overlay.png`` (contact sheet) and ``<stem>_overlay.gif``.

    Contours (``skimage.measure.find_contours``) are coloured per structure: 1 LV red, 2 myocardium green,
    3 LA blue, over the grey frame (251 levels). The GIF shows every frame, enlarged to about 256 pixels a side when
    smaller, with its number (and ED/ES) in yellow; the sheet up to ``max_frames`` frames at about 256 pixels a side
    (every n-th pixel of larger frames), ``columns`` a row, each under its caption (``frame t``, ED/ES in red).
    Both are drawn with Pillow on one palette, and appear together or not at all.

    Args:
        image_HWT: ``[H, W, T]`` (or ``[1, H, W, T]``) grey frames, float in [0, 1] (clipped).
        labels_HWT: integer labels of the same ``[H, W, T]`` shape.
        ed_es_pairs: ``[(ed, es), ...]`` to mark, e.g. ``report["beats"]`` pairs.
        frame_rate: GIF playback rate in frames per second (12.5 if unknown).
        max_frames: most frames on the contact sheet (spread over the cine, ED/ES included).

    Returns:
        ``{"png": path, "gif": path}``.

    Raises:
        ValueError: the shapes differ or are not ``[H, W, T]``; nothing is written then.
    """
    image = _as_hwt(image_HWT, "image")
    labels = _as_hwt(labels_HWT, "labels")
    if image.shape != labels.shape:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape} ([H, W, T])")
    n_frames = image.shape[-1]
    marks = _frame_marks(ed_es_pairs)
    h, w = image.shape[:2]
    scale = max(1, 256 // max(h, w))
    indices = [_palette_frame(image[..., t], labels[..., t], scale) for t in range(n_frames)]
    gif_frames = [_picture(indices[t], f"{t}" + (f" {marks[t]}" if t in marks else ""), CAPTION_INDEX) for t in
                  range(n_frames)]  # fmt: skip
    frames = _sheet_frames(n_frames, max_frames, marks)
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    band, gap, step = 16, 4, max(1, math.ceil(max(h, w) / 256))
    small = (image[::step, ::step], labels[::step, ::step]) if step > 1 else None
    tile_h, tile_w = (indices[0].shape if small is None else small[0].shape[:2]) if n_frames else (0, 0)
    tile_h += band
    sheet = Image.new("P", (cols * tile_w + (cols - 1) * gap, rows * tile_h + (rows - 1) * gap), GREY_LEVELS - 1)
    sheet.putpalette(OVERLAY_PALETTE)
    for k, t in enumerate(frames):
        caption = f"frame {t}" + (f" {marks[t]}" if t in marks else "")
        index = indices[t] if small is None else _palette_frame(small[0][..., t], small[1][..., t], 1)
        tile = _picture(index, caption, MARKED_INDEX if t in marks else 0, band=band)
        sheet.paste(tile, ((k % cols) * (tile_w + gap), (k // cols) * (tile_h + gap)))
    duration_ms = int(round(1000.0 / (frame_rate or 12.5)))
    out = Path(out_dir)
    paths = {"png": out / f"{stem}_overlay.png", "gif": out / f"{stem}_overlay.gif"}
    with atomic_paths(paths["png"], paths["gif"]) as (tmp_png, tmp_gif):
        sheet.save(tmp_png, format="PNG")
        gif_frames[0].save(
            tmp_gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=duration_ms, loop=0
        )
    return paths
