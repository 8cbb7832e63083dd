"""Bad input that stops a bundle command ends it with one line naming the file and the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.console import echo_data_error_in
from scripts.data.errors import EchoDataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_echo_data_error_is_found_inside_monais_wrapping() -> None:
    try:
        try:
            raise EchoDataError("/data/x", "CAMUS folder not found")
        except EchoDataError as inner:
            raise RuntimeError("Failed to instantiate component 'scripts.data.camus_datalist'") from inner
    except RuntimeError as outer:
        assert str(echo_data_error_in(outer)) == "/data/x: CAMUS folder not found"
    assert echo_data_error_in(ValueError("other")) is None


@pytest.mark.parametrize("traceback_wanted", [False, True])
def test_training_on_a_missing_dataset_folder_is_one_line(tmp_path, traceback_wanted) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if traceback_wanted:
        env["GDKVM_TRACEBACK"] = "1"
    missing = tmp_path / "CAMUS_public"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
         "['bundle/configs/train.json','bundle/configs/camus.json']", "--dataset_dir", str(missing),
         "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"{missing}: CAMUS folder not found" in done.stderr
    assert ("Traceback" in done.stderr) == traceback_wanted
    if not traceback_wanted:
        assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
            f"error: {missing}: CAMUS folder not found (GDKVM_TRACEBACK=1 shows the traceback)"
        ]


def test_a_corrupt_file_in_the_evaluation_set_is_one_line_and_the_other_cases_are_evaluated(tmp_path) -> None:
    """A truncated cine among the test patients: one console line and one failures.csv row, the metrics over the
    other cases, and exit status 1 (the metrics are not over the whole test set)."""
    import csv
    import json

    import torch
    from fixtures_echo import write_camus_nifti

    from scripts.gdkvm import GDKVM

    data = write_camus_nifti(tmp_path / "camus", n_patients=6, T=16, reversed_ids=())
    (data / "database_split" / "subgroup_testing.txt").write_text("".join(f"patient{i:04d}\n" for i in range(1, 7)))
    broken = data / "database_nifti" / "patient0002" / "patient0002_4CH_half_sequence.nii.gz"
    broken.write_bytes(broken.read_bytes()[:3000])
    (tmp_path / "models").mkdir()
    trained_with = {"labels": "lv", "spatial_size": 64, "keep_aspect": True}
    trained = GDKVM(size="small", out_channels=2, trained_with=trained_with)
    torch.save(trained.state_dict(), tmp_path / "models" / "model.pt")
    out = tmp_path / "eval"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
         "['bundle/configs/train.json','bundle/configs/camus.json','bundle/configs/evaluate.json']",
         "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(out)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    text = done.stdout
    assert done.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "terminate called" not in text
    lines = [line for line in text.splitlines() if str(broken) in line]
    assert len(lines) == 1 and f"failed: {broken}: not a readable nifti file, truncated or corrupt (" in lines[0]
    with open(out / "failures.csv", newline="") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == [str(broken)]
    assert json.loads((out / "metrics_summary.json").read_text())["n_cases"] == 11  # 6 patients x 2 views, 1 bad
    assert json.loads((out / "ef_agreement.json").read_text())["n_clips"] == 11
    assert "evaluation: 11 cases evaluated, 1 failed" in text
    assert f"traceback of {broken}" in (out / "evaluation.log").read_text()


BUSY_THREADS_SCRIPT = """
import sys, threading, time
sys.path.insert(0, "bundle")
import torch
from scripts.console import install_excepthook
from scripts.data.errors import EchoDataError
install_excepthook()
def busy():  # what CacheDataset's loader threads do when another item's error ends the main thread
    while True:
        torch.nn.functional.interpolate(torch.rand(1, 1, 256, 256), size=(1024, 1024), mode="bilinear")
for _ in range(2):
    threading.Thread(target=busy, daemon=True).start()
time.sleep(0.3)
try:
    raise EchoDataError("/data/x.nii.gz", "not a readable nifti file")
except EchoDataError as e:
    raise RuntimeError("Failed to instantiate component") from e
"""


@pytest.mark.parametrize("traceback_wanted", [False, True])
def test_bad_input_ends_with_status_1_while_loader_threads_run(traceback_wanted) -> None:
    """Python's shutdown with threads inside torch operations aborted (status 134, "terminate called without an
    active exception") after the message; the hook ends the process with status 1 instead."""
    env = {k: v for k, v in os.environ.items() if k != "GDKVM_TRACEBACK"}
    if traceback_wanted:
        env["GDKVM_TRACEBACK"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", BUSY_THREADS_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    assert "/data/x.nii.gz: not a readable nifti file" in done.stderr
    assert ("Traceback" in done.stderr) == traceback_wanted
