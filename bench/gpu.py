"""GPU checks in one run: streaming/batched inference speed, training iterations/s, torch.compile vs eager.

Prepared to run in a few minutes on one GPU (the paper reports 37 FPS for GDKVM on an RTX 3090):

1. ``bench/network.py --device cuda`` for GDKVM base/small and the per-frame MONAI UNet baseline at 256 x 256,
   float32 / bfloat16 / float16, batch 1 (streaming) and batch 16 (16 streams stepped together);
2. training iterations/s of the base model with the paper's settings (batch 10, 10-frame 256 x 256 clips, AdamW,
   DiceCE on the first and last frame, gradient clipping 3), float32 and bf16 autocast, and of the small model;
3. ``torch.compile`` of one streaming step against eager (batch 1, 256 x 256, base), same run.

Usage: ``python bench/gpu.py --out DIR`` (writes ``gpu_network.json``, ``gpu_training.json`` and prints tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))


def cuda_time(fn, repeats: int, warmup: int = 3) -> list[float]:
    """Per-call seconds of ``fn()`` measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def training_speed(size: str, amp: bool, batch: int = 10, frames: int = 10, resolution: int = 256) -> dict:
    """Iterations/s of full training steps (forward over the clip, loss on frames 0 and T-1, backward, clip, step)."""
    from monai.losses import DiceCELoss

    from scripts.gdkvm import GDKVM

    torch.manual_seed(0)
    device = torch.device("cuda")
    net = GDKVM(size=size, out_channels=2).to(device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    video = torch.rand(batch, 1, resolution, resolution, frames, device=device)
    label = (torch.rand(batch, 1, resolution, resolution, frames, device=device) > 0.7).long()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = net(video)
            pred = logits[..., [0, frames - 1]].permute(0, 4, 1, 2, 3).flatten(0, 1)
            target = label[..., [0, frames - 1]].permute(0, 4, 1, 2, 3).flatten(0, 1)
            loss = loss_fn(pred.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
        optimiser.step()

    torch.cuda.reset_peak_memory_stats()
    times = cuda_time(step, repeats=10, warmup=3)
    median = statistics.median(times)
    return {
        "size": size,
        "precision": "bf16 autocast" if amp else "float32",
        "batch": batch,
        "frames": frames,
        "resolution": resolution,
        "s_per_iteration": median,
        "iterations_per_s": 1 / median,
        "paper_schedule_minutes": 1500 * median / 60,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


def compile_speed(resolution: int = 256) -> dict:
    """Latency of one streaming step (base, batch 1) eager vs ``torch.compile``, same inputs, same run."""
    from scripts.gdkvm import GDKVM

    torch.manual_seed(0)
    net = GDKVM(size="base", out_channels=2).cuda().eval()
    frame = torch.rand(1, 1, resolution, resolution, device="cuda")
    state = net.init_state(1, resolution, resolution)
    results = {}
    with torch.inference_mode():
        eager_logits, _ = net.step(frame, state)
        results["eager_ms"] = 1000 * statistics.median(cuda_time(lambda: net.step(frame, state), repeats=50))
        start = time.perf_counter()
        compiled = torch.compile(net.step)
        compiled_logits, _ = compiled(frame, state)
        torch.cuda.synchronize()
        results["compile_seconds"] = time.perf_counter() - start
        results["compiled_ms"] = 1000 * statistics.median(cuda_time(lambda: compiled(frame, state), repeats=50))
        results["max_abs_diff"] = float((compiled_logits - eager_logits).abs().max())
    results["speedup"] = results["eager_ms"] / results["compiled_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)

    if not args.skip_network:
        command = [sys.executable, str(REPO_ROOT / "bench" / "network.py"), "--device", "cuda", "--resolutions", "256"]
        command += ["--dtypes", "float32", "bfloat16", "float16", "--batch", "1", "16", "--frames", "210"]
        command += ["--out", str(args.out / "gpu_network.json")]
        subprocess.run(command, check=False)

    rows = []
    for size, amp in (("base", False), ("base", True), ("small", True)):
        try:
            rows.append(training_speed(size, amp))
        except Exception as error:  # noqa: BLE001 - report and go on with the other rows
            rows.append({"size": size, "precision": "bf16 autocast" if amp else "float32", "error": repr(error)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "training": rows}
    if not args.skip_compile:
        try:
            result["compile"] = compile_speed()
        except Exception as error:  # noqa: BLE001
            result["compile"] = {"error": repr(error)}
        print(json.dumps(result["compile"]), flush=True)
    (args.out / "gpu_training.json").write_text(json.dumps(result, indent=2))

    print("\n| model | precision | batch x frames @ res | s/iteration | it/s | 1500 it (min) | peak GB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            print(f"| {row['size']} | {row['precision']} | failed: {row['error'][:60]} |||||")
            continue
        print(
            f"| {row['size']} | {row['precision']} | {row['batch']} x {row['frames']} @ {row['resolution']} "
            f"| {row['s_per_iteration']:.3f} | {row['iterations_per_s']:.2f} | {row['paper_schedule_minutes']:.1f} "
            f"| {row['peak_memory_gb']:.1f} |"
        )
    compiled = result.get("compile", {})
    if "speedup" in compiled:
        print(
            f"\ntorch.compile step (base, 1 x 256^2): eager {compiled['eager_ms']:.2f} ms, compiled "
            f"{compiled['compiled_ms']:.2f} ms (x{compiled['speedup']:.2f}), "
            f"compile {compiled['compile_seconds']:.0f} s, "
            f"max |diff| {compiled['max_abs_diff']:.2e}"
        )


if __name__ == "__main__":
    main()
