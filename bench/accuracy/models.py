"""The network of each row; the per-frame wrapper of the 2D MONAI baselines."""

from __future__ import annotations

import torch
from torch import nn

from .config import RowSpec


class PerFrame(nn.Module):
    """A 2D segmentation network applied to every frame of a clip independently (no temporal context).

    ``forward(video [B, 1, H, W, T]) -> logits [B, K, H, W, T]`` folds the frames into the batch; ``step(frame
    [B, 1, H, W], state) -> (logits [B, K, H, W], None)`` is the per-frame streaming call.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, video_B1HWT: torch.Tensor) -> torch.Tensor:
        b, c, h, w, t = video_B1HWT.shape
        frames = video_B1HWT.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)
        logits = self.net(frames)
        return logits.reshape(b, t, logits.shape[1], h, w).permute(0, 2, 3, 4, 1)

    def step(self, frame_B1HW: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        return self.net(frame_B1HW), None


def build_model(spec: RowSpec) -> nn.Module:
    """The network of one row, 2 classes (background, LV); random initialisation from torch's current seed."""
    if spec.kind == "gdkvm":
        from scripts.gdkvm import GDKVM

        return GDKVM(size="small", out_channels=2, update_rule=spec.update_rule, kpff=spec.kpff)
    if spec.kind == "softmax":
        from scripts.gdkvm import GDKVMSoftmaxMemory

        return GDKVMSoftmaxMemory(size="small", out_channels=2, kpff=spec.kpff)
    if spec.kind == "unet":
        from monai.networks.nets import UNet

        return PerFrame(
            UNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=2,
                channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2),
                num_res_units=2,
            )
        )
    if spec.kind == "segresnet":
        from monai.networks.nets import SegResNet

        return PerFrame(SegResNet(spatial_dims=2, in_channels=1, out_channels=2, init_filters=16))
    raise ValueError(f"unknown row kind {spec.kind!r}")
