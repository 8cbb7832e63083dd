"""Value fuser and mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualBlock, TokenRefiner


class ValueFuser(nn.Module):
    """Fuses the value encoder's stride-16 feature of each object with the key encoder's stride-16 image feature.

    Shapes: ``value_feature [B*N, Cf, h, w]``, ``image_feature [B*N, C16, h, w] -> [B*N, Cv, h, w]``.
    """

    def __init__(self, feature_dim: int, image_dim: int, value_dim: int) -> None:
        super().__init__()
        self.block1 = ResidualBlock(feature_dim + image_dim, value_dim)
        self.block2 = ResidualBlock(value_dim, value_dim)

    def forward(self, value_feature: torch.Tensor, image_feature: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(torch.cat([value_feature, image_feature], dim=1)))


class MaskDecoder(nn.Module):
    """Read-out + pixel feature at stride 16 -> one logit map per object at stride 4, with key-encoder skips.

    Shapes: ``readout [B*N, Cv, h, w]``, ``pixel [B*N, Cp, h, w]``, ``f8 [B*N, C8, 2h, 2w]``, ``f4 [B*N, C4, 4h, 4w]``
    -> ``[B*N, 1, 4h, 4w]``.
    """

    def __init__(
        self,
        value_dim: int,
        pixel_dim: int,
        skip_channels: tuple[int, int],
        dims: tuple[int, int, int],
        refine_blocks: int = 0,
        refine_heads: int = 8,
        refine_ff_dim: int = 2048,
    ) -> None:
        super().__init__()
        self.fuse = nn.Sequential(ResidualBlock(value_dim + pixel_dim, dims[0]), ResidualBlock(dims[0], dims[0]))
        self.refiner = TokenRefiner(dims[0], refine_blocks, refine_heads, refine_ff_dim) if refine_blocks else None
        self.skip8 = nn.Conv2d(skip_channels[0], dims[0], 1)
        self.up8 = ResidualBlock(dims[0], dims[1])
        self.skip4 = nn.Conv2d(skip_channels[1], dims[1], 1)
        self.up4 = ResidualBlock(dims[1], dims[2])
        self.head = nn.Conv2d(dims[2], 1, 3, padding=1)

    def forward(self, readout: torch.Tensor, pixel: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([readout, pixel], dim=1))
        if self.refiner is not None:
            x = self.refiner(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) + self.skip8(f8)
        x = self.up8(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) + self.skip4(f4)
        x = self.up4(x)
        return self.head(x)
