"""Command line: ``python -m bench.physics ...`` (see the package docstring)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import REPO_ROOT
from . import __doc__ as PACKAGE_DOC
from .build import build_physics_set, case_bases
from .imaging import Imaging
from .memory_check import memory_against_frames_alone

CONFIGS = "['bundle/configs/train.json','bundle/configs/evaluate.json']"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.physics", description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", nargs="+", type=Path, default=[REPO_ROOT / "bundle" / "models" / "model.pt"])
    parser.add_argument("--names", nargs="+", default=None, help="one row name per --ckpt (default: file names)")
    parser.add_argument("--set", type=Path, default=REPO_ROOT / "results" / "physics_echo", help="the cached set")
    parser.add_argument("--cases", type=int, default=9, help="cines (four-chamber, open, closed base in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--density", type=float, default=0.45, help="tissue scatterers per mm^2 (the wall: twice)")
    parser.add_argument("--transmits", type=int, default=3, help="diverging waves compounded per frame")
    parser.add_argument("--workers", type=int, default=None, help="simulation processes (default: one per core)")
    parser.add_argument("--eval-dir", type=Path, default=REPO_ROOT / "results" / "physics_eval")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_physics_echo.json")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks_physics.md and its figure")
    parser.add_argument("--build-only", action="store_true", help="only build (or verify) the cached set")
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.ckpt):
        parser.error(f"--names gives {len(args.names)} names for {len(args.ckpt)} checkpoints")
    return args


def evaluate(checkpoint: Path, data: Path, n_cases: int, output_dir: Path) -> None:
    """``run evaluating`` of the bundle on the physics set, as a user types it (4CH only, every case a test case)."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", CONFIGS,
        "--dataset_dir", str(data), "--synthetic_patients", str(n_cases), "--views", "['4CH']",
        "--checkpoint", str(checkpoint), "--output_dir", str(output_dir),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO_ROOT, check=True)


def summarise(eval_dir: Path, data: Path) -> dict:
    """One row: LV Dice / HD95 over every frame, by base, at ED and ES; EF agreement; volume ratios."""
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    lv = summary["structures"]["lv"]
    agreement = json.loads((eval_dir / "ef_agreement.json").read_text())["per_clip"]["vs_dataset"]
    bases = {}
    for path in sorted((data / "database_nifti").glob("patient*/*_physics.json")):
        truth = json.loads(path.read_text())
        bases[path.name.removesuffix("_physics.json")] = truth["phantom"]["base"]
    dice_by_base: dict[str, list[float]] = defaultdict(list)
    with open(eval_dir / "metrics_per_case.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["structure"] == "lv" and row["dice"] not in ("", "nan"):
                dice_by_base[bases[row["case_id"]]].append(float(row["dice"]))
    ed_ratio, es_ratio = [], []
    with open(eval_dir / "ef_per_case.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            ed_ratio.append(_number(row["pred_edv_ml"] or None) / float(row["gt_edv_ml"]))
            es_ratio.append(_number(row["pred_esv_ml"] or None) / float(row["gt_esv_ml"]))
    return {
        "n_cases": summary["n_cases"],
        "n_frames": lv["all"]["n_items"],
        "lv_dice": lv["all"]["dice"]["mean"],
        "lv_dice_sd": lv["all"]["dice"]["std"],
        "lv_hd95_mm": lv["all"]["hd95"]["mean"],
        "lv_dice_ed": lv["ED"]["dice"]["mean"],
        "lv_dice_es": lv["ES"]["dice"]["mean"],
        "lv_dice_by_base": {base: float(np.mean(v)) for base, v in sorted(dice_by_base.items())},
        "ef_n": agreement["n"] - agreement.get("n_dropped", 0),
        "ef_bias": _number(agreement["bias"]),
        "ef_sd": _number(agreement["sd"]),
        "ef_r": _number(agreement["r"]),
        "ef_mae": _number(agreement["mae"]),
        "edv_ratio": float(np.nanmean(ed_ratio)) if np.isfinite(ed_ratio).any() else float("nan"),
        "esv_ratio": float(np.nanmean(es_ratio)) if np.isfinite(es_ratio).any() else float("nan"),
        "empty_es_masks": int(np.isnan(es_ratio).sum()),
    }


def _number(value: float | None) -> float:
    """A metric from JSON: None (not computable, e.g. every ES mask empty) becomes NaN."""
    return float("nan") if value is None else float(value)


def table(rows: dict[str, dict]) -> str:
    """Markdown table of the rows."""
    bases = ("four_chamber", "open", "closed")
    head = (
        "| checkpoint | LV Dice (all frames) | HD95 mm | Dice ED / ES | Dice four-chamber / open / closed base "
        "| EF bias / SD / r (points) | predicted / true EDV, ESV | Dice memory / frames alone (all; ES) |"
    )
    lines = [head, "|" + "---|" * 8]
    for name, r in rows.items():
        by_base = " / ".join(f"{r['lv_dice_by_base'].get(b, float('nan')):.3f}" for b in bases)
        lines.append(
            f"| {name} | {r['lv_dice']:.3f} ± {r['lv_dice_sd']:.3f} | {r['lv_hd95_mm']:.1f} "
            f"| {r['lv_dice_ed']:.3f} / {r['lv_dice_es']:.3f} | {by_base} "
            f"| {r['ef_bias']:+.1f} / {r['ef_sd']:.1f} / {r['ef_r']:.2f} | {r['edv_ratio']:.2f}, {r['esv_ratio']:.2f} "
            f"| {r['dice_memory']:.3f} / {r['dice_frames_alone']:.3f}; {r['dice_es_memory']:.3f} / "
            f"{r['dice_es_frames_alone']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    imaging = Imaging(transmits=args.transmits)
    data = build_physics_set(args.set, args.cases, args.seed, imaging, args.density, workers=args.workers)
    print(f"physics-simulated set ready in {data} ({time.time() - start:.0f} s)", flush=True)
    if args.build_only:
        return
    missing = [str(c) for c in args.ckpt if not c.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)}: no trained model; run `make demo` (or the bundle's train.json) first")
    names = args.names or [c.stem if c.name != "model.pt" else c.parent.name for c in args.ckpt]
    rows = {}
    for name, checkpoint in zip(names, args.ckpt):
        eval_dir = args.eval_dir / name
        evaluate(checkpoint.resolve(), data.resolve(), args.cases, eval_dir)
        rows[name] = summarise(eval_dir, data) | memory_against_frames_alone(checkpoint.resolve(), data)
    text = table(rows)
    print(text)
    result = {
        "set": str(data),
        "cases": args.cases,
        "bases": case_bases(args.cases),
        "seed": args.seed,
        "density_per_mm2": args.density,
        "imaging": dataclasses.asdict(imaging),
        "checkpoints": {name: str(c) for name, c in zip(names, args.ckpt)},
        "rows": rows,
        "seconds": time.time() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if args.docs:
        from .page import write_page

        write_page(result, text, names, args.ckpt, data)
