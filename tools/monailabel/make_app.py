"""Lay out a MONAI Label ``monaibundle`` app that serves this repository's bundle (run by ``start_server.sh``).

    python make_app.py APP_DIR [--name gdkvm_echo_segmentation] [--weights bundle/models/model.pt]
                               [--overrides '{"write_overlays": false}']

MONAI Label finds bundles only as folders ``<app>/model/<name>`` and reads ``configs/inference.json`` there (no
option for another file name). This script copies the ``monaibundle`` sample app out of the MONAI Label install into
``APP_DIR`` (once) and (re)builds ``APP_DIR/model/<name>/`` as a view of ``bundle/``: ``scripts``, ``docs`` and
``LICENSE`` are symlinks, every config is a symlink except ``inference.json`` and ``train.json``: ``inference.json``
is ``bundle/configs/inference.json`` merged with ``monailabel_infer.json`` (label returned as a tensor in the input's
geometry, no files written), ``train.json`` is ``train.json`` merged with ``monailabel_train.json`` (MONAI Label's
``{"image", "label"}`` datalist items read as whole labelled cines), both plus the ``--overrides``;
``models/model.pt`` is a copy of the weights (MONAI Label's ``/train`` rewrites it, the repository's file stays
untouched). Run it with MONAI Label's Python (it uses monai).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_NAME = "gdkvm_echo_segmentation"


def sample_app_dir() -> Path:
    """The ``monaibundle`` sample app shipped inside the MONAI Label wheel (``<venv>/monailabel/sample-apps``)."""
    import sys

    for root in (Path(sys.prefix), Path(sys.base_prefix)):
        candidate = root / "monailabel" / "sample-apps" / "monaibundle"
        if (candidate / "main.py").is_file():
            return candidate
    raise FileNotFoundError(f"monaibundle sample app not found under {sys.prefix}/monailabel/sample-apps")


def make_app(
    app_dir: str,
    name: str = DEFAULT_NAME,
    weights: str | None = None,
    overrides: str | dict | None = None,
    bundle_dir: str = str(BUNDLE_DIR),
) -> str:
    """Create or refresh the app and the bundle view; returns the bundle view's path."""
    from monai.bundle import ConfigParser

    app = Path(app_dir).resolve()
    bundle = Path(bundle_dir).resolve()
    weights_file = Path(weights).resolve() if weights else bundle / "models" / "model.pt"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: no weights (train the bundle first, or pass --weights PATH)")
    if not (app / "main.py").is_file():
        shutil.copytree(sample_app_dir(), app, dirs_exist_ok=True)
    view = app / "model" / name
    if view.exists() or view.is_symlink():
        shutil.rmtree(view) if view.is_dir() and not view.is_symlink() else view.unlink()
    (view / "configs").mkdir(parents=True)
    (view / "models").mkdir()
    for entry in ("scripts", "docs", "LICENSE"):
        if (bundle / entry).exists():
            (view / entry).symlink_to(bundle / entry)
    for config in sorted((bundle / "configs").iterdir()):
        if config.name not in ("inference.json", "train.json") and not config.name.startswith("monailabel_"):
            (view / "configs" / config.name).symlink_to(config)
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides or {})
    for config, override in (("inference.json", "monailabel_infer.json"), ("train.json", "monailabel_train.json")):
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / config), str(bundle / "configs" / override)])
        parser.update(extra)
        (view / "configs" / config).write_text(json.dumps(parser.config, indent=4) + "\n")
    shutil.copyfile(weights_file, view / "models" / "model.pt")
    refuse_contradicting_overrides(view)
    return str(view)


def refuse_contradicting_overrides(view: Path) -> None:
    """Stop at start-up when ``--overrides`` contradict what the weights were trained with.

    The served ``inference.json`` takes the network and preprocessing from the checkpoint itself
    (``scripts.checkpoint.trained_settings``), so no override is needed; one that contradicts the checkpoint (e.g.
    ``{"spatial_size": 256}`` for a model trained at 128) would serve plausible-looking wrong masks. Raises
    ``scripts.checkpoint.ConfigContradictsCheckpoint`` (a SystemExit: the message, exit status 1).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(view / "configs" / "inference.json"))
    parser["bundle_root"] = str(view)
    parser["ckpt_dir"] = str(view / "models")
    parser.get_parsed_content("trained_check")


if __name__ == "__main__":
    import fire

    fire.Fire(make_app)
