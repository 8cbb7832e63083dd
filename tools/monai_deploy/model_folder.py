"""The model folder of the MONAI Deploy application: ``model.ts`` that says what it was trained with.

``python -m monai.bundle ckpt_export`` writes ``model.ts`` with ``extra/metadata.json`` and ``extra/inference.json``
(what the SDK's ``MonaiBundleInferenceOperator`` reads), but not the checkpoint's description: the scripted network
drops the state dict's ``_extra_state``, and ``inference.json`` reads the trained settings (network size, classes,
input size, aspect handling) from ``models/model.pt``. A ``model.ts`` alone would be served with the config's
defaults (``base``, 256 x 256), whatever it was trained with. So:

- :func:`export` (command line below) writes ``model.ts`` with a third extra file, ``extra/gdkvm_description.json``:
  the checkpoint's description (:mod:`scripts.gdkvm.description`), through the bundle's own
  :func:`scripts.export.export_torchscript` (``python -m scripts.export torchscript`` writes the same file);
- :func:`served_model` reads the description from there, or else from a ``model.pt`` beside ``model.ts`` whose
  weights equal the TorchScript's, and refuses (:class:`ModelRefused`, one message naming the file, the problem and
  the fix) a model folder without one, a ``model.pt`` that is not the TorchScript's, and an ``inference.json`` whose
  settings contradict the description (e.g. a hard-coded ``spatial_size``).

Command line (from the repository root, any venv with the bundle's requirements)::

    python tools/monai_deploy/model_folder.py --ckpt bundle/models/model.pt --out model_dir

This module imports no MONAI Deploy code, so the project's venv (the tests) can use it as well.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_ROOT = Path(os.environ.get("GDKVM_BUNDLE_ROOT") or REPO_ROOT / "bundle")  # the bundle's code and configs
SETTING_KEYS = ("network_size", "update_rule", "kpff", "labels", "spatial_size", "keep_aspect")


def bundle_importable() -> None:
    """Put ``bundle/`` on ``sys.path`` so that ``scripts`` (the bundle's code) imports."""
    if str(BUNDLE_ROOT) not in sys.path:
        sys.path.insert(0, str(BUNDLE_ROOT))


bundle_importable()
from scripts.checkpoint import build_network, read_description, settings_of  # noqa: E402
from scripts.export import (  # noqa: E402
    DESCRIPTION_FILE,
    bundle_extra_files,
    export_torchscript,
    read_torchscript_description,
    save_scripted,
)
from scripts.gdkvm.description import differences, plain  # noqa: E402


class ModelRefused(SystemExit):
    """The model folder cannot be served as trained (a ``SystemExit``: the message, exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2
        self.message = message


@dataclass
class ServedModel:
    """What the application serves: the TorchScript file, its description and the config values it implies."""

    path: Path
    description: dict[str, Any]
    settings: dict[str, Any]  # network_size, update_rule, kpff, labels, spatial_size, keep_aspect
    source: str  # where the description came from (for the log)


def save_model_ts(
    scripted: torch.jit.ScriptModule,
    description: Mapping[str, Any],
    out_dir: str | Path,
    config_file: str | Path = BUNDLE_ROOT / "configs" / "inference.json",
    metadata_file: str | Path = BUNDLE_ROOT / "configs" / "metadata.json",
) -> Path:
    """Save ``scripted`` as ``out_dir/model.ts`` with the extra files ``metadata.json``, ``inference.json`` (as
    ``ckpt_export`` stores them: the JSON as it stands) and ``gdkvm_description.json``; written whole or not at all."""
    extra = bundle_extra_files(config_file, metadata_file)
    return save_scripted(scripted, Path(out_dir) / "model.ts", description, extra)


def export(
    ckpt: str = str(BUNDLE_ROOT / "models" / "model.pt"),
    out: str = "model_dir",
    config_file: str = str(BUNDLE_ROOT / "configs" / "inference.json"),
    copy_checkpoint: bool = False,
) -> str:
    """Script the network that ``ckpt`` describes into ``<out>/model.ts`` with its description (see module doc).

    ``copy_checkpoint=True`` also copies ``ckpt`` to ``<out>/model.pt`` (not needed: the description is inside).
    """
    description = read_description(ckpt)
    if description is None:
        raise ModelRefused(
            f"{ckpt}: does not say what it was trained with (saved before bundle 0.3.0): retrain it, or the app "
            "cannot know the network's input size and classes"
        )
    path = export_torchscript(build_network(ckpt), Path(out) / "model.ts", description, bundle_extra_files(config_file))
    if copy_checkpoint:
        shutil.copyfile(ckpt, Path(out) / "model.pt")
    return str(path)


def find_model_ts(model_path: str | Path) -> Path:
    """``model.ts`` of a model folder (or the file itself); :class:`ModelRefused` when there is none."""
    path = Path(model_path)
    if path.is_file():
        return path
    for candidate in (path / "model.ts", path / "models" / "model.ts"):
        if candidate.is_file():
            return candidate
    found = sorted(path.glob("*.ts"))
    if len(found) == 1:
        return found[0]
    raise ModelRefused(
        f"{path}: no model.ts (export one with: python tools/monai_deploy/model_folder.py --ckpt "
        f"bundle/models/model.pt --out {path})"
    )


def _same_weights(ts_path: Path, pt_path: Path) -> str | None:
    """None when the state dict in ``pt_path`` holds exactly the TorchScript's tensors, else what differs."""
    state = torch.load(pt_path, map_location="cpu", weights_only=True)
    scripted = torch.jit.load(str(ts_path), map_location="cpu").state_dict()
    scripted = {k: v for k, v in scripted.items() if not k.endswith("_extra_state")}
    mine = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    if set(mine) != set(scripted):
        return f"other tensors ({len(mine)} in model.pt, {len(scripted)} in model.ts)"
    for key, value in mine.items():
        if value.shape != scripted[key].shape or not torch.equal(value, scripted[key].to(value.dtype)):
            return f"other weights (first difference: {key})"
    return None


def served_model(model_path: str | Path) -> ServedModel:
    """The model of a model folder with the settings it was trained with (see the module doc for the refusals)."""
    ts = find_model_ts(model_path)
    try:
        description = read_torchscript_description(ts)
    except ValueError as e:
        raise ModelRefused(str(e)) from None
    source = f"{ts} (extra/{DESCRIPTION_FILE})"
    pt = ts.with_name("model.pt")
    if pt.is_file():
        try:
            pt_description = read_description(pt)
        except ValueError as e:
            raise ModelRefused(f"{pt}: {e}") from None
        if pt_description is not None and description is not None:
            found = differences(plain(description), plain(pt_description))
            if found:
                listed = "; ".join(f"{name}: model.ts {a!r}, model.pt {b!r}" for name, a, b in found)
                raise ModelRefused(
                    f"{ts.parent}: model.ts and model.pt describe different models ({listed}): keep one of them, or "
                    "re-export model.ts from model.pt"
                )
        elif description is None:
            if pt_description is None:
                raise ModelRefused(
                    f"{pt}: saved before bundle 0.3.0, it does not say what it was trained with: retrain it"
                )
            problem = _same_weights(ts, pt)
            if problem is not None:
                raise ModelRefused(
                    f"{ts}: carries no description and the model.pt beside it holds {problem}, so what model.ts "
                    "was trained with is unknown: re-export it with tools/monai_deploy/model_folder.py --ckpt "
                    "<its model.pt>"
                )
            description, source = pt_description, f"{pt} (same weights as {ts.name})"
    if description is None:
        raise ModelRefused(
            f"{ts}: does not say what it was trained with (no extra/{DESCRIPTION_FILE} and no model.pt beside it), so "
            "inference.json would fall back to its defaults (network base, 256 x 256 input) whatever the network "
            "is: export it with: python tools/monai_deploy/model_folder.py --ckpt <model.pt> --out <model folder>, or "
            "put the model.pt it was exported from beside it"
        )
    settings = settings_of(description)
    missing = [k for k in SETTING_KEYS if k not in settings]
    if missing:
        raise ModelRefused(f"{source}: the description lacks {', '.join(missing)}: retrain with bundle 0.3.0 or later")
    if not hasattr(torch.jit.load(str(ts), map_location="cpu"), "warm_start"):
        raise ModelRefused(
            f"{ts}: exported before bundle 0.8.0: it segments a cine's first frame from an empty mask, where the "
            "bundle's inference warm-starts it (EF about 8 points apart on the demo model): re-export it with "
            "python tools/monai_deploy/model_folder.py --ckpt <its model.pt> --out <model folder>"
        )
    return ServedModel(path=ts, description=description, settings=settings, source=source)


def check_config(served: ServedModel, resolved: Mapping[str, Any]) -> None:
    """:class:`ModelRefused` when the inference config's resolved values contradict what the model was trained with.

    ``resolved``: ``{key: value}`` of :data:`SETTING_KEYS` as the config resolves them.
    """
    found = [
        (k, served.settings[k], resolved[k])
        for k in SETTING_KEYS
        if k in resolved and plain(resolved[k]) != plain(served.settings[k])
    ]
    if found:
        listed = "; ".join(f"{k}: trained {a!r}, inference.json {b!r}" for k, a, b in found)
        raise ModelRefused(
            f"{served.path}: its inference.json would serve the model otherwise than it was trained ({listed}): "
            "remove these values from the config (they are read from the model)"
        )


if __name__ == "__main__":
    import fire

    fire.Fire(export)
