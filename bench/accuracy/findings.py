"""Findings computed from the aggregated numbers: rankings, the paper's row against the others, whether the
memory rows beat the per-frame baselines on occluded frames by more than the seed spread, and what each memory row's
memory is worth against its own weights with the state reset before every frame."""

from __future__ import annotations

import math
from typing import Any

from .config import MEMORY_KINDS, REFERENCE_ROW, SPLIT_TITLES


def versus(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, str]:
    """``a - b`` of two :func:`report.stat` means, the larger seed SD, and a verdict in words."""
    diff = a["mean"] - b["mean"]
    spread = max([x for x in (a["sd"], b["sd"]) if math.isfinite(x)], default=math.nan)
    direction = "higher" if diff >= 0.0005 else "lower" if diff <= -0.0005 else "equal at three decimals"
    if not math.isfinite(spread):  # one seed: the findings say once that there is no spread to compare with
        return diff, spread, direction
    if abs(diff) <= spread:
        return diff, spread, f"within the seed spread, larger SD {spread:.3f}"
    return diff, spread, f"{direction} by more than the seed spread, larger SD {spread:.3f}"


def _scored(summary: list[dict[str, Any]], split: str, key: str) -> list[dict[str, Any]]:
    return [e for e in summary if e["n_seeds"] > 0 and e["test"][split][key]["n"] > 0]


def _best(entries: list[dict[str, Any]], split: str, key: str) -> dict[str, Any] | None:
    return max(entries, key=lambda e: e["test"][split][key]["mean"], default=None)


def _fmt(entry: dict[str, Any], split: str, key: str) -> str:
    s = entry["test"][split][key]
    sd = f" ± {s['sd']:.3f}" if math.isfinite(s["sd"]) else ""
    return f"{entry['label']}, {s['mean']:.3f}{sd}"


def memory_paragraph(summary: list[dict[str, Any]], splits: tuple[str, ...]) -> str:
    """The headline: best memory row against best per-frame baseline, on occluded frames (the hard split) and on
    every frame of each split, with the seed spread as the yardstick."""
    parts = []
    hard = "hard" if "hard" in splits else splits[-1]
    key = "dice_occluded" if _scored(summary, hard, "dice_occluded") else "dice"
    done = _scored(summary, hard, key)
    memory = [e for e in done if e["kind"] in MEMORY_KINDS]
    per_frame = [e for e in done if e["kind"] not in MEMORY_KINDS]
    if not memory or not per_frame:
        return "Memory against per-frame baselines: not both kinds of row have results; no comparison."
    best_m, best_p = _best(memory, hard, key), _best(per_frame, hard, key)
    diff, _, verdict = versus(best_m["test"][hard][key], best_p["test"][hard][key])
    where = "occluded frames of the hard split" if key == "dice_occluded" else f"every frame of the {hard} split"
    n_frames = int(best_m["test"][hard]["n_frames_occluded"]["mean"]) if key == "dice_occluded" else None
    parts.append(
        f"On the {where}{f' ({n_frames} frames)' if n_frames else ''}, the best memory row ({_fmt(best_m, hard, key)}) "
        f"has a Dice {diff:+.3f} against the best per-frame baseline ({_fmt(best_p, hard, key)}): {verdict}."
    )
    paper = next((e for e in memory if e["row"] == REFERENCE_ROW), None)
    if paper is not None and paper is not best_m:
        diff, _, verdict = versus(paper["test"][hard][key], best_p["test"][hard][key])
        parts.append(f"The paper's configuration ({_fmt(paper, hard, key)}): {diff:+.3f}, {verdict}.")
    if key == "dice_occluded":
        gaps = {}
        for name, group in (("memory", memory), ("per-frame", per_frame)):
            values = [
                e["test"][hard]["dice_occluded"]["mean"] - e["test"][hard]["dice_visible"]["mean"]
                for e in group
                if e["test"][hard]["dice_visible"]["n"] > 0
            ]
            if values:
                gaps[name] = sum(values) / len(values)
        if len(gaps) == 2:
            m, f = round(gaps["memory"], 3), round(gaps["per-frame"], 3)
            cost = "less than" if m > f else "more than" if m < f else "as much as"
            parts.append(
                f"Dice on occluded minus visible frames of the same hard cines, mean over rows: memory rows "
                f"{gaps['memory']:+.3f}, per-frame rows {gaps['per-frame']:+.3f} (occluded frames cost the memory rows "
                f"{cost} the per-frame rows)."
            )
    for split in splits:
        done = _scored(summary, split, "dice")
        memory = [e for e in done if e["kind"] in MEMORY_KINDS]
        per_frame = [e for e in done if e["kind"] not in MEMORY_KINDS]
        if memory and per_frame:
            best_m, best_p = _best(memory, split, "dice"), _best(per_frame, split, "dice")
            diff, _, verdict = versus(best_m["test"][split]["dice"], best_p["test"][split]["dice"])
            parts.append(
                f"All frames of the {SPLIT_TITLES.get(split, split)}: best memory row ({_fmt(best_m, split, 'dice')}) "
                f"against best per-frame ({_fmt(best_p, split, 'dice')}): {diff:+.3f}, {verdict}."
            )
    return " ".join(parts)


def findings(summary: list[dict[str, Any]], splits: tuple[str, ...]) -> list[str]:
    """Plain statements: the memory paragraph first, then per split the ranking by Dice (and by occluded-frame Dice)
    and each row against the paper's configuration, then failures."""
    if not any(_scored(summary, split, "dice") for split in splits):
        return ["No row produced results."] + _failures(summary)
    lines = [memory_paragraph(summary, splits)]
    for split in splits:
        keys = ["dice"] + (["dice_occluded"] if _scored(summary, split, "dice_occluded") else [])
        compare = keys[-1] if split == "hard" else "dice"  # rows against the paper's: occluded Dice on the hard split
        for key in keys:
            done = _scored(summary, split, key)
            ranked = sorted(done, key=lambda e: -e["test"][split][key]["mean"])
            what = "Dice on occluded frames" if key == "dice_occluded" else "Dice"
            lines.append(
                f"{split}: ranking by {what}: "
                + " > ".join(f"{e['label']} ({e['test'][split][key]['mean']:.3f})" for e in ranked)
                + "."
            )
            reference = next((e for e in done if e["row"] == REFERENCE_ROW), None)
            if reference is None or key != compare:
                continue
            for e in done:
                if e is not reference:
                    diff, _, verdict = versus(e["test"][split][key], reference["test"][split][key])
                    lines.append(f"{split}: {e['label']}: {what} {diff:+.3f} against {reference['label']} ({verdict}).")
    lines += reset_lines(summary, splits)
    if max(e["n_seeds"] for e in summary) < 2:
        lines.append("One seed only: no seed SD, so small differences cannot be told from noise (run --seeds 0 1 2).")
    return lines + _failures(summary)


def reset_lines(summary: list[dict[str, Any]], splits: tuple[str, ...]) -> list[str]:
    """What each memory row's memory is worth with everything else equal: its Dice minus the same weights' Dice with
    the state reset before every frame, paired per seed (``memory_gain``), on every frame and on the occluded frames,
    per split."""

    def gain(s: dict[str, float]) -> str:
        if not math.isfinite(s["sd"]):
            return f"{s['mean']:+.3f}"
        size = "more than" if abs(s["mean"]) > s["sd"] else "within"
        return f"{s['mean']:+.3f} ± {s['sd']:.3f} ({size} its seed SD)"

    lines = []
    for split in splits:
        for e in _scored(summary, split, "memory_gain"):
            t = e["test"][split]
            text = f"{split}: {e['label']}: memory {t['dice']['mean']:.3f} against the state reset per frame "
            text += f"{t['dice_reset']['mean']:.3f} (same weights): {gain(t['memory_gain'])}"
            if t["memory_gain_occluded"]["n"] > 0:
                text += f"; occluded frames {gain(t['memory_gain_occluded'])}"
            lines.append(text + ".")
    return lines


def _failures(summary: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['label']} FAILED (seed {failure['seed']}): {failure['error'].splitlines()[0]}"
        for e in summary
        for failure in e["failed"]
    ]
