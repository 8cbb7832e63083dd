"""Small convolutional building blocks shared by the KPFF, value fuser and decoder."""

from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: independent of batch size, so streaming and batched runs agree."""
    groups = 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """``x -> x' + conv-gn-relu-conv-gn(x)`` with a 1x1 projection when the channel count changes.

    Shapes: ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.skip(x))


class TokenRefiner(nn.Module):
    """Pre-norm transformer blocks over the stride-16 tokens of one frame (self-attention within the frame only).

    This plays the role of the official code's object transformer stage (pixel refinement of the read-out); it never
    looks at other frames, so the per-frame cost stays constant. Shapes: ``[B, C, h, w] -> [B, C, h, w]``.
    """

    def __init__(self, channels: int, num_blocks: int, num_heads: int = 8, ff_dim: int = 2048) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            channels, num_heads, dim_feedforward=ff_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_blocks, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.blocks(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)
