"""Accuracy benchmark (issues 7 and 15): the paper's ablations, per-frame MONAI baselines and a softmax memory, same
budget, tested on a clean and on a hard split where part of the LV border vanishes for some frames.

Every row is trained from scratch on one fixed synthetic train/validation split from the project's generator
(``scripts.synthetic.generate_sequence``, ``mode="systole"``, its realistic failure modes ``failures=None``, 2CH and
4CH alternating, a random EF per clip), with exactly the same data, budget and seed, and tested on two test splits:
``clean`` (the same realistic generator) and ``hard`` (``hard=True``: every cine has a stretch of at least three
frames where part of the LV border is not visible; the generator's per-frame ``occluded`` flags are kept at the
clip's sampled frames, and a hard clip whose sampled frames keep none is generated again from ``[seed, attempt]``):

- rows: GDKVM ``small`` with each update rule of the paper's Table 4 (``additive``, ``delta``, ``delta_beta``,
  ``decay_alpha``, ``gated_delta``) and KPFF on; ``gated_delta`` with KPFF off (Table 3); the softmax space-time
  memory variant (``GDKVMSoftmaxMemory(size="small")``: the same encoders, the state replaced by attention over
  every past frame); a per-frame MONAI 2D ``UNet`` and a per-frame MONAI ``SegResNet`` (frames folded into the
  batch, ``[B, 1, H, W, T] -> [B*T, 1, H, W]``);
- data: clips of ``n_total`` in [10, 16] frames generated at 256 x 256, ED..ES sampled to 10 frames (both ends
  included, as the bundle's ``SampleClipd``), resized to 128 x 128 (the bundle's ``ResizeCined``), LV-only labels
  {0, 1}; every frame is annotated; images are stored as uint8;
- budget: the same iterations and batch of clips for every row, AdamW (lr 1e-3, weight decay 1e-3), the learning
  rate divided by 10 after 2/3 of the iterations (as the bundle's MultiStepLR), gradient norm clipped at 3, loss
  ``DiceCELoss`` on every annotated frame (the bundle's ``SupervisedFramesLoss``), the bundle's four clip
  augmentations (``RandGammaCined``, ``RandScaleCined``, ``RandRotateCined``, ``RandContrastCined``, p = 0.5
  each, one draw per clip). The augmented batches of a seed are drawn once, before any row trains, and every row
  of that seed trains on exactly these batches (stored as uint8). The weights with the best validation Dice
  (checked 5 times, evenly spaced) are tested. The seed sets the initialisation, the batch order and the
  augmentation draws; the data split is the same for every seed.

Per row on each test split: Dice, IoU, HD95 and ASD in mm (``scripts.metrics.case_metrics`` on every frame, with the
clip's spacing), Dice and HD95 on the occluded frames only and Dice on the others; EF from the predicted ED (first)
and ES (last) frame masks (``clip_ef``, single-plane Simpson) against the phantom's exact EF (``agreement``: r,
bias, SD of the differences); temporal consistency: the mean absolute frame-to-frame change of the LV area (mm^2) of
the prediction and of the ground truth, and their ratio (1 = as smooth as the truth); parameters; training time (the
iterations only, on ``--device``); CPU frames/s of streaming inference (batch 1, one stream through ``step``,
``--fps-frames`` frames after 5 warm-up frames, ``--cpu-threads`` threads, on a CPU float32 copy of the row's first
trained model even when training ran on CUDA, measured after all training with nothing else running; the per-frame
baselines run their 2D network per frame). A reference line gives EF from the ground-truth masks against the phantom
(the floor of the EF method on these data). The findings (printed, in the JSON and on the docs page) are computed
from the numbers: above all whether the memory rows beat the per-frame baselines on occluded frames by more than the
seed spread.

Layout: ``config`` (split, budget, rows) <- ``models``, ``data`` <- ``train``, ``evaluate`` <- ``report``,
``findings`` <- ``page`` (docs page) <- ``run`` (one run) <- ``cli``; a module imports only from those left of it.

Run layout: the data split is cached in ``--data`` (uint8, about 10 MiB compressed); a pool of forked worker
processes (forked before CUDA starts) draws the augmented batches of every seed, then computes each row's test
metrics (CPU) while the next row trains; the training device only trains, validates and predicts. ``--fit-minutes``
times 3 iterations of every row first and lowers the iterations (equally for every row) to fit the wall time.

Usage (from the repository root):
    python -m bench.accuracy --generate-only --data results/accuracy_data.npz    # data only (CPU, cached)
    python -m bench.accuracy --device cuda --data results/accuracy_data.npz      # all rows, one seed
    python -m bench.accuracy --device cuda --seeds 0 1 2 --fit-minutes 15        # several seeds, capped time
    python -m bench.accuracy --quick                                             # tiny CPU smoke run (< 2 min)
    python -m bench.accuracy --docs-from a.json b.json --docs page.md            # docs page of saved (partial) runs
    bash bench/gpu_accuracy.sh SEED GROUP                                        # full budget on a GPU, in parts
Writes ``results/bench_accuracy.json`` (``--out``; the JSON is rewritten after every row) and, unless
``--quick``, ``docs/benchmarks_accuracy.md`` (``--docs``); prints a Markdown table per test split.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The bundle's ``scripts`` package and the sibling bench modules (``machine``) are imported by name.
for _path in (REPO_ROOT / "bench", REPO_ROOT / "bundle"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
