"""Lay out the MONAI Label app that serves this repository's bundle (run by ``start_server.sh``).

    python make_app.py APP_DIR [--name gdkvm_echo_segmentation] [--weights bundle/models/model.pt]
                               [--overrides '{"batch_size": 2}'] [--studies STUDIES_DIR]

MONAI Label finds bundles only as folders ``<app>/model/<name>`` and reads ``configs/inference.json`` there (no
option for another file name). This script writes the app, ``APP_DIR/main.py`` (a copy of ``app_main.py`` beside
this file: the ``monaibundle`` sample app plus every cine format, one-line errors with fitting HTTP statuses and a
server that keeps answering during inferences), and (re)builds ``APP_DIR/model/<name>/`` as a view of ``bundle/``:
``scripts``, ``docs`` and ``LICENSE`` are symlinks, every config is a symlink except ``inference.json`` and
``train.json``: ``inference.json`` is ``bundle/configs/inference.json`` merged with ``monailabel_infer.json`` (label
returned as a tensor in the input's geometry, no files written), ``train.json`` is ``train.json`` merged with
``monailabel_train.json`` (MONAI Label's ``{"image", "label"}`` datalist items: any cine with its saved label, the
frames with an LV label; the served weights validated before training and replaced only when beaten), both plus
the ``--overrides``; ``models/model.pt`` is a copy of the weights (MONAI Label's ``/train`` rewrites it, the
repository's file stays untouched). It stops (``SystemExit``, one reason) when the overrides contradict the weights or
``--studies`` is a folder MONAI Label cannot serve (:func:`scripts.serving.datastore_layout_problem`). Run it with
MONAI Label's Python (it uses monai).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO_ROOT / "bundle"
APP_MAIN = Path(__file__).resolve().with_name("app_main.py")
DEFAULT_NAME = "gdkvm_echo_segmentation"


def make_app(
    app_dir: str,
    name: str = DEFAULT_NAME,
    weights: str | None = None,
    overrides: str | dict | None = None,
    bundle_dir: str = str(BUNDLE_DIR),
    studies: str | None = None,
) -> str:
    """Create or refresh the app and the bundle view; returns the bundle view's path."""
    from monai.bundle import ConfigParser

    app = Path(app_dir).resolve()
    bundle = Path(bundle_dir).resolve()
    weights_file = Path(weights).resolve() if weights else bundle / "models" / "model.pt"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: no weights (train the bundle first, or pass --weights PATH)")
    if studies is not None:
        refuse_unservable_studies(studies, bundle)
    app.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(APP_MAIN, app / "main.py")
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
        if config == "train.json":
            validate_before_training(parser.config)
        (view / "configs" / config).write_text(json.dumps(parser.config, indent=4) + "\n")
    shutil.copyfile(weights_file, view / "models" / "model.pt")
    refuse_contradicting_overrides(view)
    return str(view)


def validate_before_training(config: dict) -> None:
    """Make the served ``train.json`` validate the served weights before the first epoch (``ValidationHandler``'s
    ``exec_at_start``), so that ``/train`` replaces them only with an epoch that beats them on the validation cines
    (``validate#best_model#keep_start`` in ``monailabel_train.json``)."""
    handlers = [
        h for h in config["train"]["handlers"] if isinstance(h, dict) and h.get("_target_") == "ValidationHandler"
    ]
    if len(handlers) != 1:
        raise SystemExit(f"train.json: expected one ValidationHandler in train#handlers, found {len(handlers)}")
    handlers[0]["exec_at_start"] = True


def refuse_unservable_studies(studies: str, bundle: Path = BUNDLE_DIR) -> None:
    """Stop (``SystemExit``, one line) when MONAI Label could not serve the cines of the folder ``studies``."""
    import sys

    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    from scripts.serving import datastore_layout_problem

    problem = datastore_layout_problem(studies)
    if problem:
        raise SystemExit(f"studies folder {studies}: {problem}")


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
