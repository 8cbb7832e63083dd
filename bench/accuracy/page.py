"""The docs page (``docs/benchmarks_accuracy.md``) of one run or of several saved (partial) runs."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import SPLIT_TITLES
from .evaluate import reference_ef
from .findings import findings
from .report import aggregate, tables


def summarise(payload: dict[str, Any]) -> None:
    """Add ``summary``, ``findings`` and ``tables`` (one per test split) to a run's payload."""
    splits = tuple(payload["test_splits"])
    summary = aggregate(payload["runs"], splits)
    payload.update(summary=summary, findings=findings(summary, splits), tables=tables(summary, splits))


def occlusion_text(payload: dict[str, Any]) -> str:
    """The test splits' occluded frames in words (how many clips keep >= 1 after the ED..ES sampling)."""
    parts = []
    for name, s in payload["occlusion"].items():
        parts.append(
            f"{name}: {s['n_clips_occluded']} of {s['n_clips']} clips keep >= 1 occluded frame after sampling, "
            f"{s['n_frames_occluded']} of {s['n_frames']} sampled frames occluded "
            f"({s['n_frames_occluded_before_sampling']} of {s['n_frames_before_sampling']} generated)"
            + (f", {s['n_regenerated']} clips regenerated to keep one" if s["n_regenerated"] else "")
        )
    return "; ".join(parts)


def split_section(payload: dict[str, Any], split: str) -> list[str]:
    ref = payload["reference_gt_masks"][split]
    return [
        f"## {SPLIT_TITLES.get(split, split).capitalize()}",
        "",
        payload["tables"][split],
        "",
        f"Reference, EF of the ground-truth masks against the phantom (the floor of the EF method on these data): "
        f"r {ref['ef_r']:.3f}, bias {ref['ef_bias']:+.2f} %, SD {ref['ef_sd']:.2f} %; ground-truth dA/frame "
        f"{ref['area_change_gt_mm2']:.1f} mm^2.",
        "",
    ]


def write_docs(path: Path, payload: dict[str, Any]) -> None:
    """``docs/benchmarks_accuracy.md``: one table per test split with the command, machine, run time, budget, data
    and the generated findings."""
    machine = payload["machine"]
    where = f"{machine['gpu']} (training), " if "gpu" in machine else ""
    split = payload["split"]
    splits = payload["test_splits"]
    lines = [
        "# Accuracy benchmark: update rules, KPFF, softmax memory and per-frame MONAI baselines",
        "",
        "Produced by `python -m bench.accuracy` (`bench/accuracy/`, issues 7 and 15); every row trained from scratch "
        "in the same run, with the same data, budget and seed(s). Regenerate with:",
        "",
        "```",
        payload["command"],
        "```",
        "",
        *([payload["partial_note"], ""] if payload.get("partial_note") else []),
        f"- Machine: {where}{machine['cpu']} (CPU frames/s, {payload['cpu_threads']} threads); torch "
        f"{machine['torch']}, MONAI {machine.get('monai', '?')}, Python {machine['python']}.",
        f"- Run time: {payload['run_time_s'] / 60:.1f} min on {payload['device']} ({payload['date']}); "
        f"seeds {payload['seeds']}.",
        f"- Budget (every row): {payload['budget_text']}.",
        f"- Data: synthetic generator with its realistic failure modes (`failures=None`), {split['n_train']} train / "
        f"{split['n_val']} validation clips and two test splits of {split['n_test']} clips each: clean (the same "
        f"generator) and hard (`hard=True`: every cine has a stretch of frames where part of the LV border is not "
        f"visible, flagged per frame); 2CH and 4CH alternating, EF drawn per clip, ED..ES sampled to "
        f"{split['clip_frames']} frames from {split['min_frames']}-{split['max_frames']}-frame systoles (the "
        f"occlusion flags at the same frames), generated at {split['gen_size']} and resized to {split['size']} x "
        f"{split['size']}, LV labels; data key `{payload['data_key']}`. Occluded frames: {occlusion_text(payload)}.",
        "- Metrics on every test frame (all are annotated): Dice, IoU, HD95 and ASD in mm (`scripts.metrics`); "
        "Dice occluded / visible and HD95 occluded = the same on the occluded / other frames only; EF "
        "from the predicted first (ED) and last (ES) frame masks by single-plane Simpson (`clip_ef`) against the "
        "phantom's exact EF (r, bias = mean of pred - true, SD of the differences); dA/frame = mean absolute "
        "frame-to-frame change of the LV area (prediction, ground truth, ratio: 1 is as smooth as the truth); "
        f"CPU fps = streaming, batch 1, {payload['fps_frames']} frames after 5 warm-up frames on a CPU copy of the "
        "row's first trained model; Train (s) = the training iterations on the training device.",
        "",
        *[line for name in splits for line in split_section(payload, name)],
        "## Findings (generated)",
        "",
        payload["findings"][0],
        "",
        *[f"- {line}" for line in payload["findings"][1:]],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        f.write("\n".join(lines))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def docs_from_json(json_paths: Sequence[Path], docs_path: Path, data: dict[str, np.ndarray]) -> None:
    """Write the docs page from saved JSONs of one or more runs (also partial ones, stopped by a time limit).

    Runs are merged per (row, seed): a record with test metrics wins over one without, a later file over an earlier
    one. All files must come from the same data (``data``'s key) and budget. Rows whose test evaluation never
    finished show n/a and are named with their validation Dice; the ground-truth reference EF (computed at the end
    of a run) is recomputed from ``data`` when missing.
    """
    payloads = [json.loads(Path(path).read_text()) for path in json_paths]
    for path, payload in zip(json_paths, payloads, strict=True):
        if payload.get("data_key") != str(data["key"]):
            raise SystemExit(f"{path}: data key {payload.get('data_key')} is not that of the data file {data['key']}")
        if payload["budget"] != payloads[0]["budget"]:
            raise SystemExit(
                f"{path}: budget {payload['budget']} differs from {json_paths[0]}'s {payloads[0]['budget']}"
            )
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for payload in payloads:
        for record in payload["runs"]:
            key = (record["row"], record["seed"])
            if key not in merged or len(record.get("test", {})) >= len(merged[key].get("test", {})):
                merged[key] = record
    payload = dict(payloads[0])
    payload["runs"] = list(merged.values())
    payload["command"] = "\n".join(p["command"] for p in payloads)
    payload["run_time_s"] = sum(p.get("run_time_s", 0.0) for p in payloads)
    payload["seeds"] = sorted({s for p in payloads for s in p["seeds"]})
    payload["reference_gt_masks"] = next(
        (p["reference_gt_masks"] for p in payloads if "reference_gt_masks" in p), None
    ) or {split: reference_ef(data, split) for split in payload["test_splits"]}
    summarise(payload)
    done = [r for r in payload["runs"] if not r.get("failed")]
    unevaluated = "; ".join(
        f"{r['label']} (seed {r['seed']}): best validation Dice {r['val_dice']:.3f}"
        for r in done
        if len(r.get("test", {})) < len(payload["test_splits"]) and r.get("val_dice") is not None
    )
    stopped = [Path(path).name for path, p in zip(json_paths, payloads, strict=True) if "summary" not in p]
    notes = []
    if len(payloads) > 1:
        notes.append(f"Merged from {len(payloads)} runs (one command each, above).")
    if stopped:
        notes.append(f"Stopped by a time limit: {', '.join(stopped)} (rows it had not tested show n/a).")
    if unevaluated:
        notes.append(f"Trained but not tested: {unevaluated}.")
    if any(r.get("cpu_fps") is None for r in done):
        notes.append("CPU frames/s are measured at the end of a run: rows from a stopped run have none.")
    notes.append(
        "Page written by `python -m bench.accuracy --docs-from "
        + " ".join(Path(path).name for path in json_paths)
        + " ...` from the runs' JSON."
    )
    payload["partial_note"] = " ".join(notes)
    write_docs(docs_path, payload)
    print("\n\n".join(payload["tables"].values()))
    print(f"wrote {docs_path} from {', '.join(str(p) for p in json_paths)}", flush=True)
