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


class PreviousMaskSkip(nn.Module):
    """The previous frame's masks straight into the decoder at strides 8 and 4 (``mask_skip``; not in the paper).

    In the paper the previous mask reaches the decoder only through the value encoder, the state write and the
    linear read-out at stride 16, a long and lossy path that training learns to ignore (the state reset before every
    frame segments as well). This short path is what XMem's and Cutie's decoders get from their sensory memory: the
    mask the previous frame ended with, or the one a user drew, where the boundary was. Its output convolutions start
    at zero, so an untrained skip leaves the network as the paper's.

    Shapes: ``prev [B*N, 2, H, W]`` (this object's previous mask, the other objects') ->
    ``(at stride 8 [B*N, dim8, H/8, W/8], at stride 4 [B*N, dim4, H/4, W/4])``.
    """

    def __init__(self, dim8: int, dim4: int, hidden: int = 16) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(2, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 3, padding=1)
        )
        self.to8 = nn.Conv2d(hidden, dim8, 1)
        self.to4 = nn.Conv2d(hidden, dim4, 1)
        for conv in (self.to8, self.to4):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at4 = F.relu(self.encode(F.avg_pool2d(prev, 4)))
        return self.to8(F.avg_pool2d(at4, 2)), self.to4(at4)


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

    def forward(
        self,
        readout: torch.Tensor,
        pixel: torch.Tensor,
        f8: torch.Tensor,
        f4: torch.Tensor,
        mask8: torch.Tensor | None = None,
        mask4: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask8``/``mask4``: :class:`PreviousMaskSkip`'s features (``[B*N, dims[0], 2h, 2w]``,
        ``[B*N, dims[1], 4h, 4w]``), added at the skips when given."""
        x = self.fuse(torch.cat([readout, pixel], dim=1))
        if self.refiner is not None:
            x = self.refiner(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) + self.skip8(f8)
        if mask8 is not None:
            x = x + mask8
        x = self.up8(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) + self.skip4(f4)
        if mask4 is not None:
            x = x + mask4
        x = self.up4(x)
        return self.head(x)
