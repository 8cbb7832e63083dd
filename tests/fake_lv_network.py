"""A parameter-free stand-in for GDKVM that 'segments' a beating bullet-shaped LV, for end-to-end tests that need
measurable masks (an untrained GDKVM gives none) through the bundle's real inference command."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


class BeatingLV(torch.nn.Module):
    """``forward(video [B, 1, H, W, T]) -> logits [B, 2, H, W, T]``: LV (class 1) inside a bullet shape (an ellipse cut
    flat at the base) that shrinks by a quarter and grows back every ``period`` frames; the input is ignored.

    Accepts and ignores the bundle's ``network_def`` arguments (size, out_channels, ...), so that a config override of
    ``network_def#_target_`` is enough to use it.
    """

    def __init__(self, period: int = 12, **_: Any) -> None:
        super().__init__()
        self.period = period
        self.warm_start = True  # as an exported GDKVM of bundle 0.8.0 or later says (its first frame is no different)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, _, H, W, T = video.shape
        yy = torch.arange(H, dtype=torch.float32).view(H, 1)
        xx = torch.arange(W, dtype=torch.float32).view(1, W)
        frames = []
        for t in range(T):
            s = 1.0 - 0.25 * (0.5 - 0.5 * math.cos(2 * math.pi * t / self.period))
            cy, cx, ry, rx = 0.45 * H, 0.5 * W, 0.3 * H * s, 0.15 * W * s
            inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) & (yy < cy + 0.6 * ry)
            frames.append(inside)
        lv = torch.stack(frames, dim=-1).to(video.dtype)  # [H, W, T]
        logits = torch.stack([1 - lv, lv], dim=0) * 10.0 - 5.0  # [2, H, W, T]
        return logits.unsqueeze(0).expand(B, -1, -1, -1, -1).to(video.device)


def run_bundle_inference(data: Path, out: Path, work: Path, *options: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``bundle/configs/inference.json`` on the cines in ``data`` into ``out`` with
    :class:`BeatingLV` as the network (small, 64 x 64, an empty ``model.pt`` under ``work/models``) and ``options``
    (``--key value`` pairs); one torch thread. Returns the finished process (stdout and stderr captured)."""
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    torch.save({}, models / "model.pt")  # the stand-in has no weights
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
               "--bundle_root", str(REPO_ROOT / "bundle"), "--dataset_dir", str(data), "--output_dir", str(out),
               "--ckpt_dir", str(models), "--network_size", "small", "--spatial_size", "64",
               "--network_def#_target_", "fake_lv_network.BeatingLV", *options]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
