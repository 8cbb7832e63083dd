"""A GDKVM checkpoint describes itself: the network's arguments and the training input, saved with the weights.

:class:`SelfDescribingModule` stores a small dict in the state dict under ``_extra_state`` (PyTorch's slot for extra
module state), as its JSON text in a uint8 tensor of fixed length :data:`DESCRIPTION_BYTES` (zero-padded). A tensor,
so the file stays a plain tensor state dict that ``torch.load(..., weights_only=True)`` reads and that MONAI's
``copy_model_state`` (used by ``monai.bundle.load``) handles; of fixed length, so that ``copy_model_state`` copies
the checkpoint's description instead of skipping it as "another shape", and the check below always runs::

    {"format": 1, "model": "GDKVM",
     "network": {"size": "small", "out_channels": 2, "update_rule": "gated_delta", "kpff": True,
                 "architecture": {...the resolved size table...}},
     "trained_with": {"labels": "lv", "spatial_size": 128, "keep_aspect": True}}   # or None

Loading such a state dict into a network built with other arguments raises :class:`CheckpointMismatchError`, naming
every difference, before PyTorch's long list of missing and mis-shaped tensors. ``trained_with`` (how the training
frames were prepared) is compared too when both sides have it; a network built without it takes the checkpoint's.
State dicts saved before the description existed still load (their shapes are still checked), with a warning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

DESCRIPTION_FORMAT = 1
DESCRIPTION_BYTES = 4096
EXTRA_STATE_KEY = "_extra_state"

# The bundle config key that sets each network argument (used in messages so that the fix can be typed).
CONFIG_KEY = {
    "model": "network_def#_target_",
    "size": "network_size",
    "out_channels": "num_classes (from labels)",
    "update_rule": "update_rule",
    "kpff": "kpff",
}


class CheckpointMismatchError(ValueError):
    """A state dict was made by a network (or training input) other than the one it is loaded into.

    ``differences`` lists ``(name, checkpoint value, this network's value)``.
    """

    def __init__(self, differences: list[tuple[str, Any, Any]]) -> None:
        self.differences = differences
        lines = [f"  {name}: checkpoint {saved!r}, this network {current!r}" for name, saved, current in differences]
        super().__init__("the checkpoint was made by another network configuration:\n" + "\n".join(lines))


def plain(value: Any) -> Any:
    """JSON-like copy: tuples become lists, mappings plain dicts (so saved and rebuilt values compare equal)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def encode(description: Mapping[str, Any]) -> torch.Tensor:
    """A description as its JSON text in a zero-padded uint8 tensor ``[DESCRIPTION_BYTES]``."""
    text = json.dumps(plain(description), sort_keys=True).encode()
    if len(text) > DESCRIPTION_BYTES:
        raise ValueError(f"network description of {len(text)} bytes exceeds {DESCRIPTION_BYTES}")
    padded = text + bytes(DESCRIPTION_BYTES - len(text))
    return torch.frombuffer(bytearray(padded), dtype=torch.uint8)


def decode(state: Any) -> dict[str, Any] | None:
    """The description saved under ``_extra_state`` (a tensor from :func:`encode`, or a dict), or None if unreadable."""
    if isinstance(state, Mapping):
        return dict(state)
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.ndim == 1:
        try:
            found = json.loads(bytes(state.tolist()).rstrip(b"\0").decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return found if isinstance(found, dict) else None
    return None


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Entries that differ between two (nested) descriptions, as ``(dotted name, saved, current)``."""
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += differences(a, b, f"{prefix}{key}.")
        elif plain(a) != plain(b):
            found.append((f"{prefix}{key}", a, b))
    return found


# ``trained_with`` entries that describe the training for the record (shown in reports and the DICOM SR) without
# being settings that inference must match.
INFORMATIVE_KEYS = ("data",)


class SelfDescribingModule(nn.Module):
    """Mixin for the network classes: saves :meth:`description` with the weights and checks it on load.

    Subclasses implement :meth:`network_arguments` and set ``self.trained_with`` (a mapping or None) in
    ``__init__`` (no class-level annotation: TorchScript would try to compile its type).
    """

    def network_arguments(self) -> dict[str, Any]:
        """The arguments that determine the architecture (and so the state dict's tensors)."""
        raise NotImplementedError

    def description(self) -> dict[str, Any]:
        """What :meth:`state_dict` stores under ``_extra_state``."""
        return {
            "format": DESCRIPTION_FORMAT,
            "model": type(self).__name__,
            "network": plain(self.network_arguments()),
            "trained_with": plain(getattr(self, "trained_with", None)),
        }

    def get_extra_state(self) -> torch.Tensor:
        return encode(self.description())

    def set_extra_state(self, state: Any) -> None:
        state = decode(state)
        if state is None or "network" not in state:
            raise CheckpointMismatchError([("_extra_state", "unreadable", "a GDKVM description")])
        mine = self.description()
        found = differences({"model": state.get("model")}, {"model": mine["model"]})
        saved_net, my_net = dict(state["network"]), dict(mine["network"])
        saved_arch, my_arch = saved_net.pop("architecture", {}), my_net.pop("architecture", {})
        found += differences(saved_net, my_net)
        if saved_net.get("size") == my_net.get("size"):  # a different size explains every architecture difference
            found += differences(saved_arch, my_arch, "architecture.")
        saved_with = state.get("trained_with")
        if saved_with is not None and getattr(self, "trained_with", None) is not None:
            # what a training records only for the record (INFORMATIVE_KEYS, e.g. its data) is no setting to repeat:
            # serving without it, or fine-tuning on other data, contradicts nothing
            settings = {k: v for k, v in (mine["trained_with"] or {}).items() if k not in INFORMATIVE_KEYS}
            compared = {k: v for k, v in saved_with.items() if k not in INFORMATIVE_KEYS}
            found += differences(compared, settings, "trained_with.")
        if found:
            raise CheckpointMismatchError(found)
        if saved_with is not None:
            self.trained_with = {**dict(saved_with), **dict(getattr(self, "trained_with", None) or {})}

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + EXTRA_STATE_KEY
        if key in missing_keys:  # saved before checkpoints described themselves: the tensors are still checked
            missing_keys.remove(key)
            warnings.warn(
                "this checkpoint does not describe the network and training input it was made with (saved before "
                "bundle 0.3.0): the config's values are used as they stand; retrain to get a self-describing one",
                stacklevel=2,
            )
