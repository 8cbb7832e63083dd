"""Cost as the video grows: per-frame latency and memory of GDKVM's linear state vs a softmax space-time memory.

One stream of ``--frames`` frames (batch 1, ``--resolution`` square, ``torch.inference_mode``) runs through ``step``
of each model:

- ``gdkvm-small``: GDKVM, small size, ``gated_delta`` (the linear state ``S_t`` ``[B, N, Cv, Ck]``, constant size);
- ``softmax-small``: :class:`scripts.gdkvm.GDKVMSoftmaxMemory`, small size, every frame stored, unbounded bank
  (STM-style attention over all past frames' tokens: state and per-frame cost grow with t).

Every frame is timed. At each checkpoint frame N (10, 100, 500, 1000 by default, 1-based) the reported latency is
the median of the 5 frames ending at frame N (their minimum is in the JSON too). The ratio latency(N) / latency(10)
is measured paired: at frame N, the step of frame 10 (re-run from the saved state before frame 10) and the step of
frame N alternate 11 times each and the ratio of their medians is reported, so that a change of other load on the
machine between frame 10 and frame N does not enter it (the plain ratio of the stream medians is in the JSON too).
Memory at N is the exact size of the state tensors (``numel * element_size``) after frame N and the process's peak
RSS so far (peak CUDA memory allocated on GPU). A warm-up stream of 20 frames runs first.

Memory is measured with each model alone in a fresh process (so the peak RSS is that model's); latency in a third
process that runs both streams interleaved frame by frame, so that other load on a shared machine hits both alike
(the alone runs' latencies are in the JSON too). On a busy CPU, ``--threads 1`` gives far steadier timings.

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
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_description

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))

MODELS = {
    "gdkvm-small": "GDKVM small, gated_delta (linear state)",
    "softmax-small": "GDKVMSoftmaxMemory small (softmax memory bank, unbounded)",
}
DEFAULT_CHECKPOINTS = (10, 100, 500, 1000)
WINDOW = 5
WARMUP_FRAMES = 20
PAIRED_REPEATS = 11


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


def run_streams(names: list[str], frames: int, checkpoints: list[int], resolution: int, device: str) -> dict:
    """One stream per model in this process, the models interleaved frame by frame (alternating which goes first).

    Interleaving makes other load on the machine hit every model alike. Returns, per model name, the per-frame
    latency (ms) and state size (MB) and one row per checkpoint frame (window median/minimum latency, state MB,
    this process's peak memory so far).
    """
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(name).to(device).eval()
    frame = torch.rand(1, 1, resolution, resolution, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = {
        name: {
            "model": name,
            "description": MODELS[name],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "latency_ms_per_frame": [],
            "state_mb_per_frame": [],
            "checkpoints": [],
        }
        for name, model in models.items()
    }
    with torch.inference_mode():
        for model in models.values():
            state = None
            for _ in range(WARMUP_FRAMES):
                state = model.step(frame, state)[1]
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        states = dict.fromkeys(names)
        reference = {}  # per model: the state before frame checkpoints[0], to re-time that frame later
        for index in range(1, frames + 1):
            for name in names if index % 2 else names[::-1]:
                run, before = runs[name], states[name]
                sync()
                start = time.perf_counter()
                _, states[name] = models[name].step(frame, before)
                sync()
                run["latency_ms_per_frame"].append((time.perf_counter() - start) * 1000)
                run["state_mb_per_frame"].append(state_megabytes(states[name]))
                if index == checkpoints[0]:
                    reference[name] = before
                if index in checkpoints:
                    window = run["latency_ms_per_frame"][max(0, index - WINDOW) : index]
                    first_ms, this_ms = paired_latency(models[name], frame, reference[name], before, sync)
                    run["checkpoints"].append(
                        {
                            "frame": index,
                            "latency_ms": statistics.median(window),
                            "latency_min_ms": min(window),
                            "latency_window_ms": window,
                            "paired_first_ms": first_ms,
                            "paired_this_ms": this_ms,
                            "ratio_to_first": this_ms / first_ms,
                            "state_mb": run["state_mb_per_frame"][-1],
                            "peak_memory_mb": peak_memory_mb(device),
                        }
                    )
                if index % 100 == 0 or index == frames:
                    message = f"    {name}: frame {index}/{frames}, {run['latency_ms_per_frame'][-1]:.1f} ms"
                    print(f"{message}, state {run['state_mb_per_frame'][-1]:.2f} MB", file=sys.stderr, flush=True)
    for run in runs.values():
        first = run["checkpoints"][0]["latency_ms"]
        for row in run["checkpoints"]:
            row["stream_ratio_to_first"] = row["latency_ms"] / first
    return runs


def paired_latency(model: torch.nn.Module, frame: torch.Tensor, first_state, this_state, sync) -> tuple[float, float]:
    """Median ms of the first checkpoint's step and of this checkpoint's step, alternated ``PAIRED_REPEATS`` times.

    ``step`` is a pure function of (frame, state), so re-running it from a saved state repeats that frame's work.
    Measured at the same moment, their ratio cancels slow changes of other load on the machine.
    """
    first, this = [], []
    for repeat in range(PAIRED_REPEATS):
        pairs = ((first_state, first), (this_state, this))
        for state, out in pairs if repeat % 2 else pairs[::-1]:
            sync()
            start = time.perf_counter()
            model.step(frame, state)
            sync()
            out.append((time.perf_counter() - start) * 1000)
    return statistics.median(first), statistics.median(this)


def run_worker(names: list[str], args: argparse.Namespace) -> dict:
    """Run :func:`run_streams` in a fresh process (so its peak RSS is its own); stderr passes through."""
    command = [sys.executable, __file__, "--worker", *names, "--frames", str(args.frames)]
    command += ["--resolution", str(args.resolution), "--device", args.device]
    command += ["--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench/scaling.py: the run of {names} failed (exit {done.returncode}); see stderr above")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    lines += [
        "",
        f"Minimum over the same {WINDOW}-frame windows (the least disturbed by other jobs on the machine):",
        "",
        "| frame | GDKVM min ms/frame | softmax min ms/frame | softmax / GDKVM |",
        "|---:|---:|---:|---:|",
    ]
    for n in result["checkpoints"]:
        a, b = lin[n]["latency_min_ms"], soft[n]["latency_min_ms"]
        lines.append(f"| {n} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
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
    one_minute_loads = [float(load[when].split()[0]) for when in ("before", "after")]
    if max(one_minute_loads) > (os.cpu_count() or 1):
        busy = (
            "Other jobs shared the CPU during this run (load above the CPU count): interleaving the two models and the "
            "paired ratios cancel much of that, but single numbers carry noise of tens of percent."
        )
    else:
        busy = "The machine was otherwise idle (load below the CPU count)."
    return f"""# Cost as the video grows (`bench/scaling.py`)

Produced by `bench/scaling.py`; rerun it to regenerate this file, the plot and `results/bench_scaling.json`.

The paper's claim (section 3.2): softmax space-time memory (Eq. 1, STM/XMem/Cutie) costs more per frame the longer
the video, while GDKVM's linear state (Eq. 2-5) has a fixed size, so per-frame time and memory stay constant.
Both models here have the same small encoders and decoder; only the memory differs:

- **GDKVM**: `GDKVM(size="small", update_rule="gated_delta")`, state `S_t` `[B, N, Cv, Ck]` + previous mask;
- **softmax**: `GDKVMSoftmaxMemory(size="small")`, every frame's key and value tokens appended to an unbounded bank
  (`[B, Ck, L]`, `[B, N, Cv, L]`, L = frames x {result["tokens_per_frame"]} tokens), read by softmax attention.

One stream of {result["frames"]} frames per model, batch 1, {result["resolution"]}x{result["resolution"]},
`torch.inference_mode`, after a {WARMUP_FRAMES}-frame warm-up. Latency at frame N is the median of the {WINDOW} frames
ending at N, measured with both streams interleaved frame by frame in one process (so that other load on the machine
hits both models alike). Ratio = latency(N) / latency({first}), measured paired: at frame N the step of frame {first}
(re-run from its saved state) and the step of frame N alternate {PAIRED_REPEATS} times each, ratio of the medians;
this cancels changes of the machine's load between frame {first} and frame N. Memory is measured with each model
alone in a fresh process: state MB is exact (from the tensors), peak RSS is the process's peak resident memory so far
(model, runtime, state and temporaries).

Command: `{result["command"]}`

Machine: {result["machine"]}. Run time {result["run_time_s"]:.0f} s. Load average (1, 5, 15 min) before / after:
{load["before"]} / {load["after"]}. {busy}

{table}

![latency and state memory vs frame index]({plot_rel})

At frame {last}, the softmax bank holds {soft[last]["state_mb"]:.1f} MB of state against GDKVM's
{lin[last]["state_mb"]:.3f} MB, and a frame takes {soft[last]["ratio_to_first"]:.2f}x its frame-{first} time
(GDKVM: {lin[last]["ratio_to_first"]:.2f}x); at frame {last} the softmax model takes
{soft[last]["latency_ms"] / lin[last]["latency_ms"]:.2f}x GDKVM's time per frame.
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
    parser.add_argument("--worker", nargs="+", default=None, choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.frames < 10:
        parser.error("--frames must be >= 10")
    checkpoints = sorted({c for c in DEFAULT_CHECKPOINTS if c <= args.frames} | {args.frames})

    if args.worker:
        print(json.dumps(run_streams(args.worker, args.frames, checkpoints, args.resolution, args.device)))
        return

    started = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = list(MODELS)
    alone = {}
    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names) + 1}] memory: {MODELS[name]} alone, {args.frames} frames ...", flush=True)
        alone[name] = run_worker([name], args)[name]
    print(f"[{len(names) + 1}/{len(names) + 1}] latency: {', '.join(names)} interleaved frame by frame ...", flush=True)
    together = run_worker(names, args)
    runs = []
    for name in names:
        run = together[name]
        run["latency_alone_ms_per_frame"] = alone[name]["latency_ms_per_frame"]
        for row, alone_row in zip(run["checkpoints"], alone[name]["checkpoints"]):
            row["latency_alone_ms"] = alone_row["latency_ms"]
            row["state_mb"] = alone_row["state_mb"]
            row["peak_memory_mb"] = alone_row["peak_memory_mb"]
        runs.append(run)

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
