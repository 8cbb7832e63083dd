"""A parameter-free stand-in for GDKVM that 'segments' a beating bullet-shaped LV, for end-to-end tests that need
measurable masks (an untrained GDKVM gives none) through the bundle's real inference command."""

from __future__ import annotations

import math
from typing import Any

import torch


class BeatingLV(torch.nn.Module):
    """``forward(video [B, 1, H, W, T]) -> logits [B, 2, H, W, T]``: LV (class 1) inside a bullet shape (an ellipse cut
    flat at the base) that shrinks by a quarter and grows back every ``period`` frames; the input is ignored.

    Accepts and ignores the bundle's ``network_def`` arguments (size, out_channels, ...), so that a config override of
    ``network_def#_target_`` is enough to use it.
    """

    def __init__(self, period: int = 12, **_: Any) -> None:
        super().__init__()
        self.period = period

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
