"""The MONAI Deploy application (tools/monai_deploy): ultrasound DICOM cines in, one DICOM SR per cine out.

The application runs as a subprocess in its own venv (``make monai-deploy-env``; ``$GDKVM_MONAI_DEPLOY_VENV`` or
``~/.cache/gdkvm-echo/venv-monai-deploy``), on a folder with the real apical cine that ships with pydicom, a synthetic
ultrasound cine and bad inputs. Models are made here: a TorchScript of the stand-in network that draws a beating LV
(tests/fake_lv_network.py; an untrained GDKVM gives no measurable LV, so no SR) and a randomly initialised small GDKVM,
each saved with the description of a small LV model trained at 64 x 64.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from fake_lv_network import BeatingLV, run_bundle_inference
from fixtures_echo import phantom, write_dicom
from pydicom import examples
from test_dicom_sr import check_sr

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools" / "monai_deploy"))

from model_folder import ModelRefused, save_model_ts, served_model  # noqa: E402

from scripts.gdkvm import GDKVM  # noqa: E402

DEFAULT_VENV = Path.home() / ".cache" / "gdkvm-echo" / "venv-monai-deploy"
VENV = Path(os.environ.get("GDKVM_MONAI_DEPLOY_VENV") or DEFAULT_VENV)
APP = REPO_ROOT / "tools" / "monai_deploy" / "app.py"
NODE = REPO_ROOT / "tools" / "monai_deploy" / "dicom_node.py"
TRAINED_WITH = {"labels": "lv", "spatial_size": 64, "keep_aspect": True}

pytestmark = pytest.mark.skipif(
    "GDKVM_MONAI_DEPLOY_VENV" not in os.environ and not DEFAULT_VENV.exists(),
    reason=f"MONAI Deploy venv not found at {DEFAULT_VENV}: run `make monai-deploy-env` or set GDKVM_MONAI_DEPLOY_VENV",
)

# bad input file -> the problem its one line must name
BAD = {
    "ct.dcm": r"not an ultrasound image \(Modality CT, expected US\)",
    "ct_cine.dcm": r"not an ultrasound image \(Modality CT, expected US\)",
    "oneframe.dcm": r"a single 2D image, expected a multi-frame cine",
    "nopixels.dcm": r"DICOM without pixel data",
    "notes.txt": r"not a DICOM file \(no DICOM header\)",
}


def run_app(inputs: Path, out: Path, model_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [str(VENV / "bin" / "python"), str(APP), "-i", str(inputs), "-o", str(out), "-m", str(model_dir)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=out.parent)


def small_gdkvm(**trained_with) -> GDKVM:
    return GDKVM(size="small", out_channels=2, trained_with={**TRAINED_WITH, **trained_with}).eval()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two good cines (the real apical one, a synthetic one in a subfolder) and one file per kind of bad input."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(examples.get_path("ybr_color"), folder / "apical.dcm")
    (folder / "study").mkdir()
    synthetic = write_dicom(folder / "study" / "IM0001.dcm", np.moveaxis(phantom(60, 72, 14, seed=2)[0], -1, 0),
                            region=(8, 4, 67, 55))  # fmt: skip
    ds = pydicom.dcmread(synthetic)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "S1", "ACC42", "20260101", "101500"
    ds.save_as(synthetic, enforce_file_format=True)
    frames = np.moveaxis(phantom(32, 40, 4, seed=7)[0], -1, 0)
    ct = write_dicom(folder / "ct.dcm", frames[:1])  # a single-frame CT image
    ds = pydicom.dcmread(ct)
    ds.Modality, ds.SOPClassUID = "CT", pydicom.uid.CTImageStorage
    del ds.NumberOfFrames
    ds.save_as(ct)
    ds = pydicom.dcmread(write_dicom(folder / "ct_cine.dcm", frames))  # a multi-frame cine, but CT
    ds.Modality = "CT"
    ds.save_as(folder / "ct_cine.dcm")
    write_dicom(folder / "oneframe.dcm", frames[:1])
    ds = pydicom.dcmread(write_dicom(folder / "nopixels.dcm", frames))
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    (folder / "notes.txt").write_text("a letter, not an image\n")
    return folder


@pytest.fixture(scope="module")
def beating_model(tmp_path_factory) -> Path:
    """model.ts of the stand-in network that draws a beating LV, described as a small LV model at 64 x 64."""
    folder = tmp_path_factory.mktemp("beating_model")
    save_model_ts(torch.jit.script(BeatingLV()), small_gdkvm().description(), folder)
    return folder


@pytest.fixture(scope="module")
def app_run(inputs: Path, beating_model: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("run") / "out"
    return run_app(inputs, out, beating_model), out


def test_one_sr_per_good_cine_with_the_json_values(app_run, inputs: Path) -> None:
    """The real and the synthetic cine each get an SR whose values equal the JSON report's, that references the
    source's SOP Instance UID and frames, and that dciodvfy accepts (check_sr of tests/test_dicom_sr.py); plus the
    JSON report, label and overlays that inference.json writes; nothing else, no temporary files."""
    result, out = app_run
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_sr.dcm")) == [
        "apical_sr.dcm",
        "study/IM0001_sr.dcm",
    ], result.stderr[-3000:]
    for stem, source in (("apical", inputs / "apical.dcm"), ("study/IM0001", inputs / "study" / "IM0001.dcm")):
        check_sr(out / f"{stem}_sr.dcm", out / f"{stem}_seg.json", out / f"{stem}_report.json", source)
        summary = json.loads((out / f"{stem}_seg.json").read_text())
        assert summary["sr_reason"] is None and summary["input"] == str(source)
        assert set(summary["outputs"]) >= {"label", "sr", "json", "png", "gif"}
        for name in summary["outputs"].values():
            assert (out / stem).parent.joinpath(name).stat().st_size > 0
    assert not [p for p in out.rglob(".*")], "temporary files left"
    assert re.search(
        r"7 input\(s\): 2 SR\(s\) written \(\d ok, \d review\), 0 rejected, 5 failed otherwise", result.stdout
    )
    for line in [line for line in result.stdout.splitlines() if "_sr.dcm" in line]:  # the verdict with every EF
        assert re.search(r"\d+ of \d+ beat\(s\) accepted\), verdict (ok|review)", line), line


def test_bad_inputs_one_line_each_and_nonzero_exit(app_run, inputs: Path) -> None:
    """Each bad file: exactly one line naming it and its problem, no output; the good ones were still processed."""
    result, out = app_run
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("input failed: ")]
    assert len(lines) == len(BAD), lines
    for name, problem in BAD.items():
        mine = [line for line in lines if line.startswith(f"input failed: {inputs / name}: ")]
        assert len(mine) == 1 and re.search(problem, mine[0]), (name, lines)
        assert not list(out.glob(f"{Path(name).stem}*")), name
    assert (out / "apical_sr.dcm").is_file() and (out / "study" / "IM0001_sr.dcm").is_file()


def test_same_results_as_the_bundle_inference_command(app_run, inputs: Path, tmp_path: Path) -> None:
    """The app's label and JSON equal those of ``inference.json --write_sr True`` with the same network and settings."""
    _, out = app_run
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(inputs / "apical.dcm", data / "apical.dcm")
    bundle_out = tmp_path / "bundle_out"
    result = run_bundle_inference(data, bundle_out, tmp_path, "--keep_aspect", "True", "--write_sr", "True")
    assert result.returncode == 0, result.stderr[-3000:]
    mine, theirs = (json.loads((d / "apical_seg.json").read_text()) for d in (out, bundle_out))
    keys = ("ef_percent", "edv_ml", "esv_ml", "ed_es_pairs", "area_mm2", "crop", "spacing_mm", "outputs", "beats")
    for key in (*keys, "ef_sd", "beats_accepted", "quality"):
        assert mine[key] == theirs[key], key
    a, b = (nib.load(d / "apical_seg.nii.gz") for d in (out, bundle_out))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)


def test_a_gdkvm_from_ckpt_export_runs_through_the_app(inputs: Path, tmp_path: Path) -> None:
    """A (random, untrained) small GDKVM exported by ``python -m monai.bundle ckpt_export`` (no description inside),
    served from a folder with the model.pt it came from: the app takes the trained settings from model.pt (same
    tensors) and runs it through the SDK inference operator on the real cine; with random weights there is no
    measurable LV, so the one line says that no SR can be made (not that the inference failed), and nothing is
    written. The same model.ts beside other weights, or alone, is refused."""
    model_dir = tmp_path / "gdkvm"
    model_dir.mkdir()
    torch.manual_seed(0)
    torch.save(small_gdkvm().state_dict(), model_dir / "model.pt")
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath",
               str(model_dir / "model.ts"), "--ckpt_file", str(model_dir / "model.pt"), "--meta_file",
               "bundle/configs/metadata.json", "--config_file", "bundle/configs/inference.json", "--ckpt_dir",
               str(model_dir)]  # fmt: skip
    export = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    assert served_model(model_dir).source.endswith("(same weights as model.ts)")
    out = tmp_path / "out"
    result = run_app(inputs / "apical.dcm", out, model_dir)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "'spatial_size': 64" in result.stderr  # "serving <model.ts> as trained: {...}"
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("input failed: ")]
    assert line.startswith(f"input failed: {inputs / 'apical.dcm'}: no DICOM SR: verdict reject: an LV is"), line
    assert "1 rejected" in result.stdout
    assert not out.exists() or not list(out.iterdir())

    torch.save(small_gdkvm().state_dict(), model_dir / "model.pt")  # other random weights, same description
    with pytest.raises(ModelRefused, match="model.pt beside it holds other weights"):
        served_model(model_dir)
    (model_dir / "model.pt").unlink()
    with pytest.raises(ModelRefused, match="does not say what it was trained with"):
        served_model(model_dir)
    (model_dir / "model.ts").unlink()
    with pytest.raises(ModelRefused, match="no model.ts"):
        served_model(model_dir)
    # a model.ts exported before the warm start (a scripted module without it) would segment the first frame
    # otherwise than the bundle: refused, saying so
    save_model_ts(torch.jit.script(torch.nn.Identity()), small_gdkvm().description(), model_dir)
    with pytest.raises(ModelRefused, match="exported before bundle 0.8.0.*re-export"):
        served_model(model_dir)


def test_a_model_that_would_not_be_served_as_trained_is_refused(inputs: Path, beating_model: Path, tmp_path) -> None:
    """model.ts without its description (e.g. from ckpt_export) would run with inference.json's defaults (base,
    256 x 256): refused, exit status 2, nothing written. So are a model.pt beside it that describes another model, and
    an inference.json in model.ts that hard-codes another input size."""
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.jit.save(torch.jit.script(BeatingLV()), str(bare / "model.ts"))
    out = tmp_path / "out"
    result = run_app(inputs / "apical.dcm", out, bare)
    assert result.returncode == 2, result.stderr[-3000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("model refused: ")]
    assert len(refusal) == 1 and "does not say what it was trained with" in refusal[0], result.stderr[-3000:]
    assert "network base, 256 x 256 input" in refusal[0]
    assert not out.exists() or not list(out.iterdir())

    other = tmp_path / "other"
    shutil.copytree(beating_model, other)
    torch.save(small_gdkvm(spatial_size=128).state_dict(), other / "model.pt")
    with pytest.raises(ModelRefused, match="describe different models.*spatial_size: model.ts 64, model.pt 128"):
        served_model(other)

    config = json.loads((REPO_ROOT / "bundle" / "configs" / "inference.json").read_text())
    config["spatial_size"] = 128
    (tmp_path / "inference.json").write_text(json.dumps(config))
    edited = tmp_path / "edited"
    save_model_ts(torch.jit.script(BeatingLV()), small_gdkvm().description(), edited, tmp_path / "inference.json")
    result = run_app(inputs / "apical.dcm", out, edited)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "spatial_size: trained 64, inference.json 128" in result.stderr
    assert not out.exists() or not list(out.iterdir())


def test_a_renamed_model_ts_is_served_and_one_without_a_bundle_config_refused(inputs: Path, tmp_path: Path) -> None:
    """torch.jit.save names the archive's top folder after the file; renamed afterwards (saved as old_name.ts, served
    as model.ts), the SDK's get_bundle_config found no config and every cine failed. A model.ts with a description but
    no metadata.json/inference.json has no config to run with: refused before any cine is read."""
    from scripts.export import bundle_extra_files, save_scripted

    renamed = tmp_path / "renamed"
    description = small_gdkvm().description()
    save_scripted(torch.jit.script(BeatingLV()), renamed / "old_name.ts", description, bundle_extra_files())
    (renamed / "old_name.ts").rename(renamed / "model.ts")
    out = tmp_path / "out"
    result = run_app(inputs / "apical.dcm", out, renamed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "apical_sr.dcm").is_file() and "1 SR(s) written" in result.stdout and "0 failed" in result.stdout

    no_config = tmp_path / "no_config"
    save_scripted(torch.jit.script(BeatingLV()), no_config / "model.ts", description)
    result = run_app(inputs / "apical.dcm", tmp_path / "out2", no_config)
    assert result.returncode == 2, result.stderr[-3000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("model refused: ")]
    assert len(refusal) == 1 and "no extra/metadata.json or extra/inference.json in the TorchScript" in refusal[0]
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())


def test_export_writes_a_model_ts_that_describes_itself(tmp_path: Path) -> None:
    """``tools/monai_deploy/model_folder.py --ckpt model.pt --out DIR`` (``export``): ``DIR/model.ts`` computes what the
    checkpoint's network computes and carries its description, metadata.json and inference.json; ``served_model``
    reads the trained settings from it alone."""
    from model_folder import export

    torch.manual_seed(1)
    net = small_gdkvm(spatial_size=96)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    path = Path(export(ckpt=str(tmp_path / "model.pt"), out=str(tmp_path / "served")))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.ts"]
    served = served_model(path.parent)
    assert served.settings == {"network_size": "small", "update_rule": "gated_delta", "kpff": True, **TRAINED_WITH,
                               "spatial_size": 96}  # fmt: skip
    video = torch.rand(1, 1, 40, 48, 3)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(video), net(video), atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.5)


def test_dicom_node_receives_cines_and_sends_the_srs_back(inputs: Path, beating_model: Path, tmp_path: Path) -> None:
    """On loopback: pynetdicom's storescu sends the two good cines and a CT image to the node in one association; the
    node runs the app on them and sends the two SRs (each referencing its cine) to a storescp playing the PACS; the
    CT image gets its line in the node's log and no SR."""
    python = str(VENV / "bin" / "python")
    pacs_dir, work = tmp_path / "pacs", tmp_path / "work"
    pacs_dir.mkdir()
    pacs_port, node_port = _free_port(), _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    node_log = tmp_path / "node.log"
    pacs = subprocess.Popen([python, "-m", "pynetdicom", "storescp", str(pacs_port), "-aet", "PACS", "-od",
                             str(pacs_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    with node_log.open("w") as log:
        node = subprocess.Popen([python, str(NODE), "--model", str(beating_model), "--work", str(work), "--port",
                                 str(node_port), "--send_to", f"127.0.0.1:{pacs_port}:PACS"], stdout=log,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        _wait(lambda: "listening on" in node_log.read_text(), 120, "the node to listen")
        cines = [inputs / "apical.dcm", inputs / "study" / "IM0001.dcm", inputs / "ct.dcm"]
        command = [python, "-m", "pynetdicom", "storescu", "127.0.0.1", str(node_port), "-aec", "GDKVM_ECHO", "-cx"]
        sent = subprocess.run([*command, *map(str, cines)], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def sends() -> int:  # SRs the node sent, or failed to send
            return len(re.findall(r"gdkvm_echo_node: (sent|sending) ", node_log.read_text()))

        _wait(lambda: sends() >= 2, 300, "the node to send two SRs")
        _wait(lambda: len(list(pacs_dir.iterdir())) >= 2, 30, "the PACS to store two SRs")
        received = [pydicom.dcmread(p) for p in sorted(pacs_dir.iterdir())]
        assert all(ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage for ds in received)
        referenced = {
            ds.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
            for ds in received
        }
        assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in cines[:2]}
        text = node_log.read_text()
        assert "batch 1: app exit status 1, 2 SR(s), 1 failed input(s)" in text, text
        assert re.search(r"input failed: .*\.dcm: not an ultrasound image \(Modality CT, expected US\)", text), text
    finally:
        for process in (node, pacs):
            process.terminate()
            process.wait(timeout=60)


SENDER_SCRIPT = r"""
import json, sys
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts

port, calling, files = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
ae = AE(ae_title=calling)
ae.requested_contexts = StoragePresentationContexts
assoc = ae.associate("127.0.0.1", port, ae_title="GDKVM_ECHO")
if not assoc.is_established:
    print(json.dumps({"established": False}))
    sys.exit(0)
results = []
for path, uid in files:
    ds = dcmread(path)
    ds.SOPInstanceUID = uid or generate_uid()
    status = assoc.send_c_store(ds)
    results.append([int(status.Status), str(status.get("ErrorComment", ""))] if status else [None, "no answer"])
assoc.release()
print(json.dumps({"established": True, "results": results}))
"""


def start_node(tmp_path: Path, model: Path, *extra: str) -> tuple[subprocess.Popen, int, Path, Path]:
    """The DICOM node on loopback with ``extra`` options, SRs sent to a port nobody listens on; returns the process,
    its port, its log and its work folder once it listens."""
    python, port, work, log = str(VENV / "bin" / "python"), _free_port(), tmp_path / "work", tmp_path / "node.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        node = subprocess.Popen([python, str(NODE), "--model", str(model), "--work", str(work), "--port", str(port),
                                 "--send_to", f"127.0.0.1:{_free_port()}:PACS", *extra], stdout=out,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip
    _wait(lambda: "listening on" in log.read_text() or node.poll() is not None, 120, "the node to listen")
    assert node.poll() is None, log.read_text()
    return node, port, log, work


def send_with_pynetdicom(port: int, calling: str, files: list[tuple[Path, str | None]]) -> dict:
    """Send ``files`` (each with the SOP Instance UID to give it; None: a new valid one) in one association."""
    sent = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", SENDER_SCRIPT, str(port), calling,
         json.dumps([[str(p), uid] for p, uid in files])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr[-3000:]
    return json.loads(sent.stdout.strip().splitlines()[-1])


@pytest.fixture
def outside_folder() -> Path:
    """A folder outside the node's work folder with a short absolute path (a hostile UID must fit in 64 characters),
    holding one file that must stay as it is."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="o", dir="/tmp"))
    (folder / "keep.txt").write_text("must stay\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def stop_node(node: subprocess.Popen, log: Path) -> str:
    """SIGTERM (the node finishes the batches it has, then exits); returns its log."""
    node.terminate()
    node.wait(timeout=300)
    return log.read_text()


def received(work: Path) -> dict[str, list[str]]:
    """batch folder -> the files in it (all names the node's own)."""
    incoming = work / "incoming"
    if not incoming.is_dir():
        return {}
    return {batch.name: sorted(p.name for p in batch.iterdir()) for batch in sorted(incoming.iterdir())}


def test_dicom_node_names_its_files_and_refuses_what_it_must(
    inputs: Path, beating_model: Path, tmp_path: Path, outside_folder: Path
) -> None:
    """pynetdicom as sender: a hostile SOP Instance UID (an absolute path climbing to the root and down into a folder
    outside the work folder) is answered 0xC000 with a comment and written nowhere; good instances are stored under
    names the node makes (IM00001.dcm, ...); past --max_instances an instance is answered 0xA700; a caller not in
    --allowed_callers is rejected with one log line; the folder outside stays as it was."""
    small = inputs / "study" / "IM0001.dcm"
    hostile = f"/../../..{outside_folder}/x"
    assert len(hostile) <= 64
    node, port, log, work = start_node(tmp_path, beating_model, "--allowed_callers", "SENDER,OTHER",
                                       "--max_instances", "3")  # fmt: skip
    try:
        first = send_with_pynetdicom(port, "SENDER", [(small, None), (small, hostile), (small, None), (small, None),
                                                      (small, None)])  # fmt: skip
        stranger = send_with_pynetdicom(port, "STRANGER", [(small, None)])
    finally:
        text = stop_node(node, log)
    print(first, stranger, text, sep="\n")
    statuses = [status for status, _ in first["results"]]
    assert statuses == [0x0000, 0xC000, 0x0000, 0x0000, 0xA700], first
    assert "SOP Instance UID is not a valid UID" in first["results"][1][1]
    assert "more than 3 instances in one association" in first["results"][4][1]
    assert stranger == {"established": False}
    assert re.search(r"association from 'STRANGER' at 127\.0\.0\.1:\d+ rejected: calling AE title not in "
                     r"--allowed_callers \(SENDER, OTHER\)", text), text  # fmt: skip
    assert "refused: Affected SOP Instance UID is not a valid UID" in text and hostile in text
    assert received(work) == {"1": ["IM00001.dcm", "IM00002.dcm", "IM00003.dcm"]}
    assert sorted(p.name for p in outside_folder.iterdir()) == ["keep.txt"]
    assert (outside_folder / "keep.txt").read_text() == "must stay\n"


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (apt install dcmtk)")
def test_dicom_node_with_dcmtk_storescu(inputs: Path, beating_model: Path, tmp_path: Path, outside_folder) -> None:
    """dcmtk's storescu as sender (another implementation than pynetdicom): a good cine is stored, a file whose SOP
    Instance UID climbs out is refused with 0xC000, past --max_mb an instance is refused with 0xA700 (storescu prints
    each status); a called AE title other than the node's is rejected; nothing lands outside the work folder."""
    import pydicom

    hostile = f"/../../..{outside_folder}/y"
    files = []
    for name, uid in (("good.dcm", None), ("hostile.dcm", hostile), ("second.dcm", None), ("third.dcm", None)):
        ds = pydicom.dcmread(inputs / "study" / "IM0001.dcm")  # uncompressed: storescu sends as is
        ds.SOPInstanceUID = uid or pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / name)
        files.append(str(tmp_path / name))
    size_mb = (inputs / "study" / "IM0001.dcm").stat().st_size / 1024 / 1024
    node, port, log, work = start_node(tmp_path, beating_model, "--allowed_callers", "DCMTK_SCU", "--max_mb",
                                       f"{2.5 * size_mb:.4f}")  # fmt: skip
    try:
        command = ["storescu", "-v", "--no-halt", "-aet", "DCMTK_SCU", "-aec", "GDKVM_ECHO", "127.0.0.1", str(port)]
        sent = subprocess.run([*command, *files], capture_output=True, text=True, timeout=120)
        wrong_called = subprocess.run(["storescu", "-aet", "DCMTK_SCU", "-aec", "SOMEONE_ELSE", "127.0.0.1",
                                       str(port), files[0]], capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        text = stop_node(node, log)
    output = sent.stdout + sent.stderr
    print(output, wrong_called.stdout + wrong_called.stderr, text, sep="\n")
    answers = re.findall(r"Received Store Response \(([^)]*)\)", output)
    assert answers == ["Success", "Error: CannotUnderstand", "Success", "Refused: OutOfResources"], output
    refused = wrong_called.stdout + wrong_called.stderr
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in refused, refused
    assert "it called 'SOMEONE_ELSE', not 'GDKVM_ECHO'" in text, text
    assert received(work) == {"1": ["IM00001.dcm", "IM00002.dcm"]}
    assert sorted(p.name for p in outside_folder.iterdir()) == ["keep.txt"]
