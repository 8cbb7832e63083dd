"""Put network outputs back on the input file's pixel grid, and write them so that they open over the source.

Two grids are involved. The network segments ``[H, W, T]`` (rows, columns, frames) of the *segmented region*: the
largest ``SequenceOfUltrasoundRegions`` region of a DICOM (``meta["crop"] = (y0, y1, x0, x1)``), the whole frame of
any other input. :func:`restore_labels` brings network-resolution labels back onto that region (measurements use it
and its calibrated spacing). The files a user opens cover the *whole frame* of the source, in the voxel order that
ITK and MONAI ``LoadImage`` use for it:

- NIfTI inputs: the file's own array layout (CAMUS stores x, y, t), shape and affine.
- DICOM, AVI/MP4 and other videos: ``(W, H, T)`` = (column, row, frame); the DICOM region's labels are padded back
  with 0 outside the region. Affine (NIfTI, RAS) ``diag(-col mm, -row mm, frame s, 1)``, origin 0: what ITK gives
  such a file (identity direction in ITK's LPS, origin 0), with the region's spacing in place of ITK's 1 mm, and the
  frame time (1 when unknown) on the third axis.
- MetaImage/NRRD (``.mhd``, ``.mha``, ``.nrrd``): ``(W, H, T)`` with the file's own spacing, origin and direction
  as ITK reads them (converted from ITK's LPS to NIfTI's RAS, as ITK and MONAI do when they read a NIfTI).

:func:`label_nifti_like_input` writes labels that way; :func:`image_nifti_like_label` writes the input image with
exactly the label's shape and affine (for viewers that cannot read ultrasound DICOM cines or videos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from scripts.data.errors import EchoDataError
from scripts.data.transforms import aspect_padding
from scripts.data.video_io import cine_format, load_cine

__all__ = [
    "image_nifti_like_label",
    "label_nifti_like_input",
    "labels_from_nifti_like_input",
    "resize_labels",
    "restore_labels",
    "source_affine",
    "uncrop",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def resize_labels(labels_HWT: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer label cine ``[h, w, T]`` to uint8 ``[height, width, T]``."""
    tensor = torch.as_tensor(np.ascontiguousarray(labels_HWT)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(height, width), mode="nearest-exact")
    return resized[0].permute(1, 2, 0).to(torch.uint8).numpy()


def restore_labels(
    labels_hwt: np.ndarray, height: int, width: int, spacing: Sequence[float] | None, keep_aspect: bool
) -> np.ndarray:
    """Network-resolution labels ``[h, w, T]`` back onto the segmented region's ``[height, width, T]`` pixel grid.

    Undoes :class:`scripts.data.ResizeCined`: with ``keep_aspect`` the labels are resized to the padded frame that
    :func:`scripts.data.aspect_padding` gives for the input's shape and ``spacing`` (row mm, col mm; NaN = unknown),
    and the padding is cut off; without it they are resized straight to ``height x width``. The result lies on the
    image :func:`scripts.data.load_cine` returns (a DICOM's ultrasound region); :func:`uncrop` puts it on the frame.
    """
    if not keep_aspect:
        return resize_labels(labels_hwt, height, width)
    top, bottom, left, right = aspect_padding(height, width, spacing, labels_hwt.shape[:2])
    padded = resize_labels(labels_hwt, height + top + bottom, width + left + right)
    return np.ascontiguousarray(padded[top : top + height, left : left + width])


def uncrop(array_HWT: np.ndarray, meta: Mapping[str, Any], fill: float = 0) -> np.ndarray:
    """Place an ``[h, w, T]`` array of the segmented region on the whole ``[H, W, T]`` frame of the source.

    ``meta`` is :func:`scripts.data.load_cine`'s: ``crop`` ``(y0, y1, x0, x1)`` (None: nothing was cropped) and
    ``original_shape`` ``(H, W, T)``. Outside the region the result is ``fill``. An array that already has the full
    frame's shape is returned as it is.

    Raises:
        EchoDataError: the array has neither the region's nor the frame's shape.
    """
    crop = meta.get("crop")
    full = tuple(int(s) for s in meta.get("original_shape", array_HWT.shape))[:2]
    if crop is None or tuple(array_HWT.shape[:2]) == full:
        return array_HWT
    y0, y1, x0, x1 = (int(c) for c in crop)
    if tuple(array_HWT.shape[:2]) != (y1 - y0, x1 - x0):
        raise EchoDataError(
            meta.get("filename_or_obj", "?"),
            f"array of {array_HWT.shape[0]} x {array_HWT.shape[1]} pixels fits neither the region "
            f"{y1 - y0} x {x1 - x0} nor the frame {full[0]} x {full[1]}",
        )
    out = np.full((*full, *array_HWT.shape[2:]), fill, dtype=array_HWT.dtype)
    out[y0:y1, x0:x1] = array_HWT
    return out


def source_affine(source: str | Path, meta: Mapping[str, Any]) -> np.ndarray:
    """4 x 4 NIfTI (RAS) affine of a source's whole-frame ``(W, H, T)`` voxel grid (x = column, y = row, t = frame).

    NIfTI: the file's affine. MetaImage/NRRD: the file's spacing, origin and direction as ITK reads them, LPS -> RAS.
    DICOM and videos: ``diag(-col mm, -row mm, frame s, 1)`` from ``meta["spacing"]`` (row mm, col mm; NaN -> 1) and
    ``meta["frame_time_ms"]`` (NaN -> 1 s), origin 0: ITK's identity direction and zero origin for such files.
    """
    fmt = cine_format(source)
    if fmt == "nifti":
        return np.asarray(nib.load(str(source)).affine, dtype=np.float64)
    if fmt == "itk":
        return _itk_affine(source)
    row, col = (float(s) if math.isfinite(float(s)) else 1.0 for s in meta["spacing"])
    frame_time = meta.get("frame_time_ms", math.nan)
    frame_s = float(frame_time) / 1000.0 if frame_time and math.isfinite(float(frame_time)) else 1.0
    return LPS_TO_RAS @ np.diag([col, row, frame_s, 1.0])


def _itk_affine(source: str | Path) -> np.ndarray:
    """RAS affine of a 3D (x, y, t) MetaImage/NRRD from its header (ITK's spacing, origin, direction; LPS)."""
    import itk

    try:
        io = itk.ImageIOFactory.CreateImageIO(str(source), itk.CommonEnums.IOFileMode_ReadMode)
        io.SetFileName(str(source))
        io.ReadImageInformation()
    except Exception as e:  # no ImageIO for the file, unreadable header
        raise EchoDataError(source, f"cannot read the image header with ITK ({type(e).__name__}: {e})") from e
    n = io.GetNumberOfDimensions()
    if n != 3:
        raise EchoDataError(source, f"expected a 3D (x, y, t) image, ITK reads {n} dimensions")
    spacing = np.array([io.GetSpacing(i) for i in range(3)], dtype=np.float64)
    direction = np.array([list(io.GetDirection(i)) for i in range(3)], dtype=np.float64).T  # columns = axes
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = [io.GetOrigin(i) for i in range(3)]
    return LPS_TO_RAS @ affine


def _nifti_like_input(array_HWT: np.ndarray, source: str | Path, meta: Mapping[str, Any]) -> nib.Nifti1Image:
    """Whole-frame ``[H, W, T]`` array -> NIfTI in the source's voxel layout and affine (see the module docstring)."""
    if cine_format(source) == "nifti":
        reference = nib.load(str(source))
        data = np.transpose(array_HWT, (1, 0, 2))
        if data.shape[: len(reference.shape)] != reference.shape[:3]:
            data = data.reshape(reference.shape)
        header = reference.header.copy()
        header.set_data_dtype(array_HWT.dtype)
        return nib.Nifti1Image(data, reference.affine, header)
    data = np.ascontiguousarray(np.transpose(array_HWT, (1, 0, 2)))  # (x = column, y = row, t)
    image = nib.Nifti1Image(data, source_affine(source, meta))
    image.header.set_data_dtype(array_HWT.dtype)
    image.header.set_xyzt_units("mm", "sec")
    return image


def label_nifti_like_input(labels_HWT: np.ndarray, source: str | Path, meta: Mapping[str, Any]) -> nib.Nifti1Image:
    """A uint8 label NIfTI that opens over its source in a viewer (3D Slicer, ITK-SNAP, MONAI ``LoadImage``).

    Args:
        labels_HWT: integer labels ``[h, w, T]`` on the segmented region (what :func:`restore_labels` returns for
            the image of :func:`scripts.data.load_cine`), or ``[H, W, T]`` on the whole frame.
        source: the input file.
        meta: :func:`scripts.data.load_cine`'s metadata of ``source`` (``crop``, ``original_shape``, ``spacing``,
            ``frame_time_ms``).

    Returns:
        NIfTI inputs: the file's array layout (CAMUS stores x, y, t), shape and affine. DICOM, video and
        MetaImage/NRRD inputs: the whole frame ``(W, H, T)`` (x = column, y = row, t = frame; 0 outside a DICOM's
        ultrasound region) with the affine of :func:`source_affine`: spacing in mm from the ultrasound region (a
        viewer that reads the DICOM itself shows it with ITK's 1 mm pixels: same size and axes, other physical size),
        frame time in s on the third axis; MetaImage/NRRD keep the file's own spacing, origin and direction.
    """
    labels = uncrop(np.asarray(labels_HWT).astype(np.uint8), {**meta, "filename_or_obj": str(source)})
    return _nifti_like_input(labels, source, meta)


def labels_from_nifti_like_input(label_path: str | Path, source: str | Path, meta: Mapping[str, Any]) -> np.ndarray:
    """Read a label NIfTI laid out as :func:`label_nifti_like_input` writes it back onto the segmented region.

    The inverse of :func:`label_nifti_like_input`: a label a user corrected in a viewer (the ``<stem>_seg.nii.gz``
    of an earlier run, or MONAI Label's) comes back as uint8 ``[h, w, T]`` on the image :func:`load_cine` returns
    for ``source`` (a DICOM's ultrasound region).

    Raises:
        EchoDataError: naming ``label_path``, when it cannot be read, its shape is not the source's whole frame
            ``(W, H, T)`` (or a NIfTI source's own layout), or its values are not integer labels 0..3.
    """
    from scripts.data.errors import check_label

    try:
        data = np.asarray(nib.load(str(label_path)).dataobj)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise EchoDataError(label_path, f"cannot read the label NIfTI ({type(e).__name__}: {e})") from e
    height, width, frames = (int(s) for s in meta["original_shape"])
    if data.ndim == 4 and data.shape[2] == 1:  # a NIfTI source stored (x, y, 1, t)
        data = data[:, :, 0]
    if data.shape != (width, height, frames):
        raise EchoDataError(
            label_path,
            f"label of shape {data.shape} does not lie on {source}: expected its whole frame (W, H, T) = "
            f"{(width, height, frames)}",
        )
    labels = check_label(np.ascontiguousarray(np.transpose(data, (1, 0, 2))), label_path)
    crop = meta.get("crop")
    if crop is not None:
        y0, y1, x0, x1 = (int(c) for c in crop)
        labels = np.ascontiguousarray(labels[y0:y1, x0:x1])
    return labels


def image_nifti_like_label(
    source: str | Path, meta: Mapping[str, Any], image_HWT: np.ndarray | None = None
) -> nib.Nifti1Image:
    """The input image as a NIfTI with exactly the shape and affine of :func:`label_nifti_like_input`'s label.

    For viewers that cannot read an ultrasound DICOM cine or a video: open this image and overlay the label on it.

    Args:
        source: the input file.
        meta: :func:`scripts.data.load_cine`'s metadata of ``source`` as used for the label (default cropping, so
            that the spacing is the ultrasound region's).
        image_HWT: the grey image ``[H, W, T]`` in [0, 1] already loaded, if it covers the whole frame (with a
            cropped DICOM region the whole frame is reloaded with ``load_cine(source, crop_to_region=False)``).

    Returns:
        The grey image the network saw, layout and affine as the label: uint8 0..255 for 8-bit sources (grey: the
        source's own values; videos and colour DICOM: BT.601 luminance, rounded), else float32 in [0, 1].
        A colour DICOM's luminance differs from the RGB pixels ITK reads.

    Raises:
        EchoDataError: the reloaded frame does not have ``meta["original_shape"]``.
    """
    full_hw = tuple(int(s) for s in meta.get("original_shape", ()))[:2]
    if image_HWT is None or (meta.get("crop") is not None and tuple(image_HWT.shape[:2]) != full_hw):
        image_HWT, _ = load_cine(source, crop_to_region=False)
    if full_hw and tuple(image_HWT.shape[:2]) != full_hw:
        raise EchoDataError(source, f"image of {image_HWT.shape[:2]} pixels, the label's frame is {full_hw}")
    scaled = np.asarray(image_HWT, dtype=np.float32) * 255.0
    rounded = np.rint(scaled)
    # OpenCV decodes 8-bit samples; colour DICOM is 8-bit RGB/YBR/palette in practice
    colour = not str(meta.get("photometric_interpretation", "MONOCHROME")).upper().startswith("MONOCHROME")
    colour_8bit = meta.get("format") == "video" or colour
    on_8bit_grid = float(np.abs(scaled - rounded).max(initial=0.0)) < 1e-3
    if (colour_8bit or on_8bit_grid) and rounded.min(initial=0.0) >= 0 and rounded.max(initial=0.0) <= 255:
        data = rounded.astype(np.uint8)
    else:
        data = np.asarray(image_HWT, dtype=np.float32)
    return _nifti_like_input(data, source, meta)
