"""Writers of small echo fixtures in the exact on-disk formats of the real data (no patient data).

- CAMUS NIfTI release: ``database_nifti/patientNNNN/...half_sequence(_gt).nii.gz`` stored (x, y, t), Info cfgs,
  ``database_split/``.
- CAMUS .mhd release: ``training/patientNNNN/..._sequence.mhd`` (ITK, stored t, y, x) + ``_ED_gt/_ES_gt.mhd``.
- EchoNet-Dynamic: ``Videos/*.avi`` (MJPG, 112 x 112), ``FileList.csv``, ``VolumeTracings.csv``.
- Multi-frame ultrasound DICOM: MONOCHROME2, RGB, JPEG baseline YBR_FULL_422, with SequenceOfUltrasoundRegions.

And the reading side of a viewer: :func:`itk_view` (a file as 3D Slicer reads it), :func:`assert_same_geometry`,
:func:`annotate_as_slicer` (a label drawn on a volume and written as Slicer writes a labelmap).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

H_CAMUS, W_CAMUS = 48, 40  # non-square on purpose: catches transposed frames


def phantom(H: int, W: int, T: int, seed: int = 0, shrink: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """A beating-disc phantom: image uint8 ``[H, W, T]`` and labels uint8 ``[H, W, T]`` (1 LV, 2 myo, 3 LA).

    The LV radius shrinks linearly from frame 0 (largest, "ED") to frame T - 1 ("ES") by ``shrink``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = 0.4 * H, 0.5 * W
    r_ed = 0.25 * min(H, W)
    image = np.empty((H, W, T), np.uint8)
    label = np.zeros((H, W, T), np.uint8)
    for t in range(T):
        r = r_ed * (1 - shrink * t / max(T - 1, 1))
        d = np.hypot(yy - cy, xx - cx)
        lab = np.zeros((H, W), np.uint8)
        lab[(d >= r) & (d < r + 3)] = 2
        lab[d < r] = 1
        lab[np.hypot(yy - 0.8 * H, xx - cx) < 0.12 * min(H, W)] = 3
        base = np.where(lab == 2, 180, np.where(lab == 0, 90, 20)).astype(float)
        image[..., t] = np.clip(base + rng.normal(0, 15, (H, W)), 0, 255).astype(np.uint8)
        label[..., t] = lab
    return image, label


def info_cfg(ed: int, es: int, n: int, ef: float = 55.0, old: bool = False) -> str:
    """Text of an ``Info_<view>.cfg`` (1-based ED/ES)."""
    head = f"ED: {ed}\nES: {es}\nNbFrame: {n}\nSex: F\nAge: 56\nImageQuality: Good\n"
    if old:
        return head + f"LVedv: 90.5\nLVesv: 40.7\nLVef: {ef}\n"
    return head + f"EF: {ef}\nFrameRate: 25.0\n"


def save_nifti_hwt(array_HWT: np.ndarray, path: Path, spacing_rc: tuple[float, float] = (0.3, 0.2)) -> None:
    """Save ``[H, W, T]`` as CAMUS does: data (x, y, t) = transpose, zooms (x mm, y mm, 1)."""
    import nibabel as nib

    data = np.transpose(array_HWT, (1, 0, 2)) if array_HWT.ndim == 3 else array_HWT.T
    img = nib.Nifti1Image(data, np.diag([spacing_rc[1], spacing_rc[0], 1.0, 1.0]))
    img.header.set_zooms((spacing_rc[1], spacing_rc[0], 1.0)[: data.ndim])
    nib.save(img, str(path))


def write_camus_nifti(root: Path, n_patients: int = 3, T: int = 8, reversed_ids: tuple[int, ...] = (2,)) -> Path:
    """CAMUS NIfTI layout with ``n_patients`` patients; patients in ``reversed_ids`` have ED > ES (ED last)."""
    base = root / "database_nifti"
    for i in range(1, n_patients + 1):
        pid = f"patient{i:04d}"
        folder = base / pid
        folder.mkdir(parents=True)
        for v, view in enumerate(("2CH", "4CH")):
            image, label = phantom(H_CAMUS, W_CAMUS, T, seed=10 * i + v)
            ed, es = 1, T
            if i in reversed_ids:  # stored ES ... ED: reverse time, ED is the last frame
                image, label, ed, es = image[..., ::-1], label[..., ::-1], T, 1
            save_nifti_hwt(image, folder / f"{pid}_{view}_half_sequence.nii.gz")
            save_nifti_hwt(label, folder / f"{pid}_{view}_half_sequence_gt.nii.gz")
            (folder / f"Info_{view}.cfg").write_text(info_cfg(ed, es, T))
    split = root / "database_split"
    split.mkdir(parents=True)
    ids = [f"patient{i:04d}" for i in range(1, n_patients + 1)]
    (split / "subgroup_training.txt").write_text("\n".join(ids[:-1]) + "\n")
    (split / "subgroup_validation.txt").write_text(ids[-1] + "\n")
    (split / "subgroup_testing.txt").write_text("")
    return root


def write_itk(array: np.ndarray, path: Path, spacing_xyz: tuple[float, ...]) -> None:
    """Write a numpy array in ITK order ((t,) y, x) as .mhd/.raw."""
    import itk

    img = itk.image_from_array(np.ascontiguousarray(array))
    img.SetSpacing(list(spacing_xyz))
    itk.imwrite(img, str(path))


def write_camus_mhd(root: Path, T: int = 8, ed_gt_last: bool = True) -> Path:
    """Older CAMUS release: one patient in ``training/`` with a full ``_sequence.mhd`` and ED/ES gt frames.

    ED is frame T (1-based), ES frame 3: ED > ES in the file.
    """
    pid = "patient0001"
    folder = root / "training" / pid
    folder.mkdir(parents=True)
    image, label = phantom(H_CAMUS, W_CAMUS, T, seed=3)
    image, label = image[..., ::-1], label[..., ::-1]  # LV grows with time: ED last
    ed, es = T, 3
    for view in ("2CH", "4CH"):
        write_itk(np.moveaxis(image, -1, 0), folder / f"{pid}_{view}_sequence.mhd", (0.2, 0.3, 1.0))
        write_itk(label[..., ed - 1], folder / f"{pid}_{view}_ED_gt.mhd", (0.2, 0.3))
        write_itk(label[..., es - 1], folder / f"{pid}_{view}_ES_gt.mhd", (0.2, 0.3))
        (folder / f"Info_{view}.cfg").write_text(info_cfg(ed, es, T, old=True))
    return root


def ellipse_trace(cx: float, cy: float, a: float, b: float, n_chords: int = 20) -> np.ndarray:
    """EchoNet-style tracing of an ellipse (vertical half-axis ``a``, horizontal ``b``): ``[1 + n, 4]`` (X1,Y1,X2,Y2).

    Row 0 is the long axis, then ``n_chords`` horizontal chords.
    """
    th = np.arange(1, n_chords + 1) * np.pi / (n_chords + 1)
    ys = cy - a * np.cos(th)
    rows = [(cx, cy - a, cx, cy + a)] + [(cx - b * np.sin(t), y, cx + b * np.sin(t), y) for t, y in zip(th, ys)]
    return np.asarray(rows)


def write_avi(frames_THW: np.ndarray, path: Path, fps: float = 50.0) -> None:
    """MJPG AVI as EchoNet-Dynamic's ``savevideo`` (grey frames written as BGR)."""
    import cv2

    T, H, W = frames_THW.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for f in frames_THW:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()


def write_echonet(
    root: Path, names: tuple[str, ...] = ("0X1A", "0X2B", "0X3C"), T: int = 30, untraced: tuple[str, ...] = ("0X3C",)
) -> Path:
    """EchoNet-Dynamic layout. Video k: ED traced at frame 20 (large ellipse), ES at frame 5 (small ellipse)."""
    videos = root / "Videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (root / "FileList.csv").open("w") as f:
        f.write("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n")
        for k, name in enumerate(names):
            split = "TRAIN" if k % 2 == 0 else "VAL"
            f.write(f"{name},60.0,40.0,100.0,112,112,50,{T},{split}\n")
            frames = rng.integers(0, 200, (T, 112, 112), dtype=np.uint8)
            write_avi(frames, videos / f"{name}.avi")
    with (root / "VolumeTracings.csv").open("w") as f:
        f.write("FileName,X1,Y1,X2,Y2,Frame\n")
        for name in names:
            if name in untraced:
                continue
            for frame, (a, b) in ((5, (25, 12)), (20, (40, 20))):  # CSV order: ES first, as the real file
                for x1, y1, x2, y2 in ellipse_trace(56, 56, a, b):
                    f.write(f"{name}.avi,{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{frame}\n")
    return root


def _us_dataset(T: int, H: int, W: int, region: tuple[int, int, int, int] | None, frame_time_ms: float | None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "0"
    ds.NumberOfFrames = T
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frame_time_ms is not None:
        ds.FrameTime = f"{frame_time_ms:.3f}"
        ds.FrameIncrementPointer = 0x00181063
    if region is not None:
        x0, y0, x1, y1 = region
        r = Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 2
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
        r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = 3, 3
        r.PhysicalDeltaX, r.PhysicalDeltaY = 0.03, 0.04  # cm: col 0.3 mm, row 0.4 mm
        ds.SequenceOfUltrasoundRegions = [r]
    return ds


def write_dicom(
    path: Path,
    frames: np.ndarray,
    kind: str = "mono",
    region: tuple[int, int, int, int] | None = None,
    frame_time_ms: float | None = 20.0,
) -> Path:
    """Write a multi-frame ultrasound DICOM.

    Args:
        frames: uint8 ``[T, H, W]`` (mono) or ``[T, H, W, 3]`` RGB.
        kind: ``"mono"`` (MONOCHROME2), ``"rgb"`` (RGB, explicit VR) or ``"jpeg"`` (JPEG baseline per frame through
            Pillow, YBR_FULL_422, encapsulated).
        region: ``(x0, y0, x1, y1)`` of a SequenceOfUltrasoundRegions item (0.4 mm rows, 0.3 mm columns), or None.
    """
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    T, H, W = frames.shape[:3]
    ds = _us_dataset(T, H, W, region, frame_time_ms)
    if kind == "mono":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    else:
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        if kind == "rgb":
            ds.PhotometricInterpretation = "RGB"
            ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
        elif kind == "jpeg":
            ds.PhotometricInterpretation = "YBR_FULL_422"
            encoded = []
            for f in frames:
                buf = io.BytesIO()
                Image.fromarray(f, "RGB").save(buf, format="JPEG", quality=95, subsampling=1)
                encoded.append(buf.getvalue())
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.PixelData = encapsulate(encoded)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.LossyImageCompression = "01"
        else:
            raise ValueError(kind)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_bad_cines(folder: Path, H: int = 32, W: int = 40, T: int = 4) -> dict[str, tuple[Path, str]]:
    """One file per kind of bad input that the inference command must report (docs/datasets.md, "Bad input").

    Returns:
        ``{case: (path, regex of the problem that the loader reports)}``.
    """
    import nibabel as nib
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    image, _ = phantom(H, W, T, seed=7)
    frames = np.moveaxis(image, -1, 0)
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, file: str, problem: str) -> Path:
        cases[name] = (folder / file, problem)
        return folder / file

    save_nifti_hwt(image, folder / ".whole.nii.gz")
    whole = (folder / ".whole.nii.gz").read_bytes()
    (folder / ".whole.nii.gz").unlink()
    case("truncated_nifti", "truncated.nii.gz", "not a readable nifti file, truncated or corrupt").write_bytes(
        whole[: len(whole) // 2]
    )
    case("corrupt_nifti", "corrupt.nii", "not a readable nifti file").write_bytes(bytes(range(256)) * 3)
    case("zero_byte_dicom", "zero.dcm", r"empty file \(0 bytes\)").write_bytes(b"")
    case("non_dicom_dcm", "notes.dcm", r"not a DICOM file \(no DICOM header\)").write_text("a letter, not an image")
    path = write_dicom(case("dicom_without_pixels", "nopixels.dcm", "DICOM without pixel data"), frames)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    for name, file, n in (("frames_more_than_data", "frames9.dcm", 9), ("frames_less_than_data", "frames2.dcm", 2)):
        path = write_dicom(case(name, file, f"NumberOfFrames = {n} disagrees with the pixel data"), frames)
        ds = pydicom.dcmread(path)
        ds.NumberOfFrames = n
        ds.save_as(path)
    write_dicom(case("one_frame_dicom", "oneframe.dcm", "single 2D image"), frames[:1])
    save_nifti_hwt(image[..., :1], case("one_frame_nifti", "oneframe.nii.gz", "single 2D image"))
    unusual = image.astype(np.float32) / 255
    unusual[2, 3, 1], unusual[5, 5, 2] = np.nan, np.inf
    save_nifti_hwt(unusual, case("nan_inf", "naninf.nii.gz", r"NaN or infinite values in frames \[1, 2\]"))
    rgb = np.stack([np.transpose(image, (1, 0, 2))] * 3, axis=-1)  # (x, y, t, 3)
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(case("rgb_4d_nifti", "rgb.nii.gz", "4-D image .* is not a cine")))
    case("text_as_avi", "text.avi", "not a readable video file").write_text("plain text renamed .avi\n" * 20)
    write_corrupt_jpeg_frame(case("corrupt_jpeg_frame", "corruptframe.dcm", "cannot decode pixel data"), frames)
    return cases


def itk_view(path: str | Path) -> dict[str, np.ndarray]:
    """A file as 3D Slicer reads it (ITK): size (x, y, t), spacing, origin, direction 3 x 3 and the array (t, y, x)."""
    import itk

    image = itk.imread(str(path))
    return {
        "size": np.asarray(itk.size(image), dtype=int),
        "spacing": np.asarray(image.GetSpacing(), dtype=float),
        "origin": np.asarray(image.GetOrigin(), dtype=float),
        "direction": np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=float),
        "array": np.asarray(itk.array_view_from_image(image)).copy(),
    }


def assert_same_geometry(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Two :func:`itk_view` results overlay voxel for voxel: same size, spacing, origin and direction (to the float32
    precision of a NIfTI header)."""
    np.testing.assert_array_equal(a["size"], b["size"])
    np.testing.assert_allclose(a["spacing"], b["spacing"], rtol=1e-5)
    np.testing.assert_allclose(a["origin"], b["origin"], atol=1e-4)
    np.testing.assert_allclose(a["direction"], b["direction"], atol=1e-6)


def annotate_as_slicer(
    volume: str | Path, out: Path, rows: slice, cols: slice, frames: tuple[int, ...], value: int = 1
) -> np.ndarray:
    """A label an annotator draws on ``volume`` as a viewer opened it: ``value`` in ``rows`` x ``cols`` (ITK array
    indices) on ``frames``, written by ITK with the volume's own geometry (as 3D Slicer writes a labelmap over its
    reference volume). Returns the drawing, uint8 (t, y, x)."""
    import itk

    image = itk.imread(str(volume))
    drawing = np.zeros(itk.array_view_from_image(image).shape[:3], np.uint8)
    for frame in frames:
        drawing[frame, rows, cols] = value
    label = itk.image_from_array(drawing)
    label.CopyInformation(image)
    itk.imwrite(label, str(out), True)
    return drawing


def write_corrupt_jpeg_frame(path: Path, frames_THW: np.ndarray, frame: int = 2) -> Path:
    """A colour JPEG-baseline DICOM cine whose frame ``frame`` is cut to a third, as a damaged transfer leaves it
    (pydicom logs the decoder's traceback when it cannot decode the frame)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    rgb = np.repeat(np.asarray(frames_THW, dtype=np.uint8)[..., None], 3, axis=-1)
    write_dicom(path, rgb, kind="jpeg")
    ds = pydicom.dcmread(path)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=len(rgb)))
    encoded[frame] = encoded[frame][: len(encoded[frame]) // 3]
    ds.PixelData = encapsulate(encoded)
    ds.save_as(path)
    return path
