"""A trained bundle describes itself: every entry point builds the network that fits ``model.pt`` without the user
repeating the training overrides, and an override that contradicts the checkpoint stops with a short message.

The commands run as a user types them (``python -m monai.bundle run training|evaluating|inferring ...``), from the
repository root, with small overrides for time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.checkpoint import (
    ConfigContradictsCheckpoint,
    NoTrainedModel,
    check_settings,
    model_identity,
    read_description,
    trained_settings,
)
from scripts.gdkvm import GDKVM, GDKVMSoftmaxMemory
from scripts.gdkvm.description import CheckpointMismatchError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
PYTHON = sys.executable
TRAIN = "bundle/configs/train.json"
EVALUATE = "['bundle/configs/train.json','bundle/configs/evaluate.json']"
INFER = "bundle/configs/inference.json"
TRAINED_WITH = {"labels": "lv", "spatial_size": 64, "keep_aspect": True}


def bundle_command(*args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in the repository root, as typed (no PYTHONPATH)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [PYTHON, "-m", "monai.bundle", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


# ---------------------------------------------------------------------------------------------- the network level
def test_state_dict_carries_the_description_and_loads_with_weights_only(tmp_path) -> None:
    net = GDKVM(size="small", out_channels=4, update_rule="delta", kpff=False, trained_with=TRAINED_WITH)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())  # a plain tensor state dict (MONAI's copy_model_state)
    assert read_description(tmp_path / "model.pt")["network"]["update_rule"] == "delta"
    assert trained_settings(tmp_path / "model.pt") == {
        "network_size": "small",
        "update_rule": "delta",
        "kpff": False,
        "labels": "lv",
        "spatial_size": 64,
        "keep_aspect": True,
    }
    fresh = GDKVM(size="small", out_channels=4, update_rule="delta", kpff=False)
    fresh.load_state_dict(state)
    assert fresh.trained_with == TRAINED_WITH  # taken from the checkpoint when the network was built without it


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (lambda: GDKVM(size="base", out_channels=2), "size: checkpoint 'small', this network 'base'"),
        (lambda: GDKVM(size="small", out_channels=4), "out_channels: checkpoint 2, this network 4"),
        (lambda: GDKVM(size="small", update_rule="additive"), "update_rule: checkpoint 'gated_delta'"),
        (lambda: GDKVM(size="small", kpff=False), "kpff: checkpoint True, this network False"),
        (lambda: GDKVM(size="small", key_dim=16), "architecture.key_dim: checkpoint 32, this network 16"),
        (lambda: GDKVMSoftmaxMemory(size="small"), "model: checkpoint 'GDKVM', this network 'GDKVMSoftmaxMemory'"),
        (
            lambda: GDKVM(size="small", trained_with={**TRAINED_WITH, "spatial_size": 256}),
            "trained_with.spatial_size: checkpoint 64, this network 256",
        ),
    ],
)
def test_loading_into_another_network_names_the_difference_first(other, named) -> None:
    state = GDKVM(size="small", out_channels=2, trained_with=TRAINED_WITH).state_dict()
    with pytest.raises(CheckpointMismatchError) as caught:
        other().load_state_dict(state)
    message = str(caught.value)
    assert named in message and len(message.splitlines()) <= 4  # no list of a thousand mis-shaped tensors


def test_checkpoint_saved_before_descriptions_still_loads_with_a_warning(tmp_path) -> None:
    net = GDKVM(size="small")
    old = {k: v for k, v in net.state_dict().items() if k != "_extra_state"}
    torch.save(old, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="does not describe"):
        GDKVM(size="small").load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the tensors are still checked
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            GDKVM(size="base").load_state_dict(old)
    assert read_description(tmp_path / "old.pt") is None
    assert trained_settings(tmp_path / "old.pt", defaults={"network_size": "small"}) == {"network_size": "small"}


def test_check_settings_names_both_values_and_the_fix(tmp_path) -> None:
    torch.save(GDKVM(size="small", trained_with=TRAINED_WITH).state_dict(), tmp_path / "model.pt")
    check_settings(tmp_path / "model.pt", {"network_size": "small", "spatial_size": 64})  # agrees: no error
    check_settings(tmp_path / "missing.pt", {"network_size": "base"})  # nothing trained yet: nothing to check
    with pytest.raises(ConfigContradictsCheckpoint) as caught:
        check_settings(tmp_path / "model.pt", {"network_size": "base", "spatial_size": 256, "kpff": True})
    lines = str(caught.value.code).splitlines()
    assert lines[1:3] == [
        "  network_size: checkpoint 'small', this command 'base'",
        "  spatial_size: checkpoint 64, this command 256",
    ]
    assert lines[-1].endswith("or pass --network_size small --spatial_size 64.")
    with pytest.raises(NoTrainedModel, match="no trained model"):
        trained_settings(tmp_path / "missing.pt")  # evaluation needs a model: no defaults


# ---------------------------------------------------------------------------------------------- the bundle commands
@pytest.fixture(scope="module")
def ablation_bundle(tmp_path_factory) -> dict:
    """``run training`` with train.json alone and the overrides of a 4-class ablation (delta rule, no KPFF)."""
    from scripts.training import ensure_synthetic_data

    work = tmp_path_factory.mktemp("ablation")
    data = work / "data"
    ensure_synthetic_data(data, patients=10, seed=3, size=64, progress=False)
    places = {"dataset_dir": data, "ckpt_dir": work / "models", "num_workers": 0}
    training = {
        "output_dir": work / "train_eval",
        "network_size": "small",
        "update_rule": "delta",
        "kpff": False,
        "labels": "all",
        "spatial_size": 64,
        "num_frames": 4,
        "batch_size": 2,
        "num_iterations": 4,
        "iterations_per_epoch": 2,
        "val_interval": 1,
        "synthetic_patients": 10,
        "synthetic_size": 64,
    }
    done = bundle_command("run", "training", "--config_file", TRAIN, *flags({**places, **training}))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"work": work, "data": data, "places": places}


def test_run_training_saves_a_self_describing_model(ablation_bundle) -> None:
    settings = trained_settings(ablation_bundle["places"]["ckpt_dir"] / "model.pt")
    assert settings == {
        "network_size": "small",
        "update_rule": "delta",
        "kpff": False,
        "labels": "all",
        "spatial_size": 64,
        "keep_aspect": True,
    }


def test_run_evaluating_builds_the_trained_network_without_overrides(ablation_bundle) -> None:
    out = ablation_bundle["work"] / "evaluation"
    places = {**ablation_bundle["places"], "synthetic_patients": 10, "synthetic_size": 64}
    done = bundle_command("run", "evaluating", "--config_file", EVALUATE, *flags({**places, "output_dir": out}))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert set(summary["structures"]) == {"lv", "myo", "la"}  # the 4-class model, not the config's LV-only default


def test_run_inferring_builds_the_trained_network_without_overrides(ablation_bundle, tmp_path) -> None:
    cines = tmp_path / "cines"
    cines.mkdir()
    source = next((ablation_bundle["data"] / "database_nifti").glob("patient*/patient*_4CH_half_sequence.nii.gz"))
    shutil.copyfile(source, cines / source.name)
    out = tmp_path / "out"
    done = bundle_command(
        "run", "inferring", "--config_file", INFER, *flags({**ablation_bundle["places"], "dataset_dir": cines}),
        "--output_dir", str(out), "--write_overlays", "False",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    label = np.asarray(nib.load(str(out / source.name.replace(".nii.gz", "_seg.nii.gz"))).dataobj)
    assert label.shape == nib.load(str(source)).shape and label.max() <= 3


@pytest.mark.parametrize(
    ("config", "override", "line"),
    [
        (INFER, ["--network_size", "base"], "network_size: checkpoint 'small', this command 'base'"),
        (INFER, ["--spatial_size", "128"], "spatial_size: checkpoint 64, this command 128"),
        (EVALUATE, ["--kpff", "True"], "kpff: checkpoint False, this command True"),
    ],
)
def test_override_that_contradicts_the_checkpoint_stops_in_a_few_lines(
    ablation_bundle, tmp_path, config, override, line
):
    cines = tmp_path / "cines"
    cines.mkdir()
    source = next((ablation_bundle["data"] / "database_nifti").glob("patient*/patient*_2CH_half_sequence.nii.gz"))
    shutil.copyfile(source, cines / source.name)
    places = {**ablation_bundle["places"], "output_dir": tmp_path / "out"}
    if config == INFER:
        places["dataset_dir"] = cines
    done = bundle_command("run", "--config_file", config, *flags(places), *override)
    assert done.returncode == 1
    assert line in done.stderr and "Fix: leave these overrides out" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*_seg.nii.gz"))


def test_model_zoo_full_mode_steps_on_the_packaged_bundle(ablation_bundle, tmp_path) -> None:
    """What the model zoo's ``ci/verify_bundle.py`` does in full mode, on the bundle that ``tools/package_bundle.py``
    packs with the 4-class model: ``verify_net_in_out`` and ``ckpt_export`` of ``models/model.pt`` into
    inference.json's ``network_def``, with the bundle folder as ``bundle_root`` and on ``sys.path`` (as that script
    puts it). The packed metadata describes the model's 4 output channels."""
    import zipfile

    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
    from monai.data import load_net_with_metadata

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from package_bundle import package

    weights = ablation_bundle["places"]["ckpt_dir"] / "model.pt"
    archive = package(out_dir=str(tmp_path / "dist"), name="gdkvm_echo", weights=str(weights), include_weights=True)
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path)
    bundle = tmp_path / "gdkvm_echo"
    meta_file = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(bundle / "configs" / "schema" / "meta_schema_20240725.json"))
    pred = json.loads(meta_file.read_text())["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 4 and pred["channel_def"]["3"] == "left atrium"
    common = {
        "net_id": "network_def",
        "meta_file": str(meta_file),
        "config_file": str(bundle / "configs" / "inference.json"),
        "bundle_root": str(bundle),
    }
    verify_net_in_out(**common)
    exported = bundle / "models" / "verify_model.ts"
    ckpt_export(filepath=str(exported), ckpt_file=str(bundle / "models" / "model.pt"), **common)
    scripted, _, _ = load_net_with_metadata(str(exported))
    net = GDKVM(size="small", out_channels=4, update_rule="delta", kpff=False)
    net.load_state_dict(torch.load(weights, weights_only=True))
    video = torch.rand(1, 1, 48, 40, 3)
    with torch.no_grad():
        torch.testing.assert_close(scripted(video), net.eval()(video), atol=1e-5, rtol=0)


def test_readme_checks_run_as_typed_on_the_trained_model(ablation_bundle, tmp_path) -> None:
    ckpt = ["--ckpt_dir", str(ablation_bundle["places"]["ckpt_dir"])]
    done = bundle_command(
        "verify_net_in_out", "network_def", "--meta_file", "bundle/configs/metadata.json",
        "--config_file", INFER, "--n", "4", "--any", "3", "--bundle_root", "bundle", *ckpt,
    )  # fmt: skip
    # the repository's metadata.json describes the default LV-only model; a 4-class model is described by the
    # metadata that tools/package_bundle.py writes (test above), and MONAI's check says so in one line
    assert done.returncode != 0 and "output channel number `4` doesn't match: `2`" in done.stderr
    exported = tmp_path / "model.ts"
    done = bundle_command(
        "ckpt_export", "network_def", "--filepath", str(exported),
        "--ckpt_file", str(ablation_bundle["places"]["ckpt_dir"] / "model.pt"),
        "--meta_file", "bundle/configs/metadata.json", "--config_file", INFER, *ckpt,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert exported.is_file()


def test_training_of_another_configuration_is_set_aside_not_resumed(ablation_bundle, tmp_path) -> None:
    """``run training`` with train.json after the demo (or any other training) in the same ckpt_dir: the old
    checkpoints are moved aside and a new training starts, instead of resuming into the wrong network."""
    models = tmp_path / "models"
    shutil.copytree(ablation_bundle["places"]["ckpt_dir"], models)
    tiny = {
        "dataset_dir": ablation_bundle["data"],
        "ckpt_dir": models,
        "output_dir": tmp_path / "eval",
        "num_workers": 0,
        "network_size": "small",
        "spatial_size": 64,
        "num_frames": 4,
        "batch_size": 2,
        "num_iterations": 2,
        "iterations_per_epoch": 2,
        "val_interval": 1,
        "synthetic_patients": 10,
        "synthetic_size": 64,
    }
    done = bundle_command("run", "training", "--config_file", TRAIN, *flags(tiny))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "moved it to" in done.stdout + done.stderr
    (aside,) = models.glob("training.previous-*")
    assert [p.name for p in aside.iterdir()] == ["checkpoint_epoch=2.pt"]  # the ablation's, kept
    assert [p.name for p in (models / "training").iterdir()] == ["checkpoint_epoch=1.pt"]  # the new training's
    assert trained_settings(models / "model.pt")["update_rule"] == "gated_delta"  # the new training's model


def test_monailabel_app_refuses_overrides_that_contradict_the_weights(ablation_bundle, tmp_path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tools" / "monailabel"))
    from make_app import make_app

    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("# the monaibundle sample app would be here\n")
    weights = str(ablation_bundle["places"]["ckpt_dir"] / "model.pt")
    view = Path(make_app(str(app), weights=weights))  # no override: served as trained
    served = json.loads((view / "configs" / "inference.json").read_text())
    assert served["network_size"] == "$@trained['network_size']"
    with pytest.raises(ConfigContradictsCheckpoint, match="spatial_size: checkpoint 64, this command 256"):
        make_app(str(app), weights=weights, overrides='{"spatial_size": 256}')


@pytest.mark.parametrize("config", [INFER, EVALUATE])
def test_no_trained_model_is_one_line(tmp_path, config) -> None:
    cines = tmp_path / "cines"
    cines.mkdir()
    (cines / "a.nii.gz").write_bytes(b"")
    places = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "out", "dataset_dir": cines}
    done = bundle_command("run", "--config_file", config, *flags(places))
    assert done.returncode == 1
    assert "no trained model" in done.stderr and str(tmp_path / "models" / "model.pt") in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert sorted(p.name for p in cines.iterdir()) == ["a.nii.gz"]  # said before any data is generated or read


def test_the_training_data_is_recorded_and_served_without_being_a_setting(tmp_path: Path) -> None:
    """train.json's ``training_data`` goes into the checkpoint (``trained_with.data``): inference configs, which do
    not name it, load the weights as before, and ``model_identity`` (the SR, the JSON) reports it with the checksum."""
    import hashlib

    trained = GDKVM(size="small", trained_with={**TRAINED_WITH, "data": "synthetic (hard)"})
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    served = GDKVM(size="small", trained_with=TRAINED_WITH)  # as inference.json builds it: no "data"
    served.load_state_dict(torch.load(path, weights_only=True))
    assert served.trained_with["data"] == "synthetic (hard)"
    identity = model_identity(path)
    assert identity["trained_on"] == "synthetic (hard)"
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    tuned = GDKVM(size="small", trained_with={**TRAINED_WITH, "data": "camus"})  # fine-tuning on other data
    tuned.load_state_dict(torch.load(path, weights_only=True))
    assert tuned.trained_with["data"] == "camus"
    old = GDKVM(size="small", trained_with=TRAINED_WITH)  # a checkpoint saved before the data was recorded
    torch.save(old.state_dict(), tmp_path / "old.pt")
    tuned.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    with pytest.raises(CheckpointMismatchError, match="spatial_size"):  # the settings are still checked
        GDKVM(size="small", trained_with={**TRAINED_WITH, "spatial_size": 128}).load_state_dict(
            torch.load(path, weights_only=True)
        )
