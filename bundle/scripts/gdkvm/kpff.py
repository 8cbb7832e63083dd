"""Key projection with Key-Pixel Feature Fusion (KPFF, paper Eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyPixelFeatureFusion(nn.Module):
    """KPFF (Eq. 6): ``F_fused = G * (F_K + F_Global) + (1 - G) * F_Pix`` with ``G = sigmoid(Conv(F_K + F_Global))``.

    ``F_K`` is the local key, ``F_Global = Expand(GAP(F_K))`` its global average broadcast over the frame, and
    ``F_Pix`` a key-sized projection of the pixel feature (1x1 conv, ReLU, 3x3 conv). The gate has one channel, as
    in the official code. Shapes: ``key [B, Ck, h, w]``, ``pixel [B, Cp, h, w] -> [B, Ck, h, w]``.
    """

    def __init__(self, key_dim: int, pixel_dim: int) -> None:
        super().__init__()
        self.pixel_reduce = nn.Conv2d(pixel_dim, key_dim, 1)
        self.pixel_conv = nn.Conv2d(key_dim, key_dim, 3, padding=1)
        self.gate = nn.Conv2d(key_dim, 1, 1)

    def forward(self, key_BKhw: torch.Tensor, pixel_BPhw: torch.Tensor) -> torch.Tensor:
        global_key = key_BKhw.mean(dim=(-2, -1), keepdim=True).expand_as(key_BKhw)
        key_with_context = key_BKhw + global_key
        pixel_key = self.pixel_conv(F.relu(self.pixel_reduce(pixel_BPhw)))
        gate = torch.sigmoid(self.gate(key_with_context))
        return gate * key_with_context + (1.0 - gate) * pixel_key


class KeyProjection(nn.Module):
    """Stride-16 encoder feature -> unit-norm keys (with or without KPFF) and the pixel feature.

    Shapes: ``f16 [B, C16, h, w] -> key [B, Ck, h, w]`` (L2-normalised over channels), ``pixel [B, Cp, h, w]``.
    """

    def __init__(self, in_channels: int, key_dim: int, pixel_dim: int, kpff: bool = True) -> None:
        super().__init__()
        self.local_key = nn.Sequential(
            nn.Conv2d(in_channels, pixel_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(pixel_dim, key_dim, 3, padding=1)
        )
        self.pixel = nn.Conv2d(in_channels, pixel_dim, 1)
        self.fusion = KeyPixelFeatureFusion(key_dim, pixel_dim) if kpff else None

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel = self.pixel(f16)
        key = self.local_key(f16)
        if self.fusion is not None:
            key = self.fusion(key, pixel)
        return F.normalize(key, dim=1), pixel
