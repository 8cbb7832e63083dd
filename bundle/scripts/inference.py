"""Inference outputs: find the cine loops to segment and write, per input, a label NIfTI with the input's geometry,
a small JSON (frames, ED/ES, LV area per frame) and the clinical report (LV volume curve, EF, overlays).
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform

from scripts.clinical._io import atomic_paths, json_safe
from scripts.clinical.evaluation import largest_component
from scripts.data.errors import EchoDataError
from scripts.data.transforms import aspect_padding
from scripts.data.video_io import load_cine

logger = logging.getLogger(__name__)

CINE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".avi", ".mp4", ".dcm", ".dicom")
LABEL_SUFFIXES = ("_gt.nii.gz", "_gt.nii", "_gt.mhd", "_seg.nii.gz", "_label.nii.gz")


def output_stem(path: str | Path) -> str:
    """File name without the cine suffix: ``a/b/patient1_4CH.nii.gz`` -> ``patient1_4CH``."""
    name = Path(path).name
    for suffix in CINE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def find_cines(dataset_dir: str | Path | None = None, datalist: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The cine loops to segment, as a MONAI datalist ``[{"image": path}, ...]``.

    Args:
        dataset_dir: folder searched recursively for NIfTI, MHD, AVI/MP4 and DICOM files (ground-truth files named
            ``*_gt.*``/``*_seg.*``/``*_label.*`` are skipped). Relative ``datalist`` entries are taken from here.
        datalist: explicit list of files (overrides the search).

    Raises:
        FileNotFoundError: the folder or a listed file does not exist, or nothing to segment was found.
    """
    if isinstance(datalist, str):  # "['a.dcm','b.avi']" or "a.dcm,b.avi" as typed on a command line
        text = datalist.strip()
        datalist = ast.literal_eval(text) if text.startswith("[") else [f for f in text.split(",") if f.strip()]
    if datalist:
        base = Path(dataset_dir) if dataset_dir else Path.cwd()
        files = [Path(f) if Path(f).is_absolute() else base / f for f in datalist]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"datalist files not found: {', '.join(missing)}")
        return [{"image": str(f), "source": str(f)} for f in files]
    if dataset_dir is None or not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"dataset_dir is not a folder: {dataset_dir}")
    found = []
    for path in sorted(Path(dataset_dir).rglob("*")):
        name = path.name.lower()
        if not path.is_file() or name.endswith(LABEL_SUFFIXES) or name.startswith("."):
            continue
        if name.endswith(CINE_SUFFIXES) or (path.suffix == "" and _is_dicom(path)):
            found.append({"image": str(path), "source": str(path)})
    if not found:
        raise FileNotFoundError(f"{dataset_dir}: no cine loop found (looked for {', '.join(CINE_SUFFIXES)})")
    return found


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def resize_labels(labels_HWT: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer label cine ``[h, w, T]`` to ``[height, width, T]``."""
    tensor = torch.as_tensor(np.ascontiguousarray(labels_HWT)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(height, width), mode="nearest-exact")
    return resized[0].permute(1, 2, 0).to(torch.uint8).numpy()


def restore_labels(
    labels_hwt: np.ndarray, height: int, width: int, spacing: Sequence[float] | None, keep_aspect: bool
) -> np.ndarray:
    """Network-resolution labels ``[h, w, T]`` back onto the input's ``[height, width, T]`` pixel grid.

    Undoes :class:`scripts.data.ResizeCined`: with ``keep_aspect`` the labels are resized to the padded frame that
    :func:`scripts.data.aspect_padding` gives for the input's shape and ``spacing`` (row mm, col mm; NaN = unknown),
    and the padding is cut off; without it they are resized straight to ``height x width``.
    """
    if not keep_aspect:
        return resize_labels(labels_hwt, height, width)
    top, bottom, left, right = aspect_padding(height, width, spacing, labels_hwt.shape[:2])
    padded = resize_labels(labels_hwt, height + top + bottom, width + left + right)
    return np.ascontiguousarray(padded[top : top + height, left : left + width])


def label_nifti_like_input(labels_HWT: np.ndarray, source: str | Path, meta: Mapping[str, Any]) -> nib.Nifti1Image:
    """A NIfTI of the labels with the input's geometry.

    NIfTI inputs: the same array layout (CAMUS stores x, y, t), shape and affine as the input file. Other inputs
    (DICOM, AVI, MHD): an ``H x W x T`` array with affine ``diag(row mm, col mm, frame time s)`` (1 where unknown),
    of the region that was segmented (the ultrasound region when the DICOM declares one; see ``crop`` in the JSON).
    """
    source = Path(source)
    if source.name.lower().endswith((".nii", ".nii.gz")):
        reference = nib.load(str(source))
        data = np.transpose(labels_HWT, (1, 0, 2))
        if data.shape[: len(reference.shape)] != reference.shape[:3]:
            data = data.reshape(reference.shape)
        header = reference.header.copy()
        header.set_data_dtype(np.uint8)
        image = nib.Nifti1Image(data.astype(np.uint8), reference.affine, header)
        return image
    row, col = (float(s) if math.isfinite(float(s)) else 1.0 for s in meta["spacing"])
    frame_time = meta.get("frame_time_ms", math.nan)
    frame_s = float(frame_time) / 1000.0 if frame_time and math.isfinite(float(frame_time)) else 1.0
    image = nib.Nifti1Image(labels_HWT.astype(np.uint8), np.diag([row, col, frame_s, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    return image


class SaveCineResultd(MapTransform):
    """Write the results of one segmented cine (use in the inference ``postprocessing`` after ``AsDiscreted``).

    Reads ``d["pred"]`` (``[1, h, w, T]`` labels at network resolution) and the input path from ``d["source"]``
    (set by :func:`find_cines`) or the image's ``filename_or_obj``; reloads the input to get its geometry; writes
    into ``output_dir``:

    - ``<stem>_seg.nii.gz``: labels with the input's geometry (see :func:`label_nifti_like_input`);
    - ``<stem>_seg.json``: frames, frame rate, spacing, ED/ES (per beat), LV area (mm^2, or px when the spacing is
      unknown) per frame, EDV/ESV/EF (single-plane Simpson);
    - with ``clinical=True``: the LV curve CSV/PNG and report JSON of :func:`scripts.clinical.write_cine_report`
      and the contour overlays (PNG contact sheet and GIF) of :func:`scripts.clinical.save_overlay`.

    ``keep_aspect`` must match the ``ResizeCined`` of the preprocessing (see :func:`restore_labels`). Nothing is
    written for an input that fails; the error names the file.
    """

    def __init__(
        self,
        output_dir: str | Path,
        keys: Sequence[Hashable] = ("pred",),
        image_key: str = "image",
        lv_label: int = 1,
        clinical: bool = True,
        overlay: bool = True,
        keep_aspect: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.keep_aspect = keep_aspect
        self.image_key = image_key
        self.lv_label = int(lv_label)
        self.clinical = clinical
        self.overlay = overlay
        self.written: list[dict[str, str]] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)
        source = d.get("source") or (image.meta["filename_or_obj"] if hasattr(image, "meta") else None)
        if not source:
            raise KeyError("SaveCineResultd needs the input path in 'source' or in the image's filename_or_obj")
        for key in self.key_iterator(d):
            d[f"{key}_files"] = self.write(d[key], source)
        return d

    def write(self, pred: Any, source: str | Path) -> dict[str, str]:
        from scripts import clinical

        source = Path(source)
        original, meta = load_cine(source)
        pred_hwt = np.asarray(torch.as_tensor(pred).detach().cpu()).astype(np.uint8)
        if pred_hwt.ndim == 4:
            pred_hwt = pred_hwt[0]
        if pred_hwt.shape[-1] != original.shape[-1]:
            raise EchoDataError(source, f"prediction has {pred_hwt.shape[-1]} frames, input has {original.shape[-1]}")
        labels = restore_labels(pred_hwt, original.shape[0], original.shape[1], meta["spacing"], self.keep_aspect)
        stem = output_stem(source)
        spacing = tuple(float(s) for s in meta["spacing"])
        known = bool(meta.get("spacing_known", all(math.isfinite(s) for s in spacing)))
        measured = labels.copy()  # measurements use the largest LV component of each frame (specks are dropped)
        for t in range(measured.shape[-1]):
            lv = measured[..., t] == self.lv_label
            measured[..., t][lv & ~largest_component(lv)] = 0
        report = clinical.cine_report(
            measured,
            spacing if known else (1.0, 1.0),
            frame_rate=_finite(meta.get("frame_rate")),
            lv_label=self.lv_label,
        )
        area_key = "area_mm2" if known else "area_px"
        summary = {
            "input": str(source),
            "format": meta.get("format"),
            "frames": int(labels.shape[-1]),
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "crop": meta.get("crop"),
            "spacing_mm": list(spacing) if known else None,
            "frame_rate": _finite(meta.get("frame_rate")),
            "ed_es_pairs": [[b["ed"], b["es"]] for b in report["beats"]],
            "ed_index": report["ed_index"],
            "es_index": report["es_index"],
            area_key: [float((measured[..., t] == self.lv_label).sum()) for t in range(labels.shape[-1])]
            if not known
            else report["area_mm2"],
            "edv_ml": report["edv_ml"] if known else None,
            "esv_ml": report["esv_ml"] if known else None,
            "ef_percent": report["ef_percent"],
            "reason": report["reason"],
            "lv_postprocessing": "largest connected LV component per frame (measurements only; the NIfTI is raw)",
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        nifti_path = self.output_dir / f"{stem}_seg.nii.gz"
        json_path = self.output_dir / f"{stem}_seg.json"
        nifti = label_nifti_like_input(labels, source, meta)
        with atomic_paths(nifti_path, json_path) as (nifti_tmp, json_tmp):
            nib.save(nifti, str(nifti_tmp))
            json_tmp.write_text(json.dumps(json_safe(summary), indent=2))
        files = {"label": str(nifti_path), "summary": str(json_path)}
        if self.clinical:
            written = clinical.write_cine_report(report, self.output_dir, stem)
            files.update({k: str(v) for k, v in dict(written).items()} if isinstance(written, Mapping) else {})
        if self.overlay:
            pairs = [(b["ed"], b["es"]) for b in report["beats"]]
            overlay = clinical.save_overlay(
                original, labels, self.output_dir, stem, ed_es_pairs=pairs, frame_rate=_finite(meta.get("frame_rate"))
            )
            files.update({k: str(v) for k, v in dict(overlay).items()} if isinstance(overlay, Mapping) else {})
        logger.info("segmented %s (%d frames): %s", source.name, labels.shape[-1], nifti_path)
        self.written.append(files)
        return files


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
