"""One benchmark run: every row for every seed, test evaluations overlapping the next row's training."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import MEMORY_KINDS, RESET_SUFFIX, SPLIT_GENERATOR_ARGS, TEST_SPLITS, Budget, RowSpec, SplitConfig
from .data import draw_batches, occlusion_stats
from .evaluate import cpu_frames_per_s, evaluate_job, reference_job, stream_frames
from .report import machine_description, write_json
from .train import fit_iterations, predict, train_row


def run_rows(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    pool: Any,
    data: dict[str, np.ndarray],
    data_path: Path,
    split: SplitConfig,
    budget: Budget,
    rows: Sequence[RowSpec],
    fps_frames: int,
    out_path: Path,
    t0: float,
) -> dict[str, Any]:
    """Train and test every row for every seed; returns the JSON payload with one record per (seed, row)."""
    all_batches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for seed in args.seeds:
        start = time.perf_counter()
        all_batches[seed] = draw_batches(pool, seed, budget)
        size_mb = sum(a.nbytes for a in all_batches[seed]) / 2**20
        print(
            f"seed {seed}: {budget.iterations} augmented batches ({size_mb:.0f} MiB) in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
    reference = pool.apply_async(reference_job, (TEST_SPLITS,))

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.zeros(1, device=device)
    val = (data["val_image"], data["val_label"])
    calibration: dict[str, float] = {}
    if args.fit_minutes is not None:
        seconds_left = args.fit_minutes * 60 - (time.perf_counter() - t0)
        first = tuple(torch.from_numpy(b[:4]).to(device) for b in all_batches[args.seeds[0]])
        iterations, calibration = fit_iterations(rows, first, val, budget, device, seconds_left, len(args.seeds))
        del first
        print(
            f"--fit-minutes {args.fit_minutes}: {iterations} iterations per row (of {budget.iterations}); measured "
            f"s/iteration {json.dumps({k: round(v, 4) for k, v in calibration.items()})}",
            flush=True,
        )
        all_batches = {s: (b[0][:iterations], b[1][:iterations]) for s, b in all_batches.items()}
        budget = dataclasses.replace(budget, iterations=iterations)

    command = "python -m bench.accuracy " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    payload: dict[str, Any] = {
        "benchmark": "accuracy",
        "command": command.strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "device": str(device),
        "machine": machine_description(device),
        "cpu_threads": args.cpu_threads,
        "fps_frames": fps_frames,
        "seeds": args.seeds,
        "split": dataclasses.asdict(split),
        "data_key": str(data["key"]),
        "data_path": str(data_path),
        "test_splits": list(TEST_SPLITS),
        "split_generator_args": SPLIT_GENERATOR_ARGS,
        "occlusion": occlusion_stats(data, TEST_SPLITS),
        "budget": dataclasses.asdict(budget),
        "budget_text": budget.describe(split),
        "calibration_s_per_iteration": calibration,
        "precision": {
            "amp_bf16": budget.amp_bf16,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "runs": [],
    }
    print(f"budget: {payload['budget_text']}", flush=True)
    pending: list[tuple[dict[str, Any], str, str, Any]] = []
    cpu_models: dict[str, tuple[int, nn.Module]] = {}
    total = len(rows) * len(args.seeds)
    done = 0
    for seed in args.seeds:
        # The seed's batches go to the device once (about 2 GiB of uint8 for the default budget).
        seed_batches = tuple(torch.from_numpy(b).to(device) for b in all_batches.pop(seed))
        for spec in rows:
            done += 1
            tag = f"[{done}/{total} seed {seed}] {spec.name}"
            print(f"{tag}: training", flush=True)
            record: dict[str, Any] = {"row": spec.name, "label": spec.label, "seed": seed, "tag": tag}
            model = None
            try:
                model, train_record = train_row(
                    spec, seed, seed_batches, val, budget, device, lambda m, t=tag: print(f"{t}: {m}", flush=True)
                )
                record.update(train_record)
                record["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
                start = time.perf_counter()
                for name in TEST_SPLITS:
                    pred = predict(model, data[f"{name}_image"], device, budget.batch, budget.amp_bf16)
                    pending.append((record, name, "", pool.apply_async(evaluate_job, (name, pred))))
                    if spec.kind in MEMORY_KINDS:  # the same weights with the state reset before every frame
                        alone = predict(model, data[f"{name}_image"], device, budget.batch, budget.amp_bf16, True)
                        pending.append((record, name, RESET_SUFFIX, pool.apply_async(evaluate_job, (name, alone))))
                record["test_inference_s"] = time.perf_counter() - start
                if spec.name not in cpu_models:
                    cpu_models[spec.name] = (seed, copy.deepcopy(model).to("cpu", torch.float32).eval())
                print(
                    f"{tag}: trained in {record['train_s']:.1f} s ({record['s_per_iteration'] * 1000:.0f} ms/it), "
                    f"best val Dice {record['val_dice']:.3f} at it {record['best_iteration']}; "
                    f"elapsed {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            except Exception as error:
                record.update(failed=True, error=f"{type(error).__name__}: {error}")
                print(f"{tag}: FAILED {record['error']}", flush=True)
                traceback.print_exc()
            finally:
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            payload["runs"].append(record)
            collect_evaluations(pending, block=False)
            payload["run_time_s"] = time.perf_counter() - t0
            write_json(out_path, payload)
        del seed_batches

    collect_evaluations(pending, block=True)
    payload["reference_gt_masks"] = reference.get()
    # CPU frames/s last, with nothing else running: one trained model per row (speed does not depend on the seed).
    frames = stream_frames(data["clean_image"], fps_frames + 5)
    for name, (seed, cpu_model) in cpu_models.items():
        try:
            fps = cpu_frames_per_s(cpu_model, frames, args.cpu_threads)
            error = None
        except Exception as exc:
            fps, error = math.nan, f"{type(exc).__name__}: {exc}"
        print(f"{name}: CPU {fps:.1f} frames/s ({args.cpu_threads} threads, seed {seed}'s model)", flush=True)
        for record in payload["runs"]:
            if record["row"] == name and not record.get("failed"):
                record.update(cpu_fps=fps, cpu_fps_model_seed=seed, cpu_fps_error=error)
    payload["run_time_s"] = time.perf_counter() - t0
    write_json(out_path, payload)
    return payload


def collect_evaluations(pending: list[tuple[dict[str, Any], str, str, Any]], block: bool) -> None:
    """Merge finished test evaluations into ``record["test"][split]`` (all of them, waiting, with ``block``); an
    evaluation with a ``suffix`` (the state-reset predictions, :data:`RESET_SUFFIX`) adds its Dice keys with that
    suffix."""
    for item in list(pending):
        record, split, suffix, result = item
        if not block and not result.ready():
            continue
        pending.remove(item)
        try:
            m = result.get()
            metrics = record.setdefault("test", {}).setdefault(split, {})
            if suffix:
                metrics.update({f"{k}{suffix}": m[k] for k in ("dice", "dice_occluded", "dice_visible")})
                print(f"{record['tag']}: {split}, state reset per frame: Dice {m['dice']:.3f} "
                      f"(occluded frames {m['dice_occluded']:.3f})", flush=True)  # fmt: skip
                continue
            metrics.update(m)
        except Exception as error:
            record.update(failed=True, error=f"evaluation ({split}{suffix}): {type(error).__name__}: {error}")
            print(f"{record['tag']}: evaluation FAILED {record['error']}", flush=True)
            continue
        print(
            f"{record['tag']}: {split} Dice {m['dice']:.3f} (occluded frames {m['dice_occluded']:.3f}, "
            f"n={m['n_frames_occluded']}) IoU {m['iou']:.3f} HD95 {m['hd95_mm']:.2f} mm ASD {m['asd_mm']:.2f} mm; "
            f"EF r {m['ef_r']:.3f} bias {m['ef_bias']:+.2f} SD {m['ef_sd']:.2f}; dA ratio {m['area_change_ratio']:.2f}",
            flush=True,
        )
