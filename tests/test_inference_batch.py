"""Archive-scale inference through the command a user types: every readable cine is segmented, every bad file is one
console line and one row of failures.csv, reruns skip complete outputs, and two processes share the work."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt, write_avi, write_bad_cines, write_dicom

from scripts.batch import failure_reason
from scripts.data import EchoDataError
from scripts.inference import SaveCineResultd, find_cines, is_complete

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CONFIG = "bundle/configs/inference.json"
SMALL = ["--network_size", "small", "--spatial_size", "64", "--write_overlays", "False"]
GOOD_STEMS = ("good", "study1/IM0001", "study2/IM0001", "clip")  # outputs mirror the input folders
BAD_CASES = (
    "truncated_nifti", "corrupt_nifti", "zero_byte_dicom", "non_dicom_dcm", "dicom_without_pixels",
    "frames_more_than_data", "frames_less_than_data", "one_frame_dicom", "one_frame_nifti", "nan_inf",
    "rgb_4d_nifti", "text_as_avi", "corrupt_jpeg_frame",
)  # fmt: skip


def _command(data: Path, out: Path, models: Path, *extra: str, config: str = CONFIG) -> list[str]:
    command = [PYTHON, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(REPO_ROOT / "bundle")]
    return command + ["--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_dir", str(models), *SMALL, *extra]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, timeout=timeout)  # fmt: skip


def _failures(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row["file"]: row["reason"] for row in rows}


def _summary_line(text: str) -> str:
    lines = [line for line in text.splitlines() if "inference: " in line and " segmented, " in line]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def _write_good_cines(data: Path) -> None:
    """Four readable cines, two of them with the same name in different folders."""
    (data / "study1").mkdir(parents=True)
    (data / "study2").mkdir()
    save_nifti_hwt(phantom(48, 40, 4, seed=1)[0], data / "good.nii.gz")
    write_dicom(data / "study1" / "IM0001.dcm", np.moveaxis(phantom(48, 40, 4, seed=2)[0], -1, 0))
    write_dicom(data / "study2" / "IM0001.dcm", np.moveaxis(phantom(40, 48, 5, seed=3)[0], -1, 0), region=None)
    write_avi(np.moveaxis(phantom(48, 48, 4, seed=4)[0], -1, 0), data / "clip.avi", fps=25.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A randomly initialised small network's state dict (nothing is trained)."""
    from scripts.gdkvm import GDKVM

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    torch.save(GDKVM(size="small", out_channels=2).state_dict(), folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, models) -> dict:
    """One run of the inference command on a folder of good cines, every kind of bad file and a .png."""
    root = tmp_path_factory.mktemp("mixed")
    data = root / "cines"
    _write_good_cines(data)
    bad = write_bad_cines(data / "bad")
    (data / "bad" / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = root / "out"
    result = _run(_command(data, out, models))
    return {"data": data, "out": out, "bad": bad, "result": result, "models": models}


def test_mixed_folder_segments_every_good_cine_and_reports_the_bad_ones(mixed) -> None:
    result, out, bad = mixed["result"], mixed["out"], mixed["bad"]
    text = result.stdout
    assert result.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    assert sorted(bad) == sorted(BAD_CASES)
    for stem in GOOD_STEMS:
        assert is_complete(out, stem) and (out / f"{stem}_seg.nii.gz").is_file(), stem
    assert set(_failures(out)) == {str(path) for path, _ in bad.values()}
    line = _summary_line(text)
    assert f"4 segmented, {len(bad)} failed, 0 skipped (already done), 1 ignored (not cines" in line
    assert "; verdicts of the segmented: " in line  # every segmented cine's verdict, counted
    assert sum(int(n) for n in re.findall(r"(\d+) (?:ok|review|reject)\b", line)) == 4, line
    assert str(out / "failures.csv") in line and str(out / "inference.log") in line
    log = (out / "inference.log").read_text()
    assert "Traceback" in log  # the full tracebacks are in the log file, not on the console
    # what pydicom logs of the damaged JPEG frame (with the decoder's traceback) is in the log too, not on the console
    assert "pydicom.pixels.decoders.base - WARNING - The decoding plugin 'pillow' failed to decode the frame" in log
    assert f"ignored: {mixed['data'] / 'bad' / 'thumbnail.png'}: not a cine" in log
    assert not any(out.rglob("*thumbnail*")) and not any(out.rglob(".*"))  # no output, no temporary file left


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_console_line_and_one_failure_row(mixed, case) -> None:
    path, problem = mixed["bad"][case]
    reason = _failures(mixed["out"])[str(path)]
    assert re.search(problem, reason), reason
    lines = [line for line in mixed["result"].stdout.splitlines() if str(path) in line]
    assert len(lines) == 1, lines
    assert f"failed: {path}: {reason}" in lines[0]


def test_a_writer_failure_is_that_cines_failure_named_and_the_others_are_written(models, tmp_path) -> None:
    """Writing runs in writer processes: a cine whose outputs cannot be written is one line and one row."""
    data, out = tmp_path / "cines", tmp_path / "out"
    _write_good_cines(data)
    out.mkdir()
    (out / "study1").write_text("a file where the output folder study1/ should go")
    result = _run(_command(data, out, models, "--writers", "2", "--num_workers", "2"))
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
    failed = data / "study1" / "IM0001.dcm"
    assert list(_failures(out)) == [str(failed)] and "FileExistsError" in _failures(out)[str(failed)]
    assert [line for line in result.stdout.splitlines() if str(failed) in line][0].endswith(
        f"failed: {failed}: {_failures(out)[str(failed)]}"
    )
    assert "3 segmented, 1 failed" in _summary_line(result.stdout)
    assert all(is_complete(out, stem) for stem in ("good", "study2/IM0001", "clip"))
    assert f"traceback of {failed}" in (out / "inference.log").read_text()


def _same_numbers(a: object, b: object) -> bool:
    """``a == b`` for JSON values, floats within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-5
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_numbers(x, y) for x, y in zip(a, b))
    return a == b


def test_streams_step_cines_together_with_the_labels_of_one_by_one(models, tmp_path) -> None:
    """``--streams 3``: cines of different lengths and input sizes join and leave the stepper; same outputs."""
    data = tmp_path / "cines"
    _write_good_cines(data)
    save_nifti_hwt(phantom(56, 44, 9, seed=5)[0], data / "long.nii.gz")
    save_nifti_hwt(phantom(36, 52, 2, seed=8)[0], data / "short.nii.gz")
    runs = {}
    for streams in (1, 3):
        out = tmp_path / f"out{streams}"
        result = _run(_command(data, out, models, "--streams", str(streams)))
        assert result.returncode == 0 and "6 segmented, 0 failed" in _summary_line(result.stdout), result.stdout[-3000:]
        runs[streams] = out
    assert "streaming engine: eager per-frame step" in (runs[3] / "inference.log").read_text()  # 3 slots of 64x64
    assert "; 3 x 64x64, float32" in (runs[3] / "inference.log").read_text()
    for stem in (*GOOD_STEMS, "long", "short"):
        one, many = (np.asarray(nib.load(runs[n] / f"{stem}_seg.nii.gz").dataobj) for n in (1, 3))
        assert one.shape == many.shape and np.array_equal(one, many), stem
        # the numbers too; the network's confidence (softmax of batched logits) to float rounding
        first, second = (json.loads((runs[n] / f"{stem}_seg.json").read_text()) for n in (1, 3))
        assert _same_numbers(first, second), stem
        assert second["quality"]["checks"]["memory_checked_frames"], stem  # the memory check ran in the stepper too


def test_the_writer_takes_the_input_decoded_once(tmp_path, monkeypatch) -> None:
    """The preprocessing keeps the decoded input (source_cine) and SaveCineResultd writes from it, not the file."""
    import scripts.inference as inference
    from scripts.data import LoadCined

    image, label = phantom(40, 32, 5, seed=6)
    path = tmp_path / "a.dcm"
    write_dicom(path, np.moveaxis(image, -1, 0))
    item = LoadCined("image", keep_source=True)({"image": str(path), "source": str(path)})
    expected = SaveCineResultd(tmp_path / "first", overlay=False).write(torch.as_tensor(label[None] == 1), path)

    def decode_again(*args, **kwargs):
        raise AssertionError("the input was decoded a second time")

    monkeypatch.setattr(inference, "load_cine", decode_again)
    saver = SaveCineResultd(tmp_path / "out", overlay=False)
    written = saver({**item, "pred": torch.as_tensor(label[None] == 1)})["pred_files"]
    for key in ("summary", "csv"):
        assert Path(written[key]).read_text() == Path(expected[key]).read_text().replace("/first/", "/out/")


def test_nifti_compression_level_is_the_users_and_the_labels_are_the_same(tmp_path) -> None:
    image, label = phantom(64, 48, 6, seed=4)
    path = tmp_path / "a.nii.gz"
    save_nifti_hwt(image, path)
    pred = torch.as_tensor((label == 1).astype(np.uint8)[None])
    files = {
        level: SaveCineResultd(
            tmp_path / f"level{level}", clinical=False, overlay=False, nifti_compression=level
        ).write(pred, path)["label"]
        for level in (0, 9)
    }
    stored, smallest = (nib.load(files[level]) for level in (0, 9))
    assert np.array_equal(np.asarray(stored.dataobj), np.asarray(smallest.dataobj))
    assert np.allclose(stored.affine, smallest.affine)
    assert Path(files[0]).stat().st_size > 2 * Path(files[9]).stat().st_size
    with pytest.raises(ValueError, match="gzip level from 0 to 9"):
        SaveCineResultd(tmp_path, nifti_compression=10)


def test_the_network_gets_the_cores_the_readers_and_writers_leave(monkeypatch) -> None:
    from scripts.writer_pool import default_workers, network_threads, workers_for_inputs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [default_workers(n) for n in (1, 2, 4, 16, 64)] == [1, 1, 2, 4, 4]
    # one process for a single cine: readers and writers only pay when another cine overlaps
    assert [workers_for_inputs(4, 2, n) for n in (0, 1, 2, 3, 100)] == [(0, 0), (0, 0), (1, 1), (2, 2), (4, 2)]
    assert network_threads(1, 1, cpu_count=2) == 1 and network_threads(4, 4, cpu_count=16) == 8
    assert network_threads(0, 0, cpu_count=2) == 2 and network_threads(4, 4, cpu_count=4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert network_threads(1, 1, cpu_count=2) == 3


def test_rerun_skips_complete_outputs_redoes_partial_ones_and_overwrite_redoes_all(mixed, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(mixed["out"], out)
    partial = out / "study1" / "IM0001_seg.json"
    partial.unlink()  # an interrupted run: the label NIfTI is there, the summary JSON (written last) is not
    done = out / "study2" / "IM0001_seg.nii.gz"
    before = done.stat().st_mtime_ns
    result = _run(_command(mixed["data"], out, mixed["models"]))
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert f"1 segmented, {len(mixed['bad'])} failed, 3 skipped (already done)" in _summary_line(result.stdout)
    assert partial.is_file() and done.stat().st_mtime_ns == before

    # --overwrite True redoes complete outputs; a .png named in the datalist is a failure row, not a crash
    datalist = "['study2/IM0001.dcm','bad/thumbnail.png']"
    result = _run(_command(mixed["data"], out, mixed["models"], "--datalist", datalist, "--overwrite", "True"))
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "1 segmented, 1 failed, 0 skipped (already done)" in _summary_line(result.stdout)
    assert done.stat().st_mtime_ns != before
    png = mixed["data"] / "bad" / "thumbnail.png"
    assert _failures(out) == {str(png): "not a cine format: '.png' files are not read (a cine is .dcm, .avi, "
                              ".nii(.gz), .mhd/.mha/.nrrd)"}  # fmt: skip
    assert sum(str(png) in line for line in result.stdout.splitlines()) == 1


def test_all_good_exits_zero_and_writes_image_with_save_image(models, tmp_path) -> None:
    data = tmp_path / "cines"
    data.mkdir()
    write_dicom(data / "a.dcm", np.moveaxis(phantom(48, 40, 4, seed=5)[0], -1, 0), region=(4, 2, 35, 45))
    out = data / "out"  # an output folder inside the dataset folder is not scanned for inputs
    (out / "old").mkdir(parents=True)
    save_nifti_hwt(phantom(48, 40, 4)[0], out / "old" / "earlier_run_image.nii.gz")
    result = _run(_command(data, out, models, "--save_image", "True"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 segmented, 0 failed, 0 skipped" in _summary_line(result.stdout)
    assert "1 input(s): 0 reader and 0 writer processes" in (out / "inference.log").read_text()  # one cine, one process
    summary = json.loads((out / "a_seg.json").read_text())
    assert summary["outputs"]["image"] == "a_image.nii.gz" and summary["outputs"]["label"] == "a_seg.nii.gz"
    import nibabel as nib

    label, image = nib.load(str(out / "a_seg.nii.gz")), nib.load(str(out / "a_image.nii.gz"))
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine)
    assert _failures(out) == {}


def test_empty_folder_is_one_line_and_a_non_zero_exit(models, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    result = _run(_command(tmp_path / "empty", tmp_path / "out", models))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if str(tmp_path / "empty") in line and "no cine" in line]
    assert lines == [f"inference: {tmp_path / 'empty'}: no cine loop found (looked for .nii.gz, .nii, .mhd, .mha, "
                     ".nrrd, .avi, .mp4, .dcm, .dicom and DICOM)"]  # fmt: skip


@pytest.mark.slow
def test_two_processes_share_the_inputs_and_merge_the_summary(mixed, tmp_path) -> None:
    out = tmp_path / "out"
    torchrun = str(Path(PYTHON).parent / "torchrun")
    config = f"['{CONFIG}','bundle/configs/multi_gpu_inference.json']"
    command = [torchrun, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]
    command += _command(mixed["data"], out, mixed["models"], config=config)[2:]
    result = _run(command)
    text = result.stdout
    assert result.returncode != 0, text[-3000:]
    assert "exitcode: 1" in text  # every rank exits with status 1 (torchrun itself then prints its own report)
    counts = f"4 segmented, {len(mixed['bad'])} failed, 0 skipped (already done), 1 ignored (not cines"
    assert counts in _summary_line(text)
    assert _failures(out) == _failures(mixed["out"])
    assert sorted(p.relative_to(out) for p in out.rglob("*_seg.nii.gz")) == sorted(
        p.relative_to(mixed["out"]) for p in mixed["out"].rglob("*_seg.nii.gz")
    )
    assert (out / "inference.log").is_file() and (out / "inference.rank1.log").is_file()


# ------------------------------------------------------------------------------------------------ in-process units
def test_find_cines_mirrors_folders_and_keeps_uid_names(tmp_path) -> None:
    data = tmp_path / "archive"
    frames = np.moveaxis(phantom(32, 40, 3)[0], -1, 0)
    for study in ("s1", "s2"):
        (data / study).mkdir(parents=True)
        write_dicom(data / study / "IM0001.dcm", frames)
    write_dicom(data / "s1" / "1.2.840.10008.77", frames)  # a DICOM named by its UID, found by its header
    write_dicom(data / "s1" / "1.2.840.10008.78", frames)
    (data / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (data / "s1" / "report.txt").write_text("notes")
    (data / "out").mkdir()
    save_nifti_hwt(phantom(32, 40, 3)[0], data / "out" / "IM0001_image.nii.gz")  # an earlier run's output
    items = find_cines(data, exclude=data / "out", report_ignored=True)
    stems = {Path(i["source"]).relative_to(data).as_posix(): i.get("output_stem") for i in items}
    assert stems == {
        "s1/1.2.840.10008.77": "s1/1.2.840.10008.77",
        "s1/1.2.840.10008.78": "s1/1.2.840.10008.78",
        "s1/IM0001.dcm": "s1/IM0001",
        "s2/IM0001.dcm": "s2/IM0001",
        "DICOMDIR": None,
        "s1/report.txt": None,
    }
    ignored = {Path(i["source"]).name: i["ignored"] for i in items if "ignored" in i}
    assert "DICOMDIR" in ignored["DICOMDIR"] and "'.txt' files are not read" in ignored["report.txt"]


def test_failure_reason_digs_out_the_echo_error() -> None:
    try:
        try:
            raise EchoDataError("/d/a.dcm", "DICOM without pixel data")
        except EchoDataError as e:
            raise RuntimeError("applying transform <LoadCined>") from e
    except RuntimeError as e:
        assert failure_reason(e, "/d/a.dcm") == "DICOM without pixel data"
    assert failure_reason(ValueError("bad\n  value in /d/b.avi"), "/d/b.avi") == "ValueError: bad value in b.avi"


def test_interrupted_rewrite_leaves_no_summary_json(tmp_path, monkeypatch) -> None:
    image, label = phantom(40, 32, 4, seed=6)
    path = tmp_path / "a.nii.gz"
    save_nifti_hwt(image, path)
    saver = SaveCineResultd(tmp_path / "out", clinical=True, overlay=False)
    pred = torch.as_tensor((label == 1).astype(np.uint8)[None])
    files = saver.write(pred, path)
    assert is_complete(tmp_path / "out", "a") and Path(files["summary"]).name == "a_seg.json"
    from scripts import clinical

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clinical, "write_cine_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        saver.write(pred, path)
    assert not is_complete(tmp_path / "out", "a")  # a rerun redoes it
    assert (tmp_path / "out" / "a_seg.nii.gz").is_file() and not list((tmp_path / "out").glob(".*"))


def test_dataset_turns_failures_into_records_and_carries_its_warnings(tmp_path) -> None:
    """Reading warnings travel with the item (a DataLoader worker has no log file); the evaluator logs them."""
    import warnings

    from scripts.batch import CineDataset

    def transform(item: dict) -> dict:
        warnings.warn(f"odd header in {item['image']}", UserWarning, stacklevel=1)
        if item["image"].endswith("bad.dcm"):
            raise RuntimeError("applying transform <LoadCined>") from EchoDataError(
                item["image"], "DICOM without pixel data"
            )
        return {**item, "loaded": True}

    items = [{"image": "/d/good.dcm", "source": "/d/good.dcm"}, {"image": "/d/bad.dcm", "source": "/d/bad.dcm"},
             {"image": "/d/x.png", "source": "/d/x.png", "ignored": "not a cine"}]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that reached the console would raise here
        good, bad, png = (CineDataset(items, transform, tmp_path)[i] for i in range(3))
    assert good["loaded"] and "status" not in good
    assert bad["status"] == "failed" and bad["reason"] == "DICOM without pixel data" and "Traceback" in bad["traceback"]
    assert png["status"] == "ignored" and png["reason"] == "not a cine"
    assert [good["read_warnings"], bad["read_warnings"]] == [
        [f"UserWarning: odd header in /d/{n}.dcm"] for n in ("good", "bad")
    ]
