"""Key and value encoders: MONAI ResNets cut after layer3 (stride 16), with torchvision's state-dict layout."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import ResNet
from torch import nn

RESNET_LAYERS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


class ResNetTrunk(ResNet):
    """A MONAI ResNet whose forward stops after layer3 and returns the stride 4, 8 and 16 features (scriptable).

    Shapes: ``[B, C, H, W]`` (H, W multiples of 16) -> ``(f4 [B, C4, H/4, W/4], f8, f16 [B, C16, H/16, W/16])``.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f4, f8, f16


def build_resnet_trunk(name: str, in_channels: int, width: float = 1.0) -> ResNetTrunk:
    """A 2D MONAI ResNet whose parameter names match torchvision's (conv1, bn1, layer1..3); layer4 and fc removed.

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: input channels of conv1.
        width: multiplier of the block widths (1.0 is the standard network; other values cannot load ImageNet weights).
    """
    if name not in RESNET_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNET_LAYERS)}")
    block, layers = RESNET_LAYERS[name]
    trunk = ResNetTrunk(
        block=block,
        layers=layers,
        block_inplanes=[int(round(c * width)) for c in (64, 128, 256, 512)],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        feed_forward=False,
        bias_downsample=False,
    )
    trunk.layer4 = nn.Identity()
    return trunk


def trunk_channels(trunk: ResNet) -> tuple[int, int, int]:
    """Channels of the stride 4, 8 and 16 outputs (layer1, layer2, layer3) of a trunk."""
    return tuple(_last_conv_channels(layer) for layer in (trunk.layer1, trunk.layer2, trunk.layer3))


def _last_conv_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    block = layer[-1]
    last = getattr(block, "conv3", None) or getattr(block, "conv2", None) or convs[-1]
    return last.out_channels


def run_trunk(trunk: ResNetTrunk, image_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a trunk to stride 16.

    Args:
        image_BCHW: ``[B, C, H, W]`` with H, W multiples of 16.

    Returns:
        ``(f4, f8, f16)`` feature maps at strides 4, 8, 16.
    """
    return trunk(image_BCHW)


def load_imagenet_weights(trunk: ResNet, path: str | Path) -> list[str]:
    """Load ImageNet weights saved by torchvision (``torch.save(resnet.state_dict())``) from a local file.

    The RGB conv1 kernel is adapted to the trunk's inputs: its sum over RGB goes to input channel 0 (the grey image;
    the sum keeps the response to a grey picture copied into R, G and B) and any further inputs (the mask channels
    of the value encoder) start at zero. ``fc.*`` and ``layer4.*`` are ignored.

    Args:
        trunk: a trunk from :func:`build_resnet_trunk` with ``width=1``.
        path: a ``.pth``/``.pt`` state dict in torchvision's layout.

    Returns:
        The names of trunk parameters that the file did not provide (should be empty).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict of a matching ResNet (names the file and the first bad tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{path}: not a readable torch state dict ({error})") from error
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    own = trunk.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    for name, tensor in loaded.items():
        if name.startswith(("fc.", "layer4.")) or name not in own:
            continue
        expected = tuple(own[name].shape)
        rgb_stem = (
            tensor.ndim == 4
            and tensor.shape[1] == 3
            and (tensor.shape[0],) + tuple(tensor.shape[2:])
            == (
                expected[0],
                *expected[2:],
            )
        )
        if name == "conv1.weight" and rgb_stem:
            new = torch.zeros_like(own[name])
            new[:, 0] = tensor.sum(dim=1)
            tensor = new
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, expected {expected}")
        adapted[name] = tensor
    missing = sorted(set(own) - set(adapted))
    if len(adapted) == 0:
        raise ValueError(f"{path}: no tensor matches a ResNet layout (conv1, bn1, layer1..3)")
    trunk.load_state_dict(adapted, strict=False)
    return missing
