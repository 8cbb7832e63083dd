"""Numbers to trust: EF over accepted beats and the verdict against the 0.5.0 measurement, on synthetic and real echo.

For every cine the trained model segments (as the bundle's inference does: ``ResizeCined`` in, ``restore_labels``
out, the network's per-frame LV confidence), two measurements of the same masks:

- **before** (bundle 0.5.0): every extremum pair of the LV volume curve is a beat (``find_ed_es``), EF = the mean
  over every beat with a finite EF;
- **after**: :func:`scripts.clinical.measure_cine` (beats accepted or rejected with reasons, EF over accepted beats,
  the verdict).

Sets: the held-out synthetic test patients of the clean and the hard split (half cycles, ED -> ES, as CAMUS stores
them; reference EF = the phantom's, from ``Info_<view>.cfg``), long multi-beat synthetic cines (several cycles, both
views, clean and hard; reference = the phantom's EF) and the real apical cines of pydicom (no reference: the spread
of the per-beat EFs and the verdict). It prints the tables, saves ``results/bench_trust.json`` and, with ``--docs``,
writes ``docs/benchmarks_trust.md``. The distribution of each verdict check over the synthetic cines is printed too:
it is what the thresholds in :mod:`scripts.clinical.quality` are set against (docs/clinical.md, "Verdict").

Usage: ``.venv/bin/python bench/trust.py [--ckpt bundle/models/model.pt] [--long 10] [--docs]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

CHECKS = (
    "measurable_fraction",
    "fragmented_fraction",
    "lv_area_fraction",
    "lv_elongation",
    "lv_axis_angle_deg",
    "apex_up_fraction",
    "periodicity",
    "confidence",
)


def segment(net: torch.nn.Module, image_HWT: np.ndarray, spacing, size: int, keep_aspect: bool):
    """Labels ``[H, W, T]`` on the cine's grid and the per-frame LV confidence ``[T]``, as the bundle's inference."""
    from scripts.clinical import lv_confidence
    from scripts.data import ResizeCined
    from scripts.inference import restore_labels

    resize = ResizeCined(keys="image", spatial_size=size, mode="bilinear", keep_aspect=keep_aspect)
    video = resize({"image": torch.as_tensor(image_HWT, dtype=torch.float32)[None], "spacing": np.asarray(spacing)})
    with torch.inference_mode():
        logits = net(video["image"][None])[0]  # [K, h, w, T]
    confidence = lv_confidence(torch.softmax(logits, dim=0).numpy())
    labels = logits.argmax(dim=0).to(torch.uint8).numpy()
    return restore_labels(labels, image_HWT.shape[0], image_HWT.shape[1], spacing, keep_aspect), confidence


def legacy_measurement(labels_HWT: np.ndarray, spacing, frame_rate: float | None) -> dict[str, Any]:
    """Bundle 0.5.0's EF: every ``find_ed_es`` pair is a beat, EF = the mean over beats with a finite EF."""
    from scripts.clinical import ejection_fraction, find_ed_es, lv_volume
    from scripts.clinical.evaluation import largest_component

    volumes = [lv_volume(largest_component(labels_HWT[..., t] == 1), spacing) for t in range(labels_HWT.shape[-1])]
    efs = [ejection_fraction(volumes[ed], volumes[es]) for ed, es in find_ed_es(volumes, frame_rate=frame_rate)]
    efs = [e for e in efs if math.isfinite(e)]
    return {"ef_percent": float(np.mean(efs)) if efs else math.nan, "beat_efs": efs}


def synthetic_split(root: Path) -> list[dict[str, Any]]:
    """The held-out test patients' half sequences of a generated data set, with the phantom's EF."""
    from scripts.data.video_io import load_cine
    from scripts.geometry import labels_from_nifti_like_input

    cases = []
    for patient in (root / "database_split" / "subgroup_testing.txt").read_text().split():
        for view in ("2CH", "4CH"):
            folder = root / "database_nifti" / patient
            info = dict(
                line.split(":", 1) for line in (folder / f"Info_{view}.cfg").read_text().splitlines() if ":" in line
            )
            source = folder / f"{patient}_{view}_half_sequence.nii.gz"
            image, meta = load_cine(source)
            truth = labels_from_nifti_like_input(folder / f"{patient}_{view}_half_sequence_gt.nii.gz", source, meta)
            case = {"name": f"{patient}_{view}", "image": image, "meta": meta, "reference_ef": float(info["EF"])}
            cases.append({**case, "truth": truth})
    return cases


def long_cines(count: int, frames: int) -> list[dict[str, Any]]:
    """Multi-beat synthetic cines (both views, every other one from the hard split), with the phantom's EF."""
    from scripts.synthetic import generate_sequence

    cases = []
    for i in range(count):
        seq = generate_sequence(
            [9300, i], view=("4CH", "2CH")[i % 2], size=256, n_frames=frames, mode="cine", hard=bool(i % 2)
        )
        spacing = tuple(float(s) for s in seq["spacing_mm"])
        meta = {"format": "synthetic", "frame_rate": float(seq["frame_rate"]), "spacing": spacing}
        case = {"name": f"long{i:02d}", "image": seq["image"], "meta": meta, "reference_ef": float(seq["ef"])}
        cases.append({**case, "truth": seq["label"]})
    return cases


def real_cines() -> list[dict[str, Any]]:
    """pydicom's real apical 4-chamber cines (no reference EF)."""
    from real_echo import real_cines as found

    from scripts.data.video_io import load_cine

    cases = []
    for name, path in found():
        image, meta = load_cine(path)
        cases.append({"name": name, "image": image, "meta": meta, "reference_ef": math.nan})
    return cases


def measure(net: torch.nn.Module, case: dict[str, Any], size: int, keep_aspect: bool) -> dict[str, Any]:
    """Both measurements of one cine's predicted masks."""
    from scripts.clinical import measure_cine

    meta = case["meta"]
    spacing = tuple(float(s) for s in meta["spacing"])
    known = all(math.isfinite(s) and s > 0 for s in spacing)
    rate = meta.get("frame_rate")
    rate = float(rate) if rate is not None and math.isfinite(float(rate)) and float(rate) > 0 else None
    labels, confidence = segment(net, case["image"], spacing if known else (1.0, 1.0), size, keep_aspect)
    before = legacy_measurement(labels, spacing if known else (1.0, 1.0), rate)
    after = measure_cine(labels, spacing if known else None, rate, meta, case["image"], confidence)
    accepted = [b["ef_percent"] for b in after["beats"] if b["accepted"]]
    truth: dict[str, Any] = {}
    if case.get("truth") is not None:  # the same two measurements of the true masks: the measurement alone
        scale = spacing if known else (1.0, 1.0)
        truth_after = measure_cine(case["truth"], spacing if known else None, rate, meta, case["image"])
        truth = {
            "truth_before_ef": legacy_measurement(case["truth"], scale, rate)["ef_percent"],
            "truth_after_ef": truth_after["ef_percent"],
            "truth_verdict": truth_after["quality"]["verdict"],
        }
    return {
        **truth,
        "name": case["name"],
        "frames": int(labels.shape[-1]),
        "reference_ef": case["reference_ef"],
        "before_ef": before["ef_percent"],
        "before_beats": len(before["beat_efs"]),
        "before_beat_efs": before["beat_efs"],
        "after_ef": after["ef_percent"],
        "after_beats": len(after["beats"]),
        "after_accepted": after["beats_accepted"],
        "after_beat_efs": accepted,
        "verdict": after["quality"]["verdict"],
        "reasons": after["quality"]["reasons"],
        "checks": {k: v for k, v in after["quality"]["checks"].items() if k in CHECKS},
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement before/after (all cines with an EF; verdict ok only), beats, verdict counts of one set."""
    from scripts.clinical import agreement

    def stats(pairs: list[tuple[float, float]]) -> dict[str, float]:
        pairs = [(p, r) for p, r in pairs if math.isfinite(p) and math.isfinite(r)]
        if len(pairs) < 3:
            return {"n": len(pairs)}
        found = agreement([p for p, _ in pairs], [r for _, r in pairs])
        return {k: found[k] for k in ("n", "r", "bias", "sd", "mae")}

    verdicts = [r["verdict"] for r in rows]
    truth_verdicts = [r["truth_verdict"] for r in rows if "truth_verdict" in r]
    return {
        "truth_before": stats([(r.get("truth_before_ef", math.nan), r["reference_ef"]) for r in rows]),
        "truth_after": stats([(r.get("truth_after_ef", math.nan), r["reference_ef"]) for r in rows]),
        "truth_ok_fraction": truth_verdicts.count("ok") / len(truth_verdicts) if truth_verdicts else math.nan,
        "cines": len(rows),
        "before": stats([(r["before_ef"], r["reference_ef"]) for r in rows]),
        "after": stats([(r["after_ef"], r["reference_ef"]) for r in rows]),
        "after_ok": stats([(r["after_ef"], r["reference_ef"]) for r in rows if r["verdict"] == "ok"]),
        "before_beats": sum(r["before_beats"] for r in rows),
        "after_beats": sum(r["after_beats"] for r in rows),
        "after_accepted": sum(r["after_accepted"] for r in rows),
        "verdicts": {v: verdicts.count(v) for v in ("ok", "review", "reject")},
        "ok_fraction": verdicts.count("ok") / len(rows) if rows else math.nan,
    }


def check_distribution(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """5th/50th/95th percentiles, min and max of each verdict check over ``rows``."""
    found = {}
    for name in CHECKS:
        values = np.array([r["checks"].get(name) for r in rows if r["checks"].get(name) is not None], dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            p5, p50, p95 = np.percentile(values, [5, 50, 95])
            found[name] = {"min": float(values.min()), "p5": p5, "p50": p50, "p95": p95, "max": float(values.max())}
    return found


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def tables(result: dict[str, Any]) -> str:
    """Markdown tables of a run."""
    lines = [
        "| set | cines | EF r / bias / SD: before (every beat) | after (accepted beats) | after, verdict ok only "
        "| beats before / after (accepted) | ok / review / reject |",
        "|---|---|---|---|---|---|---|",
    ]

    def agree(s: dict[str, float]) -> str:
        return f"{_fmt(s.get('r'), 3)} / {_fmt(s.get('bias'))} / {_fmt(s.get('sd'))} (n {s['n']})"

    for name, summary in result["sets"].items():
        v = summary["verdicts"]
        lines.append(
            f"| {name} | {summary['cines']} | {agree(summary['before'])} | {agree(summary['after'])} "
            f"| {agree(summary['after_ok'])} | {summary['before_beats']} / {summary['after_beats']} "
            f"({summary['after_accepted']}) | {v['ok']} / {v['review']} / {v['reject']} |"
        )
    lines += [
        "",
        "The same two measurements of the true masks (the measurement alone, no network):",
        "",
        "| set | EF r / bias / SD: before | after | verdict ok (true masks) |",
        "|---|---|---|---|",
    ]
    for name, summary in result["sets"].items():
        lines.append(
            f"| {name} | {agree(summary['truth_before'])} | {agree(summary['truth_after'])} "
            f"| {_fmt(100 * summary['truth_ok_fraction'], 0)} % |"
        )
    lines += ["", "| real cine | before: beat EFs (%) | after: accepted beat EFs (%) | EF before / after | verdict |"]
    lines += ["|---|---|---|---|---|"]
    for row in result["real"]:
        before = ", ".join(_fmt(e, 0) for e in row["before_beat_efs"]) or "-"
        after = ", ".join(_fmt(e, 0) for e in row["after_beat_efs"]) or "-"
        why = f": {'; '.join(row['reasons'])}" if row["reasons"] else ""
        lines.append(
            f"| {row['name']} | {before} | {after} | {_fmt(row['before_ef'])} / {_fmt(row['after_ef'])} "
            f"| {row['verdict']}{why} |"
        )
    lines += ["", "| check (synthetic cines, predicted masks) | min | 5th pct | median | 95th pct | max |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, d in result["check_distribution"].items():
        lines.append(
            f"| {name} | {_fmt(d['min'], 3)} | {_fmt(d['p5'], 3)} | {_fmt(d['p50'], 3)} | {_fmt(d['p95'], 3)} "
            f"| {_fmt(d['max'], 3)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from scripts.checkpoint import build_network, trained_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=REPO_ROOT / "bundle" / "models" / "model.pt")
    parser.add_argument("--clean", type=Path, default=REPO_ROOT / "bundle" / "data" / "synthetic")
    parser.add_argument("--hard", type=Path, default=REPO_ROOT / "bundle" / "data" / "synthetic_hard")
    parser.add_argument("--long", type=int, default=10, help="multi-beat synthetic cines")
    parser.add_argument("--long_frames", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_trust.json")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks_trust.md")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        sys.exit(f"{args.ckpt}: no trained model; run `make demo` (or the bundle's train.json) first")
    torch.set_num_threads(2)
    net = build_network(args.ckpt)
    settings = trained_settings(args.ckpt)
    size, keep_aspect = int(settings.get("spatial_size", 128)), bool(settings.get("keep_aspect", True))
    start = time.time()
    sets: dict[str, list[dict[str, Any]]] = {}
    sources = {
        "synthetic clean (half cycles)": lambda: synthetic_split(args.clean),
        "synthetic hard (half cycles)": lambda: synthetic_split(args.hard),
        f"synthetic multi-beat ({args.long} x {args.long_frames} frames)": lambda: long_cines(
            args.long, args.long_frames
        ),
    }
    for name, cases in sources.items():
        sets[name] = [measure(net, case, size, keep_aspect) for case in cases()]
        print(f"{name}: {len(sets[name])} cines measured ({time.time() - start:.0f} s)", flush=True)
    real = [measure(net, case, size, keep_aspect) for case in real_cines()]
    synthetic = [row for rows in sets.values() for row in rows]
    result = {
        "checkpoint": str(args.ckpt),
        "sets": {name: summarise(rows) for name, rows in sets.items()},
        "real": real,
        "check_distribution": check_distribution(synthetic),
        "ok_fraction_synthetic": sum(r["verdict"] == "ok" for r in synthetic) / len(synthetic),
        "not_ok_synthetic": [
            {"name": r["name"], "verdict": r["verdict"], "reasons": r["reasons"]}
            for r in synthetic
            if r["verdict"] != "ok"
        ],
        "rows": sets,
        "seconds": round(time.time() - start, 1),
        "torch_threads": torch.get_num_threads(),
    }
    text = tables(result)
    print(text)
    print(f"synthetic cines ok: {result['ok_fraction_synthetic']:.1%}; not ok: {result['not_ok_synthetic']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float, allow_nan=True))
    print(f"saved {args.out}")
    if args.docs:
        page = REPO_ROOT / "docs" / "benchmarks_trust.md"
        page.write_text(
            "# Numbers to trust: EF over accepted beats and the verdict (bench/trust.py)\n\n"
            f"Model `{args.ckpt.relative_to(REPO_ROOT) if args.ckpt.is_relative_to(REPO_ROOT) else args.ckpt}`, "
            f"one run on {torch.get_num_threads()} CPU threads ({result['seconds']:.0f} s). "
            "Before: bundle 0.5.0's measurement of the same masks (every extremum pair a beat); after: "
            "`scripts.clinical.measure_cine`. Reference EF: the phantom's. See docs/clinical.md for the method.\n\n"
            + text
            + "\n"
        )
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
