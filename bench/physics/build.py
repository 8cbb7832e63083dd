"""Write the physics-simulated validation set in the CAMUS NIfTI layout, cached by its arguments.

``OUT/database_nifti/patientNNNN/patientNNNN_4CH_half_sequence[_gt].nii.gz`` (ED -> ES, a label on every frame),
``..._4CH_{ED,ES}[_gt].nii.gz``, ``Info_4CH.cfg`` (ED, ES, NbFrame, EF of the exact phantom volumes, FrameRate) and
``patientNNNN_4CH_physics.json`` (the phantom, its exact volumes per frame, the imaging set-up; written last: its
presence marks the case complete); ``OUT/database_split/subgroup_testing.txt`` lists every case (training and
validation are empty: this set is never training data). ``OUT/physics_echo.json`` stamps the arguments and the
source of this package: a set written by other code or arguments is written again, an interrupted one resumes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import phantom
from .imaging import Imaging, Scanner

STAMP_FILE = "physics_echo.json"
VIEW = "4CH"


DATA_SOURCES = ("phantom.py", "imaging.py", "build.py")  # the code that writes the set (not the checks, the page)


def package_version(folder: Path | None = None) -> str:
    """Short sha1 of the code that writes the set (:data:`DATA_SOURCES` in ``folder``, default this package's): a
    cache written by other code is rebuilt, an edit of the memory check, the page or the command line does not
    rebuild it."""
    import hashlib

    digest = hashlib.sha1()
    for name in DATA_SOURCES:
        digest.update(name.encode())
        digest.update(((folder or Path(__file__).parent) / name).read_bytes())
    return digest.hexdigest()[:12]


def case_bases(n_cases: int) -> list[str]:
    """The base of each case: four-chamber, open (LA only) and closed phantoms in turn."""
    order = ("four_chamber", "open", "closed")
    return [order[k % len(order)] for k in range(n_cases)]


def contraction(n_frames: int) -> np.ndarray:
    """[n_frames] contraction state 0 (ED) -> 1 (ES), smooth at both ends."""
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(n_frames) / max(1, n_frames - 1))


def simulate_case(
    index: int, seed: int, base: str, imaging: Imaging, density_per_mm2: float, scanner: Scanner | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate case ``index``: (image [H, W, T] uint8, labels [H, W, T] uint8, truth dict)."""
    rng = np.random.default_rng([seed, index, 24])
    spec = phantom.sample_spec(rng, base)
    scanner = scanner or Scanner(imaging)
    wall = phantom.sample_wall(rng, spec, 2.0 * density_per_mm2)
    background = phantom.sample_background(rng, imaging.sector, density_per_mm2)
    x, z = imaging.pixel_centres_mm()
    half_angle, depth = imaging.sector
    in_sector = (np.hypot(x, z) < depth) & (np.abs(np.arctan2(x, z)) < half_angle)
    states = contraction(spec.n_frames)
    images, labels, volumes = [], [], []
    for s in states:
        sx, sz, amplitude = phantom.scatterers(rng, spec, wall, background, float(s), imaging.sector, density_per_mm2)
        images.append(np.round(scanner.frame(sx, sz, amplitude) * 255.0).astype(np.uint8))
        labels.append(np.where(in_sector, phantom.labels(spec, float(s), x, z), 0).astype(np.uint8))
        volumes.append(phantom.lv_volume_ml(phantom.shape_at(spec, float(s)), spec.truncation))
    edv, esv = volumes[0], volumes[-1]
    truth = {
        "view": VIEW,
        "ed": 0,
        "es": spec.n_frames - 1,
        "nb_frames": spec.n_frames,
        "edv_ml": edv,
        "esv_ml": esv,
        "ef": 100.0 * (edv - esv) / edv,
        "ef_definition": "100 (EDV - ESV) / EDV of the phantom's truncated prolate ellipsoid cavity",
        "volumes_ml": volumes,
        "frame_rate": spec.frame_rate,
        "spacing_mm": [imaging.pixel_mm, imaging.pixel_mm],
        "phantom": spec.to_json(),
        "imaging": asdict(imaging),
        "simulator": "PyMUST simus (P4-2v), delay-and-sum",
    }
    return np.stack(images, axis=-1), np.stack(labels, axis=-1), truth


def load_case(truth_path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A written case from its ``*_physics.json``: (image [H, W, T] uint8, labels [H, W, T] uint8, truth dict)."""
    import nibabel as nib

    stem = truth_path.name.removesuffix("_physics.json")

    def read(suffix: str) -> np.ndarray:  # CAMUS NIfTI arrays are (W, H, T)
        return np.swapaxes(np.asarray(nib.load(truth_path.with_name(f"{stem}_{suffix}.nii.gz")).dataobj), 0, 1)

    return read("half_sequence"), read("half_sequence_gt"), json.loads(truth_path.read_text())


def _case_files(folder: Path, pid: str) -> list[Path]:
    stem = f"{pid}_{VIEW}"
    names = [f"{stem}_half_sequence.nii.gz", f"{stem}_half_sequence_gt.nii.gz", f"Info_{VIEW}.cfg"]
    names += [f"{stem}_{phase}{gt}.nii.gz" for phase in ("ED", "ES") for gt in ("", "_gt")]
    return [folder / name for name in names] + [folder / f"{stem}_physics.json"]


def build_physics_set(
    out: str | Path,
    n_cases: int = 9,
    seed: int = 0,
    imaging: Imaging | None = None,
    density_per_mm2: float = 0.45,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Simulate ``n_cases`` apical four-chamber half cycles into ``out`` (see the module docstring); returns ``out``.

    ``workers``: simulation processes (default: one per core), each with one BLAS thread.
    """
    from scripts.synthetic.writers import _write_text

    if n_cases <= 0:
        raise ValueError(f"n_cases must be positive, got {n_cases}")
    imaging = imaging or Imaging()
    out = Path(out)
    stamp = {
        "version": package_version(),
        "n_cases": n_cases,
        "seed": seed,
        "density_per_mm2": density_per_mm2,
        "imaging": asdict(imaging),
    }
    stamp_path = out / STAMP_FILE
    reuse = stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp
    _write_text(stamp_path, json.dumps(stamp, indent=2))
    todo = []
    for index, base in enumerate(case_bases(n_cases), start=1):
        pid = f"patient{index:04d}"
        if not (reuse and all(path.exists() for path in _case_files(out / "database_nifti" / pid, pid))):
            todo.append((index, seed, base, imaging, density_per_mm2))
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    with multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap_unordered(_simulate_job, todo) if pool else map(_simulate_job, todo)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"physics-simulated cines ({workers} processes)", unit="cine")
        for index, (image, label, truth) in results:
            _write_case(out, index, image, label, truth)
    ids = [f"patient{index:04d}" for index in range(1, n_cases + 1)]
    for split in ("training", "validation"):
        _write_text(out / "database_split" / f"subgroup_{split}.txt", "")
    _write_text(out / "database_split" / "subgroup_testing.txt", "".join(f"{pid}\n" for pid in ids))
    return out


_SCANNERS: dict[Imaging, Scanner] = {}


def _simulate_job(job: tuple[int, int, str, Imaging, float]) -> tuple[int, tuple[np.ndarray, np.ndarray, dict]]:
    """One case in a worker process (its scanner, with the beamforming matrices, built once per process)."""
    index, seed, base, imaging, density = job
    scanner = _SCANNERS.setdefault(imaging, Scanner(imaging))
    return index, simulate_case(index, seed, base, imaging, density, scanner)


def _write_case(out: Path, index: int, image: np.ndarray, label: np.ndarray, truth: dict) -> None:
    """The CAMUS files of one case; the truth JSON last (its presence marks the case complete)."""
    from scripts.synthetic.writers import _save_nifti, _write_text

    pid = f"patient{index:04d}"
    folder = out / "database_nifti" / pid
    stem, spacing = f"{pid}_{VIEW}", tuple(truth["spacing_mm"])
    _save_nifti(folder / f"{stem}_half_sequence.nii.gz", image, spacing)
    _save_nifti(folder / f"{stem}_half_sequence_gt.nii.gz", label, spacing)
    for phase, frame in (("ED", truth["ed"]), ("ES", truth["es"])):
        _save_nifti(folder / f"{stem}_{phase}.nii.gz", image[..., frame], spacing)
        _save_nifti(folder / f"{stem}_{phase}_gt.nii.gz", label[..., frame], spacing)
    _write_text(
        folder / f"Info_{VIEW}.cfg",
        f"ED: 1\nES: {truth['nb_frames']}\nNbFrame: {truth['nb_frames']}\nImageQuality: Good\n"
        f"EF: {truth['ef']:.1f}\nFrameRate: {truth['frame_rate']:.1f}\n",
    )
    _write_text(folder / f"{stem}_physics.json", json.dumps(truth, indent=1))
