"""Packaging and download: pack the bundle into a versioned zip, serve it from 127.0.0.1, download it with
``python -m monai.bundle download --url`` and its weights with ``download_large_files`` (md5 checked), then run
inference and ``monai.bundle.load`` from the downloaded copy, outside the repository."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from package_bundle import DEFAULT_NAME, package  # noqa: E402

PYTHON = sys.executable
VERSION = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())["version"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server (127.0.0.1, free port) serving a fresh folder; stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def clean_env() -> dict[str, str]:
    """Environment for user commands: no PYTHONPATH, so nothing can come from the repository's ``bundle/``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["BUNDLE_DOWNLOAD_SRC"] = "github"  # never monaihosting (network) by default
    return env


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}\nSTDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    return result


def small_weights(path: Path) -> dict[str, torch.Tensor]:
    """Random weights of the small 2-class network, saved as a plain state dict."""
    from scripts.gdkvm import GDKVM

    torch.manual_seed(0)
    state = GDKVM(size="small", out_channels=2).state_dict()
    torch.save(state, path)
    return state


def test_package_is_deterministic_and_complete(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    small_weights(weights)
    first = Path(package(out_dir=str(tmp_path / "a"), weights=str(weights), weights_url="https://example.org/w.pt"))
    second = Path(package(out_dir=str(tmp_path / "b"), weights=str(weights), weights_url="https://example.org/w.pt"))
    assert first.name == f"{DEFAULT_NAME}_v{VERSION}.zip"
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a" / "w.pt").read_bytes() == weights.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        large = archive.read(f"{DEFAULT_NAME}/large_files.yml").decode()
    assert names == sorted(names) and all(n.startswith(f"{DEFAULT_NAME}/") for n in names)
    for required in ("LICENSE", "configs/metadata.json", "configs/inference.json", "scripts/gdkvm/__init__.py"):
        assert f"{DEFAULT_NAME}/{required}" in names
    top_folders = {n.split("/")[1] for n in names}
    assert not top_folders & {"models", "data", "eval"} and not [n for n in names if "__pycache__" in n]
    assert hashlib.md5(weights.read_bytes()).hexdigest() in large and "https://example.org/w.pt" in large
    without_url = Path(package(out_dir=str(tmp_path / "c"), weights=str(weights)))
    with zipfile.ZipFile(without_url) as archive:
        assert f"{DEFAULT_NAME}/large_files.yml" not in archive.namelist()
    with pytest.raises(FileNotFoundError, match="weights not found"):
        package(out_dir=str(tmp_path / "d"), weights=str(tmp_path / "missing.pt"), weights_url="https://e.org/w.pt")


def test_download_then_infer_and_load(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, base_url = http_root
    weights = tmp_path / "model.pt"
    state = small_weights(weights)
    zip_path = Path(package(out_dir=str(served), weights=str(weights), weights_url=f"{base_url}/gdkvm_small.pt"))

    # what a user types: download the zip, then its large files (md5 checked)
    downloads = tmp_path / "downloads"
    run([PYTHON, "-m", "monai.bundle", "download", "--name", DEFAULT_NAME, "--url", f"{base_url}/{zip_path.name}",
         "--bundle_dir", str(downloads)], cwd=tmp_path)  # fmt: skip
    bundle = downloads / DEFAULT_NAME
    assert (bundle / "configs" / "inference.json").is_file() and not (bundle / "models" / "model.pt").exists()
    run([PYTHON, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)], cwd=tmp_path)
    assert (bundle / "models" / "model.pt").read_bytes() == weights.read_bytes()

    # a tiny NIfTI cine stored as CAMUS does (W x H x T)
    from scripts.synthetic import write_camus_dataset

    write_camus_dataset(tmp_path / "synthetic", 1, seed=5, size=64, progress=False)
    cine = next((tmp_path / "synthetic").rglob("*_4CH_half_sequence.nii.gz"))
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / cine.name).write_bytes(cine.read_bytes())
    out = tmp_path / "out"
    run([PYTHON, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--dataset_dir", str(cases), "--output_dir", str(out),
         "--network_size", "small", "--spatial_size", "64", "--write_overlays", "False"], cwd=tmp_path)  # fmt: skip
    source = nib.load(str(cases / cine.name))
    label = nib.load(str(out / cine.name.replace(".nii.gz", "_seg.nii.gz")))
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, source.affine)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}

    # monai.bundle.load: the file is there, so nothing is downloaded; bundle_root through args_file puts the
    # downloaded copy's scripts/ on sys.path (the config's own guess looks in the working directory)
    args_file = tmp_path / "load_args.json"
    args_file.write_text(json.dumps({"bundle_root": str(bundle)}))
    check = tmp_path / "check_load.py"
    check.write_text(
        "import sys, torch\n"
        "from monai.bundle import load\n"
        f"net = load(name={DEFAULT_NAME!r}, bundle_dir={str(downloads)!r}, workflow_type='inference',"
        f" source='github', args_file={str(args_file)!r}, net_override={{'size': 'small'}}, device='cpu')\n"
        "net.eval()\n"
        f"state = torch.load({str(weights)!r}, weights_only=True)\n"
        "weights = {k: v for k, v in net.state_dict().items() if k != '_extra_state'}  # the description differs:\n"
        "assert all(torch.equal(v, state[k]) for k, v in weights.items()), 'weights not loaded'  # trained_with\n"
        "assert type(net).__module__.startswith('scripts.gdkvm'), type(net)\n"
        f"assert sys.modules['scripts'].__file__.startswith({str(bundle)!r}), sys.modules['scripts'].__file__\n"
        "with torch.no_grad():\n"
        "    logits = net(torch.rand(1, 1, 64, 64, 3))\n"
        "print('LOAD_OK', tuple(logits.shape))\n"
    )
    result = run([PYTHON, str(check)], cwd=tmp_path)
    assert "LOAD_OK (1, 2, 64, 64, 3)" in result.stdout
    assert len(state) > 0
