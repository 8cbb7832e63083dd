"""Does the memory check catch the cines where the memory lost? The verdict's drift check measured on labelled cines.

Every door runs :func:`scripts.memory_check.memory_check` on each cine: ``--frames`` frames (the bundle's
``memory_check_frames``) segmented again alone by the same weights, and the verdict becomes "review" when one of them
disagrees with the stepped mask (LV Dice below :data:`scripts.clinical.quality.MIN_MEMORY_AGREEMENT`). This
benchmark runs exactly that call on every cine of each test set, for each checkpoint (``--ckpt``, any number), and
sets it beside the truth: per cine the LV Dice of the stepped masks (``memory``) and of every frame segmented alone
(``alone``, the baseline: the same weights with no memory of other frames), mean over frames.

A cine where the memory lost is one with ``memory`` at least ``--lost`` (5 points) below ``alone``. Reported per
checkpoint and set: cines, flagged, lost, lost and flagged (what the check is for), flagged but not lost (a reader
looks at a cine that was fine: the price), and the mean Dice of flagged and unflagged cines. Also the check's cost:
the seconds spent stepping every cine against the seconds of the check, on this machine, in the same run.

Sets: ``physics`` (the physics-simulated apical cines of ``python -m bench.physics``, when built; never generated
here), ``clean``/``hard`` (the bundle's synthetic test patients, whole half sequences), ``long`` (multi-beat synthetic
cines of bench/memory.py, cached in ``results/memory_long_cines.npz``) and ``real`` (the longest real apical cine
offline: no truth, only the agreement).

Usage (repository root): ``.venv/bin/python bench/drift_check.py [--ckpt A.pt B.pt] [--names a b] [--docs]``.
Writes ``results/bench_drift_check.json`` (``--out``) and with ``--docs`` ``docs/benchmarks_drift_check.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "bundle"), str(REPO_ROOT)]

from bench.memory import LV, camus_split, dice_per_frame, long_cines, predict, prepare, real_cine  # noqa: E402

PHYSICS = REPO_ROOT / "results" / "physics_echo"


def physics_cases(size: int, keep_aspect: bool) -> list[dict[str, Any]]:
    """The physics-simulated cines (``bench.physics``'s CAMUS layout) resized as the bundle resizes them; [] if not
    built."""
    from bench.physics.build import load_case

    cases = []
    for truth_path in sorted((PHYSICS / "database_nifti").glob("patient*/*_physics.json")):
        image, labels, truth = load_case(truth_path)
        case = prepare(image.astype(np.float32) / 255.0, labels, truth["spacing_mm"], size, keep_aspect)
        cases.append({**case, "name": truth_path.name.replace("_physics.json", "")})
    return cases


SETS = ("physics", "clean", "hard", "long", "real")


def load_set(name: str, size: int, keep_aspect: bool, long_count: int, long_frames: int) -> list[dict[str, Any]]:
    """The cines of one of :data:`SETS`, resized as the bundle resizes them (``[]`` when not there)."""
    if name == "physics":
        return physics_cases(size, keep_aspect)
    if name in ("clean", "hard"):
        return camus_split(REPO_ROOT / "bundle" / "data" / ("synthetic" if name == "clean" else "synthetic_hard"),
                           size, keep_aspect)  # fmt: skip
    if name == "long":
        cache = REPO_ROOT / "results" / "memory_long_cines.npz"
        return long_cines(long_count, long_frames, cache, size, keep_aspect)
    real = real_cine(size, keep_aspect)
    return [real] if real is not None else []


def check_cine(net: torch.nn.Module, case: dict[str, Any], frames: int) -> dict[str, Any]:
    """The bundle's memory check of one cine and, with a truth, the Dice of its stepped and frame-alone masks."""
    from scripts.memory_check import memory_check

    video = case["video"]
    start = time.perf_counter()
    with torch.inference_mode():
        stepped = net(video)[0]
    stepped_s = time.perf_counter() - start
    start = time.perf_counter()
    checked = memory_check(net, video, stepped, frames)
    check_s = time.perf_counter() - start
    row: dict[str, Any] = {
        "name": case["name"],
        "frames": int(video.shape[-1]),
        "checked": checked,
        "agreement": min(checked["lv_dice"]) if checked else None,
        "stepped_s": stepped_s,
        "check_s": check_s,
    }
    if case.get("label") is not None:
        memory = (stepped.argmax(dim=0) == LV).numpy()
        row["dice_memory"] = float(dice_per_frame(memory, case["label"]).mean())
        row["dice_alone"] = float(dice_per_frame(predict(net, case, "reset, warm start"), case["label"]).mean())
    return row


def summarise(rows: list[dict[str, Any]], threshold: float, lost: float) -> dict[str, Any]:
    """Counts and means of one set's rows (see the module)."""
    flagged = [r for r in rows if r["agreement"] is not None and r["agreement"] < threshold]
    labelled = [r for r in rows if "dice_memory" in r]
    lost_rows = [r for r in labelled if r["dice_memory"] < r["dice_alone"] - lost]

    def mean(selected: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in selected if key in r]
        return float(np.mean(values)) if values else None

    return {
        "cines": len(rows),
        "flagged": len(flagged),
        "lost": len(lost_rows),
        "lost_and_flagged": sum(r in flagged for r in lost_rows),
        "flagged_not_lost": sum(r not in lost_rows for r in flagged if "dice_memory" in r),
        "agreement_min": min((r["agreement"] for r in rows if r["agreement"] is not None), default=None),
        "dice_memory_flagged": mean(flagged, "dice_memory"),
        "dice_alone_flagged": mean(flagged, "dice_alone"),
        "dice_memory_unflagged": mean([r for r in rows if r not in flagged], "dice_memory"),
        "dice_alone_unflagged": mean([r for r in rows if r not in flagged], "dice_alone"),
        "stepped_s": float(sum(r["stepped_s"] for r in rows)),
        "check_s": float(sum(r["check_s"] for r in rows)),
    }


def table(results: dict[str, dict[str, Any]], threshold: float, frames: int) -> str:
    """The markdown table of all checkpoints and sets."""

    def f(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"| checkpoint | set | cines | flagged (< {threshold}) | memory lost (>= 5 pts) | lost & flagged | "
        "flagged, not lost | worst agreement | memory / alone, flagged | memory / alone, not flagged | "
        f"check time / stepping (1 frame in 8, 3 to {frames}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sets in results.items():
        for set_name, s in sets.items():
            lines.append(
                f"| {name} | {set_name} | {s['cines']} | {s['flagged']} | {s['lost']} | {s['lost_and_flagged']} | "
                f"{s['flagged_not_lost']} | {f(s['agreement_min'], 2)} | "
                f"{f(s['dice_memory_flagged'])} / {f(s['dice_alone_flagged'])} | "
                f"{f(s['dice_memory_unflagged'])} / {f(s['dice_alone_unflagged'])} | "
                f"{s['check_s'] / max(s['stepped_s'], 1e-9):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from scripts.checkpoint import build_network, trained_settings
    from scripts.clinical.quality import MIN_MEMORY_AGREEMENT
    from scripts.memory_check import DEFAULT_CHECKED_FRAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, nargs="+", default=[REPO_ROOT / "bundle" / "models" / "model.pt"])
    parser.add_argument("--names", nargs="+", help="a name per checkpoint (default: the folder's name)")
    parser.add_argument("--frames", type=int, default=DEFAULT_CHECKED_FRAMES, help="frames checked per cine")
    parser.add_argument("--lost", type=float, default=0.05, help="Dice below frames alone that counts as lost")
    parser.add_argument("--long", type=int, default=10, help="multi-beat synthetic cines")
    parser.add_argument("--long_frames", type=int, default=72)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_drift_check.json")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks_drift_check.md")
    args = parser.parse_args(argv)
    names = args.names or [p.parent.name for p in args.ckpt]
    if len(names) != len(args.ckpt):
        sys.exit("--names needs one name per --ckpt")
    missing = [str(p) for p in args.ckpt if not p.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)}: no trained model; run `make demo` (or the bundle's train.json) first")
    torch.set_num_threads(2)
    start = time.time()
    results: dict[str, dict[str, Any]] = {}
    rows_out: dict[str, dict[str, list]] = {}
    for name, ckpt in zip(names, args.ckpt):
        settings = trained_settings(ckpt)
        net = build_network(ckpt).eval()
        size, keep = int(settings["spatial_size"]), bool(settings["keep_aspect"])
        results[name], rows_out[name] = {}, {}
        for set_name in SETS:
            cases = load_set(set_name, size, keep, args.long, args.long_frames)
            if not cases:
                print(f"{name}: {set_name}: no cines (physics: run `python -m bench.physics` first)", flush=True)
                continue
            rows = [check_cine(net, c, args.frames) for c in cases]
            rows_out[name][set_name] = rows
            results[name][set_name] = summarise(rows, MIN_MEMORY_AGREEMENT, args.lost)
            print(f"{name}: {set_name}: {len(rows)} cines, {results[name][set_name]['flagged']} flagged", flush=True)
    text = table(results, MIN_MEMORY_AGREEMENT, args.frames)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "frames": args.frames,
        "threshold": MIN_MEMORY_AGREEMENT,
        "lost": args.lost,
        "checkpoints": {n: str(p) for n, p in zip(names, args.ckpt)},
        "summary": results,
        "cines": rows_out,
        "seconds": time.time() - start,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")
    if args.docs:
        page = REPO_ROOT / "docs" / "benchmarks_drift_check.md"
        page.write_text(
            "# The memory check, measured\n\n"
            f"Generated by `bench/drift_check.py` on {payload['date']} ({payload['seconds']:.0f} s, "
            f"{torch.get_num_threads()} CPU threads); JSON: `results/bench_drift_check.json`. What the check does: "
            'docs/clinical.md, "The memory check". Memory / alone: mean LV Dice over frames of the stepped masks and '
            "of every frame segmented alone by the same weights; a cine counts as lost when memory is >= "
            f"{args.lost * 100:.0f} points below alone.\n\n{text}\n"
        )
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
