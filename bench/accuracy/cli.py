"""Command line: ``python -m bench.accuracy ...`` (see the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import REPO_ROOT
from . import __doc__ as PACKAGE_DOC
from .config import QUICK_BUDGET, QUICK_SPLIT, ROWS, SPLIT_TITLES, Budget, SplitConfig
from .data import SHARED, load_or_generate, worker_init
from .page import docs_from_json, summarise, write_docs
from .report import write_json
from .run import run_rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda, cuda:1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one full set of rows per seed")
    parser.add_argument("--rows", nargs="+", default=None, choices=[r.name for r in ROWS], help="subset of rows")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run; never writes the docs table")
    parser.add_argument("--data", type=Path, default=None, help="cached split (.npz); generated there if missing")
    parser.add_argument("--generate-only", action="store_true", help="only generate/verify the data file")
    parser.add_argument("--regenerate", action="store_true", help="overwrite --data even if it exists")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per row (default 200)")
    parser.add_argument("--batch", type=int, default=None, help="clips per iteration (default 32)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for training and testing (default fp32)")
    parser.add_argument("--fit-minutes", type=float, default=None, help="lower --iterations to fit this wall time")
    parser.add_argument("--cpu-threads", type=int, default=2, help="threads for the CPU frames/s")
    parser.add_argument("--fps-frames", type=int, default=None, help="timed CPU frames per row (default 50)")
    parser.add_argument("--workers", type=int, default=None, help="processes for data generation/augmentation")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/bench_accuracy[_quick].json)")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks_accuracy.md")
    parser.add_argument(
        "--docs-from",
        type=Path,
        nargs="+",
        default=None,
        help="only write --docs from saved JSONs of one or more runs (also partial ones, stopped by a time limit)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    split = QUICK_SPLIT if args.quick else SplitConfig()
    budget = QUICK_BUDGET if args.quick else Budget()
    budget = dataclasses.replace(
        budget,
        iterations=args.iterations or budget.iterations,
        batch=args.batch or budget.batch,
        amp_bf16=args.amp,
    )
    fps_frames = args.fps_frames or (10 if args.quick else 50)
    suffix = "_quick" if args.quick else ""
    data_path = args.data or REPO_ROOT / "results" / f"accuracy_data{suffix}.npz"
    out_path = args.out or REPO_ROOT / "results" / f"bench_accuracy{suffix}.json"
    workers = args.workers or len(os.sched_getaffinity(0))
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]

    if args.docs_from is not None:  # the saved runs name their data file's key; the generator may have moved on
        with np.load(data_path) as stored:
            docs_from_json(args.docs_from, args.docs, {k: stored[k] for k in stored.files})
        return
    data = load_or_generate(data_path, split, workers, args.regenerate)
    if args.generate_only:
        return
    # Fail now, not after training, if a package the evaluation needs is missing (e.g. pytorch-ignite for metrics).
    try:
        import scripts.clinical.evaluation  # noqa: F401
        import scripts.metrics  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"bench.accuracy needs the bundle's evaluation dependencies (monai, pytorch-ignite, scikit-image, "
            f"matplotlib): {error}"
        ) from error

    # One pool of forked workers for the whole run, forked before CUDA is initialised: it draws the augmented
    # batches, then evaluates each row's test predictions while the next row trains.
    SHARED.update(data)
    pool = mp.get_context("fork").Pool(max(1, workers), initializer=worker_init)
    try:
        payload = run_rows(args, argv, pool, data, data_path, split, budget, rows, fps_frames, out_path, t0)
    finally:
        pool.terminate()
        pool.join()

    payload["run_time_s"] = time.perf_counter() - t0
    summarise(payload)
    write_json(out_path, payload)
    for name in payload["test_splits"]:
        ref = payload["reference_gt_masks"][name]
        print(f"\n{SPLIT_TITLES[name]}:\n\n{payload['tables'][name]}\n")
        print(
            f"Reference (ground-truth masks vs phantom EF): r {ref['ef_r']:.3f}, bias {ref['ef_bias']:+.2f}, "
            f"SD {ref['ef_sd']:.2f}; GT dA/frame {ref['area_change_gt_mm2']:.1f} mm^2"
        )
    print()
    for line in payload["findings"]:
        print(f"- {line}")
    print(f"\nwrote {out_path}; run time {payload['run_time_s']:.0f} s", flush=True)
    if not args.quick:
        write_docs(args.docs, payload)
        print(f"wrote {args.docs}", flush=True)
