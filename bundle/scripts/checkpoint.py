"""The bundle's view of a self-describing checkpoint: which config values trained ``models/model.pt``.

``inference.json``, ``evaluate.json`` (and through them MONAI Label, ``ckpt_export``, ``verify_net_in_out`` and the
model zoo's ``verify_bundle.py``) read ``network_size``, ``update_rule``, ``kpff``, ``mask_skip``, ``labels``,
``spatial_size`` and ``keep_aspect`` from the checkpoint with :func:`trained_settings`, so a model is served as it
was trained without the user repeating training overrides. :func:`check_settings` runs before the network is built:
a value given on the command line that contradicts the checkpoint stops the command with a few lines naming both
values and the fix.

Command line (from the bundle folder, or with ``PYTHONPATH=bundle``)::

    python -m scripts.checkpoint models/model.pt     # prints what the checkpoint was trained with
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scripts.gdkvm.description import EXTRA_STATE_KEY, decode, plain

logger = logging.getLogger(__name__)

# Config key -> where the checkpoint's description holds it.
SETTINGS = {
    "network_size": ("network", "size"),
    "update_rule": ("network", "update_rule"),
    "kpff": ("network", "kpff"),
    "mask_skip": ("network", "mask_skip"),
    "labels": ("trained_with", "labels"),
    "spatial_size": ("trained_with", "spatial_size"),
    "keep_aspect": ("trained_with", "keep_aspect"),
}


class ConfigContradictsCheckpoint(SystemExit):
    """A config value contradicts the checkpoint. A ``SystemExit``, so ``python -m monai.bundle ...`` ends with the
    message alone (exit status 1) instead of a traceback; ``differences`` is ``[(key, checkpoint, config)]``."""

    def __init__(self, checkpoint: str | Path, differences: list[tuple[str, Any, Any]], fix: str | None = None) -> None:
        self.checkpoint = str(checkpoint)
        self.differences = [(config_key(name), saved, given) for name, saved, given in differences]
        lines = [f"{checkpoint} was trained with other settings than this command asks for:"]
        lines += [f"  {key}: checkpoint {saved!r}, this command {given!r}" for key, saved, given in self.differences]
        if fix is None:
            typed = " ".join(f"--{key} {saved}" for key, saved, _ in self.differences if key in SETTINGS)
            fix = "leave these overrides out (the checkpoint's values are used)"
            fix += f", or pass {typed}" if typed else ""
        lines.append(f"Fix: {fix}.")
        super().__init__("\n".join(lines))


class NoTrainedModel(SystemExit):
    """There is no ``model.pt`` where a command needs one (a ``SystemExit``: the message, exit status 1)."""


def config_key(name: str) -> str:
    """The config key for a name in a network description (``size`` -> ``network_size``)."""
    if name.startswith("trained_with."):
        return name.split(".", 1)[1]
    return {"size": "network_size", "out_channels": "num_classes", "model": "network_def#_target_"}.get(name, name)


def read_description(checkpoint: str | Path) -> dict[str, Any] | None:
    """The description saved in a GDKVM state dict (see :mod:`scripts.gdkvm.description`), or None if it has none.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        ValueError: the file is not a state dict that ``torch.load(weights_only=True)`` reads.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model (train the bundle first, or pass --ckpt_dir)")
    try:
        # mmap: only the small description tensor is read, not every weight (configs call this twice per command)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return decode(state.get(EXTRA_STATE_KEY))


def settings_of(description: Mapping[str, Any]) -> dict[str, Any]:
    """The config values that a description states (``labels`` follows from the classes when not saved)."""
    found: dict[str, Any] = {}
    for key, (part, name) in SETTINGS.items():
        section = description.get(part) or {}
        if name in section:
            found[key] = section[name]
    classes = (description.get("network") or {}).get("out_channels")
    if "labels" not in found and classes in (2, 4):
        found["labels"] = "lv" if classes == 2 else "all"
    return found


def trained_settings(checkpoint: str | Path, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config values for a bundle that serves ``checkpoint``: the checkpoint's own, else ``defaults``.

    Args:
        checkpoint: ``models/model.pt``.
        defaults: values for what the checkpoint does not state (a checkpoint saved before bundle 0.3.0), and for
            everything when there is no checkpoint yet (so that ``verify_net_in_out`` runs on a fresh bundle).
            None: the checkpoint must exist.

    Returns:
        ``{config key: value}`` for every key of :data:`SETTINGS` that is known.
    """
    values = dict(defaults or {})
    if not Path(checkpoint).is_file():
        if defaults is not None:
            return values
        raise NoTrainedModel(f"{checkpoint}: no trained model (train first, e.g. make demo, or pass --ckpt_dir)")
    description = read_description(checkpoint)
    if description is None:
        logger.warning(
            "%s does not say what it was trained with (saved before bundle 0.3.0): using the config's values %s",
            checkpoint,
            values,
        )
        return values
    values.update(settings_of(description))
    return values


def build_network(checkpoint: str | Path, **overrides: Any) -> torch.nn.Module:
    """The network that ``checkpoint`` describes, with its weights loaded (eval mode, CPU).

    ``overrides`` (``size``, ``out_channels``, ``update_rule``, ``kpff``) must agree with the checkpoint (they are
    checked on load); a checkpoint saved before bundle 0.3.0 needs them all.
    """
    from scripts.gdkvm import GDKVM, GDKVMSoftmaxMemory

    description = read_description(checkpoint) or {}
    network = dict(description.get("network") or {})
    architecture = network.pop("architecture", {}) or {}
    kwargs = {**network, **{k: v for k, v in overrides.items() if v is not None}}
    if not kwargs.get("size"):
        raise ValueError(f"{checkpoint}: saved before bundle 0.3.0, it does not say its network: pass size etc.")
    model = GDKVMSoftmaxMemory if description.get("model") == "GDKVMSoftmaxMemory" else GDKVM
    if model is GDKVMSoftmaxMemory:
        kwargs.pop("update_rule", None)
    from scripts.gdkvm import SIZES

    changed = {k: v for k, v in architecture.items() if plain(SIZES[kwargs["size"]].get(k)) != plain(v)}
    net = model(**kwargs, **changed)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return net.eval()


def check_settings(checkpoint: str | Path, settings: Mapping[str, Any]) -> None:
    """Stop (:class:`ConfigContradictsCheckpoint`) when ``settings`` contradict what ``checkpoint`` was trained with.

    Nothing to check when the file does not exist yet or does not describe itself.
    """
    if not Path(checkpoint).is_file():
        return
    description = read_description(checkpoint)
    if description is None:
        return
    saved = settings_of(description)
    found = [
        (key, saved[key], settings[key])
        for key in SETTINGS
        if key in saved and key in settings and plain(saved[key]) != plain(settings[key])
    ]
    if found:
        raise ConfigContradictsCheckpoint(checkpoint, found)


def model_identity(checkpoint: str | Path) -> dict[str, Any]:
    """What identifies the weights a result came from: ``{"file", "sha256", "trained_on"}``.

    ``sha256`` is the checksum of the file's bytes (the same weights give the same value wherever they are served);
    ``trained_on`` is the training data the checkpoint records (``trained_with.data``, set by train.json's
    ``training_data``), or ``"not recorded"`` for a checkpoint saved before bundle 0.6.0.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
    """
    import hashlib

    path = Path(checkpoint)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    try:
        description = read_description(path) or {}
    except ValueError:
        description = {}
    trained_on = (description.get("trained_with") or {}).get("data") or "not recorded"
    return {"file": path.name, "sha256": digest.hexdigest(), "trained_on": str(trained_on)}


def main(checkpoint: str = "models/model.pt") -> None:
    """Print what ``checkpoint`` was trained with, as JSON."""
    description = read_description(checkpoint)
    if description is None:
        print(f"{checkpoint}: saved before bundle 0.3.0, it does not describe itself")
        return
    print(json.dumps({"settings": settings_of(description), "description": description}, indent=2))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
