"""Streaming benchmark: eager ``GDKVM.step`` against the streaming engine (CUDA graph on a GPU), 1 to 64 streams.

For every (size, precision, streams B) it times, in the same process and on the same frames:

- ``eager``: the bundle's per-frame loop as before the engine, ``GDKVM.step(frame [B, 1, H, W], state)`` under
  ``torch.autocast`` for bfloat16/float16 (what ``inference.json`` did with ``amp``);
- ``engine <backend>``: :class:`scripts.streaming.StreamingEngine` with ``B`` slots and each ``--backends`` entry:
  ``cuda_graph`` (a captured CUDA graph on CUDA; on the CPU its eager fallback), ``compile``
  (``torch.compile(mode="reduce-overhead")``: CUDA graphs of Inductor kernels on a GPU, C++ kernels on the CPU),
  ``eager`` (the engine's buffers without capture); outputs cloned as a caller gets them.

The modes take turns frame by frame on the same frames (so a change of machine load slows both alike): ``--warmup``
steps each, then up to ``--frames`` steps each (at least 30; stopped after about ``--max_seconds`` per mode), each
synchronised and timed. Reported: ms/step p50 and p99 (the latency each stream sees per frame), frames/s = B / mean
step time, p99/p50, and for engine rows the engine/eager ratio of p50 (same run, same frames) and the set-up time
(capture or compilation). Random weights (speed does not depend on them).

``--agreement`` adds the masks' agreement on synthetic cines (``scripts.synthetic.generate_sequence``): per size and
precision, Dice (foreground classes, per cine, mean) between the engine's masks and eager masks of the same
precision, and between the engine's masks and eager float32 masks, for each backend; with ``--ckpt`` (a small model)
also each one's Dice against the synthetic ground truth (LV). Without a checkpoint the weights are random.

Usage (from the repository root):
    .venv/bin/python bench/streaming.py                      # CPU: small+base, 128 x 128, float32, 1 and 8 streams
    .venv/bin/python bench/streaming.py --device cuda --resolution 256 --precisions float32 bfloat16 float16 \\
        --streams 1 8 32 64 --backends cuda_graph compile --agreement --ckpt bundle/models/model.pt \\
        --out results/gpu_streaming.json
Writes ``results/bench_streaming_<device>.json`` (or ``--out``) after every row and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_description

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))

from scripts.gdkvm import GDKVM  # noqa: E402
from scripts.streaming import BACKENDS, PRECISIONS, StreamingEngine  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def time_alternating(
    steps: dict[str, Callable[[torch.Tensor], object]],
    frames: list[torch.Tensor],
    device: torch.device,
    warmup: int,
    count: int,
    max_s: float,
) -> dict[str, dict]:
    """Per-step times of each ``steps[name](frame)``, the names taking turns frame by frame (so that a machine
    whose load changes during the run slows them alike), over up to ``count`` frames after ``warmup`` each."""
    for i in range(warmup):
        for step in steps.values():
            step(frames[i % len(frames)])
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    begin = time.perf_counter()
    for i in range(count):
        for name, step in steps.items():
            start = time.perf_counter()
            step(frames[i % len(frames)])
            _sync(device)
            times[name].append(time.perf_counter() - start)
        if i + 1 >= 30 and time.perf_counter() - begin > max_s * len(steps):
            break
    found = {}
    for name, values in times.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
        found[name] = {
            "steps": len(values),
            "p50_ms": 1000 * statistics.median(values),
            "p99_ms": 1000 * p99,
            "mean_ms": 1000 * statistics.fmean(values),
        }
    return found


def eager_stepper(net: GDKVM, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``step(frame [B, 1, H, W]) -> logits [B, K, H, W]``: ``GDKVM.step`` carrying its own state (the eager path)."""
    state: dict[str, object] = {"s": None}

    def step(frame: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, precision):
            logits, state["s"] = net.step(frame, state["s"])
        return logits.float()

    return step


def bench_rows(args: argparse.Namespace, device: torch.device, save: Callable[[list[dict]], None]) -> list[dict]:
    """Eager and engine rows for every size, precision and number of streams (see the module docstring)."""
    rows: list[dict] = []
    h = w = args.resolution
    for size in args.sizes:
        torch.manual_seed(0)
        net = GDKVM(size=size, out_channels=2).to(device).eval()
        for precision in args.precisions:
            for streams in args.streams:
                frames = [torch.rand(streams, 1, h, w, device=device) for _ in range(4)]
                common = {"size": size, "precision": precision, "streams": streams, "resolution": h}
                steps: dict[str, Callable[[torch.Tensor], object]] = {"eager": eager_stepper(net, device, precision)}
                engines: dict[str, StreamingEngine] = {}
                setup_s: dict[str, float] = {}
                errors: dict[str, str] = {}
                for backend in args.backends:
                    try:
                        start = time.perf_counter()
                        engines[backend] = StreamingEngine(net, streams, h, w, precision=precision, backend=backend)
                        _sync(device)
                        setup_s[backend] = time.perf_counter() - start
                        steps[backend] = engines[backend].step
                    except Exception as e:  # noqa: BLE001 - report the row and go on
                        errors[backend] = f"{type(e).__name__}: {e}"[:300]
                try:
                    with torch.inference_mode():
                        timed = time_alternating(steps, frames, device, args.warmup, args.frames, args.max_seconds)
                except Exception as e:  # noqa: BLE001 - out of memory, unsupported dtype: report and go on
                    timed, errors["eager"] = {}, f"{type(e).__name__}: {e}"[:300]
                for name in ["eager", *args.backends]:
                    engine = engines.get(name)
                    mode = "eager" if name == "eager" else f"engine {name} ({engine.mode if engine else 'failed'})"
                    row = {**common, "mode": mode}
                    if name in timed:
                        row.update(timed[name])
                        row["frames_per_s"] = streams * 1000 / row["mean_ms"]
                        row["p99_over_p50"] = row["p99_ms"] / row["p50_ms"]
                        if name != "eager":
                            row["setup_s"] = setup_s[name]
                            row["engine_over_eager_p50"] = row["p50_ms"] / timed["eager"]["p50_ms"]
                    else:
                        row["error"] = errors.get(name) or errors.get("eager") or "not run"
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                save(rows)
                del engines, frames, steps
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del net
    save(rows)
    return rows


def dice(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    """Mean Dice over the foreground classes 1..K-1 of two label arrays (1.0 for a class absent from both)."""
    scores = []
    for c in range(1, classes):
        x, y = a == c, b == c
        total = x.sum() + y.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores))


def agreement(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Dice between the engine's and eager masks on synthetic cines, per size and precision (module docstring)."""
    from scripts.export import load_network
    from scripts.synthetic.sequence import generate_sequence

    size_px = args.agreement_resolution
    cines = [generate_sequence(seed=1000 + i, size=size_px, n_frames=args.agreement_frames) for i in range(args.cines)]
    videos = [torch.from_numpy(c["image"])[None, None].to(device) for c in cines]  # [1, 1, H, W, T]
    truths = [(c["label"] == 1).astype(np.uint8) for c in cines]  # LV [H, W, T]
    results = []
    for size in args.sizes:
        trained = args.ckpt is not None and size == "small"
        if trained:
            net = load_network(args.ckpt, size="small", out_channels=2).to(device).eval()
        else:
            torch.manual_seed(0)
            net = GDKVM(size=size, out_channels=2).to(device).eval()
        with torch.inference_mode():
            reference = [net(v).argmax(1)[0].cpu().numpy() for v in videos]  # eager float32 [H, W, T]
        for precision in args.precisions:
            with torch.inference_mode(), _autocast(device, precision):
                eager = [net(v).argmax(1)[0].cpu().numpy() for v in videos]
            for backend in args.backends:
                engine = StreamingEngine(net, 1, size_px, size_px, precision=precision, backend=backend)
                with torch.inference_mode():
                    ours = [engine.run(v).argmax(1)[0].cpu().numpy() for v in videos]
                row = {
                    "size": size,
                    "weights": f"trained ({args.ckpt})" if trained else "random",
                    "precision": precision,
                    "backend": backend,
                    "engine_mode": engine.mode,
                    "cines": len(videos),
                    "frames": args.agreement_frames,
                    "resolution": size_px,
                    "dice_engine_vs_eager_same_precision": float(np.mean([dice(a, b, 2) for a, b in zip(ours, eager)])),
                    "dice_engine_vs_eager_float32": float(np.mean([dice(a, b, 2) for a, b in zip(ours, reference)])),
                    "pixels_equal_vs_eager_float32": float(np.mean([np.mean(a == b) for a, b in zip(ours, reference)])),
                }
                if trained:
                    row["dice_vs_truth_engine"] = float(np.mean([dice(a, t, 2) for a, t in zip(ours, truths)]))
                    row["dice_vs_truth_eager_float32"] = float(
                        np.mean([dice(a, t, 2) for a, t in zip(reference, truths)])
                    )
                results.append(row)
                print(json.dumps(row), flush=True)
                del engine
    return results


def print_tables(result: dict) -> None:
    print(f"\nMachine: {result['machine']}\n")
    print("| model | input | precision | streams | mode | ms/step p50 | p99 | p99/p50 | frames/s | engine/eager |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    for row in result["rows"]:
        head = f"| {row['size']} | {row['resolution']}x{row['resolution']} | {row['precision']} | {row['streams']} "
        if "error" in row:
            print(head + f"| {row['mode']} | failed: {row['error'][:60]} |||||")
            continue
        ratio = f"{row['engine_over_eager_p50']:.2f}" if "engine_over_eager_p50" in row else ""
        print(
            head + f"| {row['mode']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['p99_over_p50']:.2f} "
            f"| {row['frames_per_s']:.0f} | {ratio} |"
        )
    if result.get("agreement"):
        print(
            "\n| model | weights | precision | backend (runs) | Dice vs eager (same precision) | Dice vs eager fp32 |"
        )
        print("|---|---|---|---|---:|---:|")
        for row in result["agreement"]:
            print(
                f"| {row['size']} | {row['weights']} | {row['precision']} | {row['backend']} ({row['engine_mode']}) "
                f"| {row['dice_engine_vs_eager_same_precision']:.4f} | {row['dice_engine_vs_eager_float32']:.4f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["small", "base"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=sorted(PRECISIONS))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["cuda_graph"],
        choices=[b for b in BACKENDS if b != "auto"],
        help="engine backends timed against eager (compile: minutes of compilation per row)",
    )
    parser.add_argument("--frames", type=int, default=100, help="timed steps per row (at most)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max_seconds", type=float, default=8.0, help="time limit per row (after 30 steps)")
    parser.add_argument("--agreement", action="store_true", help="also the masks' agreement on synthetic cines")
    parser.add_argument("--ckpt", default=None, help="a trained small model for the agreement (else random weights)")
    parser.add_argument("--cines", type=int, default=6)
    parser.add_argument("--agreement_frames", type=int, default=20)
    parser.add_argument("--agreement_resolution", type=int, default=128)
    parser.add_argument("--skip_bench", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or REPO_ROOT / "results" / f"bench_streaming_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_description(args.device), "args": {k: str(v) for k, v in vars(args).items()}}
    result["rows"], result["agreement"] = [], []

    def save(rows: list[dict]) -> None:
        result["rows"] = rows
        out.write_text(json.dumps(result, indent=2))

    if args.agreement:
        result["agreement"] = agreement(args, device)
        save(result["rows"])
    if not args.skip_bench:
        bench_rows(args, device, save)
    print_tables(result)
    print(f"\nSaved {out}")


if __name__ == "__main__":
    main()
