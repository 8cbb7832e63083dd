"""The MONAI bundle as a user runs it: metadata, net in/out, properties, train, evaluate, inference, DDP, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures_echo import phantom, write_avi, write_dicom
from monai.bundle import ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
PYTHON = sys.executable


def tiny_overrides(work: Path, data_dir: Path) -> dict:
    """Shrinks the small CPU preset to seconds: 64x64 clips of 4 frames, 8 iterations."""
    return {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data_dir),
        "synthetic_patients": 10,
        "synthetic_size": 64,
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "spatial_size": 64,
        "num_frames": 4,
        "batch_size": 2,
        "num_iterations": 8,
        "iterations_per_epoch": 4,
        "val_interval": 1,
        "learning_rate": 0.002,
        "num_workers": 0,
    }


def cli_overrides(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def workflow(config_files: list[str], workflow_type: str, overrides: dict) -> ConfigWorkflow:
    files = [str(CONFIGS / f) for f in config_files]
    return ConfigWorkflow(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from scripts.training import ensure_synthetic_data

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_data(root, patients=10, seed=3, size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, synthetic_data) -> dict:
    """Runs the train workflow once (small preset, shrunk) and records the loss of every iteration."""
    work = tmp_path_factory.mktemp("train")
    overrides = tiny_overrides(work, synthetic_data)
    wf = workflow(["train.json", "small_cpu.json"], "train", overrides)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    trainer = wf.parser.get_parsed_content("train#trainer")
    losses: list[float] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    wf.run()
    wf.finalize()
    return {"work": work, "overrides": overrides, "losses": losses, "trainer": trainer}


def test_metadata_verifies_offline() -> None:
    from monai.bundle import verify_metadata

    verify_metadata(
        meta_file=str(CONFIGS / "metadata.json"), filepath=str(CONFIGS / "schema" / "meta_schema_20240725.json")
    )
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "left ventricle"
    assert "not for diagnostic use" in meta["intended_use"].lower()


def test_verify_net_in_out() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "small_cpu.json")],
        n=4,
        any=3,
        bundle_root=str(BUNDLE),
    )


def test_infer_workflow_properties(tmp_path) -> None:
    write_avi((phantom(32, 32, 3)[0] * 255).astype(np.uint8).transpose(2, 0, 1), tmp_path / "a.avi")
    wf = workflow(["inference.json"], "infer", {"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path)})
    wf.initialize()
    assert wf.check_properties() in (None, [])


def test_training_loss_decreases_and_saves_plain_state_dict(trained_bundle) -> None:
    losses = trained_bundle["losses"]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), f"loss did not go down: {losses}"
    model_path = trained_bundle["work"] / "models" / "model.pt"
    state = torch.load(model_path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "key_encoder.conv1.weight" in state
    assert sorted(p.name for p in (trained_bundle["work"] / "models" / "training").iterdir()) == [
        "checkpoint_epoch=2.pt"
    ]


def test_evaluate_writes_per_case_and_summary(trained_bundle) -> None:
    overrides = dict(trained_bundle["overrides"])
    overrides["output_dir"] = str(trained_bundle["work"] / "evaluation")
    wf = workflow(["train.json", "small_cpu.json", "evaluate.json"], "train", overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    out = Path(overrides["output_dir"])
    with open(out / "metrics_per_case.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) >= {"case_id", "structure", "frame", "phase", "dice", "hd95", "asd", "unit"}
    assert {r["unit"] for r in rows} == {"mm"}
    assert {r["phase"] for r in rows} >= {"ED", "ES"}
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 2  # one test patient, two views
    assert 0.0 <= summary["structures"]["lv"]["all"]["dice"]["mean"] <= 1.0
    ef = json.loads((out / "ef_agreement.json").read_text())
    assert ef["n_clips"] == 2 and ef["biplane_per_patient"]["n_patients"] == 1
    with open(out / "ef_per_case.csv") as handle:
        ef_rows = list(csv.DictReader(handle))
    assert sorted(r["view"] for r in ef_rows) == ["2CH", "4CH"]
    assert all(r["dataset_ef"] != "nan" for r in ef_rows)


def test_inference_on_nifti_avi_dicom_keeps_geometry(trained_bundle, synthetic_data, tmp_path) -> None:
    inputs = tmp_path / "cines"
    inputs.mkdir()
    nifti_source = next((synthetic_data / "database_nifti").glob("patient*/patient*_4CH_half_sequence.nii.gz"))
    nifti_copy = inputs / nifti_source.name
    nifti_copy.write_bytes(nifti_source.read_bytes())
    image, _ = phantom(72, 88, 6, seed=1)
    write_avi(np.moveaxis((image * 255).astype(np.uint8), -1, 0), inputs / "clip.avi", fps=30.0)
    dicom_frames = (phantom(80, 96, 5, seed=2)[0] * 255).astype(np.uint8)
    write_dicom(inputs / "us.dcm", np.moveaxis(dicom_frames, -1, 0), kind="mono", region=(8, 4, 88, 76))
    out = tmp_path / "out"
    overrides = {
        "bundle_root": str(BUNDLE),
        "ckpt_dir": str(trained_bundle["work"] / "models"),
        "dataset_dir": str(inputs),
        "output_dir": str(out),
        "spatial_size": 64,
    }
    wf = workflow(["inference.json", "small_cpu.json"], "infer", overrides)
    wf.initialize()
    wf.run()
    wf.finalize()

    reference = nib.load(str(nifti_copy))
    seg = nib.load(str(out / f"{nifti_copy.name[: -len('.nii.gz')]}_seg.nii.gz"))
    assert seg.shape == reference.shape
    np.testing.assert_allclose(seg.affine, reference.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}

    avi_seg = nib.load(str(out / "clip_seg.nii.gz"))
    assert avi_seg.shape == (88, 72, 6)  # x = column first, as ITK and MONAI LoadImage order the source
    summary = json.loads((out / "clip_seg.json").read_text())
    assert summary["frames"] == 6 and summary["spacing_mm"] is None and len(summary["area_px"]) == 6
    for name in ("clip_seg.json", f"{nifti_copy.name[: -len('.nii.gz')]}_overlay.gif"):
        assert (out / name).is_file()
    dicom_seg = nib.load(str(out / "us_seg.nii.gz"))
    dicom_summary = json.loads((out / "us_seg.json").read_text())
    assert dicom_seg.shape == (96, 80, 5)  # the whole frame, x first; 0 outside the ultrasound region
    np.testing.assert_allclose(np.diag(dicom_seg.affine)[:3], [-0.3, -0.4, 0.02], rtol=1e-5)  # RAS of ITK's LPS
    outside = np.ones((96, 80), bool)
    outside[8:89, 4:77] = False  # the declared ultrasound region: rows 4..76, columns 8..88 inclusive
    assert not np.asarray(dicom_seg.dataobj)[outside].any()
    assert dicom_summary["crop"] == [4, 77, 8, 89]


def test_inference_on_pydicom_echo_sample(trained_bundle, tmp_path) -> None:
    from pydicom import examples

    inputs = tmp_path / "dicom"
    inputs.mkdir()
    (inputs / "a4c.dcm").write_bytes(Path(examples.get_path("ybr_color")).read_bytes())
    out = tmp_path / "out"
    overrides = {
        "bundle_root": str(BUNDLE),
        "ckpt_dir": str(trained_bundle["work"] / "models"),
        "dataset_dir": str(inputs),
        "datalist": "['a4c.dcm']",
        "output_dir": str(out),
        "spatial_size": 64,
        "write_overlays": False,
    }
    wf = workflow(["inference.json", "small_cpu.json"], "infer", overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    seg = nib.load(str(out / "a4c_seg.nii.gz"))
    summary = json.loads((out / "a4c_seg.json").read_text())
    assert seg.shape == (320, 240, 30)  # the whole 240 x 320 frame, x first (the summary describes the region)
    assert (summary["height"], summary["width"]) != (240, 320)
    assert summary["frames"] == 30 and summary["crop"] is not None
    np.testing.assert_allclose(np.diag(seg.affine)[:2], [-s for s in summary["spacing_mm"][::-1]], rtol=1e-5)
    assert (out / "a4c_lv_curve.csv").is_file()


def _run_bundle(args: list[str], log: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    with open(log, "w") as handle:
        return subprocess.Popen(args, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)


def _train_command(overrides: dict) -> list[str]:
    files = "['bundle/configs/train.json','bundle/configs/small_cpu.json']"
    return [PYTHON, "-m", "monai.bundle", "run", "--config_file", files] + cli_overrides(overrides)


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_identical_weights(synthetic_data, tmp_path) -> None:
    def overrides(work: Path) -> dict:
        o = tiny_overrides(work, synthetic_data)
        o.update({"num_iterations": 12, "iterations_per_epoch": 2, "val_interval": 100})
        return o

    straight = tmp_path / "straight"
    proc = _run_bundle(_train_command(overrides(straight)), tmp_path / "straight.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    killed = tmp_path / "killed"
    ckpt_dir = killed / "models" / "training"
    proc = _run_bundle(_train_command(overrides(killed)), tmp_path / "killed.log")
    deadline = time.time() + 600
    while not list(ckpt_dir.glob("checkpoint_epoch=*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # an interrupted save leaves only a hidden temporary file, which must be ignored
    (ckpt_dir / ".checkpoint_epoch=5.pt.interrupted.tmp").write_bytes(b"partial")
    proc = _run_bundle(_train_command(overrides(killed)), tmp_path / "resumed.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert "resumed from" in (tmp_path / "resumed.log").read_text()

    final_straight = torch.load(straight / "models" / "training" / "checkpoint_epoch=6.pt", weights_only=True)
    final_resumed = torch.load(killed / "models" / "training" / "checkpoint_epoch=6.pt", weights_only=True)
    for name, tensor in final_straight["network"].items():
        torch.testing.assert_close(final_resumed["network"][name], tensor, rtol=0, atol=0, msg=name)
    assert final_resumed["trainer"]["iteration"] == 12
    for group_a, group_b in zip(
        final_straight["optimizer"]["state"].values(), final_resumed["optimizer"]["state"].values()
    ):
        torch.testing.assert_close(group_a["exp_avg"], group_b["exp_avg"], rtol=0, atol=0)


@pytest.mark.slow
def test_two_process_gloo_ddp_training(synthetic_data, tmp_path) -> None:
    work = tmp_path / "ddp"
    o = tiny_overrides(work, synthetic_data)
    o.update({"num_iterations": 4, "iterations_per_epoch": 2, "val_interval": 2})
    files = "['bundle/configs/train.json','bundle/configs/small_cpu.json','bundle/configs/multi_gpu_train.json']"
    torchrun = str(Path(PYTHON).parent / "torchrun")
    command = [torchrun, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    command += ["--config_file", files] + cli_overrides(o)
    log = tmp_path / "ddp.log"
    proc = _run_bundle(command, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "gloo" in text or "Engine run finished" in text
    assert (work / "models" / "model.pt").is_file()
    final = torch.load(work / "models" / "training" / "checkpoint_epoch=2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in final["network"])

    o["output_dir"] = str(work / "evaluation")
    files = (
        "['bundle/configs/train.json','bundle/configs/small_cpu.json','bundle/configs/evaluate.json',"
        "'bundle/configs/multi_gpu_evaluate.json']"
    )
    command = [torchrun, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    command += ["--config_file", files] + cli_overrides(o)
    proc = _run_bundle(command, tmp_path / "ddp_eval.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "ddp_eval.log").read_text()[-4000:]
    summary = json.loads((work / "evaluation" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 2  # both test clips, one per rank, gathered on rank 0
    assert json.loads((work / "evaluation" / "ef_agreement.json").read_text())["n_clips"] == 2
