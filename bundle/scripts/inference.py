"""Inference outputs: find the cine loops to segment and write, per input, a label NIfTI with the input's geometry,
a small JSON (frames, ED/ES, LV area per frame) and the clinical report (LV volume curve, EF, overlays).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from scripts.clinical._io import atomic_paths, json_safe
from scripts.corrections import put_drawn_frames
from scripts.data.errors import EchoDataError
from scripts.data.video_io import SOURCE_KEY, DecodedCine, load_cine
from scripts.geometry import (  # noqa: F401  (re-exported: scripts.inference.restore_labels etc. keep working)
    image_nifti_like_label,
    label_nifti_like_input,
    resize_labels,
    restore_labels,
)
from scripts.memory_check import MEMORY_CHECK_KEY

logger = logging.getLogger(__name__)

CINE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".avi", ".mp4", ".dcm", ".dicom")
LABEL_SUFFIXES = ("_gt.nii.gz", "_gt.nii", "_gt.mhd", "_seg.nii.gz", "_label.nii.gz")


def output_stem(path: str | Path) -> str:
    """File name without the cine suffix: ``a/b/patient1_4CH.nii.gz`` -> ``patient1_4CH``.

    A name without a cine suffix (a DICOM named by its UID, ``1.2.840.10008.77``) is kept whole.
    """
    name = Path(path).name
    for suffix in CINE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_names(files: Sequence[str | Path], root: str | Path | None) -> list[str]:
    """Unique output names (relative paths without the cine suffix) that mirror the inputs' folders.

    ``root/study1/IM0001.dcm`` -> ``study1/IM0001``, so that same-named files of different folders do not collide.
    Files outside ``root`` are named relative to their common folder. Files that differ only by their cine suffix
    (``a.nii`` and ``a.nii.gz``) keep it, as ``a_nii`` and ``a_nii_gz``.
    """
    absolute = [Path(os.path.abspath(f)) for f in files]
    base = Path(os.path.abspath(root)) if root else None
    inside = [base is not None and a.is_relative_to(base) for a in absolute]
    outside = [a.parent for a, i in zip(absolute, inside) if not i]
    common = Path(os.path.commonpath(outside)) if outside else None
    relative = [a.relative_to(base if i else common) for a, i in zip(absolute, inside)]
    names = [(r.parent / output_stem(r.name)).as_posix() for r in relative]
    counts = Counter(names)
    return [(r.parent / r.name.replace(".", "_")).as_posix() if counts[n] > 1 else n for r, n in zip(relative, names)]


def find_cines(
    dataset_dir: str | Path | None = None,
    datalist: Sequence[str] | str | None = None,
    exclude: str | Path | None = None,
    report_ignored: bool = False,
) -> list[dict[str, str]]:
    """The cine loops to segment, as a MONAI datalist ``[{"image": path, "source": path, "output_stem": name}, ...]``.

    ``output_stem`` is the input's path relative to ``dataset_dir`` without the cine suffix (``study1/IM0001``; see
    :func:`output_names`): :class:`SaveCineResultd` writes ``<output_dir>/<output_stem>_seg.nii.gz`` etc.

    Args:
        dataset_dir: folder searched recursively for NIfTI, MHD, AVI/MP4 and DICOM files (DICOM also by its header,
            whatever the name). Ground-truth files named ``*_gt.*``/``*_seg.*``/``*_label.*``, hidden files and
            MetaImage ``.raw``/``.zraw`` data files are left out. Relative ``datalist`` entries are taken from here.
        datalist: explicit list of files (overrides the search); a missing file is listed all the same (its loader
            names it).
        exclude: a folder whose files are never listed (the output folder, when it lies inside ``dataset_dir``).
        report_ignored: also list the other files of the searched folder (``.png``, ``.txt``, a ``DICOMDIR``) as
            ``{"image": path, "source": path, "ignored": reason}``, so that a batch run can report them.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder (without a datalist), or there is nothing to segment.
    """
    if isinstance(datalist, str):  # "['a.dcm','b.avi']" or "a.dcm,b.avi" as typed on a command line
        text = datalist.strip()
        datalist = ast.literal_eval(text) if text.startswith("[") else [f for f in text.split(",") if f.strip()]
    if datalist:
        base = Path(dataset_dir) if dataset_dir else Path.cwd()
        files = list(dict.fromkeys(Path(f) if Path(f).is_absolute() else base / f for f in datalist))
        return [{"image": str(f), "source": str(f), "output_stem": n} for f, n in zip(files, output_names(files, base))]
    if dataset_dir is None or not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"dataset_dir is not a folder: {dataset_dir}")
    skip = Path(os.path.abspath(exclude)) if exclude else None
    cines, ignored = [], []
    for path in sorted(Path(dataset_dir).rglob("*")):
        name = path.name.lower()
        if not path.is_file() or name.endswith(LABEL_SUFFIXES + (".raw", ".zraw")) or name.startswith("."):
            continue
        if skip is not None and Path(os.path.abspath(path)).is_relative_to(skip):
            continue
        if name == "dicomdir":
            ignored.append((path, "a DICOMDIR (the index of a DICOM folder), not a cine"))
        elif name.endswith(CINE_SUFFIXES) or _is_dicom(path):
            cines.append(path)
        else:
            kind = f"'{path.suffix}' files are" if path.suffix else "a file without a suffix or DICOM header is"
            ignored.append((path, f"not a cine: {kind} not read"))
    if not cines:
        raise FileNotFoundError(f"{dataset_dir}: no cine loop found (looked for {', '.join(CINE_SUFFIXES)} and DICOM)")
    found = [
        {"image": str(f), "source": str(f), "output_stem": n} for f, n in zip(cines, output_names(cines, dataset_dir))
    ]
    if report_ignored:
        found += [{"image": str(f), "source": str(f), "ignored": reason} for f, reason in ignored]
    return found


def _is_dicom(path: Path) -> bool:
    """True for a file with the DICOM header (and for one that cannot be opened: its loader names the problem)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return True
    return len(head) == 132 and head[128:132] == b"DICM"


CONFIDENCE_KEY = "lv_confidence"
VERDICT_SUFFIX = "verdict"  # SaveCineResultd sets d["<key>_verdict"] (ok / review / reject) beside d["<key>_files"]


class LVConfidenced(MapTransform):
    """Per-frame network confidence in the LV, from the logits before ``AsDiscreted`` (put it first in the
    postprocessing): ``d["lv_confidence"]`` = :func:`scripts.clinical.quality.lv_confidence` of the softmax of
    ``d[key]`` (``[C, h, w, T]`` logits), a list of ``T`` floats that :class:`SaveCineResultd` passes to the verdict.
    """

    def __init__(self, keys: Sequence[Hashable] = ("pred",), lv_label: int = 1) -> None:
        super().__init__(keys)
        self.lv_label = int(lv_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from scripts.clinical.quality import lv_confidence

        d = dict(data)
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key]).detach().float().cpu()
            if logits.ndim != 4 or logits.shape[0] < 2:
                raise ValueError(
                    f"LVConfidenced needs [C, h, w, T] logits with C >= 2, got shape {tuple(logits.shape)}"
                )
            d[CONFIDENCE_KEY] = lv_confidence(torch.softmax(logits, dim=0).numpy(), self.lv_label)
        return d


class SaveCineResultd(MapTransform):
    """Write the results of one segmented cine (use in the inference ``postprocessing`` after ``AsDiscreted``).

    Reads ``d["pred"]`` (``[1, h, w, T]`` labels at network resolution), the input path from ``d["source"]``
    (set by :func:`find_cines`) or the image's ``filename_or_obj`` and the output name from ``d["output_stem"]``
    (default: the input's name without suffix); takes the input's pixels and geometry from ``d["source_cine"]``
    (:class:`scripts.data.video_io.DecodedCine`, kept by ``LoadCined(keep_source=True)``), or decodes the input
    again without it; writes into ``output_dir``:

    - ``<stem>_seg.nii.gz``: labels with the input's geometry (see :func:`label_nifti_like_input`);
    - with ``save_image=True``: ``<stem>_image.nii.gz``, the input image with exactly the label's geometry (see
      :func:`image_nifti_like_label`);
    - with ``clinical=True``: the LV curve CSV/PNG and report JSON of :func:`scripts.clinical.write_cine_report`;
      with ``overlay=True`` the contour overlays (PNG contact sheet and GIF) of :func:`scripts.clinical.save_overlay`;
    - with ``write_sr=True``: ``<stem>_sr.dcm``, a DICOM SR with the LV outlines, volumes and EF
      (:mod:`scripts.clinical.dicom_sr`), for DICOM inputs with known spacing; for others the JSON's ``sr_reason``
      says why there is none;
    - last, ``<stem>_seg.json``: frames, frame rate, spacing, ED/ES (per beat), LV area (mm^2, or px when the
      spacing is unknown) per frame, EDV/ESV/EF (single-plane Simpson) and the files written (``outputs``).

    Every file is written atomically and the JSON is removed first and written last, so that a present JSON means
    a complete output (:func:`is_complete`) even after an interrupted run. ``keep_aspect`` must match the
    ``ResizeCined`` of the preprocessing (see :func:`restore_labels`). ``nifti_compression``: the gzip level of the
    NIfTI files (0 stored, 1 fastest, as nibabel's default, to 9 smallest). An input that fails raises an error
    that names the file, and leaves no JSON.
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
        save_image: bool = False,
        write_sr: bool = False,
        model_file: str | Path | None = None,
        nifti_compression: int = 1,
    ) -> None:
        super().__init__(keys)
        if not 0 <= int(nifti_compression) <= 9:
            raise ValueError(f"nifti_compression must be a gzip level from 0 to 9, got {nifti_compression!r}")
        self.nifti_compression = int(nifti_compression)
        self.write_sr = write_sr
        self.model_file = model_file
        self._model: dict[str, str] | None = None
        self.output_dir = Path(output_dir)
        self.keep_aspect = keep_aspect
        self.save_image = save_image
        self.image_key = image_key
        self.lv_label = int(lv_label)
        self.clinical = clinical
        self.overlay = overlay
        self.written: list[dict[str, str]] = []
        self.verdicts: dict[str, str] = {}  # input path -> the verdict of its last measurement

    @property
    def model(self) -> dict[str, str] | None:
        """:func:`scripts.checkpoint.model_identity` of ``model_file`` (read once), or ``None`` without one."""
        if self._model is None and self.model_file is not None and Path(self.model_file).is_file():
            from scripts.checkpoint import model_identity

            self._model = model_identity(self.model_file)
        return self._model

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)
        source = d.get("source") or (image.meta["filename_or_obj"] if hasattr(image, "meta") else None)
        if not source:
            raise KeyError("SaveCineResultd needs the input path in 'source' or in the image's filename_or_obj")
        decoded = d.get(SOURCE_KEY)
        for key in self.key_iterator(d):
            d[f"{key}_files"] = self.write(
                d[key],
                source,
                d.get("output_stem"),
                d if "corrections_drawn" in d else None,
                d.get(CONFIDENCE_KEY),
                decoded if isinstance(decoded, DecodedCine) else None,
                d.get(MEMORY_CHECK_KEY),
            )
            d[f"{key}_{VERDICT_SUFFIX}"] = self.verdicts[str(source)]
        return d

    def write(
        self,
        pred: Any,
        source: str | Path,
        stem: str | None = None,
        corrections: Mapping[Hashable, Any] | None = None,
        confidence: Sequence[float] | None = None,
        decoded: DecodedCine | None = None,
        memory_check: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """Write the outputs of ``pred`` (``[1, h, w, T]`` or ``[h, w, T]``) for the input file ``source``.

        ``decoded``: the input as the preprocessing decoded it (``[H, W, T]`` and its metadata); without it the file
        is decoded here.
        ``corrections``: the item :class:`scripts.corrections.LoadCorrectionsd` filled with a user's corrections:
        those frames are written exactly as drawn, at the source's resolution, and the JSON lists them as
        ``corrected_frames``. ``confidence``: ``[T]`` per-frame network confidence (:class:`LVConfidenced`), and
        ``memory_check``: the stepped masks against frames segmented alone (:mod:`scripts.memory_check`, put into
        the item by the evaluator), for the verdict.

        Returns:
            ``{"label": path, "summary": path, ...}``: every file written (``image``, ``csv``, ``json``, ``png``,
            ``gif`` as enabled).
        """
        from scripts import clinical

        source = Path(source)
        original, meta = (decoded.numpy(), decoded.meta) if decoded is not None else load_cine(source)
        pred_hwt = np.asarray(torch.as_tensor(pred).detach().cpu()).astype(np.uint8)
        if pred_hwt.ndim == 4:
            pred_hwt = pred_hwt[0]
        if pred_hwt.shape[-1] != original.shape[-1]:
            raise EchoDataError(source, f"prediction has {pred_hwt.shape[-1]} frames, input has {original.shape[-1]}")
        labels = restore_labels(pred_hwt, original.shape[0], original.shape[1], meta["spacing"], self.keep_aspect)
        if corrections is not None:
            labels = put_drawn_frames(labels, corrections)
        stem = stem or output_stem(source)
        spacing = tuple(float(s) for s in meta["spacing"])
        known = bool(meta.get("spacing_known", all(math.isfinite(s) for s in spacing)))
        rate = _finite(meta.get("frame_rate"))
        report = clinical.measure_cine(
            labels,
            spacing if known else None,
            rate,
            meta,
            original,
            confidence,
            lv_label=self.lv_label,
            memory_check=memory_check,
        )
        accepted = [b for b in report["beats"] if b["accepted"]]
        summary = {
            "input": str(source),
            "format": meta.get("format"),
            "frames": int(labels.shape[-1]),
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "crop": meta.get("crop"),
            "spacing_mm": list(spacing) if known else None,
            "frame_rate": rate,
            "area_mm2" if known else "area_px": report["area_mm2"],
            **clinical.measurement_summary(report),
            "lv_postprocessing": "largest connected LV component per frame (measurements only; the NIfTI is raw)",
            "model": self.model,
        }
        if corrections is not None:
            summary["corrected_frames"] = [int(f) for f in np.asarray(corrections["corrected_frames"]).reshape(-1)]
            summary["corrections_file"] = str(corrections["corrections_file"])
        json_path = summary_path(self.output_dir, stem)
        out_dir, name = json_path.parent, Path(stem).name
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path.unlink(missing_ok=True)  # from here until the new JSON is written, the output is incomplete
        files = {"label": out_dir / f"{name}_seg.nii.gz"}
        niftis = [label_nifti_like_input(labels, source, meta)]
        if self.save_image:
            files["image"] = out_dir / f"{name}_image.nii.gz"
            niftis.append(image_nifti_like_label(source, meta, original))
        with atomic_paths(*files.values()) as temps:
            for nifti, temp in zip(niftis, temps):
                Path(temp).write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=self.nifti_compression))
        if self.clinical:
            files.update(clinical.write_cine_report(report, out_dir, name))
        if self.overlay:
            pairs = [(b["ed"], b["es"]) for b in accepted]
            files.update(clinical.save_overlay(original, labels, out_dir, name, ed_es_pairs=pairs, frame_rate=rate))
        if self.write_sr:
            sr_path = out_dir / f"{name}_sr.dcm"
            files.update(_write_sr(source, labels, report, meta, sr_path, self.lv_label, summary, self.model))
        self.verdicts[str(source)] = report["quality"]["verdict"]
        summary["outputs"] = {k: Path(v).name for k, v in files.items()}
        with atomic_paths(json_path) as (json_tmp,):
            json_tmp.write_text(json.dumps(json_safe(summary), indent=2))
        files["summary"] = json_path
        logger.debug("segmented %s (%d frames): %s", source, labels.shape[-1], files["label"])
        written = {k: str(v) for k, v in files.items()}
        self.written.append(written)
        return written


def _write_sr(
    source: Path,
    labels: np.ndarray,
    report: dict,
    meta: dict,
    path: Path,
    lv_label: int,
    summary: dict,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the DICOM SR of one cine (:mod:`scripts.clinical.dicom_sr`); ``{"sr": path}``, or ``{}`` and the reason
    in ``summary["sr_reason"]`` (and the log) when the input cannot have one."""
    from scripts.clinical.dicom_sr import SRUnavailableError, bundle_version, write_lv_sr

    try:
        write_lv_sr(
            source, labels, report, meta, path, lv_label=lv_label, algorithm_version=bundle_version(), model=model
        )
    except SRUnavailableError as e:
        path.unlink(missing_ok=True)  # an SR of an earlier run would contradict this run's JSON
        summary["sr_reason"] = str(e)
        logger.warning("%s: no DICOM SR: %s", source, e)
        return {}
    summary["sr_reason"] = None
    return {"sr": path}


def summary_path(output_dir: str | Path, stem: str) -> Path:
    """``<output_dir>/<stem>_seg.json``: the per-cine summary, written last by :class:`SaveCineResultd`."""
    return Path(output_dir) / f"{stem}_seg.json"


def is_complete(output_dir: str | Path, stem: str) -> bool:
    """Whether the outputs of ``stem`` are complete: its summary JSON exists (it is the last file written)."""
    return summary_path(output_dir, stem).is_file()


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
