"""Serving the bundle from MONAI Label: hand the label back as a tensor in the input file's geometry.

MONAI Label's ``BundleInferTask`` runs the bundle's ``postprocessing`` (``SaveImaged`` filtered out), then its own
``Restored(keys="pred", ref_image="image")`` and ``Writer``: the writer saves ``pred`` (channel dropped) with the
affine ``Restored`` copies from ``image.meta["original_affine"]``, after resizing ``pred`` to
``image.meta["spatial_shape"]`` (a no-op when the shapes agree). Our loader reads a cine as ``[1, H, W, T]`` (a NIfTI
stored ``(x, y, t)`` as CAMUS is transposed; a DICOM is cropped to its ultrasound region) and resizes it to the
network size, so ``pred`` must be brought back to the file's whole-frame voxel layout (that of
:func:`scripts.geometry.label_nifti_like_input`) and those two meta entries set to that array's shape and affine.
``configs/monailabel_infer.json`` puts :class:`LabelToInputGeometryd` after the argmax in place of the file writer of
``configs/inference.json``.

What a viewer downloads lines up with that label (:func:`viewer_image`): NIfTI files and MetaImage/NRRD files that
hold their own pixels are handed out as they are (ITK reads them with the geometry the label carries); DICOM cines
(ITK reads them with 1 mm pixels, not the ultrasound region's millimetres), videos (ITK reads none) and MetaImage
headers whose pixels lie in another file (``.mhd`` + ``.raw``) are handed out as a NIfTI copy with exactly the
label's shape and affine (:func:`scripts.geometry.image_nifti_like_label`).

MONAI Label's datastore (a folder of studies) is checked here too, so that every adapter refuses the same things:
:func:`datastore_layout_problem` (a folder MONAI Label cannot serve, e.g. a CAMUS tree) and
:func:`check_uploaded_cine` / :func:`check_uploaded_label` (an upload that is not a readable cine or label).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from scripts.corrections import put_drawn_frames
from scripts.data.errors import EchoDataError, check_label
from scripts.data.video_io import cine_format, load_cine, load_volume, to_meta_tensor
from scripts.geometry import image_nifti_like_label, label_nifti_like_input, restore_labels
from scripts.inference import CINE_SUFFIXES, LABEL_SUFFIXES, _is_dicom

# File name patterns MONAI Label's local datastore lists as images (and labels): every cine format the bundle reads.
DATASTORE_PATTERNS = tuple(f"*{suffix}" for suffix in CINE_SUFFIXES)
# Suffix of the copy of a cine handed to viewers that cannot read the cine itself with the label's geometry.
VIEWER_SUFFIX = ".nii.gz"
_viewer_lock = threading.Lock()


class LabelToInputGeometryd(MapTransform):
    """Labels ``[1, h, w, T]`` at network resolution -> ``[1, *file voxel shape]`` uint8 in the input's geometry.

    NIfTI inputs get the file's array layout, shape and affine; DICOM, video and MetaImage inputs the whole frame
    ``(W, H, T)`` (x = column first, 0 outside a DICOM's ultrasound region) with the affine of
    :func:`scripts.geometry.source_affine` (as :func:`scripts.geometry.label_nifti_like_input` writes them). The input
    path comes from ``image_path`` (set by MONAI Label), ``source`` or the image's ``filename_or_obj``. Sets
    ``image.meta["spatial_shape"]`` and ``image.meta["original_affine"]`` to that array's shape and affine, so that
    MONAI Label's ``Restored`` keeps the array and its ``Writer`` (LPS conversion included) writes that geometry.
    ``keep_aspect`` must match the ``ResizeCined`` of the preprocessing. With a user's corrections
    (``corrected_frames`` and ``corrections_drawn`` of :class:`scripts.corrections.LoadCorrectionsd`) those frames are
    the drawn labels, at the input's resolution.

    With ``measure=True`` the labels are also measured as the bundle's inference measures them
    (:func:`scripts.clinical.measure_cine`, with ``d["lv_confidence"]`` of :class:`scripts.inference.LVConfidenced`
    and ``d["memory_check"]`` of :func:`scripts.memory_check.memory_check`, which the MONAI Label app's task adds)
    and ``d["result"]["lv_measurement"]`` holds :func:`scripts.clinical.measurement_summary` (EF over the accepted
    beats, the beats, the verdict) and the model's identity: MONAI Label returns ``d["result"]`` as the result JSON.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] = ("pred",),
        image_key: str = "image",
        keep_aspect: bool = False,
        measure: bool = False,
        model_file: str | os.PathLike | None = None,
        lv_label: int = 1,
    ) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.keep_aspect = keep_aspect
        self.measure = measure
        self.model_file = model_file
        self.lv_label = int(lv_label)
        self._model: dict[str, str] | None = None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)
        meta = getattr(image, "meta", None)
        source = d.get("image_path") or d.get("source") or (meta or {}).get("filename_or_obj")
        if not source:
            raise KeyError("LabelToInputGeometryd needs the input path in 'image_path', 'source' or filename_or_obj")
        original, cine_meta = load_cine(source)
        for key in self.key_iterator(d):
            pred_hwt = np.asarray(torch.as_tensor(d[key]).detach().cpu()).astype(np.uint8)
            if pred_hwt.ndim == 4:
                pred_hwt = pred_hwt[0]
            height, width = original.shape[0], original.shape[1]
            labels = restore_labels(pred_hwt, height, width, cine_meta["spacing"], self.keep_aspect)
            labels = put_drawn_frames(labels, d)  # a user's corrected frames come back exactly as drawn
            if self.measure:
                d["result"] = {
                    **dict(d.get("result") or {}),
                    "lv_measurement": self._measurement(labels, d, original, cine_meta),
                }
            nifti = label_nifti_like_input(labels, source, cine_meta)
            array = np.asanyarray(nifti.dataobj).astype(np.uint8)
            d[key] = torch.as_tensor(array[None])
            if meta is not None:
                meta["spatial_shape"] = np.asarray(array.shape)
                meta["original_affine"] = np.asarray(nifti.affine, dtype=np.float64)
        return d

    def _measurement(
        self, labels_HWT: np.ndarray, d: Mapping[Hashable, Any], image_HWT: np.ndarray, meta: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The JSON-ready measurement of the returned labels ``[H, W, T]`` on the cine's grid."""
        import math

        from scripts.clinical import measure_cine, measurement_summary
        from scripts.clinical._io import json_safe

        spacing = tuple(float(s) for s in meta["spacing"]) if meta.get("spacing_known") else None
        rate = float(meta.get("frame_rate", math.nan))
        report = measure_cine(
            labels_HWT,
            spacing,
            rate if math.isfinite(rate) and rate > 0 else None,
            meta,
            image_HWT,
            d.get("lv_confidence"),
            lv_label=self.lv_label,
            memory_check=d.get("memory_check"),
        )
        if self._model is None and self.model_file is not None and Path(self.model_file).is_file():
            from scripts.checkpoint import model_identity

            self._model = model_identity(self.model_file)
        return json_safe({**measurement_summary(report), "model": self._model})


def datastore_layout_problem(folder: str | os.PathLike) -> str | None:
    """Why MONAI Label's local datastore cannot serve ``folder``, in one line; None when it can.

    The local datastore lists only the files directly in the folder whose names end with a cine suffix
    (:data:`DATASTORE_PATTERNS`), and keeps labels in ``labels/final`` (saved) and ``labels/original``. So a folder
    whose cines all lie in subfolders (a CAMUS tree, one folder per patient; a DICOM study/series tree) would be an
    empty datastore, DICOM files named without ``.dcm`` (``IM0001``) are never listed, and ground-truth files beside
    the images (``*_gt.nii.gz``) would be listed as images to segment. An empty folder is fine (images are uploaded).
    """
    root = Path(folder)
    if not root.exists():
        return "no such folder (create it for an empty datastore that is filled by uploads)"
    if not root.is_dir():
        return "not a folder"
    top = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    truth = [p.name for p in top if p.name.lower().endswith(LABEL_SUFFIXES)]
    if truth:
        return (
            f"{len(truth)} ground-truth file(s) among the images ({truth[0]}, ...): MONAI Label would list them as "
            "images to segment; move each to labels/final/ under its image's file name"
        )
    if any(p.name.lower().endswith(CINE_SUFFIXES) for p in top):
        return None
    unnamed = [p.name for p in top if p.name.lower() != "dicomdir" and _is_dicom(p)]
    if unnamed:
        return (
            f"{len(unnamed)} DICOM file(s) without a .dcm suffix ({unnamed[0]}, ...), which MONAI Label does not list: "
            "link or copy them under names ending in .dcm"
        )
    nested = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.relative_to(root).parts[0] != "labels"
        and not p.name.startswith(".")
        and not p.name.lower().endswith(LABEL_SUFFIXES + (".raw", ".zraw"))
        and (p.name.lower().endswith(CINE_SUFFIXES) or (p.name.lower() != "dicomdir" and _is_dicom(p)))
    ]
    if nested:
        folders = sorted({p.parent.relative_to(root).as_posix() for p in nested})
        return (
            f"its {len(nested)} cine(s) lie in {len(folders)} subfolder(s) ({folders[0]}/, ...), but MONAI Label lists "
            "only the files directly in the studies folder: point it at a flat folder of the cines (links will do; "
            "see docs/deploy.md, 'Datastore layouts')"
        )
    return None


def holds_its_pixels(path: str | os.PathLike) -> bool:
    """True for a MetaImage/NRRD file whose pixels are in the file itself (``ElementDataFile = LOCAL``; an NRRD
    without a ``data file`` field), False for a header that names another file (``.mhd`` + ``.raw``, ``.nhdr``-style
    NRRD), which one download does not bring along."""
    with open(path, "rb") as f:
        head = f.read(65536)
    if str(path).lower().endswith(".nrrd"):
        header = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0]
        return re.search(rb"^data ?file\s*:", header, re.IGNORECASE | re.MULTILINE) is None
    for line in head.splitlines():
        key, sep, value = line.partition(b"=")
        if sep and key.strip().lower() == b"elementdatafile":
            return value.strip().upper() == b"LOCAL"
    return False


def viewer_reads_as_is(source: str | os.PathLike) -> bool:
    """True when a viewer that reads ``source`` with ITK (3D Slicer) gets, from that one file, the geometry of the
    label ``/infer`` returns for it: a NIfTI, a MetaImage/NRRD holding its own pixels (:func:`holds_its_pixels`).
    False for a DICOM (ITK gives it 1 mm pixels, the label the ultrasound region's millimetres), a video (ITK reads
    none) and a MetaImage/NRRD header whose pixels lie in another file."""
    fmt = cine_format(source)
    if fmt == "nifti":
        return True
    return fmt == "itk" and holds_its_pixels(source)


def viewer_image_name(image_id: str, source: str | os.PathLike) -> str:
    """The file name of what :func:`viewer_image` hands out for ``source``: its own name, or ``<image_id>.nii.gz``."""
    return os.path.basename(str(source)) if viewer_reads_as_is(source) else f"{image_id}{VIEWER_SUFFIX}"


def viewer_image(source: str | os.PathLike, folder: str | os.PathLike, image_id: str) -> Path:
    """The file a viewer should open for ``source`` so that the label ``/infer`` returns lies on it.

    ``source`` itself when :func:`viewer_reads_as_is`; else ``<folder>/<image_id>.nii.gz``, the cine as
    :func:`scripts.geometry.image_nifti_like_label` writes it: exactly the label's shape and affine (the whole frame,
    x = column, y = row, t = frame; a DICOM's ultrasound-region millimetres, a video's pixels as 1 mm, the frame time
    in s; a MetaImage's own spacing, origin and direction), grey (a colour cine's luminance). The copy is made on the
    first request and again whenever the source's size or modification time changed (recorded beside it in
    ``<image_id>.nii.gz.source``); it is written to a temporary file and renamed, so a reader never gets half a file.

    Raises:
        EchoDataError: the cine cannot be read.
    """
    if viewer_reads_as_is(source):
        return Path(source)
    folder = Path(folder)
    copy = folder / f"{image_id}{VIEWER_SUFFIX}"
    stamp = copy.with_name(copy.name + ".source")
    stat = os.stat(source)
    key = json.dumps({"source": os.path.realpath(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    with _viewer_lock:
        if copy.is_file() and stamp.is_file() and stamp.read_text() == key:
            return copy
        folder.mkdir(parents=True, exist_ok=True)
        _, meta = load_cine(source)
        image = image_nifti_like_label(source, meta)
        fd, partial = tempfile.mkstemp(prefix=f".{image_id}.", suffix=VIEWER_SUFFIX, dir=folder)
        os.close(fd)
        try:
            import nibabel as nib

            nib.save(image, partial)
            os.chmod(partial, 0o644)
            os.replace(partial, copy)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        stamp.write_text(key)
    return copy


def remove_viewer_image(folder: str | os.PathLike, image_id: str) -> None:
    """Remove the viewer copy :func:`viewer_image` made for ``image_id`` (and its record), if any."""
    copy = Path(folder) / f"{image_id}{VIEWER_SUFFIX}"
    with _viewer_lock:
        for path in (copy, copy.with_name(copy.name + ".source")):
            if path.is_file():
                path.unlink()


def check_uploaded_cine(path: str | os.PathLike, name: str) -> None:
    """Refuse an uploaded image that is not a readable cine: :class:`EchoDataError` naming ``name`` (the upload's
    file name) instead of the temporary file ``path``."""
    try:
        load_cine(path)
    except EchoDataError as e:
        raise EchoDataError(name, e.problem) from e


def check_uploaded_label(path: str | os.PathLike, name: str, image: str | os.PathLike) -> None:
    """Refuse an uploaded label that is not a label volume over ``image``: readable NIfTI (or MetaImage/NRRD),
    integer values in 0..3 (CAMUS numbering), and the shape of the labels the bundle returns for ``image`` (a NIfTI
    image's own array shape; the whole frame ``W x H x T`` of a DICOM or video). Raises :class:`EchoDataError`
    naming ``name``."""
    try:
        if cine_format(path) not in ("nifti", "itk"):
            raise EchoDataError(path, "a label must be a NIfTI (.nii.gz) or MetaImage/NRRD volume")
        label_hwt, _, _ = load_volume(path)
        if cine_format(image) in ("nifti", "itk"):
            expected = load_volume(image)[0].shape
        else:
            expected = load_cine(image)[1]["original_shape"]
        check_label(label_hwt, path, image_shape=tuple(expected))
    except EchoDataError as e:
        if e.path != str(path):  # the image's own problem, already named
            raise
        raise EchoDataError(name, e.problem.replace(str(path), name)) from e


def labelled_frames(label_path: str | os.PathLike, lv_label: int = 1) -> int:
    """How many frames of a saved label volume carry an LV label (``lv_label``): what ``/train`` learns from."""
    labels_HWT, _, _ = load_volume(label_path)
    labels_HWT = np.asarray(labels_HWT)
    return int((labels_HWT == lv_label).reshape(-1, labels_HWT.shape[-1]).any(axis=0).sum())


class LoadLabelledCined(MapTransform):
    """Load a MONAI Label training item ``{"image": cine, "label": saved label}`` into the data contract.

    The image is any cine the bundle reads (DICOM, AVI/MP4, NIfTI, MetaImage/NRRD: :func:`scripts.data.load_cine`,
    a DICOM cropped to its ultrasound region); the label is a volume saved through MONAI Label, laid out as the label
    ``/infer`` returns for that image (a NIfTI image's own layout; the whole frame ``W x H x T`` of the others),
    checked to lie on it. Only frames that carry an LV label (value ``lv_label``) count as annotated: the others
    are unannotated, not background (``label_frames``). The clip runs from the first to the last annotated frame
    (``ed_index`` 0, ``es_index`` T - 1), so a clip sampled from it (``SampleClipd``) holds both.

    Output keys as :class:`scripts.data.LoadCamusd`'s: ``image`` ``[1, H, W, T]`` float32 in [0, 1], ``label``
    ``[1, H, W, T]`` uint8 (``labels="lv"``: {0, 1}), ``label_frames`` ``[T]`` bool, ``spacing``, ``frame_rate``,
    ``ed_index``, ``es_index``, ``frame_indices``, ``occluded`` (-1: unknown).

    Raises:
        EchoDataError: naming the label file, when it does not lie on the image or no frame has an LV label.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), labels: str = "all", lv_label: int = 1) -> None:
        super().__init__(keys)
        if labels not in ("all", "lv"):
            raise ValueError(f"labels must be 'all' or 'lv', got {labels!r}")
        self.labels, self.lv_label = labels, int(lv_label)
        self.image_key, self.label_key = (list(keys) + ["label"])[:2]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_path, label_path = str(d[self.image_key]), str(d[self.label_key])
        image_HWT, meta = load_cine(image_path)
        raw, _, _ = load_volume(label_path)
        labels = check_label(np.asarray(raw), label_path, image_shape=tuple(int(s) for s in meta["original_shape"]))
        if meta.get("crop") is not None:
            y0, y1, x0, x1 = (int(c) for c in meta["crop"])
            labels = labels[y0:y1, x0:x1]
        annotated = (labels == self.lv_label).any(axis=(0, 1))
        if not annotated.any():
            raise EchoDataError(label_path, f"no frame carries an LV label ({self.lv_label}): nothing to learn from")
        first, last = (int(i) for i in np.flatnonzero(annotated)[[0, -1]])
        frames = np.arange(first, last + 1)
        if self.labels == "lv":
            labels = (labels == self.lv_label).astype(np.uint8)
        row, col = (float(s) for s in meta["spacing"])
        tensor_meta = {  # the entries LoadCamusd gives, so that items of any format collate in one batch
            "filename_or_obj": image_path,
            "format": str(meta.get("format", cine_format(image_path))),
            "spacing": (row, col),
            "spacing_known": bool(meta.get("spacing_known", False)),
            "frame_rate": float(meta.get("frame_rate", float("nan"))),
            "original_shape": tuple(int(n) for n in image_HWT.shape),
        }
        d[self.image_key] = to_meta_tensor(torch.as_tensor(np.asarray(image_HWT, np.float32)[..., frames]), tensor_meta)
        d[self.label_key] = to_meta_tensor(
            torch.as_tensor(np.ascontiguousarray(labels[..., frames]).astype(np.uint8)),
            {**tensor_meta, "filename_or_obj": label_path},
        )
        d["label_frames"] = annotated[frames]
        d["spacing"] = np.asarray((row, col), dtype=np.float32)
        d["frame_rate"] = float(meta.get("frame_rate", float("nan")))
        d["ed_index"], d["es_index"] = 0, len(frames) - 1
        d["frame_indices"] = frames
        d["occluded"] = np.full(len(frames), -1, dtype=np.int8)
        return d
