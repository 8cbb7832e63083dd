"""Network cost benchmark: parameters, GFLOPs per frame, streaming latency, frames/s, peak memory, constant cost.

For every (model, resolution) it runs one stream of ``--frames`` frames through ``GDKVM.step`` (batch 1) and reports
the median per-frame latency, the latency ratio between frame 200 and frame 10 of the same stream (constant cost
means ~1.0), GFLOPs of one step (torch's FlopCounterMode) and the peak memory of a fresh process running it (peak
RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU). The baseline, measured in the same run, is a per-frame
MONAI 2D ``UNet`` (what a MONAI user would otherwise pick), run frame by frame the same way.

Usage (from the repository root):
    .venv/bin/python bench/network.py                                   # CPU, small+base, 128 and 256
    .venv/bin/python bench/network.py --device cuda --dtypes float32 bfloat16 float16 --batch 1 16
Writes ``results/bench_network_<device>.json`` (or ``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_description

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))


def build_model(model: str) -> torch.nn.Module:
    """``gdkvm-small``, ``gdkvm-base`` or ``unet2d-baseline`` (a per-frame MONAI UNet wrapped to take frames)."""
    from scripts.gdkvm import GDKVM

    if model.startswith("gdkvm-"):
        return GDKVM(size=model.split("-", 1)[1], out_channels=2)
    if model == "unet2d-baseline":
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)
        )
    raise ValueError(f"unknown model {model!r}")


def run_single(model_name: str, resolution: int, frames: int, device: str, dtype_name: str, batch: int) -> dict:
    """Measure one configuration in this process; returns a result row."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    model = build_model(model_name).to(device=device, dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    frame = torch.rand(batch, 1, resolution, resolution, device=device, dtype=dtype)
    recurrent = model_name.startswith("gdkvm")

    def step(state):
        if recurrent:
            return model.step(frame, state)[1]
        model(frame)
        return None

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        state = step(None)
        with FlopCounterMode(display=False) as counter:
            step(state)
        gflops = counter.get_total_flops() / 1e9 / batch
        state = None
        for _ in range(30):  # warm-up stream: allocator, oneDNN/cuDNN kernel selection
            state = step(state)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        state = None
        latencies = []
        for _ in range(frames):
            sync()
            start = time.perf_counter()
            state = step(state)
            sync()
            latencies.append(time.perf_counter() - start)
    warm = latencies[5:]
    early = statistics.median(latencies[5:16])
    late_index = min(200, frames - 6)
    late = statistics.median(latencies[late_index - 5 : late_index + 6])
    median_ms = statistics.median(warm) * 1000
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name,
        "resolution": resolution,
        "batch": batch,
        "dtype": dtype_name,
        "device": device,
        "params_m": params / 1e6,
        "gflops_per_frame": gflops,
        "latency_ms_per_step": median_ms,
        "frames_per_s": batch * 1000 / median_ms,
        "peak_memory_mb": peak_mb,
        "latency_ratio_frame200_frame10": late / early,
        "ratio_frames": [10, late_index],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet2d-baseline", "gdkvm-small", "gdkvm-base"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--frames", type=int, default=210, help="frames per stream (>= 30; 210 gives the 200/10 ratio)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames < 30:
        parser.error("--frames must be >= 30")

    if args.single:
        row = run_single(args.models[0], args.resolutions[0], args.frames, args.device, args.dtypes[0], args.batch[0])
        print(json.dumps(row))
        return

    out = args.out or REPO_ROOT / "results" / f"bench_network_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    rows = []
    configs = [(m, r, d, b) for r in args.resolutions for d in args.dtypes for b in args.batch for m in args.models]
    for index, (model, resolution, dtype, batch) in enumerate(configs, 1):
        print(f"[{index}/{len(configs)}] {model} {resolution}x{resolution} {dtype} batch {batch} ...", flush=True)
        command = [sys.executable, __file__, "--single", "--models", model, "--resolutions", str(resolution)]
        command += ["--frames", str(args.frames), "--device", args.device, "--dtypes", dtype, "--batch", str(batch)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            rows.append({"model": model, "resolution": resolution, "dtype": dtype, "batch": batch, "error": "failed"})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        # rewritten after every row, so a run stopped by a time limit keeps what it measured
        result = {"machine": machine_description(args.device), "frames_per_stream": args.frames, "rows": rows}
        out.write_text(json.dumps(result, indent=2))

    print(f"\nMachine: {result['machine']}; one stream of {args.frames} frames per row\n")
    header = (
        "| model | input | dtype | batch | params (M) | GFLOPs/frame | ms/step | frames/s | peak mem (MB) | t200/t10 |"
    )
    print(header)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | {row['resolution']} | {row['dtype']} | {row['batch']} | failed |||||")
            continue
        print(
            f"| {row['model']} | {row['resolution']}x{row['resolution']} | {row['dtype']} | {row['batch']} "
            f"| {row['params_m']:.2f} | {row['gflops_per_frame']:.2f} | {row['latency_ms_per_step']:.1f} "
            f"| {row['frames_per_s']:.1f} | {row['peak_memory_mb']:.0f} | {row['latency_ratio_frame200_frame10']:.2f} |"
        )
    print(f"\nSaved {out}")


if __name__ == "__main__":
    main()
