"""Cost as the video grows: per-frame latency and memory of GDKVM's linear state vs a softmax space-time memory.

One stream of ``--frames`` frames (batch 1, ``--resolution`` square, ``torch.inference_mode``) runs through
``step`` of each model, each in a fresh process so that peak RSS belongs to one model:

- ``gdkvm-small``: GDKVM, small size, ``gated_delta`` (the linear state ``S_t`` ``[B, N, Cv, Ck]``, constant size);
- ``softmax-small``: :class:`scripts.gdkvm.GDKVMSoftmaxMemory`, small size, every frame stored, unbounded bank
  (STM-style attention over all past frames' tokens: state and per-frame cost grow with t).

Every frame is timed. At each checkpoint frame N (10, 100, 500, 1000 by default, 1-based) the reported latency is
the median of the 5 frames ending at frame N (their minimum is in the JSON too); the ratio is latency(N) /
latency(10). Memory at N is the exact size of the state tensors (``numel * element_size``) after frame N and the
process's peak RSS so far (peak CUDA memory allocated on GPU). A warm-up stream of 20 frames runs first.

Usage (from the repository root):
    .venv/bin/python bench/scaling.py                           # CPU, 128x128, 1000 frames, both models
    .venv/bin/python bench/scaling.py --device cuda --resolution 256 --frames 2000
Writes ``results/bench_scaling.json`` (``--out``), ``docs/images/scaling.png`` (``--plot``) and
``docs/benchmarks_scaling.md`` (``--markdown``), and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))

MODELS = {
    "gdkvm-small": "GDKVM small, gated_delta (linear state)",
    "softmax-small": "GDKVMSoftmaxMemory small (softmax memory bank, unbounded)",
}
DEFAULT_CHECKPOINTS = (10, 100, 500, 1000)
WINDOW = 5
WARMUP_FRAMES = 20


def build_model(name: str) -> torch.nn.Module:
    """``gdkvm-small`` or ``softmax-small``, 2 classes (LV), random weights (cost does not depend on them)."""
    from scripts.gdkvm import GDKVM, GDKVMSoftmaxMemory

    if name == "gdkvm-small":
        return GDKVM(size="small", out_channels=2, update_rule="gated_delta")
    if name == "softmax-small":
        return GDKVMSoftmaxMemory(size="small", out_channels=2)
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")


def state_megabytes(state: tuple) -> float:
    """Exact size of the state's tensors in MB (2**20 bytes)."""
    return sum(t.numel() * t.element_size() for t in state) / 2**20


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_single(name: str, frames: int, checkpoints: list[int], resolution: int, device: str) -> dict:
    """One stream of one model in this process. Returns per-frame latency/state size and the checkpoint rows."""
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    frame = torch.rand(1, 1, resolution, resolution, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    latencies_ms: list[float] = []
    state_mb: list[float] = []
    rows: list[dict] = []
    with torch.inference_mode():
        state = None
        for _ in range(WARMUP_FRAMES):
            state = model.step(frame, state)[1]
        state = None
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for index in range(1, frames + 1):
            sync()
            start = time.perf_counter()
            _, state = model.step(frame, state)
            sync()
            latencies_ms.append((time.perf_counter() - start) * 1000)
            state_mb.append(state_megabytes(state))
            if index in checkpoints:
                window = latencies_ms[max(0, index - WINDOW) : index]
                rows.append(
                    {
                        "frame": index,
                        "latency_ms": statistics.median(window),
                        "latency_min_ms": min(window),
                        "latency_window_ms": window,
                        "state_mb": state_mb[-1],
                        "peak_memory_mb": peak_memory_mb(device),
                    }
                )
            if index % 100 == 0 or index == frames:
                message = f"    {name}: frame {index}/{frames}, {latencies_ms[-1]:.1f} ms, state {state_mb[-1]:.2f} MB"
                print(message, file=sys.stderr, flush=True)
    first = rows[0]["latency_ms"]
    for row in rows:
        row["ratio_to_first"] = row["latency_ms"] / first
    return {
        "model": name,
        "description": MODELS[name],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "latency_ms_per_frame": latencies_ms,
        "state_mb_per_frame": state_mb,
        "checkpoints": rows,
    }


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} logical CPUs), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def markdown_table(result: dict) -> str:
    """One row per checkpoint frame, both models side by side."""
    by_model = {run["model"]: {row["frame"]: row for row in run["checkpoints"]} for run in result["runs"]}
    lin, soft = by_model["gdkvm-small"], by_model["softmax-small"]
    first = result["checkpoints"][0]
    lines = [
        f"| frame | GDKVM ms/frame | GDKVM ratio to frame {first} | GDKVM state MB | GDKVM peak RSS MB "
        f"| softmax ms/frame | softmax ratio to frame {first} | softmax state MB | softmax peak RSS MB "
        "| softmax / GDKVM latency |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in result["checkpoints"]:
        a, b = lin[n], soft[n]
        lines.append(
            f"| {n} | {a['latency_ms']:.1f} | {a['ratio_to_first']:.2f} | {a['state_mb']:.3f} "
            f"| {a['peak_memory_mb']:.0f} | {b['latency_ms']:.1f} | {b['ratio_to_first']:.2f} | {b['state_mb']:.2f} "
            f"| {b['peak_memory_mb']:.0f} "
            f"| {b['latency_ms'] / a['latency_ms']:.2f} |"
        )
    return "\n".join(lines)


def save_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"gdkvm-small": "tab:blue", "softmax-small": "tab:red"}
    labels = {"gdkvm-small": "GDKVM (linear state)", "softmax-small": "softmax memory bank"}
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    top = 0.0
    for run in result["runs"]:
        name = run["model"]
        latencies = run["latency_ms_per_frame"]
        frames = list(range(1, len(latencies) + 1))
        smooth = [statistics.median(latencies[max(0, i - 10) : i + 11]) for i in range(len(latencies))]
        top = max(top, 1.5 * max(smooth))
        ax_time.plot(frames, latencies, color=colours[name], alpha=0.2, linewidth=0.6)
        ax_time.plot(frames, smooth, color=colours[name], linewidth=1.8, label=f"{labels[name]} (21-frame median)")
        checkpoint_frames = [row["frame"] for row in run["checkpoints"]]
        ax_time.plot(checkpoint_frames, [row["latency_ms"] for row in run["checkpoints"]], "o", color=colours[name])
        ax_mem.plot(frames, run["state_mb_per_frame"], color=colours[name], linewidth=1.8, label=labels[name])
    ax_time.set(xscale="log", xlabel="frame index", ylabel="latency per frame (ms)", title="Per-frame latency")
    ax_time.set_ylim(0, top)  # isolated spikes from other processes above this are cut off
    ax_mem.set(xscale="log", yscale="log", xlabel="frame index", ylabel="state size (MB)", title="State memory")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"One stream, batch 1, {result['resolution']}x{result['resolution']}, {result['machine']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_document(result: dict, table: str, plot_path: Path, markdown_path: Path) -> str:
    lin = {row["frame"]: row for row in result["runs"][0]["checkpoints"]}
    soft = {row["frame"]: row for row in result["runs"][1]["checkpoints"]}
    first, last = result["checkpoints"][0], result["checkpoints"][-1]
    plot_rel = os.path.relpath(plot_path, markdown_path.parent)
    load = result["load_average"]
    return f"""# Cost as the video grows (`bench/scaling.py`)

Produced by `bench/scaling.py`; rerun it to regenerate this file, the plot and `results/bench_scaling.json`.

The paper's claim (section 3.2): softmax space-time memory (Eq. 1, STM/XMem/Cutie) costs more per frame the longer
the video, while GDKVM's linear state (Eq. 2-5) has a fixed size, so per-frame time and memory stay constant.
Both models here have the same small encoders and decoder; only the memory differs:

- **GDKVM**: `GDKVM(size="small", update_rule="gated_delta")`, state `S_t` `[B, N, Cv, Ck]` + previous mask;
- **softmax**: `GDKVMSoftmaxMemory(size="small")`, every frame's key and value tokens appended to an unbounded bank
  (`[B, Ck, L]`, `[B, N, Cv, L]`, L = frames x {result["tokens_per_frame"]} tokens), read by softmax attention.

One stream of {result["frames"]} frames per model, batch 1, {result["resolution"]}x{result["resolution"]},
`torch.inference_mode`, each model in a fresh process after a {WARMUP_FRAMES}-frame warm-up. Latency at frame N is the
median of the {WINDOW} frames ending at N; ratio = latency(N) / latency({first}). State MB is exact (from the
tensors); peak RSS is the process's peak resident memory so far (model, runtime and state).

Command: `{result["command"]}`

Machine: {result["machine"]}. Run time {result["run_time_s"]:.0f} s. Load average before / after:
{load["before"]} / {load["after"]} (other processes shared the CPU when the load exceeds the thread count; the
medians over a window absorb isolated spikes, not a steady share).

{table}

![latency and state memory vs frame index]({plot_rel})

At frame {last}, the softmax bank holds {soft[last]["state_mb"]:.1f} MB of state against GDKVM's
{lin[last]["state_mb"]:.3f} MB, and a frame takes {soft[last]["ratio_to_first"]:.2f}x its frame-{first} time
(GDKVM: {lin[last]["ratio_to_first"]:.2f}x); at frame {last} the softmax model is
{soft[last]["latency_ms"] / lin[last]["latency_ms"]:.2f}x slower per frame than GDKVM.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=1000, help="frames in the stream (>= 10)")
    parser.add_argument("--resolution", type=int, default=128, help="square frame size (multiple of 16 is exact)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_scaling.json")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "docs" / "images" / "scaling.png")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "docs" / "benchmarks_scaling.md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.frames < 10:
        parser.error("--frames must be >= 10")
    checkpoints = sorted({c for c in DEFAULT_CHECKPOINTS if c <= args.frames} | {args.frames})

    if args.single:
        run = run_single(args.single, args.frames, checkpoints, args.resolution, args.device)
        print(json.dumps(run))
        return

    started = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = []
    for index, name in enumerate(MODELS, 1):
        print(f"[{index}/{len(MODELS)}] {MODELS[name]}: {args.frames} frames at {args.resolution}px ...", flush=True)
        command = [sys.executable, __file__, "--single", name, "--frames", str(args.frames)]
        command += ["--resolution", str(args.resolution), "--device", args.device]
        command += ["--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench/scaling.py: the {name} run failed (exit {done.returncode}); see stderr above")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    stride_tokens = ((args.resolution + 15) // 16) ** 2
    result = {
        "command": shlex.join([".venv/bin/python", "bench/scaling.py", *sys.argv[1:]]),
        "machine": machine_description(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "resolution": args.resolution,
        "frames": args.frames,
        "tokens_per_frame": stride_tokens,
        "checkpoints": checkpoints,
        "window_frames": WINDOW,
        "run_time_s": time.perf_counter() - started,
        "load_average": {"before": load_before, "after": " ".join(f"{x:.2f}" for x in os.getloadavg())},
        "runs": runs,
    }
    table = markdown_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    save_plot(result, args.plot)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown_document(result, table, args.plot, args.markdown))
    print(f"\nMachine: {result['machine']}; run time {result['run_time_s']:.0f} s; load {load_before} (before)\n")
    print(table)
    print(f"\nSaved {args.out}, {args.plot}, {args.markdown}")


if __name__ == "__main__":
    main()
