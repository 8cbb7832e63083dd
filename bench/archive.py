"""Archive inference against the network alone: frames/s of ``run inferring`` as the README types it, in one run.

For each input folder (``--nifti N`` synthetic NIfTI cines, ``--dicom N`` colour JPEG-baseline DICOM cines of 30-120
frames as scanners write them, see ``bench/archive_data.py``) it times, in this order:

- ``network alone``: the configured network and inferer (``inference.json``'s ``network`` and ``inferer``, the
  checkpoint loaded) on every cine of the folder, preprocessed beforehand and read from memory (``[1, 1, h, w, T]``
  at the trained size), under ``torch.no_grad``: what the pipeline's network costs; for each ``--streams N`` above
  1, the same cines stepped ``N`` at a time through :class:`scripts.cine_streams.CineStreams` (the inferer's
  precision and backend), what ``run inferring --streams N`` steps;
- ``python -m monai.bundle run inferring --config_file bundle/configs/inference.json`` on the folder, in a fresh
  process and a fresh output folder: with the defaults, with ``--write_overlays False``, and for each
  ``--extra "<label>=<overrides>"`` (for example ``--extra "in turn=--writers 0 --num_workers 0"``), and for each
  ``--streams N`` above 1 both again with ``--streams N`` (compared with the network alone at ``N``);
- with ``--baseline REV``, the same commands from the bundle of git revision ``REV`` (``git archive`` into the work
  folder, this checkpoint): the pipeline before a change, measured in the same run;
- ``network alone`` again after each command (on the first cines, up to ``--network_frames`` frames): the machine's
  load drifts, so each command's ratio uses the mean of the measurements just before and just after it.

A command's frames/s is the folder's frames over its ``run`` time: from the ``inference started`` line to the summary
line of ``inference.log`` (what an archive of thousands of cines sees); the process's wall time, with its start-up
(imports, network, checkpoint; ~5-10 s), is given too. ``ratio`` = frames/s / the network alone's around it.
``--threads N`` runs the network with N torch threads here and in the commands (``OMP_NUM_THREADS``): on a CPU that
other work shares, 2 threads on 2 cores spin against it and the network alone slows many times over.

Usage (from the repository root; ``make demo`` first, for the model and the synthetic set):
    .venv/bin/python bench/archive.py --nifti 30 --dicom 10 --baseline main
    .venv/bin/python bench/archive.py --nifti 6 --dicom 0          # a quick look
    bench/gpu_archive.sh                                             # a GPU: --streams 1 8 32 (the device script)
Writes ``results/bench_archive.json`` (or ``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from archive_data import dicom_folder, nifti_folder
from machine import machine_description

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))
CONFIG = "bundle/configs/inference.json"


def _log_seconds(log: Path) -> float:
    """Seconds from the ``inference started`` line to the summary line of an ``inference.log``."""
    stamps = {}
    for line in log.read_text().splitlines():
        for key, marker in (("start", "inference started:"), ("end", " segmented, ")):
            if marker in line and "scripts.batch" in line and key not in stamps:
                stamps[key] = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) != 2:
        raise RuntimeError(f"{log}: no start or summary line")
    return (stamps["end"] - stamps["start"]).total_seconds()


def run_command(root: Path, data: Path, out: Path, ckpt_dir: Path, extra: list[str], threads: int | None) -> dict:
    """``run inferring`` from the checkout ``root`` on ``data`` into a fresh ``out`` (``OMP_NUM_THREADS=threads``
    when given); its run and wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", CONFIG]
    command += ["--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_dir", str(ckpt_dir), *extra]
    begin = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    result = subprocess.run(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - begin
    summary = [line for line in result.stdout.splitlines() if "inference: " in line and " segmented, " in line]
    if result.returncode != 0 or not summary:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    return {"run_s": _log_seconds(out / "inference.log"), "wall_s": wall, "summary": summary[-1].split(" - ")[-1]}


class NetworkAlone:
    """The configured network and inferer (``inference.json``, this checkpoint) and the cines of a folder,
    preprocessed into memory once (``[1, 1, h, w, T]`` at the trained size)."""

    def __init__(self, data: Path, ckpt_dir: Path) -> None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(REPO_ROOT / CONFIG)
        parser.update({"bundle_root": str(REPO_ROOT / "bundle"), "ckpt_dir": str(ckpt_dir), "dataset_dir": str(data)})
        self.network = parser.get_parsed_content("network").eval()
        self.network.load_state_dict(torch.load(parser.get_parsed_content("checkpoint"), map_location="cpu"))
        self.device = parser.get_parsed_content("device")
        self.inferer, preprocessing = parser.get_parsed_content("inferer"), parser.get_parsed_content("preprocessing")
        cines = [item for item in parser.get_parsed_content("dataset#data") if "ignored" not in item]
        self.videos = [preprocessing(dict(c))["image"].as_tensor()[None].to(self.device) for c in cines]
        self.frames = sum(int(v.shape[-1]) for v in self.videos)

    def fps(self, streams: int = 1, max_frames: int | None = None) -> float:
        """Frames/s of the network on the first cines holding ``max_frames`` frames (all without), one cine at a
        time through the inferer, or ``streams`` at a time through ``CineStreams``."""
        from scripts.cine_streams import CineStreams

        videos, frames = [], 0
        for video in self.videos:
            if max_frames is not None and frames >= max_frames:
                break
            videos.append(video)
            frames += int(video.shape[-1])
        with torch.no_grad():
            if streams == 1:
                self.inferer(videos[0][..., :4], self.network)  # warm-up
                begin = time.perf_counter()
                for video in videos:
                    self.inferer(video, self.network)
            else:
                inferer = self.inferer
                precision, backend = getattr(inferer, "precision", "float32"), getattr(inferer, "backend", "auto")
                cines = CineStreams(self.network, streams, precision=precision, backend=backend)
                cines.add("warm-up", videos[0][0, ..., :4])  # the engine's set-up (a CUDA graph capture)
                cines.drain()
                begin = time.perf_counter()
                for i, video in enumerate(videos):
                    cines.add(i, video[0])
                cines.drain()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return frames / (time.perf_counter() - begin)


def baseline_checkout(rev: str, work: Path) -> Path:
    """The bundle of git revision ``rev`` (``git archive``), under ``work/baseline-<rev>``."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    root = work / f"baseline-{commit.stdout.strip()[:10]}"
    if not (root / CONFIG).is_file():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "bundle"], cwd=REPO_ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def bench_folder(name: str, data: Path, args: argparse.Namespace, baseline: Path | None) -> list[dict]:
    """The rows of one input folder (see the module)."""
    commands: list[tuple[str, Path, list[str], int]] = [("run inferring (defaults)", REPO_ROOT, [], 1)]
    commands.append(("run inferring --write_overlays False", REPO_ROOT, ["--write_overlays", "False"], 1))
    for spec in args.extra:
        label, _, overrides = spec.partition("=")
        commands.append((f"run inferring {label}", REPO_ROOT, shlex.split(overrides), 1))
    for n in (n for n in args.streams if n > 1):
        commands.append((f"run inferring --streams {n}", REPO_ROOT, ["--streams", str(n)], n))
        no_pictures = ["--streams", str(n), "--write_overlays", "False"]
        commands.append((f"run inferring --streams {n} --write_overlays False", REPO_ROOT, no_pictures, n))
    if baseline is not None:
        commands.append((f"before ({args.baseline}): defaults", baseline, [], 1))
        no_pictures = ["--write_overlays", "False"]
        commands.append((f"before ({args.baseline}): --write_overlays False", baseline, no_pictures, 1))
    alone = NetworkAlone(data, args.ckpt_dir)
    frames, cines = alone.frames, len(alone.videos)
    measured_fps: dict[int, list[float]] = {n: [alone.fps(n, args.network_frames)] for n in args.streams}
    print(f"{name}: network alone {measured_fps[1][0]:.1f} frames/s ({frames} frames in {cines} cines)", flush=True)
    rows = []
    for label, root, extra, n in commands:
        out = args.work / "out" / name / label.replace(" ", "_").replace("/", "")
        measured = run_command(root, data, out, args.ckpt_dir, extra, args.threads)
        before, after = measured_fps[n][-1], alone.fps(n, args.network_frames)
        measured_fps[n].append(after)
        fps = frames / measured["run_s"]
        row = {"inputs": name, "mode": label, "streams": n, "overrides": extra, **measured, "fps": fps}
        row.update({"network_fps": (before + after) / 2, "ratio": fps / ((before + after) / 2)})
        rows.append({**row, "frames": frames, "cines": cines})
        print(f"{name}: {label}: {fps:.1f} frames/s, {row['ratio']:.2f} of the network around it", flush=True)
    alone_rows = []
    for n in args.streams:
        label = "network alone" if n == 1 else f"network alone, {n} streams"
        mean = sum(measured_fps[n]) / len(measured_fps[n])
        alone_rows.append({"inputs": name, "mode": label, "streams": n, "fps": mean, "ratio": 1.0, "frames": frames,
                           "cines": cines, "fps_measured": measured_fps[n]})  # fmt: skip
    return [*alone_rows, *rows]


def table(rows: list[dict]) -> str:
    head = "| inputs | mode | cines | frames | run (s) | wall (s) | frames/s | network around it | ratio to the network"
    head += " |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        run = f"{r['run_s']:.1f}" if "run_s" in r else f"{r['frames'] / r['fps']:.1f}"
        wall = f"{r['wall_s']:.1f}" if "wall_s" in r else ""
        around = f"{r['network_fps']:.1f}" if "network_fps" in r else ""
        cells = [r["inputs"], r["mode"], r["cines"], r["frames"], run, wall, f"{r['fps']:.1f}", around]
        lines.append("| " + " | ".join(str(c) for c in [*cells, f"{r['ratio']:.2f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nifti", type=int, default=20, help="synthetic NIfTI cines (0: none)")
    parser.add_argument("--dicom", type=int, default=6, help="JPEG-baseline colour DICOM cines (0: none)")
    parser.add_argument("--dicom_frames", type=int, nargs=2, default=[30, 120])
    parser.add_argument("--ckpt_dir", type=Path, default=REPO_ROOT / "bundle" / "models")
    parser.add_argument("--streams", type=int, nargs="+", default=[1], help="cines stepped together (1 first)")
    parser.add_argument("--network_frames", type=int, default=400, help="frames of each network-alone measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads here and in the commands")
    parser.add_argument("--baseline", default=None, help="a git revision whose bundle is timed too (e.g. main)")
    parser.add_argument("--extra", action="append", default=[], help='more commands: "label=--overrides ..."')
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "results" / "archive")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_archive.json")
    args = parser.parse_args()
    args.streams = sorted(set(args.streams) | {1})
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.ckpt_dir / "model.pt").is_file():
        raise SystemExit(f"archive bench: no {args.ckpt_dir / 'model.pt'} (make demo)")
    baseline = baseline_checkout(args.baseline, args.work) if args.baseline else None
    folders = []
    if args.nifti:
        folders.append(("synthetic NIfTI", nifti_folder(args.work / "nifti", args.nifti)))
    if args.dicom:
        folders.append(("DICOM JPEG colour", dicom_folder(args.work / "dicom", args.dicom, tuple(args.dicom_frames))))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, data in folders:
        rows += bench_folder(name, data, args, baseline)
        result = {"machine": machine_description(device), "date": datetime.date.today().isoformat()}
        result.update({"cpu_count": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{machine_description(device)}\n\n{table(rows)}\n\nsaved {args.out}")


if __name__ == "__main__":
    main()
