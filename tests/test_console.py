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
