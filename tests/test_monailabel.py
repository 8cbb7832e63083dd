"""MONAI Label end to end: serve the bundle from MONAI Label's own venv (tools/monailabel/start_server.sh) with
synthetic CAMUS-layout cines as the studies folder, ask for an auto-segmentation, check the label volume, stop.

Needs MONAI Label's venv (``make test-monailabel`` builds it): ``.venv-monailabel`` or ``$GDKVM_MONAILABEL_VENV``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
START = REPO_ROOT / "tools" / "monailabel" / "start_server.sh"
NAME = "gdkvm_echo_segmentation"
VENV = Path(os.environ.get("GDKVM_MONAILABEL_VENV") or REPO_ROOT / ".venv-monailabel")
METADATA = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (VENV / "bin" / "monailabel").exists(),
        reason=f"MONAI Label venv not found at {VENV}: run `make test-monailabel` (builds it with "
        "tools/monailabel/setup_env.sh) or set GDKVM_MONAILABEL_VENV",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, method: str = "GET", timeout: float = 120) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    """Starts MONAI Label on 127.0.0.1 with two synthetic cines; kills its process group afterwards."""
    from scripts.gdkvm import GDKVM
    from scripts.synthetic import write_camus_dataset

    work = tmp_path_factory.mktemp("monailabel")
    write_camus_dataset(work / "synthetic", 2, seed=7, size=64, progress=False)
    studies = work / "studies"
    studies.mkdir()
    cines = sorted((work / "synthetic").rglob("*_4CH_half_sequence.nii.gz"))
    (studies / "labels" / "final").mkdir(parents=True)
    for cine in cines:  # images, and their ground truth as labels saved through MONAI Label would be
        (studies / cine.name).write_bytes(cine.read_bytes())
        gt = cine.with_name(cine.name.replace(".nii.gz", "_gt.nii.gz"))
        (studies / "labels" / "final" / cine.name).write_bytes(gt.read_bytes())
    source = nib.load(str(cines[0]))  # a non-square cine (x 64, y 52) catches a transposed label
    cropped = np.asanyarray(source.dataobj)[:, 6:58]
    nib.save(nib.Nifti1Image(cropped, source.affine, source.header), str(studies / "narrow_4CH.nii.gz"))
    torch.manual_seed(0)
    torch.save(GDKVM(size="small", out_channels=2).state_dict(), work / "model.pt")
    port = free_port()
    env = dict(os.environ)
    env.update(
        MONAILABEL_VENV=str(VENV),
        MONAILABEL_APP=str(work / "app"),
        GDKVM_WEIGHTS=str(work / "model.pt"),
        GDKVM_OVERRIDES=json.dumps(
            {"network_size": "small", "spatial_size": 64, "num_frames": 4, "batch_size": 1, "iterations_per_epoch": 2}
        ),
    )
    env.pop("PYTHONPATH", None)
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["bash", str(START), str(studies), str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                info = json.loads(request(f"{base}/info/", timeout=5))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{(work / 'server.log').read_text()[-4000:]}") from None
                time.sleep(1)
        yield {"base": base, "info": info, "studies": studies, "work": work}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        log.close()


def test_info_lists_the_bundle_with_its_channels(server: dict) -> None:
    model = server["info"]["models"][NAME]
    channel_def = METADATA["network_data_format"]["outputs"]["pred"]["channel_def"]
    expected = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    assert model["labels"] == expected
    assert model["type"] == "segmentation" and model["dimension"] == 3


def test_infer_returns_label_in_image_geometry(server: dict) -> None:
    studies: Path = server["studies"]
    for image_file in sorted(studies.glob("*.nii.gz")):
        image_id = image_file.name[: -len(".nii.gz")]
        body = request(f"{server['base']}/infer/{NAME}?image={image_id}&output=image", method="POST")
        out = server["work"] / f"{image_id}_label.nii.gz"
        out.write_bytes(body)
        image, label = nib.load(str(image_file)), nib.load(str(out))
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
        values = set(np.unique(np.asarray(label.dataobj)).tolist())
        assert values <= {0, 1}, values
    # the same labels as the bundle's own inference (project venv) writes for these files
    standalone = server["work"] / "standalone"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO_ROOT / "bundle/configs/inference.json"),
         "--bundle_root", str(REPO_ROOT / "bundle"), "--dataset_dir", str(studies), "--output_dir", str(standalone),
         "--network_size", "small", "--spatial_size", "64", "--write_clinical_report", "False",
         "--write_overlays", "False", "--ckpt_dir", str(server["work"])],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for image_file in sorted(studies.glob("*.nii.gz")):
        stem = image_file.name[: -len(".nii.gz")]
        served = np.asarray(nib.load(str(server["work"] / f"{stem}_label.nii.gz")).dataobj)
        expected = np.asarray(nib.load(str(standalone / f"{stem}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(served, expected)
    result = json.loads(
        request(f"{server['base']}/infer/{NAME}?image={image_id}&output=json", method="POST").decode() or "{}"
    )
    assert sys.version_info >= (3, 10) and isinstance(result, dict)


def test_train_fine_tunes_on_labels_saved_through_monailabel(server: dict) -> None:
    weights = server["work"] / "app" / "model" / NAME / "models" / "model.pt"
    before = weights.read_bytes()
    body = json.dumps({"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}).encode()
    req = urllib.request.Request(
        f"{server['base']}/train/{NAME}?run_sync=true", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=300) as response:
        assert response.status == 200, response.read()[-2000:]
    assert weights.read_bytes() != before, "training did not rewrite models/model.pt"
