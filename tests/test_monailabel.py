"""MONAI Label end to end: serve the bundle from MONAI Label's own venv (tools/monailabel/start_server.sh, no override
of the network or the preprocessing) with held-out synthetic CAMUS-layout cines, the pydicom A4C DICOM cine and a
truncated file as the studies folder; check what an annotation team meets: labels equal to the bundle's own inference
(Dice against the truth reported), DICOM through the datastore and uploads, one-line errors with fitting statuses and
nothing saved for a failed request, a server that answers ``/info/`` during a burst of inferences, a studies folder
that cannot work refused at start-up, and fine-tuning.

Needs MONAI Label's venv (``make test-monailabel`` builds it): ``.venv-monailabel`` or ``$GDKVM_MONAILABEL_VENV``.
Serves ``bundle/models/model.pt`` when it describes itself (after ``make demo``: the Dice is then the trained model's),
else random weights of the small network (the comparisons hold all the same).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
START = REPO_ROOT / "tools" / "monailabel" / "start_server.sh"
NAME = "gdkvm_echo_segmentation"
VENV = Path(os.environ.get("GDKVM_MONAILABEL_VENV") or REPO_ROOT / ".venv-monailabel")
METADATA = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())
# the trained model served when it describes itself (make demo writes it; GDKVM_MONAILABEL_TEST_WEIGHTS names another)
DEMO_WEIGHTS = Path(os.environ.get("GDKVM_MONAILABEL_TEST_WEIGHTS") or REPO_ROOT / "bundle" / "models" / "model.pt")
TRAIN_ONLY = {"num_frames": 4, "batch_size": 1, "iterations_per_epoch": 2}  # /train knobs; nothing for inference
# One torch thread for the server and the bundle's own inference: on a CI machine shared with other jobs, torch's
# threads waiting for each other made single inferences of these small cines take up to 30 s instead of 0.3 s.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MAX_UPLOAD_MB = 4  # the test server's cap on a request body (GDKVM_MAX_UPLOAD_MB; the default is 512)

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


def multipart(files: dict) -> tuple[bytes, dict]:
    """A multipart body of ``{field: (filename, bytes)}`` or ``{field: text}`` fields, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, value in files.items():
        if isinstance(value, tuple):
            head = f'Content-Disposition: form-data; name="{field}"; filename="{value[0]}"\r\n'
            parts.append(f"--{boundary}\r\n{head}Content-Type: application/octet-stream\r\n\r\n".encode() + value[1])
        else:
            head = f'Content-Disposition: form-data; name="{field}"\r\n\r\n'
            parts.append(f"--{boundary}\r\n{head}".encode() + value.encode())
    body = b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def call(url: str, method: str = "GET", files: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """HTTP request -> (status, body); ``files`` = ``{field: (filename, bytes)}`` or ``{field: text}`` (multipart)."""
    data, headers = multipart(files) if files is not None else (None, {})
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def detail(body: bytes) -> str:
    return json.loads(body)["detail"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def self_describing_weights(work: Path) -> tuple[Path, bool]:
    """The demo's trained model when it describes itself, else random small-network weights trained "at" 64 x 64."""
    from scripts.checkpoint import read_description
    from scripts.gdkvm import GDKVM

    try:
        if DEMO_WEIGHTS.is_file() and read_description(DEMO_WEIGHTS) is not None:
            return DEMO_WEIGHTS, True
    except ValueError:
        pass
    torch.manual_seed(0)
    net = GDKVM(size="small", out_channels=2, trained_with={"labels": "lv", "spatial_size": 64, "keep_aspect": True})
    torch.save(net.state_dict(), work / "model.pt")
    return work / "model.pt", False


def start_server(studies: Path, work: Path, weights: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, **ONE_THREAD)
    env.update(
        MONAILABEL_VENV=str(VENV),
        MONAILABEL_APP=str(work / "app"),
        GDKVM_WEIGHTS=str(weights),
        GDKVM_OVERRIDES=json.dumps(TRAIN_ONLY),
        GDKVM_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
        MONAI_LABEL_SESSION_PATH=str(work / "sessions" / "store"),  # not the user's ~/.cache/monailabel/sessions
    )
    env.pop("PYTHONPATH", None)
    with open(work / "server.log", "ab") as log:  # the child has its own copy of the file descriptor
        return subprocess.Popen(
            ["bash", str(START), str(studies), str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def write_viewer_cines(studies: Path) -> None:
    """``clip.avi`` (72 x 88, 8 frames at 25 /s) and ``cine.mhd`` + ``cine.raw`` (64 x 56, 8 frames; 0.2 x 0.3 mm,
    an origin and rows running towards -y) in the studies folder."""
    import itk
    from fixtures_echo import phantom, write_avi

    image, _ = phantom(72, 88, 8, seed=1)
    write_avi(np.moveaxis(image, -1, 0), studies / "clip.avi", fps=25.0)
    image, _ = phantom(64, 56, 8, seed=4)
    cine = itk.image_from_array(np.ascontiguousarray(np.moveaxis(image, -1, 0)))  # (t, y, x)
    cine.SetSpacing([0.2, 0.3, 0.04])
    cine.SetOrigin([12.5, -3.0, 0.0])
    cine.SetDirection(itk.matrix_from_array(np.diag([1.0, -1.0, 1.0])))
    itk.imwrite(cine, str(studies / "cine.mhd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    """MONAI Label on 127.0.0.1: two held-out synthetic cines (ground truth in labels/final), one cropped to 64 x 52
    (a transposed label would show), the pydicom A4C DICOM cine, an AVI, a MetaImage (.mhd + .raw) and a truncated
    NIfTI. Killed afterwards."""
    from pydicom import examples

    from scripts.synthetic import write_camus_dataset

    work = tmp_path_factory.mktemp("monailabel")
    write_camus_dataset(work / "synthetic", 2, seed=7, size=64, progress=False)
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    cines = sorted((work / "synthetic").rglob("*_4CH_half_sequence.nii.gz"))
    truth = {}
    for cine in cines:  # images, and their ground truth as labels saved through MONAI Label would be
        shutil.copyfile(cine, studies / cine.name)
        gt = cine.with_name(cine.name.replace(".nii.gz", "_gt.nii.gz"))
        shutil.copyfile(gt, studies / "labels" / "final" / cine.name)
        truth[cine.name[: -len(".nii.gz")]] = gt
    source = nib.load(str(cines[0]))
    cropped = np.asanyarray(source.dataobj)[:, 6:58]
    nib.save(nib.Nifti1Image(cropped, source.affine, source.header), str(studies / "narrow_4CH.nii.gz"))
    shutil.copyfile(examples.get_path("ybr_color"), studies / "a4c_ybr_color.dcm")
    write_viewer_cines(studies)
    (studies / "truncated_4CH.nii.gz").write_bytes(cines[1].read_bytes()[:300])
    weights, trained = self_describing_weights(work)
    port = free_port()
    proc = start_server(studies, work, weights, port)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                status, body = call(f"{base}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{(work / 'server.log').read_text()[-4000:]}")
            time.sleep(1)
        yield {"base": base, "info": info, "studies": studies, "work": work, "truth": truth, "trained": trained}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def same_json(a: Any, b: Any) -> bool:
    """Equal JSON values, numbers to 1e-4 relative (pydicom 2 and 3 decode the same DICOM to within float rounding,
    which moves the network's confidence and the image checks in their last digits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b


def infer(server: dict, image_id: str, **kwargs) -> tuple[int, bytes]:
    return call(f"{server['base']}/infer/{NAME}?image={image_id}&output=image", method="POST", **kwargs)


def test_info_lists_the_bundle_with_its_channels(server: dict) -> None:
    model = server["info"]["models"][NAME]
    channel_def = METADATA["network_data_format"]["outputs"]["pred"]["channel_def"]
    expected = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    assert model["labels"] == expected
    assert model["type"] == "segmentation" and model["dimension"] == 3
    listed = json.loads(call(f"{server['base']}/datastore/?output=all")[1])["objects"]
    assert {"a4c_ybr_color", "narrow_4CH", *server["truth"]} <= set(listed)  # DICOM listed as NIfTI is


def test_served_as_trained_equals_the_bundles_own_inference(server: dict, record_property) -> None:
    """No override: MONAI Label's labels (NIfTI and DICOM through pydicom 2) equal ``inference.json``'s (pydicom 3)."""
    studies, work = server["studies"], server["work"]
    images = sorted(p for p in studies.iterdir() if p.is_file() and p.name.endswith((".nii.gz", ".dcm")))
    images = [p for p in images if not p.name.startswith("truncated")]
    for image_file in images:
        stem = image_file.name.split(".")[0]
        status, body = infer(server, stem)
        assert status == 200, body[-500:]
        (work / f"{stem}_label.nii.gz").write_bytes(body)
        label = nib.load(str(work / f"{stem}_label.nii.gz"))
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1}
        if image_file.name.endswith(".nii.gz"):
            image = nib.load(str(image_file))
            assert label.shape == image.shape
            np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
        else:  # the whole 320 x 240 frame of the DICOM, x first, 30 frames
            assert label.shape == (320, 240, 30)
    standalone = work / "standalone"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO_ROOT / "bundle/configs/inference.json"),
         "--bundle_root", str(REPO_ROOT / "bundle"), "--dataset_dir", str(studies), "--output_dir", str(standalone),
         "--datalist", repr([p.name for p in images]), "--write_clinical_report", "False", "--write_overlays", "False",
         "--ckpt_dir", str(work / "app" / "model" / NAME / "models")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, **ONE_THREAD),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for image_file in images:
        stem = image_file.name.split(".")[0]
        served = np.asarray(nib.load(str(work / f"{stem}_label.nii.gz")).dataobj)
        expected = np.asarray(nib.load(str(standalone / f"{stem}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(served, expected, err_msg=stem)
        # the result JSON carries the measurement of the bundle's seg.json: EF over accepted beats and the verdict
        status, body = call(f"{server['base']}/infer/{NAME}?image={stem}&output=json", method="POST")
        assert status == 200, body[-500:]
        measured = json.loads(body)["lv_measurement"]
        summary = json.loads((standalone / f"{stem}_seg.json").read_text())
        for key in ("quality", "beats", "beats_accepted", "ed_es_pairs", "period_frames", "ef_percent", "model"):
            assert same_json(measured[key], summary[key]), (stem, key, measured[key], summary[key])
        assert measured["quality"]["verdict"] in ("ok", "review", "reject") and len(measured["model"]["sha256"]) == 64
        assert measured["quality"]["checks"]["memory_checked_frames"], stem  # the app ran the memory check too
    scores = {}
    for stem, gt in server["truth"].items():
        served = np.asarray(nib.load(str(work / f"{stem}_label.nii.gz")).dataobj)
        scores[stem] = dice(served == 1, np.asarray(nib.load(str(gt)).dataobj) == 1)
    record_property("lv_dice_against_truth", scores)
    print(f"LV Dice against the truth ({'trained demo model' if server['trained'] else 'random weights'}): {scores}")
    if server["trained"]:
        assert min(scores.values()) > 0.8, scores


def test_dicom_reader_gives_the_same_cine_with_pydicom_2_and_3(server: dict, tmp_path) -> None:
    """MONAI Label's venv has pydicom 2.x, the project's pydicom 3: ``load_cine`` must read DICOM identically."""
    import pydicom
    from fixtures_echo import write_dicom

    from scripts.data import load_cine

    assert int(pydicom.__version__.split(".")[0]) >= 3
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 40, 48, 3), dtype=np.uint8)
    files = [server["studies"] / "a4c_ybr_color.dcm"]
    for kind in ("mono", "rgb", "jpeg"):
        files.append(write_dicom(tmp_path / f"{kind}.dcm", frames[..., 0] if kind == "mono" else frames, kind=kind,
                                 region=(2, 3, 45, 37)))  # fmt: skip
    script = (
        "import sys, numpy as np, pydicom; sys.path.insert(0, sys.argv[1]); from scripts.data import load_cine\n"
        "assert pydicom.__version__.startswith('2.'), pydicom.__version__\n"
        "np.savez(sys.argv[2], **{str(i): load_cine(f)[0] for i, f in enumerate(sys.argv[3:])})\n"
    )
    out = tmp_path / "pydicom2.npz"
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", script, str(REPO_ROOT / "bundle"), str(out), *map(str, files)],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as old:
        for i, f in enumerate(files):
            np.testing.assert_array_equal(old[str(i)], load_cine(f)[0], err_msg=f.name)


def test_dicom_upload_then_inference(server: dict) -> None:
    a4c = (server["studies"] / "a4c_ybr_color.dcm").read_bytes()
    status, body = call(f"{server['base']}/datastore/image", "PUT", files={"file": ("scanner_a4c.dcm", a4c)})
    assert status == 200, body
    image_id = json.loads(body)["image"]
    assert image_id == "scanner_a4c" and (server["studies"] / "scanner_a4c.dcm").is_file()
    status, body = infer(server, image_id)
    assert status == 200, body[-500:]
    status, one_off = call(  # a one-off cine sent with the request, not stored
        f"{server['base']}/infer/{NAME}?output=image", "POST", files={"file": ("one_off.dcm", a4c), "params": "{}"}
    )
    assert status == 200, one_off[-500:]
    for name, label in (("uploaded", body), ("one_off", one_off)):
        path = server["work"] / f"{name}_label.nii.gz"
        path.write_bytes(label)
        label_array = np.asarray(nib.load(str(path)).dataobj)
        assert label_array.shape == (320, 240, 30)  # the whole frame, x first, as for the file in the studies folder
        earlier = server["work"] / "a4c_ybr_color_label.nii.gz"
        if earlier.is_file():
            np.testing.assert_array_equal(label_array, np.asarray(nib.load(str(earlier)).dataobj))


def test_failures_reach_the_client_with_a_status_and_one_line(server: dict) -> None:
    base, studies = server["base"], server["studies"]
    labels_before = sorted(p.relative_to(studies) for p in (studies / "labels").rglob("*"))

    cases = []
    cases.append(("unknown image", *infer(server, "no_such_cine"), 404, "no_such_cine"))
    cases.append(("unknown model", *call(f"{base}/infer/no_such_model?image=narrow_4CH", "POST"), 404, "no_such_model"))
    cases.append(("no image", *call(f"{base}/infer/{NAME}", "POST"), 422, "no image"))
    truncated = infer(server, "truncated_4CH", files={"params": json.dumps({"save_label": True})})
    cases.append(("truncated cine, save_label", *truncated, 422, "truncated_4CH.nii.gz: not a readable nifti file"))
    one_off = call(f"{base}/infer/{NAME}?output=image", "POST", files={"file": ("sent.dcm", b"DICM but not DICOM")})
    cases.append(("cine sent with /infer", *one_off, 422, "sent.dcm: not a DICOM file"))
    upload = f"{base}/datastore/image"
    cases.append(("empty upload", *call(upload, "PUT", files={"file": ("empty.dcm", b"")}), 422, "empty.dcm: empty"))
    text = call(upload, "PUT", files={"file": ("notes.nii.gz", b"not a nifti at all")})
    cases.append(("corrupt upload", *text, 422, "notes.nii.gz: not a readable nifti file"))
    wrong = nib.Nifti1Image(np.zeros((10, 10, 3), np.uint8), np.eye(4))
    wrong_path = server["work"] / "wrong_label.nii.gz"
    nib.save(wrong, str(wrong_path))
    label_put = call(f"{base}/datastore/label?image=narrow_4CH&tag=final", "PUT",
                     files={"label": ("narrow_4CH.nii.gz", wrong_path.read_bytes())})  # fmt: skip
    cases.append(("label of the wrong shape", *label_put, 422, "label shape (10, 10, 3) differs"))
    for name, status, body, expected_status, expected_text in cases:
        reason = detail(body)
        print(f"{name}: HTTP {status}: {reason}")
        assert status == expected_status, (name, status, body)
        assert expected_text in reason and "\n" not in reason, (name, reason)

    assert sorted(p.relative_to(studies) for p in (studies / "labels").rglob("*")) == labels_before
    assert not (studies / "empty.dcm").exists() and not (studies / "notes.nii.gz").exists()
    listed = json.loads(call(f"{base}/datastore/?output=all")[1])["objects"]
    assert "empty" not in listed and "notes" not in listed


def test_server_answers_during_a_burst_of_inferences(server: dict, record_property) -> None:
    base = server["base"]
    images = sorted(server["truth"]) + ["narrow_4CH"]
    burst = [images[i % len(images)] for i in range(20)]
    infer(server, images[0])  # warm

    def one(image_id: str) -> tuple[int, float]:
        start = time.monotonic()
        status, _ = infer(server, image_id, timeout=300)
        return status, time.monotonic() - start

    info_latencies = []
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(one, image_id) for image_id in burst]
        time.sleep(0.5)
        while not all(f.done() for f in futures):
            t0 = time.monotonic()
            status, _ = call(f"{base}/info/", timeout=30)
            info_latencies.append(time.monotonic() - t0)
            assert status == 200
            time.sleep(0.5)
        results = [f.result() for f in futures]
    total = time.monotonic() - start
    latencies = sorted(seconds for _, seconds in results)
    summary = {
        "requests": len(results),
        "total_s": round(total, 2),
        "throughput_per_s": round(len(results) / total, 2),
        "latency_min_s": round(latencies[0], 2),
        "latency_median_s": round(latencies[len(latencies) // 2], 2),
        "latency_max_s": round(latencies[-1], 2),
        "info_checks": len(info_latencies),
        "info_max_s": round(max(info_latencies), 3),
    }
    record_property("burst", summary)
    print(f"burst of 20 /infer: {summary}")
    assert [status for status, _ in results] == [200] * 20
    assert len(info_latencies) >= 3 and max(info_latencies) < 1.0, info_latencies


def test_a_studies_tree_is_refused_at_start_up(server: dict) -> None:
    """A CAMUS tree (cines in one folder per patient) would be an empty datastore: refused before the server starts."""
    tree, work = server["work"] / "synthetic", server["work"] / "refused"
    work.mkdir()
    proc = start_server(tree, work, server["work"] / "app" / "model" / NAME / "models" / "model.pt", free_port())
    assert proc.wait(timeout=120) != 0
    log = (work / "server.log").read_text()
    assert f"studies folder {tree}: its " in log, log[-2000:]
    assert "lie in 2 subfolder(s) (database_nifti/patient0001/, ...)" in log, log[-2000:]
    assert "Traceback" not in log and not (work / "app").exists()


LABEL_THROUGH_CLIENT = r"""
import json, sys
from monailabel.client.client import MONAILabelClient

base, cine, image_id, label = sys.argv[1:5]
client = MONAILabelClient(base)
print(json.dumps({"upload": client.upload_image(cine, image_id=image_id),
                  "save_label": client.save_label(image_id, label, tag="final")}))
"""


def train(server: dict, **request) -> tuple[int, dict]:
    body = json.dumps({"max_epochs": 1, "device": "cpu", "multi_gpu": False, **request}).encode()
    req = urllib.request.Request(
        f"{server['base']}/train/{NAME}?run_sync=true", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_train_on_the_teams_dicom_says_what_happened(server: dict) -> None:
    """A DICOM cine uploaded through MONAI Label's client and labelled on two frames (ED and ES drawn, the rest
    unannotated) joins the NIfTI cines in ``/train``; the answer lists the cines and their labelled frames, says how it
    validated (val_split 0: on the training cines, said so) and whether the served weights were replaced, which the
    weights file confirms; a replaced file stays readable (0644); the server then infers with the weights it has."""
    from pydicom import examples

    weights = server["work"] / "app" / "model" / NAME / "models" / "model.pt"
    label = np.zeros((320, 240, 30), np.uint8)  # the DICOM's whole frame, x first, as /infer returns it
    yy, xx = np.mgrid[:320, :240]
    for frame, (ry, rx) in ((0, (55, 35)), (15, (45, 28))):  # ED and ES, an ellipse inside the ultrasound region
        label[..., frame] = (((yy - 150) / ry) ** 2 + ((xx - 120) / rx) ** 2 <= 1).astype(np.uint8)
    label_file = server["work"] / "train_a4c_label.nii.gz"
    nib.save(nib.Nifti1Image(label, np.diag([-0.5, -0.5, 0.03, 1.0])), str(label_file))
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", LABEL_THROUGH_CLIENT, server["base"], str(examples.get_path("ybr_color")),
         "train_a4c", str(label_file)],
        capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (server["studies"] / "labels" / "final" / "train_a4c.nii.gz").is_file()

    before = weights.read_bytes()
    start = time.monotonic()
    status, answer = train(server, val_split=0.0)
    print(f"/train val_split 0.0 ({time.monotonic() - start:.0f} s): {json.dumps(answer)}")
    assert status == 200, answer
    cines = {c["image"]: c["labelled_frames"] for c in answer["cines"]}
    assert cines["train_a4c.dcm"] == 2, cines
    assert all(cines[f"{stem}.nii.gz"] > 2 for stem in server["truth"]), cines
    assert answer["validation"]["on"] == "training cines" and "measures fit" in answer["validation"]["note"]
    assert answer["validation"]["before_training"] is not None and answer["epochs"] == 1
    assert answer["weights_replaced"] == (weights.read_bytes() != before), answer
    assert answer["weights"].startswith("replaced" if answer["weights_replaced"] else "kept: no epoch beat")
    assert weights.stat().st_mode & 0o777 == 0o644, oct(weights.stat().st_mode)

    status, answer = train(server, val_split=0.5)
    print(f"/train val_split 0.5: {json.dumps(answer)}")
    assert status == 200 and answer["validation"]["on"] == "split" and answer["validation"]["cines"], answer
    assert len(answer["validation"]["cines"]) + 1 <= len(answer["cines"])
    status, body = infer(server, "train_a4c")
    assert status == 200, body[-500:]


def test_corrections_sent_with_infer_carry_through_the_cine(server: dict) -> None:
    """``infer(..., label_in=...)`` with ``params`` ``corrected_frames``: those frames come back exactly as drawn, the
    rest segmented with them as previous masks; frames outside the cine are refused with one line."""
    stem = sorted(server["truth"])[0]
    truth_file = server["truth"][stem]
    truth = np.asarray(nib.load(str(truth_file)).dataobj)
    last = truth.shape[-1] - 1
    drawn = server["work"] / "drawn.nii.gz"
    nib.save(nib.Nifti1Image((truth == 1).astype(np.uint8), nib.load(str(truth_file)).affine), str(drawn))
    sent = ("drawn.nii.gz", drawn.read_bytes())
    params = json.dumps({"corrected_frames": [0, last]})
    status, body = infer(server, stem, files={"label": sent, "params": params})
    assert status == 200, body[-500:]
    result = server["work"] / "corrected_label.nii.gz"
    result.write_bytes(body)
    label = np.asarray(nib.load(str(result)).dataobj)
    np.testing.assert_array_equal(label[..., [0, last]], (truth[..., [0, last]] == 1).astype(np.uint8))
    status, body = infer(server, stem, files={"label": sent, "params": json.dumps({"corrected_frames": [999]})})
    assert status == 422 and "outside the cine" in detail(body), body[-500:]
    myocardium = server["work"] / "myocardium.nii.gz"  # class 2 drawn for an LV-only model: refused, not a 500
    nib.save(nib.Nifti1Image(2 * (truth == 1).astype(np.uint8), nib.load(str(truth_file)).affine), str(myocardium))
    sent = ("myocardium.nii.gz", myocardium.read_bytes())
    status, body = infer(server, stem, files={"label": sent, "params": params})
    assert status == 422 and "labels [2] are not classes of this model" in detail(body), body[-500:]


def raw(server: dict, method: str, target: str, body: bytes | None = None, headers: dict | None = None,
        chunks: list[bytes] | None = None) -> tuple[int, bytes]:  # fmt: skip
    """One request with the target sent exactly as written (no client-side normalisation of ``..``); ``chunks``
    sends the body with chunked transfer encoding (no Content-Length)."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(server["base"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        if chunks is not None:
            conn.request(method, target, body=iter(chunks), headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (but the top-level entries ``skip``): relative path -> (mode, bytes)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in skip
    }


@pytest.fixture
def outside(server: dict) -> Iterator[tuple[Path, set[str]]]:
    """A folder beside the studies folder with a real cine and a label in it: no request may read, write or delete
    there. Yields the folder and a set the test fills with the studies files it may change (relative paths);
    afterwards nothing else beside or in the studies folder changed (bytes and modes compared)."""
    work, studies = server["work"], server["studies"]
    folder = work / "outside"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(studies / "narrow_4CH.nii.gz", folder / "keep.nii.gz")
    shutil.copyfile(studies / "a4c_ybr_color.dcm", folder / "keep.dcm")
    (folder / "final").mkdir(exist_ok=True)
    shutil.copyfile(studies / "narrow_4CH.nii.gz", folder / "final" / "narrow_4CH.nii.gz")
    before_work = snapshot(work, skip=("app", "server.log", "studies"))
    before_studies = snapshot(studies, skip=("datastore_v2.json", ".lock"))
    allowed: set[str] = set()
    yield folder, allowed
    assert snapshot(work, skip=("app", "server.log", "studies")) == before_work, "a file beside the studies changed"
    after_studies = snapshot(studies, skip=("datastore_v2.json", ".lock"))
    changed = sorted(
        k for k in set(before_studies) | set(after_studies) if before_studies.get(k) != after_studies.get(k)
    )
    assert set(changed) <= server.get("allowed_changes", set()), changed


def test_nobody_climbs_out_of_the_datastore_raw_http(server: dict, outside: tuple[Path, set[str]]) -> None:
    """Every datastore endpoint (PUT/GET/HEAD/DELETE image and label, their info, upload, session, /infer) refuses a
    name that would leave the studies folder with 422 and one line naming the value; the files outside stay as they
    were (the fixture compares them byte for byte, modes included), nothing is added to the studies folder."""
    from urllib.parse import quote

    outside, _ = outside
    absolute = str(outside / "keep")
    cine = (server["studies"] / "a4c_ybr_color.dcm").read_bytes()
    label_bytes = (server["studies"] / "labels" / "final" / f"{sorted(server['truth'])[0]}.nii.gz").read_bytes()
    upload, upload_headers = multipart({"file": ("evil.dcm", cine), "params": "{}"})
    put_label, label_headers = multipart({"label": ("label.nii.gz", label_bytes), "params": "{}"})
    q = quote
    cases = [  # (method, target, body, headers, status, text the one line must hold)
        ("PUT", f"/datastore/?image={q('../outside/evil')}", upload, upload_headers, 422, "image id '../outside/evil'"),
        ("PUT", f"/datastore/image?image={q(absolute)}", upload, upload_headers, 422, f"image id {absolute!r}"),
        ("PUT", f"/datastore/image?image={q('evil' + chr(0))}", upload, upload_headers, 422, "NUL"),
        ("PUT", f"/datastore/image?image={'x' * 300}", upload, upload_headers, 422, "too long (300 bytes"),
        ("PUT", f"/datastore/image?image={q('..')}", upload, upload_headers, 422, "image id '..'"),
        ("PUT", f"/datastore/image?image={q('.datastore_v2')}", upload, upload_headers, 422, "starts with '.'"),
        ("PUT", "/datastore/image", *multipart({"file": ("../..", cine)}), 422, "upload name '../..'"),
        ("PUT", "/datastore/image", *multipart({"file": ("datastore_v2.json", cine)}), 422, "is not a cine's"),
        (
            "PUT",
            f"/datastore/label?image=narrow_4CH&tag={q('../../outside')}",
            put_label,
            label_headers,
            422,
            "label tag '../../outside'",
        ),  # fmt: skip
        (
            "PUT",
            f"/datastore/label?image={q('../outside/keep')}&tag=final",
            put_label,
            label_headers,
            422,
            "image id '../outside/keep'",
        ),  # fmt: skip
        (
            "PUT",
            "/datastore/label?image=narrow_4CH&tag=final",
            *multipart({"label": ("x/..", label_bytes)}),
            422,
            "upload name 'x/..'",
        ),  # fmt: skip
        ("GET", f"/datastore/image?image={q('../outside/keep')}", None, None, 422, "image id '../outside/keep'"),
        ("HEAD", f"/datastore/image?image={q(absolute)}", None, None, 422, None),
        ("GET", f"/datastore/image/info?image={q('../outside/keep')}", None, None, 422, "image id"),
        ("PUT", f"/datastore/image/info?image={q('../outside/keep')}", *multipart({"info": "{}"}), 422, "image id"),
        ("GET", f"/datastore/label?label={q('../outside/keep')}&tag=final", None, None, 422, "label id"),
        ("GET", f"/datastore/label?label=narrow_4CH&tag={q('../../outside/final')}", None, None, 422, "label tag"),
        ("HEAD", f"/datastore/label?image=narrow_4CH&tag={q('../x')}", None, None, 422, None),
        ("GET", f"/datastore/label/info?label=narrow_4CH&tag={q('/tmp')}", None, None, 422, "label tag '/tmp'"),
        ("PUT", f"/datastore/label/info?label=narrow_4CH&tag={q('..')}", *multipart({"info": "{}"}), 422, "label tag"),
        ("DELETE", f"/datastore/?id={q('../outside/keep')}", None, None, 422, "image id '../outside/keep'"),
        ("DELETE", f"/datastore/image?id={q(absolute)}", None, None, 422, "image id"),
        ("DELETE", "/datastore/image?id=", None, None, 422, "image id '': empty"),
        ("DELETE", "/datastore/image?id=no_such_cine", None, None, 404, "image 'no_such_cine': not in the datastore"),
        ("DELETE", f"/datastore/label?id=narrow_4CH&tag={q('../../outside/final')}", None, None, 422, "label tag"),
        ("DELETE", f"/datastore/label?id={q('../outside/keep')}&tag=final", None, None, 422, "'../outside/keep'"),
        ("DELETE", "/datastore/label?id=narrow_4CH&tag=final", None, None, 404, "label 'narrow_4CH' tag 'final'"),
        ("GET", "/session/..", None, None, 422, "session id '..'"),
        ("DELETE", "/session/..", None, None, 422, "session id '..'"),
        ("DELETE", f"/session/{q('../../..', safe='')}", None, None, 422, "session id"),
        ("PUT", "/session/?uncompress=true", *multipart({"files": ("cines.tar", b"x" * 1024)}), 422, "uncompress"),
        ("PUT", "/session/", *multipart({"files": ("..", cine)}), 422, "upload name '..'"),
        ("PUT", f"/model/{NAME}", *multipart({"file": ("model.pt", b"not weights")}), 403, "MONAI_LABEL_AUTH_ENABLE"),
        ("DELETE", f"/model/{NAME}", None, None, 403, "served weights"),
        ("POST", f"/infer/{NAME}?image={q('../outside/keep')}&output=image", None, None, 422, "image id"),
        ("POST", f"/infer/{NAME}?image={q(absolute + '.nii.gz')}&output=image", None, None, 422, "image id"),
        ("POST", f"/infer/{NAME}?image=narrow_4CH&session_id={q('../x')}", None, None, 422, "session id"),
        (
            "POST",
            f"/infer/{NAME}?image=narrow_4CH&output=json",
            *multipart({"params": json.dumps({"save_label": True, "label_tag": "../../outside"})}),
            422,
            "label tag '../../outside'",
        ),  # fmt: skip
    ]
    failures = []
    for method, target, body, headers, status, text in cases:
        got, answer = raw(server, method, target, body, headers)
        line = json.loads(answer)["detail"] if answer and answer.startswith(b"{") else answer.decode(errors="replace")
        print(f"{method} {target[:90]}: HTTP {got}: {line}")
        if got != status or (text is not None and (text not in line or "\n" in line)):
            failures.append((method, target[:120], got, line))
    assert not failures, failures
    for kept in ("keep.nii.gz", "keep.dcm", "final/narrow_4CH.nii.gz"):
        assert (outside / kept).is_file()
    listed = json.loads(call(f"{server['base']}/datastore/?output=all")[1])["objects"]
    assert not [image_id for image_id in listed if "/" in image_id or image_id.startswith(".")], listed


def test_uploads_are_capped_in_size(server: dict, outside: tuple[Path, set[str]]) -> None:
    """A body over GDKVM_MAX_UPLOAD_MB is refused with 413 and one line naming the cap: at once when its length is
    announced, and while it streams in when it is not (chunked); nothing is stored."""
    big = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    body, headers = multipart({"file": ("huge.dcm", big)})
    status, answer = raw(server, "PUT", "/datastore/image?image=huge", body, headers)
    assert status == 413, answer[-300:]
    assert f"capped at {MAX_UPLOAD_MB} MB (GDKVM_MAX_UPLOAD_MB)" in json.loads(answer)["detail"]
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    status, answer = raw(server, "PUT", "/datastore/image?image=huge", headers=headers, chunks=chunks)
    assert status == 413, answer[-300:]
    assert "GDKVM_MAX_UPLOAD_MB" in json.loads(answer)["detail"]
    assert not list(server["studies"].glob("huge*"))


CLIENT_SCRIPT = r"""
import json, re, sys
from monailabel.client.client import MONAILabelClient, MONAILabelClientException

base, model, outside, label_file, studies_cine = sys.argv[1:6]
client = MONAILabelClient(base)
calls = {
    "upload, climbing id": lambda: client.upload_image(f"{outside}/keep.dcm", image_id="../outside/evil"),
    "upload, absolute id": lambda: client.upload_image(f"{outside}/keep.dcm", image_id=f"{outside}/evil"),
    "save_label, climbing tag": lambda: client.save_label("narrow_4CH", label_file, tag="../../outside"),
    "save_label, climbing image": lambda: client.save_label("../outside/keep", label_file, tag="final"),
    "download_label, climbing id": lambda: client.download_label("../outside/final/narrow_4CH", "final"),
    "download_label, climbing tag": lambda: client.download_label("narrow_4CH", "../../outside/final"),
    "infer, climbing id": lambda: client.infer(model, "../outside/keep", {}),
    "infer, absolute path": lambda: client.infer(model, f"{outside}/keep.nii.gz", {}),
    "get_session ..": lambda: client.get_session(".."),
    "remove_session ..": lambda: client.remove_session(".."),
    "upload, good id with a space": lambda: client.upload_image(studies_cine, image_id="client upload 01"),
}
results = {}
for name, run in calls.items():
    try:
        out = run()
        results[name] = [200, json.dumps(out)[:300]]
    except MONAILabelClientException as e:
        found = re.match(r"Status: (\d+); Response: (.*)", str(e.msg), re.S)
        status = e.status_code or (int(found.group(1)) if found else None)
        body = found.group(2) if found else str(e.msg)
        try:
            body = json.loads(body)["detail"]
        except Exception:
            pass
        results[name] = [status, body]
print(json.dumps(results))
"""


def test_nobody_climbs_out_of_the_datastore_through_the_client(server: dict, outside: tuple[Path, set[str]]) -> None:
    """The same refusals through MONAI Label's own client (``monailabel.client.MONAILabelClient``, as 3D Slicer's
    module uses it, run in MONAI Label's venv): upload, save_label, download_label, infer and sessions with ids or
    tags that climb out or are absolute paths -> 422 naming the value; a good id with a space is stored in the
    studies folder (and deleted again), the files outside stay as they were."""
    folder, _ = outside
    label_file = server["studies"] / "labels" / "final" / f"{sorted(server['truth'])[0]}.nii.gz"
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", CLIENT_SCRIPT, server["base"], NAME, str(folder), str(label_file),
         str(server["studies"] / "a4c_ybr_color.dcm")],
        capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (status, text) in results.items():
        print(f"client {name}: {status}: {text}")
    expected = {
        "upload, climbing id": "image id '../outside/evil'",
        "upload, absolute id": f"image id '{folder}/evil'",
        "save_label, climbing tag": "label tag '../../outside'",
        "save_label, climbing image": "image id '../outside/keep'",
        "download_label, climbing id": "label id '../outside/final/narrow_4CH'",
        "download_label, climbing tag": "label tag '../../outside/final'",
        "infer, climbing id": "image id '../outside/keep'",
        "infer, absolute path": f"image id '{folder}/keep.nii.gz'",
        "get_session ..": "session id '..'",
        "remove_session ..": "session id '..'",
    }
    for name, text in expected.items():
        status, line = results[name]
        assert status == 422 and text in str(line), (name, status, line)
    assert results["upload, good id with a space"][0] == 200, results["upload, good id with a space"]
    stored = server["studies"] / "client upload 01.dcm"
    assert stored.is_file() and stored.read_bytes() == (server["studies"] / "a4c_ybr_color.dcm").read_bytes()
    status, body = call(f"{server['base']}/datastore/image?id=client%20upload%2001", "DELETE")
    assert status == 200, body
    assert not stored.exists()


def test_what_the_annotator_opens_lines_up_with_the_label(server: dict, tmp_path: Path) -> None:
    """For a DICOM, an AVI, a NIfTI and a MetaImage (.mhd + .raw) cine of the studies folder, the image that
    ``GET /datastore/image`` hands out (saved under the name the image info gives, as 3D Slicer's module does) and the
    label ``/infer`` returns read with ITK (as Slicer reads them) with the same size, spacing, origin and direction;
    the DICOM's in the ultrasound region's millimetres (ITK reads the file itself with 1 mm pixels), which the
    measurement (``lv_measurement``) uses too. A label drawn on that image and written by ITK is taken by
    ``save_label``, lies on the same pixels of the cine for ``/train``'s loader, and sent with ``/infer`` as
    corrections comes back exactly as drawn."""
    from fixtures_echo import annotate_as_slicer, assert_same_geometry, itk_view

    from scripts.data import load_cine
    from scripts.serving import LoadLabelledCined

    base, studies = server["base"], server["studies"]
    frames = (0, 3)
    for image_id, source_name in (("a4c_ybr_color", "a4c_ybr_color.dcm"), ("clip", "clip.avi"),
                                  ("narrow_4CH", "narrow_4CH.nii.gz"), ("cine", "cine.mhd")):  # fmt: skip
        status, body = call(f"{base}/datastore/image/info?image={image_id}")
        assert status == 200, body
        info = json.loads(body)
        name = info["name"]
        assert name == f"{image_id}.nii.gz", info  # a NIfTI for each: the copy, or (narrow_4CH) the file itself
        assert info.get("source_name", name) == source_name
        status, handed = call(f"{base}/datastore/image?image={image_id}")
        assert status == 200, handed[-300:]
        (tmp_path / name).write_bytes(handed)
        status, label = infer(server, image_id)
        assert status == 200, label[-500:]
        (tmp_path / f"{image_id}_label.nii.gz").write_bytes(label)
        image_view, label_view = itk_view(tmp_path / name), itk_view(tmp_path / f"{image_id}_label.nii.gz")
        assert_same_geometry(image_view, label_view)
        source = studies / source_name
        _, meta = load_cine(source)
        height, width, length = meta["original_shape"]
        np.testing.assert_array_equal(image_view["size"], [width, height, length])
        if image_id == "a4c_ybr_color":
            np.testing.assert_allclose(itk_view(source)["spacing"], [1, 1, 1])  # why the DICOM is not handed out
            np.testing.assert_allclose(image_view["spacing"][:2], meta["spacing"][::-1], rtol=1e-5)
            assert abs(image_view["spacing"][0] - 1.0) > 0.01  # the region's 1.02 mm, not ITK's 1 mm
        if image_id == "cine":
            assert_same_geometry(image_view, itk_view(source))  # the .mhd's own geometry

        crop = meta.get("crop") or (0, height, 0, width)
        rows = slice(crop[0] + (crop[1] - crop[0]) // 3, crop[0] + (crop[1] - crop[0]) // 2)
        cols = slice(crop[2] + (crop[3] - crop[2]) // 3, crop[2] + (crop[3] - crop[2]) // 2)
        drawn = tmp_path / f"{image_id}_drawn.nii.gz"
        drawing = annotate_as_slicer(tmp_path / name, drawn, rows, cols, frames)
        status, body = call(
            f"{base}/datastore/label?image={image_id}&tag=annotator", "PUT",
            files={"label": (f"{image_id}.nii.gz", drawn.read_bytes()), "params": "{}"},
        )  # fmt: skip
        assert status == 200, body[-300:]
        saved = studies / "labels" / "annotator" / f"{image_id}.nii.gz"
        item = LoadLabelledCined(labels="lv")({"image": str(source), "label": str(saved)})
        expected = np.moveaxis(drawing, 0, -1)[crop[0] : crop[1], crop[2] : crop[3]]
        np.testing.assert_array_equal(item["label"][0].numpy(), expected[..., frames[0] : frames[1] + 1])

        sent = (f"{image_id}_drawn.nii.gz", drawn.read_bytes())
        status, body = infer(
            server, image_id, files={"label": sent, "params": json.dumps({"corrected_frames": frames})}
        )
        assert status == 200, body[-500:]
        (tmp_path / f"{image_id}_corrected.nii.gz").write_bytes(body)
        corrected = itk_view(tmp_path / f"{image_id}_corrected.nii.gz")
        assert_same_geometry(image_view, corrected)
        np.testing.assert_array_equal(corrected["array"][list(frames)] == 1, drawing[list(frames)] == 1, image_id)
