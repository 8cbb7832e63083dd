"""Synthetic apical echocardiography: the project's embedded default data, with exact labels and known EF.

A random phantom (apical two- or four-chamber view) is imaged in a scan sector: speckle from complex Gaussian
scatterers fixed to the tissue and moved by the same deformation as the anatomy, a laterally elongated
point-spread function in the beam (polar) domain, envelope and log compression, depth attenuation, TGC and
lateral gain ripple, specular wall dropout, rib shadow, reverberation clutter near the probe and the apex, then
scan conversion into a square image (apex of the sector near the top, dark outside). On top of that, the realistic
failure modes of apical echo (:data:`FAILURE_MODES`): angle-dependent lateral-wall dropout, an acoustic shadow for
part of the cycle, apex clutter, gain/TGC drift, decorrelating speckle, out-of-plane foreshortening, probe
translation, frame rates 15-80 /s, and the real cines' background (darker sides, bright band behind the atria);
labels are always the exact imaged anatomy. See ``docs/synthetic.md``.

API
---
``generate_sequence(seed, view="4CH", ef=None, size=256, n_frames=20, mode="systole", frame_rate=None,
render=True, failures=None, hard=False) -> dict``
    ``seed``: int or list of ints. ``view``: "2CH" or "4CH". ``ef``: fraction (0.1..0.85) or percent, None draws
    U(20 %, 75 %). ``mode``: "systole" (frames ED..ES, like a CAMUS half sequence), "diastole" (ES..next ED),
    "cine" (``n_frames`` at ``frame_rate`` (default 50) from a random phase, ED/ES = the first ED and its ES).
    Returns ``image`` [H, W, T] float32 in [0, 1], ``label`` [H, W, T] uint8 (0 background, 1 LV cavity,
    2 myocardium, 3 left atrium; RV/RA are 0), ``ed``/``es`` (0-based frame indices), ``edv_ml``/``esv_ml``/``ef``
    (percent) of the phantom, ``volumes_ml`` [T], ``contraction`` [T] (0 ED .. 1 ES), ``spacing_mm`` (row, col),
    ``frame_rate``, ``heart_rate``, ``view``, ``geometry`` (probe/sector/LV placement) and ``phantom`` (the
    :class:`Phantom`). ``render=False`` skips the images (``image``/``label`` None) and gives only the truth.
    ``failures``: None = the realistic default (every mode of :data:`FAILURE_MODES` drawn per patient with its own
    probability and strength); names (iterable, or comma-separated string, "all", "none") = exactly those modes;
    ``()`` = the baseline look (unknown names: ``ValueError``). ``hard=True``: at least ``min(3, n_frames)``
    consecutive frames with part of the LV border hidden. Also returned: ``occluded`` [T] bool (>= 10 % of the
    endocardial border has lost >= 12 dB of wall-to-cavity contrast to dropout/shadow/clutter; computed from the
    rendering physics, also with ``render=False``), ``border_hidden`` [T] (that fraction), ``failures`` (the drawn
    parameters, JSON-serialisable) and ``schedule`` (the :class:`~.failures.FailureSchedule`).
``write_camus_dataset(out, n_patients, seed=0, size=256, frames=(10, 22), reverse_fraction=0.2, progress=False,
failures=None, hard=False)``
    CAMUS NIfTI layout: ``out/database_nifti/patientNNNN/patientNNNN_{2CH,4CH}_half_sequence[_gt].nii.gz``,
    ``..._{ED,ES}[_gt].nii.gz``, ``Info_{2CH,4CH}.cfg``, ``patientNNNN_{view}_phantom.json`` (truth, with
    ``occluded`` 0/1 per stored frame and ``failures``), and
    ``out/database_split/subgroup_{training,validation,testing}.txt``. NIfTI arrays are (W, H[, T]) with zooms
    (sx, sy[, 1]) as in real CAMUS: ``np.transpose(nib.load(f).get_fdata(), (1, 0, 2))`` is (H, W, T), apex at
    the top. ED/ES files are 2-D (W, H). About ``reverse_fraction`` of sequences run ES..ED (ED = NbFrame).
``write_echonet_dataset(out, n_videos, seed=0, beats=2.5, progress=False, failures=None, hard=False)``
    EchoNet-Dynamic layout: ``out/Videos/<FileName>.avi`` (112x112 3-channel MJPG), ``out/FileList.csv``,
    ``out/VolumeTracings.csv`` (ES then ED frame: the long axis row, then 20 chords).
``make_comparison_figure(out, seed=0, size=256)``: PNG of synthetic frames next to the real pydicom A4C cine.
``make_failure_modes_figure(out, seed=24)``: PNG of every failure mode off vs on and a ``hard=True`` strip.

Command line (from ``bundle/``): ``python -m scripts.synthetic --out DIR --patients N --seed S
[--layout camus|echonet|both] [--size 256] [--min_frames 10] [--max_frames 22] [--videos N]
[--failures dropout,shadow|none|all] [--hard True]``.
"""

from .anatomy import BACKGROUND, LEFT_ATRIUM, LV_CAVITY, MYOCARDIUM
from .failures import FAILURE_MODES
from .figure import make_comparison_figure, make_failure_modes_figure
from .phantom import Phantom, lv_volume_exact_ml, lv_volume_ml
from .sequence import generate_sequence
from .writers import dataset_stamp, generator_version, tracings, write_camus_dataset, write_echonet_dataset

__all__ = [
    "BACKGROUND",
    "FAILURE_MODES",
    "LEFT_ATRIUM",
    "LV_CAVITY",
    "MYOCARDIUM",
    "Phantom",
    "dataset_stamp",
    "generate_sequence",
    "generator_version",
    "lv_volume_exact_ml",
    "lv_volume_ml",
    "make_comparison_figure",
    "make_failure_modes_figure",
    "tracings",
    "write_camus_dataset",
    "write_echonet_dataset",
]
