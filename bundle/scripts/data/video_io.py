"""Read one cine loop from DICOM, AVI, NIfTI or MetaImage into the data contract.

``load_cine(path)`` returns ``(image_HWT, meta)``: a float32 array ``[H, W, T]`` in [0, 1] (grey, colour converted
by BT.601 luminance) and a dict with the pixel spacing in mm, the frame rate and the geometry. ``LoadCined`` wraps it
as a MONAI transform that yields the contract's MetaTensor ``[1, H, W, T]`` whose affine diagonal is
``(row mm, col mm, 1 frame)``.

Spacing that the file does not state (AVI, DICOM without calibration) is reported as ``(nan, nan)`` with
``spacing_known=False``; the MetaTensor affine then uses 1.0 (pixel units) so that geometric transforms still work,
and ``meta["spacing_known"]`` tells metrics that mm/mL are not available.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .errors import EchoDataError, check_cine

__all__ = [
    "SOURCE_KEY",
    "DecodedCine",
    "LoadCined",
    "cine_affine",
    "cine_format",
    "load_cine",
    "load_volume",
    "to_meta_tensor",
    "to_unit_range",
]

LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv")
SOURCE_KEY = "source_cine"  # LoadCined(keep_source=True) puts the decoded input here, for the result writer
PLAUSIBLE_SPACING_MM = (0.01, 5.0)  # echo pixels are ~0.05-1 mm; outside this a header's calibration is broken


def cine_format(path: str | Path) -> str:
    """Name the reader for ``path``: ``"dicom"``, ``"video"``, ``"nifti"`` or ``"itk"`` (by suffix, DICOM by magic)."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith((".dcm", ".dicom")):
        return "dicom"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise EchoDataError(path, f"cannot open: {e}") from e
    if head[128:132] == b"DICM":
        return "dicom"
    kind = f"'{Path(path).suffix}' files" if Path(path).suffix else "files without a suffix or DICOM header"
    raise EchoDataError(
        path, f"not a cine format: {kind} are not read (a cine is .dcm, .avi, .nii(.gz), .mhd/.mha/.nrrd)"
    )


def to_unit_range(image: np.ndarray, bits_stored: int | None = None) -> np.ndarray:
    """Scale intensities to float32 [0, 1], any shape.

    uint8 (or integers within 0..255) -> /255; other integers -> /(2**bits_stored - 1) when known, else /max;
    floats already in [0, 1] are kept, floats within 0..255 -> /255, any other range is min-max scaled.
    """
    if np.issubdtype(image.dtype, np.integer) or image.dtype == bool:
        lo, hi = int(image.min()), int(image.max())
        if lo >= 0 and hi <= 255:
            return image.astype(np.float32) / 255.0
        if bits_stored and lo >= 0:
            return image.astype(np.float32) / float(2**bits_stored - 1)
        return _minmax(image)
    lo, hi = float(np.min(image)), float(np.max(image))
    if lo >= 0.0 and hi <= 1.0:
        return image.astype(np.float32)
    if lo >= 0.0 and hi <= 255.0:
        return (image / 255.0).astype(np.float32)
    return _minmax(image)


def _minmax(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _one_line(error: BaseException, path: str | Path | None = None) -> str:
    """``"EOFError: Compressed file ended ..."``: an exception's type and message on one line (for error messages).

    ``path`` (already at the start of an :class:`EchoDataError`'s message) is shortened to its file name.
    """
    text = " ".join(str(error).split())
    text = text.replace(str(path), Path(path).name) if path is not None else text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _grey(frames: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB -> ``[...]`` luminance (float32), other arrays unchanged."""
    if frames.ndim >= 3 and frames.shape[-1] in (3, 4):
        return frames[..., :3].astype(np.float32) @ LUMA_BT601
    return frames


def cine_affine(spacing_mm: Sequence[float]) -> np.ndarray:
    """4 x 4 affine of a ``[H, W, T]`` grid: diagonal ``(row mm, col mm, 1 frame, 1)``; NaN spacing becomes 1.0."""
    row, col = (float(s) if math.isfinite(float(s)) else 1.0 for s in spacing_mm)
    return np.diag([row, col, 1.0, 1.0])


def spacing_problem(spacing_mm: Sequence[float]) -> str | None:
    """Why a stated (row, column) pixel spacing in mm cannot be an echo's, or ``None`` (NaN: not stated, no problem)."""
    values = [float(s) for s in spacing_mm]
    if not any(math.isfinite(s) for s in values):
        return None
    lo, hi = PLAUSIBLE_SPACING_MM
    if not all(math.isfinite(s) and lo <= s <= hi for s in values):
        shown = " x ".join(f"{s:.4g}" for s in values)
        return f"pixel spacing {shown} mm is outside the plausible {lo}-{hi} mm of an echo: volumes not calibrated"
    return None


def _meta(path: str | Path, fmt: str, shape: tuple[int, ...], spacing: Sequence[float], frame_rate: float) -> dict:
    spacing = (float(spacing[0]), float(spacing[1]))
    problem = spacing_problem(spacing)
    known = problem is None and all(math.isfinite(s) and s > 0 for s in spacing)
    return {
        "spacing_problem": problem,
        "filename_or_obj": str(path),
        "format": fmt,
        "spacing": spacing if known else (math.nan, math.nan),
        "spacing_known": known,
        "frame_rate": float(frame_rate),
        "frame_time_ms": 1000.0 / frame_rate if math.isfinite(frame_rate) and frame_rate > 0 else math.nan,
        "original_shape": tuple(int(s) for s in shape),
        "crop": None,
        "affine": cine_affine(spacing if known else (math.nan, math.nan)),
    }


# --------------------------------------------------------------------------------------------------- DICOM
def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _dicom_frame_rate_problem(ds: Any) -> str | None:
    """What the header says about the frame timing when no frame rate can be taken from it, else ``None``."""
    if "FrameTime" in ds and _positive(ds.get("FrameTime")) is None:
        return f"FrameTime = {ds.get('FrameTime')!s} ms is not a positive number"
    return "no FrameTime, FrameTimeVector, CineRate or RecommendedDisplayFrameRate in the header"


def _dicom_frame_rate(ds: Any) -> float:
    ft = _positive(ds.get("FrameTime"))
    if ft is not None:
        return 1000.0 / ft
    ftv = ds.get("FrameTimeVector")
    if ftv is not None and len(ftv) > 1:
        steps = np.asarray([float(v) for v in ftv][1:])
        if np.isfinite(steps).all() and (steps > 0).all():
            return 1000.0 / float(steps.mean())
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        v = _positive(ds.get(key))
        if v is not None:
            return v
    return math.nan


def _dicom_region(ds: Any, H: int, W: int, path: str | Path) -> tuple[tuple[int, int, int, int] | None, tuple]:
    """Pick the largest 2D ultrasound region: ``((y0, y1, x0, x1) inclusive-exclusive, spacing (row mm, col mm))``.

    Some derived files (pydicom's ``examples.ybr_color``) were downsampled after the region was recorded, so the
    region lies outside the pixel grid. Then the smallest integer factor k in 2..8 that fits the region inside the
    image is applied to the region and the spacing, with a warning that names the file.
    """
    regions = [r for r in ds.get("SequenceOfUltrasoundRegions", []) if int(r.get("RegionSpatialFormat", 0)) == 1]
    if not regions:
        regions = list(ds.get("SequenceOfUltrasoundRegions", []))
    if not regions:
        ps = ds.get("PixelSpacing")
        return None, ((float(ps[0]), float(ps[1])) if ps is not None else (math.nan, math.nan))

    def area(r: Any) -> int:
        return (int(r.RegionLocationMaxX1) - int(r.RegionLocationMinX0)) * (
            int(r.RegionLocationMaxY1) - int(r.RegionLocationMinY0)
        )

    r = max(regions, key=area)
    x0, y0, x1, y1 = (
        int(r.RegionLocationMinX0),
        int(r.RegionLocationMinY0),
        int(r.RegionLocationMaxX1),
        int(r.RegionLocationMaxY1),
    )
    cm = int(r.get("PhysicalUnitsXDirection", 0)) == 3 and int(r.get("PhysicalUnitsYDirection", 0)) == 3
    spacing = (10.0 * float(r.PhysicalDeltaY), 10.0 * float(r.PhysicalDeltaX)) if cm else (math.nan, math.nan)
    k = 1
    if x1 >= W or y1 >= H:
        for k in range(2, 9):
            if x1 // k < W and y1 // k < H:
                break
        else:
            warnings.warn(
                f"{path}: ultrasound region {x0}-{x1} x {y0}-{y1} lies outside the {W} x {H} image; "
                "not cropped, spacing unknown",
                stacklevel=3,
            )
            return None, (math.nan, math.nan)
        warnings.warn(
            f"{path}: ultrasound region {x0}-{x1} x {y0}-{y1} lies outside the {W} x {H} image; the "
            f"image was downsampled by {k}: region and spacing scaled by {k}",
            stacklevel=3,
        )
    x0, y0, x1, y1 = x0 // k, y0 // k, x1 // k, y1 // k
    if x1 <= x0 or y1 <= y0:
        raise EchoDataError(path, f"empty ultrasound region {x0}-{x1} x {y0}-{y1}")
    return (y0, y1 + 1, x0, x1 + 1), (spacing[0] * k, spacing[1] * k)


def _check_dicom_frames(ds: Any, n_frames: int, path: str | Path) -> None:
    """Uncompressed pixel data must hold exactly ``NumberOfFrames`` frames (compressed data is checked after decoding).

    Raises:
        EchoDataError: the pixel data holds more or fewer whole frames than ``NumberOfFrames`` says.
    """
    try:  # pydicom >= 3
        from pydicom.pixels.utils import get_expected_length
    except ImportError:  # pydicom 2.x (MONAI Label's environment pins pydicom < 3)
        from pydicom.pixel_data_handlers.util import get_expected_length

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or syntax.is_compressed:
        return
    try:
        frame_bytes = get_expected_length(ds, unit="bytes") // n_frames
    except Exception:  # Rows, Columns or BitsAllocated missing: decoding names the problem
        return
    held = len(ds.PixelData) // frame_bytes if frame_bytes else n_frames
    if held != n_frames:
        raise EchoDataError(
            path,
            f"NumberOfFrames = {n_frames} disagrees with the pixel data, which holds {held} frames of "
            f"{int(ds.Rows)} x {int(ds.Columns)} pixels",
        )


_YBR_TO_RGB: np.ndarray | None = None  # [256 ** 3, 3] uint8, built on first use (see _ybr_to_rgb)


def _ybr_to_rgb(ybr: np.ndarray, convert: Any) -> np.ndarray:
    """8-bit YBR_FULL ``[..., 3]`` -> RGB ``[..., 3]`` uint8, exactly as ``convert(ybr)`` (pydicom's conversion).

    pydicom converts in float32 (a 3 x 3 matrix per pixel, rounding and clipping): ~30 ms per 480 x 640 frame, ten
    times the JPEG decoding itself. The conversion is pointwise, so it is done once for every (Y, Cb, Cr), into a
    48 MiB table (a fraction of a second, once per process), and a cine is converted by looking its pixels up.
    """
    global _YBR_TO_RGB
    if _YBR_TO_RGB is None:
        table = np.empty((256**3, 3), dtype=np.uint8)
        levels = np.arange(256, dtype=np.uint8)
        for y in range(0, 256, 16):  # 16 luma levels (1 Mi pixels) at a time: bounded memory
            block = np.stack(np.meshgrid(levels[y : y + 16], levels, levels, indexing="ij"), axis=-1)
            table[y * 65536 : (y + 16) * 65536] = convert(block.reshape(-1, 3)).reshape(-1, 3)
        _YBR_TO_RGB = table
    index = (ybr[..., 0].astype(np.int32) << 16) | (ybr[..., 1].astype(np.int32) << 8) | ybr[..., 2]
    return _YBR_TO_RGB[index]


def _decode_dicom(ds: Any) -> np.ndarray:
    """The pixel data of ``ds`` as numpy (``[T, H, W(, 3)]``), YBR_FULL(_422) converted to RGB, with pydicom 2 or 3.

    pydicom 3 (``pydicom.pixels.pixel_array``) converts YBR to RGB itself; pydicom 2.x (``ds.pixel_array``) returns
    YBR as stored (its Pillow JPEG decoder keeps YCbCr). Both are converted here with pydicom's ITU-R BT.601 formula
    (``convert_color_space``) through :func:`_ybr_to_rgb`'s table for 8-bit data (the same array, ten times faster),
    so both give the same array as pydicom 3's own conversion.
    """
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    ybr = pi in ("YBR_FULL", "YBR_FULL_422") and int(ds.get("SamplesPerPixel", 1)) == 3
    try:
        from pydicom import pixels
        from pydicom.pixels.processing import convert_color_space
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import convert_color_space

        arr = ds.pixel_array
    else:
        if not ybr:
            return pixels.pixel_array(ds)
        arr = pixels.pixel_array(ds, as_rgb=False)
    if not ybr:
        return arr
    if arr.dtype == np.uint8:
        return _ybr_to_rgb(arr, lambda block: convert_color_space(block, "YBR_FULL", "RGB"))
    return convert_color_space(arr, "YBR_FULL", "RGB")


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"  # the transfer syntax of most scanners' colour echo cines


def _jpeg_luminance(ds: Any) -> np.ndarray | None:
    """``[T, H, W]`` uint8: the luminance (Y) of every frame of an 8-bit YBR_FULL(_422) JPEG-baseline cine, or
    ``None`` when the cine is not one or a frame does not decode so (the caller then decodes it in full).

    The bundle segments grey frames, and the grey of a YBR frame is its Y plane (ITU-R BT.601: the luma of the RGB
    that Y, Cb, Cr convert to is Y again, up to the RGB's rounding and clipping). libjpeg (through Pillow's JPEG
    draft mode "L") then decodes only Y: no chroma upsampling, no colour conversion, no grey conversion here. Measured
    on the 2-core machine: pydicom-data's real 120-frame colour cine reads in 0.19 s instead of 1.36 s, pydicom's
    30-frame one in 0.011 s instead of 0.050 s; grey differs from the full decode by 0.02 levels on average (at most
    6.6 levels, on the 0.1-0.4 % of pixels whose RGB is clipped: coloured annotations).
    """
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if pi not in ("YBR_FULL", "YBR_FULL_422") or syntax != JPEG_BASELINE or int(ds.get("BitsAllocated", 8)) != 8:
        return None
    if "Rows" not in ds or "Columns" not in ds or "PixelData" not in ds:
        return None
    import io

    from PIL import Image

    n_frames, rows, columns = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    try:
        from pydicom.encaps import generate_frames  # pydicom 3

        frames = generate_frames(ds.PixelData, number_of_frames=n_frames)
    except ImportError:  # pydicom 2.x
        from pydicom.encaps import generate_pixel_data_frame

        frames = generate_pixel_data_frame(ds.PixelData, n_frames)
    luminance = np.empty((n_frames, rows, columns), dtype=np.uint8)
    decoded = 0
    try:
        for t, frame in enumerate(frames):
            if t >= n_frames:
                return None
            with Image.open(io.BytesIO(frame)) as image:
                image.draft("L", image.size)
                if image.mode != "L" or image.size != (columns, rows):
                    return None
                luminance[t] = np.asarray(image)
            decoded += 1
    except Exception:  # a damaged frame: the full decoder names it (or decodes what it can) as before
        return None
    return luminance if decoded == n_frames else None


def _apply_color_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR indices -> RGB through the dataset's lookup tables (pydicom 2 or 3)."""
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut
    return apply_color_lut(arr, ds)


def _load_dicom(path: str | Path, crop_to_region: bool) -> tuple[np.ndarray, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise EchoDataError(path, "not a DICOM file (no DICOM header)") from e
    except Exception as e:  # EOFError, struct errors on truncated files
        raise EchoDataError(path, f"truncated or corrupt DICOM file ({_one_line(e, path)})") from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise EchoDataError(path, "DICOM without pixel data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 0)
    if n_frames == 0:
        raise EchoDataError(path, "the cine has zero frames (NumberOfFrames = 0)")
    _check_dicom_frames(ds, n_frames, path)
    try:
        with warnings.catch_warnings():  # pydicom warns (without the file name) where the checks below raise
            warnings.simplefilter("ignore", UserWarning)
            luminance = _jpeg_luminance(ds)  # [T, H, W] grey straight from a colour JPEG cine, else None
            arr = luminance if luminance is not None else _decode_dicom(ds)  # YBR_* is converted to RGB here
    except Exception as e:
        raise EchoDataError(path, f"cannot decode pixel data ({_one_line(e, path)})") from e
    if n_frames > 1 and arr.shape[0] != n_frames:
        raise EchoDataError(path, f"NumberOfFrames = {n_frames} disagrees with the pixel data ({arr.shape[0]} frames)")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(ds.get("SamplesPerPixel", 1))
    if pi == "PALETTE COLOR":
        arr = _apply_color_lut(arr, ds)
        spp = 3
    if luminance is not None:
        spp = 1  # already grey
    if n_frames == 1 or arr.ndim == (3 if spp > 1 else 2):
        raise EchoDataError(path, "a single 2D image, expected a multi-frame cine")
    frames = _grey(arr) if spp > 1 else arr  # [T, H, W]
    if pi == "MONOCHROME1":
        frames = frames.max() - frames
    T, H, W = frames.shape
    crop, spacing = _dicom_region(ds, H, W, path) if crop_to_region else (None, (math.nan, math.nan))
    if not crop_to_region and "PixelSpacing" in ds:
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    image = np.moveaxis(frames, 0, -1)  # [H, W, T]
    if crop is not None:
        image = image[crop[0] : crop[1], crop[2] : crop[3]]
    check_cine(image, path)
    bits = int(ds.get("BitsStored", 8)) if spp == 1 else 8
    out = to_unit_range(image, bits_stored=bits) if np.issubdtype(image.dtype, np.integer) else to_unit_range(image)
    meta = _meta(path, "dicom", (H, W, T), spacing, _dicom_frame_rate(ds))
    meta["crop"] = crop
    meta["photometric_interpretation"] = pi
    meta["modality"] = str(ds.get("Modality", "")) or None
    meta["ultrasound_regions"] = [
        {"data_type": int(r.get("RegionDataType", 0)), "spatial_format": int(r.get("RegionSpatialFormat", 0))}
        for r in ds.get("SequenceOfUltrasoundRegions", [])
    ]
    if not math.isfinite(meta["frame_rate"]):
        meta["frame_rate_problem"] = _dicom_frame_rate_problem(ds)
    return out, meta


# --------------------------------------------------------------------------------------------------- video
def _load_video(path: str | Path) -> tuple[np.ndarray, dict]:
    import cv2

    if not Path(path).is_file():
        raise EchoDataError(path, "video file not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise EchoDataError(path, "not a readable video file")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or math.nan)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame)
    finally:
        cap.release()
    if not frames:
        raise EchoDataError(path, "the video has zero readable frames (truncated or not a video)")
    arr = np.stack(frames)  # [T, H, W(, 3)]
    image = np.moveaxis(_grey(arr) if arr.ndim == 4 else arr, 0, -1)
    check_cine(image, path)
    H, W, T = image.shape
    return to_unit_range(np.clip(image, 0, 255)), _meta(path, "video", (H, W, T), (math.nan, math.nan), fps)


# --------------------------------------------------------------------------------------------------- volumes
def load_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """Read a NIfTI or MetaImage ``H x W x T`` volume in display orientation, values as stored.

    NIfTI arrays are (x, y, t) on disk: ``np.transpose(data, (1, 0, 2))`` gives (row, col, t) and the zooms
    (x, y, t) give the spacing ``(y, x)``. ITK arrays are (t, y, x) with spacing (x, y, t).

    Returns:
        ``(array [H, W, T] or other ndim as found, (row mm, col mm, t step), format)``.
    """
    fmt = cine_format(path)
    if not Path(path).is_file():
        raise EchoDataError(path, "file not found")
    try:
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj).reshape(img.shape)  # keeps (x, y, 0) for an empty series
            if data.dtype.names:  # RGB24 / RGBA32: one structured (R, G, B) value per voxel -> luminance
                data = _grey(np.stack([data[c] for c in data.dtype.names[:3]], axis=-1))
            zooms = tuple(float(z) for z in img.header.get_zooms())
            if data.ndim == 4 and data.shape[2] == 1:  # x, y, 1, t
                data, zooms = data[:, :, 0], (zooms[0], zooms[1], zooms[3])
            if data.ndim >= 2:
                data = np.swapaxes(data, 0, 1)
            zooms = zooms + (1.0,) * (3 - len(zooms))
            return data, (zooms[1], zooms[0], zooms[2]), fmt
        if fmt == "itk":
            import itk

            img = itk.imread(str(path))
            data = np.asarray(itk.array_view_from_image(img)).copy()
            sp = tuple(float(s) for s in img.GetSpacing())
            if data.ndim == 3 and data.shape[-1] not in (3, 4) or data.ndim == 4:
                data = np.moveaxis(data, 0, -1)  # (t, y, x[, c]) -> (y, x[, c], t)
            sp = sp + (1.0,) * (3 - len(sp))
            return data, (sp[1], sp[0], sp[2]), fmt
    except EchoDataError:
        raise
    except Exception as e:  # truncated gzip, bad header, missing .raw
        raise EchoDataError(path, f"not a readable {fmt} file, truncated or corrupt ({_one_line(e, path)})") from e
    raise EchoDataError(path, f"not a volume file (format {fmt})")


def _load_volume_cine(path: str | Path) -> tuple[np.ndarray, dict]:
    data, (row, col, _t), fmt = load_volume(path)
    if data.ndim == 4:
        channels, frames = data.shape[2:]
        if channels not in (3, 4) or frames in (3, 4):  # (x, y, t, 3), (x, y, z, t) or ambiguous
            raise EchoDataError(
                path,
                f"a 4-D image of {data.shape[1]} x {data.shape[0]} x {channels} x {frames} voxels is not a cine: "
                "expected x, y, t (grey) or x, y, 3, t (RGB before time, more than 4 frames)",
            )
        data = _grey(np.moveaxis(data, 2, -1))  # colour (y, x, c, t) -> (y, x, t)
    check_cine(data, path)
    return to_unit_range(data), _meta(path, fmt, data.shape, (row, col), math.nan)


# --------------------------------------------------------------------------------------------------- API
def load_cine(path: str | Path, crop_to_region: bool = True) -> tuple[np.ndarray, dict]:
    """Read a cine loop.

    Args:
        path: multi-frame DICOM (MONOCHROME1/2, RGB, YBR_FULL(_422), PALETTE COLOR; any transfer syntax pydicom
            decodes, JPEG baseline via Pillow), video (.avi as EchoNet-Dynamic, via OpenCV), NIfTI (.nii/.nii.gz,
            stored x, y, t as CAMUS) or MetaImage/NRRD (.mhd/.mha/.nrrd via ITK, stored t, y, x).
        crop_to_region: DICOM only: crop to the largest ``SequenceOfUltrasoundRegions`` region and take its
            calibration (PhysicalDeltaX/Y, cm -> mm).

    Returns:
        ``image_HWT``: float32 ``[H, W, T]`` in [0, 1], grey (BT.601 luminance).
        ``meta``: ``filename_or_obj``, ``format``, ``spacing`` (row mm, col mm; NaN when unknown),
        ``spacing_known``, ``frame_rate`` (Hz, NaN when unknown), ``frame_time_ms``, ``original_shape``
        (H, W, T before cropping), ``crop`` ((y0, y1, x0, x1) or None), ``affine`` (4 x 4, see ``cine_affine``).

    Raises:
        EchoDataError: missing, empty, unreadable or truncated file, 2D image, zero frames, NaN or constant frames,
            DICOM without pixel data or whose NumberOfFrames disagrees with it, a 4-D image that is not
            ``x, y, 3, t`` colour. The message starts with the file and fits on one line.
    """
    if not Path(path).is_file():
        raise EchoDataError(path, "file not found" if not Path(path).exists() else "not a file")
    if Path(path).stat().st_size == 0:
        raise EchoDataError(path, "empty file (0 bytes)")
    fmt = cine_format(path)
    if fmt == "dicom":
        return _load_dicom(path, crop_to_region)
    if fmt == "video":
        return _load_video(path)
    return _load_volume_cine(path)


def to_meta_tensor(array: np.ndarray | torch.Tensor, meta: Mapping[str, Any]) -> MetaTensor:
    """Wrap ``[H, W, T]`` (adds the channel) or ``[C, H, W, T]`` as a MetaTensor with the contract's affine.

    ``meta`` entries become MetaTensor metadata (``affine`` is rebuilt from ``spacing``; None values are dropped).
    """
    t = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array)
    if t.ndim == 3:
        t = t[None]
    m = {k: v for k, v in meta.items() if k != "affine" and v is not None}  # None does not collate
    return MetaTensor(t, affine=torch.as_tensor(cine_affine(meta["spacing"]), dtype=torch.float64), meta=m)


class DecodedCine:
    """A cine as :func:`load_cine` decoded it, kept for the result writer so that the input is decoded once.

    Attributes:
        image_HWT: ``[H, W, T]`` float32 in [0, 1], a torch tensor (it crosses to DataLoader workers and writer
            processes through shared memory, not a copy); :meth:`numpy` gives the array.
        meta: :func:`load_cine`'s metadata, as it returned it.
    """

    def __init__(self, image_HWT: np.ndarray | torch.Tensor, meta: Mapping[str, Any]) -> None:
        self.image_HWT = torch.as_tensor(image_HWT)
        self.meta = dict(meta)

    def numpy(self) -> np.ndarray:
        """The image ``[H, W, T]`` float32 (a view of the tensor's memory)."""
        return self.image_HWT.numpy()

    def __repr__(self) -> str:
        return f"DecodedCine({self.meta.get('filename_or_obj')}, {tuple(self.image_HWT.shape)})"


class LoadCined(MapTransform):
    """Load a cine file named by ``d[key]`` into the contract: MetaTensor ``[1, H, W, T]`` float32 in [0, 1].

    ``keep_source=True`` also keeps the decoded input, before any later transform, as ``d["source_cine"]`` (a
    :class:`DecodedCine`, ``[H, W, T]``): the inference writer takes the input's pixels and geometry from it
    instead of decoding the file again (the MetaTensor shares its memory until a transform replaces it).

    Also sets ``d["spacing"]`` (float32 ``[2]``, row/col mm, NaN when unknown), ``d["frame_rate"]`` (Hz or NaN) and,
    unless present, ``d["label_frames"]`` (``[T]`` bool, all False: nothing annotated), ``d["ed_index"] = 0`` and
    ``d["es_index"] = T - 1``.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable = "image",
        crop_to_region: bool = True,
        allow_missing_keys: bool = False,
        keep_source: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop_to_region = crop_to_region
        self.keep_source = bool(keep_source)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, meta = load_cine(d[key], crop_to_region=self.crop_to_region)
            d[key] = to_meta_tensor(image, meta)
            if self.keep_source:
                d[SOURCE_KEY] = DecodedCine(d[key].as_tensor()[0], meta)
            T = image.shape[-1]
            d.setdefault("spacing", np.asarray(meta["spacing"], dtype=np.float32))
            d.setdefault("frame_rate", meta["frame_rate"])
            d.setdefault("label_frames", np.zeros(T, dtype=bool))
            d.setdefault("ed_index", 0)
            d.setdefault("es_index", T - 1)
        return d
