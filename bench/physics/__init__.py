"""Physics-simulated apical echo: a validation set the synthetic generator never made (issue 24).

Apical four-chamber half cycles (ED -> ES) of scatterer phantoms imaged by an ultrasound simulator (PyMUST's SIMUS, a
64-element phased array, delay-and-sum beamforming; ``imaging.py``), with exact masks (``phantom.py``): LV phantoms of
drawn length, width, wall thickness, base truncation, EF and tissue contrast, three bases (a four-chamber heart with
a mitral opening, closed leaflets, both atria and the right ventricle; an open base with the left atrium only; a
closed ellipsoid with myocardium across the base). The shapes, the speckle and the blur come from code that shares
nothing with ``scripts.synthetic``: the set measures how a model trained on the generator carries to echoes made by
wave physics, and is used to choose the generator's settings, never as training data.

``python -m bench.physics`` (repository root) builds the set once (cached in ``results/physics_echo/``, one worker
process per core; 16 minutes for the default 9 cines on 2 cores), then evaluates each ``--ckpt`` with the
bundle's own ``run evaluating`` (evaluate.json: every frame, LV Dice, HD95, EF against the exact phantom volumes)
and prints a table: LV Dice and HD95 over all frames, by base, at ED and ES; EF bias / SD / r against the phantoms;
the predicted over the true ED and ES volume; and, with the same weights, LV Dice with the memory against every frame
segmented alone (``memory_check.py``). ``--docs`` writes ``docs/benchmarks_physics.md`` and a figure; the JSON goes
to ``results/bench_physics_echo.json``. Needs ``pymust`` (in ``requirements.txt``).
"""

import os
import sys
from pathlib import Path

# PyMUST's field computation is numpy with BLAS calls: one BLAS thread per process is 6x faster than two threads
# fighting over 2 cores; the set is built by one worker process per core instead (set before numpy is imported).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
# The bundle's ``scripts`` package and the sibling bench modules (``real_echo``) are imported by name.
for _path in (REPO_ROOT / "bench", REPO_ROOT / "bundle"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
