"""Inputs of ``bench/archive.py``: a folder of synthetic NIfTI cines and a folder of DICOM cines as scanners write them.

- NIfTI: the first ``n`` ``*_half_sequence.nii.gz`` of the synthetic CAMUS-layout set (``bundle/data/synthetic``,
  made by ``make demo``), linked into the folder.
- DICOM: ``n`` colour JPEG-baseline (YBR_FULL_422) multi-frame ultrasound DICOMs of 30-120 frames, the image in an
  ultrasound region (with its calibration) of a larger scanner frame. Their pictures are synthetic cines
  (``scripts.synthetic.generate_sequence``, mode ``cine``, a few beats) played on forwards and backwards to the drawn
  length and scaled up to the region; written by ``tests/fixtures_echo.py``'s ``write_dicom(kind="jpeg")``. The
  real apical four-chamber cine of pydicom (``bundle/data/samples/pydicom_apical4ch_ybr_color.dcm``, 30 frames,
  JPEG baseline, colour) joins them where present.

A folder is reused when its manifest says it holds the same set.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT / "bundle", REPO_ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fixtures_echo import write_dicom  # noqa: E402

SYNTHETIC_NIFTI = REPO_ROOT / "bundle" / "data" / "synthetic" / "database_nifti"
REAL_DICOM = REPO_ROOT / "bundle" / "data" / "samples" / "pydicom_apical4ch_ybr_color.dcm"
SCANNER_FRAME = (480, 640)  # rows x columns of the DICOM frame; the image lies in a square region inside
REGION = (112, 24, 544, 456)  # x0, y0, x1, y1 of the ultrasound region (432 x 432 pixels)


def _manifest_matches(folder: Path, manifest: dict) -> bool:
    path = folder / "manifest.json"
    return path.is_file() and json.loads(path.read_text()) == manifest


def _fresh(folder: Path, manifest: dict) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def nifti_folder(folder: Path, n: int) -> Path:
    """``folder/cines`` with links to ``n`` synthetic half-sequence NIfTI cines (10-22 frames, 256 x 256)."""
    sources = sorted(SYNTHETIC_NIFTI.glob("patient*/*_half_sequence.nii.gz"))[:n]
    if len(sources) < n:
        raise SystemExit(f"archive bench: {len(sources)} synthetic cines in {SYNTHETIC_NIFTI}, {n} asked (make demo)")
    manifest = {"kind": "nifti", "files": [s.name for s in sources]}
    if not _manifest_matches(folder, manifest):
        _fresh(folder, manifest)
        (folder / "cines").mkdir()
        for source in sources:
            (folder / "cines" / source.name).symlink_to(source)
    return folder / "cines"


def _scanner_frames(image_HWT: np.ndarray, n_frames: int, tint: float) -> np.ndarray:
    """``[n_frames, 480, 640, 3]`` uint8: the cine bounced to ``n_frames``, scaled into the region, a colour tint
    (as scanners' grey maps have) and a green ECG-like trace under it."""
    import torch
    import torch.nn.functional as F

    T = image_HWT.shape[-1]
    bounce = np.concatenate([np.arange(T), np.arange(T - 2, 0, -1)]) if T > 2 else np.arange(T)
    index = np.resize(bounce, n_frames)
    x0, y0, x1, y1 = REGION
    frames = torch.as_tensor(image_HWT[..., index]).permute(2, 0, 1)[:, None].float()
    region = F.interpolate(frames, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[:, 0].numpy()
    out = np.zeros((n_frames, *SCANNER_FRAME, 3), dtype=np.uint8)
    grey = (np.clip(region, 0, 1) * 255).astype(np.float32)
    for c, gain in enumerate((1.0, 1.0 - tint / 2, 1.0 - tint)):
        out[:, y0:y1, x0:x1, c] = (grey * gain).astype(np.uint8)
    columns = np.arange(x0, x1)
    for t in range(n_frames):
        rows = (y1 + 10 + 6 * np.sin(columns / 9.0 + t / 3.0)).astype(int)
        out[t, rows, columns, 1] = 220
    return out


def dicom_folder(folder: Path, n: int, frames: tuple[int, int] = (30, 120), seed: int = 0) -> Path:
    """``folder/cines`` with ``n`` colour JPEG-baseline DICOM cines of ``frames[0]``-``frames[1]`` frames (see the
    module), plus pydicom's real cine when present."""
    from scripts.synthetic import generate_sequence

    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(frames[0], frames[1] + 1, n)]
    manifest = {"kind": "dicom", "lengths": lengths, "seed": seed, "real": REAL_DICOM.is_file()}
    if _manifest_matches(folder, manifest):
        return folder / "cines"
    _fresh(folder, {})
    (folder / "cines").mkdir()
    pictures = [generate_sequence(s, view=("4CH", "2CH")[s % 2], size=256, n_frames=60, mode="cine") for s in range(4)]
    for i, length in enumerate(lengths):
        picture = pictures[i % len(pictures)]
        rgb = _scanner_frames(np.asarray(picture["image"]), length, tint=0.1 + 0.05 * (i % 3))
        write_dicom(
            folder / "cines" / f"IM{i:04d}.dcm", rgb, kind="jpeg", region=REGION,
            frame_time_ms=1000.0 / float(picture["frame_rate"]),
        )  # fmt: skip
    if REAL_DICOM.is_file():
        shutil.copy(REAL_DICOM, folder / "cines" / REAL_DICOM.name)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "cines"
