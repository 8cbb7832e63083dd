"""Write synthetic data sets in the exact on-disk layouts of CAMUS (NIfTI release) and EchoNet-Dynamic.

Every file is written under a temporary name in its final folder and renamed, so a killed run leaves no
half-written file; rerunning skips patients / videos whose files are all present.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .failures import resolve_failures
from .sequence import generate_sequence

CAMUS_VIEWS = ("2CH", "4CH")
SPLITS = ("training", "validation", "testing")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path in the same folder (same suffixes), then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}_{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    _atomic(path, lambda tmp: tmp.write_text(text))


STAMP_FILE = "synthetic_generator.json"


def source_version(folder: str | Path) -> str:
    """Short sha1 of the ``*.py`` files in ``folder`` (names and contents): data written by other code differs."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def generator_version() -> str:
    """Short sha1 of this package's source files: data written by another version of the generator differs."""
    return source_version(Path(__file__).parent)


DEFAULT_FRAMES = (10, 22)
DEFAULT_REVERSE_FRACTION = 0.2


def failures_key(failures: Any = None) -> str | list[str]:
    """Canonical form of a ``failures`` option for the stamp: ``"default"`` or the sorted names switched on."""
    modes, realistic = resolve_failures(failures)
    return "default" if realistic else sorted(modes)


def dataset_stamp(
    n_patients: int,
    seed: int = 0,
    size: int = 256,
    frames: tuple[int, int] = DEFAULT_FRAMES,
    reverse_fraction: float = DEFAULT_REVERSE_FRACTION,
    failures: Any = None,
    hard: bool = False,
) -> dict:
    """What ``out/synthetic_generator.json`` records about a CAMUS-layout data set written by this generator."""
    return {
        "failures": failures_key(failures),
        "hard": bool(hard),
        "generator_version": generator_version(),
        "n_patients": int(n_patients),
        "seed": int(seed),
        "size": int(size),
        "frames": [int(frames[0]), int(frames[1])],
        "reverse_fraction": float(reverse_fraction),
    }


def read_stamp(out: str | Path) -> dict | None:
    """The stamp of the data set in ``out``, or None when there is none (not written by this generator's writer)."""
    path = Path(out) / STAMP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def same_patients(stamp_a: dict | None, stamp_b: dict | None) -> bool:
    """Whether two stamps describe the same patient files (generator and arguments; the patient count may differ)."""
    if stamp_a is None or stamp_b is None:
        return False
    return {k: v for k, v in stamp_a.items() if k != "n_patients"} == {
        k: v for k, v in stamp_b.items() if k != "n_patients"
    }


def _split_of(n: int, rng: np.random.Generator, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[int]:
    """Split index (0 train, 1 validation, 2 test) of each of ``n`` items, shuffled, in the given proportions."""
    n_val = int(round(fractions[1] * n)) if n >= 3 else 0
    n_test = int(round(fractions[2] * n)) if n >= 3 else 0
    n_val, n_test = (max(1, n_val), max(1, n_test)) if n >= 3 else (0, 0)
    split = np.array([0] * (n - n_val - n_test) + [1] * n_val + [2] * n_test)
    return [int(x) for x in rng.permutation(split)]


def _progress(items: Iterable[Any], total: int, desc: str, progress: bool) -> Iterable[Any]:
    """Wrap with a tqdm bar when ``progress``."""
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="item")


def _save_nifti(path: Path, data_hw: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write ``[H, W]`` or ``[H, W, T]`` uint8 as CAMUS does: array axes (W, H[, T]), zooms (sx, sy[, 1])."""
    import nibabel as nib

    arr = np.ascontiguousarray(np.swapaxes(data_hw, 0, 1))
    sy, sx = spacing
    affine = np.diag([sx, sy, 1.0, 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm", "sec")
    _atomic(path, lambda tmp: nib.save(img, str(tmp)))


def _camus_files(folder: Path, pid: str) -> list[Path]:
    """Every file of one patient folder (phantom JSONs last, as the completeness marker)."""
    names = []
    for v in CAMUS_VIEWS:
        names += [f"{pid}_{v}_half_sequence.nii.gz", f"{pid}_{v}_half_sequence_gt.nii.gz"]
        names += [f"{pid}_{v}_{p}{g}.nii.gz" for p in ("ED", "ES") for g in ("", "_gt")]
        names.append(f"Info_{v}.cfg")
    names += [f"{pid}_{v}_phantom.json" for v in CAMUS_VIEWS]
    return [folder / n for n in names]


def write_camus_patient(
    out: Path,
    index: int,
    seed: int,
    size: int = 256,
    frames: tuple[int, int] = (10, 22),
    reverse_fraction: float = 0.2,
    failures: Any = None,
    hard: bool = False,
) -> Path:
    """Write patient ``index`` (1-based) into ``out/database_nifti/patientNNNN/``; returns the folder."""
    pid = f"patient{index:04d}"
    folder = Path(out) / "database_nifti" / pid
    rng = np.random.default_rng([seed, index, 7])
    ef = rng.uniform(0.20, 0.75)
    sex, age = str(rng.choice(["M", "F"])), int(rng.integers(20, 90))
    quality = str(rng.choice(["Good", "Medium", "Poor"], p=[0.5, 0.38, 0.12]))
    truths = {}
    for k, view in enumerate(CAMUS_VIEWS):
        n = int(rng.integers(frames[0], frames[1] + 1))
        reverse = bool(rng.random() < reverse_fraction)
        mode = "diastole" if reverse else "systole"
        seq = generate_sequence(
            [seed, index, k], view=view, ef=ef, size=size, n_frames=n, mode=mode, failures=failures, hard=hard
        )
        img = np.round(seq["image"] * 255.0).astype(np.uint8)
        lab = seq["label"]
        ed, es, sp = seq["ed"], seq["es"], seq["spacing_mm"]
        base = f"{pid}_{view}"
        _save_nifti(folder / f"{base}_half_sequence.nii.gz", img, sp)
        _save_nifti(folder / f"{base}_half_sequence_gt.nii.gz", lab, sp)
        for name, t in (("ED", ed), ("ES", es)):
            _save_nifti(folder / f"{base}_{name}.nii.gz", img[..., t], sp)
            _save_nifti(folder / f"{base}_{name}_gt.nii.gz", lab[..., t], sp)
        cfg = (
            f"ED: {ed + 1}\nES: {es + 1}\nNbFrame: {n}\nSex: {sex}\nAge: {age}\nImageQuality: {quality}\n"
            f"EF: {seq['ef']:.1f}\nFrameRate: {seq['frame_rate']:.1f}\n"
        )
        _write_text(folder / f"Info_{view}.cfg", cfg)
        truths[view] = truth_record(seq)
    for view in CAMUS_VIEWS:  # truth last: its presence marks the patient complete
        _write_text(folder / f"{pid}_{view}_phantom.json", json.dumps(truths[view], indent=1))
    return folder


def truth_record(seq: dict[str, Any]) -> dict[str, Any]:
    """JSON-serialisable phantom truth of a sequence from :func:`generate_sequence` (indices 0-based)."""
    return {
        "view": seq["view"],
        "ed": seq["ed"],
        "es": seq["es"],
        "nb_frames": int(seq["image"].shape[-1]),
        "edv_ml": seq["edv_ml"],
        "esv_ml": seq["esv_ml"],
        "ef": seq["ef"],
        "volumes_ml": [float(x) for x in seq["volumes_ml"]],
        "heart_rate": seq["heart_rate"],
        "frame_rate": seq["frame_rate"],
        "spacing_mm": [float(x) for x in seq["spacing_mm"]],
        "geometry": {k: (list(v) if isinstance(v, tuple) else v) for k, v in seq["geometry"].items()},
        "ef_definition": "100 (EDV - ESV) / EDV of the phantom's truncated prolate ellipsoid cavity at frames ed, es",
        "occluded": [int(x) for x in seq["occluded"]],
        "border_hidden": [round(float(x), 4) for x in seq["border_hidden"]],
        "failures": seq["failures"],
    }


def write_camus_dataset(
    out: str | Path,
    n_patients: int,
    seed: int = 0,
    size: int = 256,
    frames: tuple[int, int] = DEFAULT_FRAMES,
    reverse_fraction: float = DEFAULT_REVERSE_FRACTION,
    progress: bool = False,
    failures: Any = None,
    hard: bool = False,
    subsets: Sequence[str] | None = None,
) -> Path:
    """Write ``n_patients`` synthetic patients in the CAMUS NIfTI layout under ``out``; returns ``out``.

    ``subsets``: write only the patients of these splits (e.g. ``("testing",)`` for a hard test set of the same
    patients as the default data's test split); the other split files are then empty. None writes every patient.

    ``failures``/``hard`` as in :func:`generate_sequence` (None: the realistic default; ``hard=True``: the hard
    split, every half sequence with an occluded stretch). The truth JSON gets ``occluded`` (0/1 per stored frame),
    ``border_hidden`` and ``failures``.

    ``out/database_nifti/patientNNNN/...`` (see the package docstring) and
    ``out/database_split/subgroup_{training,validation,testing}.txt`` (80/10/10 %), and ``out/synthetic_generator.json``
    (:func:`dataset_stamp`: generator version and arguments, written first). Complete patients are skipped when the
    folder's stamp says they were written by this generator version with the same arguments (an interrupted run
    resumes); otherwise every patient is written again.
    """
    if not isinstance(n_patients, (int, np.integer)) or n_patients <= 0:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not 2 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be (min, max) with 2 <= min <= max, got {frames!r}")
    if not 0.0 <= reverse_fraction <= 1.0:
        raise ValueError(f"reverse_fraction must be in [0, 1], got {reverse_fraction!r}")
    out = Path(out)
    resolve_failures(failures)  # unknown names fail before anything is written
    stamp = dataset_stamp(n_patients, seed, size, frames, reverse_fraction, failures, hard)
    wanted = SPLITS if subsets is None else tuple(subsets)
    unknown = [name for name in wanted if name not in SPLITS]
    if unknown:
        raise ValueError(f"unknown subsets {unknown}; expected some of {SPLITS}")
    if subsets is not None:
        stamp["subsets"] = sorted(wanted)
    reuse = same_patients(read_stamp(out), stamp)
    _write_text(out / STAMP_FILE, json.dumps(stamp, indent=2))
    split = _split_of(n_patients, np.random.default_rng([seed, 11]))
    chosen = [i + 1 for i in range(n_patients) if SPLITS[split[i]] in wanted]
    for index in _progress(chosen, len(chosen), "CAMUS patients", progress):
        folder = out / "database_nifti" / f"patient{index:04d}"
        if reuse and all(p.exists() for p in _camus_files(folder, folder.name)):
            continue
        write_camus_patient(out, index, seed, size, frames, reverse_fraction, failures, hard)
    for k, name in enumerate(SPLITS):
        ids = [f"patient{i + 1:04d}" for i in range(n_patients) if split[i] == k and name in wanted]
        _write_text(out / "database_split" / f"subgroup_{name}.txt", "".join(f"{p}\n" for p in ids))
    return out


ECHONET_SIZE = 112
FILELIST_HEADER = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
TRACINGS_HEADER = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
ECHONET_SPLITS = ("TRAIN", "VAL", "TEST")


def echonet_name(seed: int, index: int) -> str:
    """EchoNet-like file name (``0X`` + 16 hex digits), deterministic in (seed, index)."""
    return "0X" + "".join(f"{x:04X}" for x in np.random.default_rng([seed, index, 13]).integers(0, 65536, 4))


def tracings(seq: dict[str, Any], frame: int, n_chords: int = 20) -> list[tuple[float, float, float, float]]:
    """EchoNet VolumeTracings rows (X1, Y1, X2, Y2) in pixels for one frame of ``seq``.

    Row 0 is the long axis (apex, mitral midpoint); then ``n_chords`` chords perpendicular to it across the cavity
    from the apex to the mitral plane, X1/Y1 on one wall and X2/Y2 on the other.
    """
    from .phantom import frame_geometry, from_lv_frame

    ph = seq["phantom"]
    g = frame_geometry(ph, float(seq["contraction"][frame]))
    sp = seq["spacing_mm"][0]
    schedule = seq.get("schedule")

    def px(u: float, v: float) -> tuple[float, float]:
        if schedule is not None:  # the imaged anatomy (probe translation, foreshortening)
            x, z = schedule.image_coords(np.float64(u), np.float64(v), frame)
        else:
            x, z = from_lv_frame(ph, np.float64(u), np.float64(v))
        return float((x + ph.probe_x + 0.5 * ph.fov) / sp - 0.5), float((z + ph.probe_z) / sp - 0.5)

    rows = [px(0.0, 0.0) + px(g.mitral_u, 0.0)]
    for u in np.linspace(0.0, g.mitral_u, n_chords + 1)[1:]:
        half = g.b * np.sqrt(max(0.0, 1.0 - ((u - g.a) / g.a) ** 2))
        rows.append(px(u, -half) + px(u, half))
    return rows


def _write_avi(path: Path, video_hwt: np.ndarray, fps: float) -> None:
    """Write ``[H, W, T]`` uint8 grey as a 3-channel MJPG AVI with OpenCV."""
    import cv2

    def write(tmp: Path) -> None:
        h, w, n = video_hwt.shape
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open an MJPG AVI writer for {tmp}")
        for t in range(n):
            writer.write(np.repeat(video_hwt[..., t, None], 3, axis=2))
        writer.release()

    _atomic(path, write)


def write_echonet_dataset(
    out: str | Path,
    n_videos: int,
    seed: int = 0,
    beats: float = 2.5,
    progress: bool = False,
    failures: Any = None,
    hard: bool = False,
) -> Path:
    """Write ``n_videos`` synthetic 112x112 cines in the EchoNet-Dynamic layout under ``out``; returns ``out``.

    ``failures``/``hard`` as in :func:`generate_sequence` (the frame rate is the EchoNet one, 30 or 50 /s).

    ``out/Videos/<FileName>.avi``, ``out/FileList.csv`` and ``out/VolumeTracings.csv`` (ED and ES frames traced).
    Existing videos are not re-rendered; the CSVs are always rewritten (atomically) from the phantom truth.
    """
    if not isinstance(n_videos, (int, np.integer)) or n_videos <= 0:
        raise ValueError(f"n_videos must be a positive integer, got {n_videos!r}")
    if beats < 1.2:
        raise ValueError(f"beats must be >= 1.2 so that an ED and its ES are in the clip, got {beats!r}")
    out = Path(out)
    split = _split_of(n_videos, np.random.default_rng([seed, 12]))
    files, traces = [], []
    for index in _progress(range(n_videos), n_videos, "EchoNet videos", progress):
        rng = np.random.default_rng([seed, index, 5])
        fps = float(rng.choice([30.0, 50.0, 50.0, 50.0]))
        hr = rng.uniform(55.0, 95.0)
        n_frames = int(round(beats * 60.0 / hr * fps))
        name = echonet_name(seed, index)
        avi = out / "Videos" / f"{name}.avi"
        seq = generate_sequence(
            [seed, index, 1], view="4CH", size=ECHONET_SIZE, n_frames=n_frames, mode="cine", frame_rate=fps,
            render=not avi.exists(), failures=failures, hard=hard,
        )  # fmt: skip
        if not avi.exists():
            _write_avi(avi, np.round(seq["image"] * 255.0).astype(np.uint8), fps)
        files.append([name, f"{seq['ef']:.4f}", f"{seq['esv_ml']:.4f}", f"{seq['edv_ml']:.4f}", ECHONET_SIZE,
                      ECHONET_SIZE, f"{fps:g}", n_frames, ECHONET_SPLITS[split[index]]])  # fmt: skip
        for frame in (seq["es"], seq["ed"]):  # as in EchoNet, the larger (diastolic) trace comes last
            traces += [[f"{name}.avi", *(f"{c:.4f}" for c in row), frame] for row in tracings(seq, frame)]
    _write_csv(out / "FileList.csv", FILELIST_HEADER, files)
    _write_csv(out / "VolumeTracings.csv", TRACINGS_HEADER, traces)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Atomically write a CSV with ``header`` (``\n`` line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _write_text(path, buf.getvalue())
