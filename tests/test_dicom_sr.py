"""DICOM SR of the LV measurements (scripts.clinical.dicom_sr): written by SaveCineResultd for the real apical cine that
ships with pydicom and for a synthetic cine, read back, compared with the JSON report, its references resolved to the
source, the patient data checked, and the file validated by dciodvfy (dicom3tools, an offline IOD validator)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fake_lv_network import run_bundle_inference
from fixtures_echo import phantom, save_nifti_hwt, write_dicom
from pydicom import examples
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from scripts.clinical.dicom_sr import SRUnavailableError, lv_outline
from scripts.data.video_io import load_cine
from scripts.inference import SaveCineResultd

REPO_ROOT = Path(__file__).resolve().parents[1]
DCIODVFY = Path(sys.executable).parent / "dciodvfy"  # installed by dicom3tools (requirements.txt)
EF, EDV, ESV = (
    codes.LN.LeftVentricularEjectionFractionByUS,
    codes.LN.LeftVentricularEndDiastolicVolume,
    codes.LN.LeftVentricularEndSystolicVolume,
)


def beating_lv(H: int, W: int, T: int, period: int = 12) -> np.ndarray:
    """``[H, W, T]`` labels: an LV (1) shaped like a bullet (ellipse cut flat at the base) beating with ``period``."""
    yy, xx = np.mgrid[:H, :W]
    labels = np.zeros((H, W, T), np.uint8)
    for t in range(T):
        s = 1.0 - 0.25 * (0.5 - 0.5 * math.cos(2 * math.pi * t / period))
        cy, cx, ry, rx = 0.45 * H, 0.5 * W, 0.3 * H * s, 0.15 * W * s
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        labels[..., t] = inside & (yy < cy + 0.6 * ry)
    return labels


def _items(dataset: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR content tree, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def _num(sr_group: Dataset, code) -> float:
    values = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in sr_group.ContentSequence
        if i.ValueType == "NUM" and _name(i) == code.value
    ]
    assert len(values) == 1, [_name(i) for i in sr_group.ContentSequence]
    return values[0]


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in _items(sr) if i.ValueType == "CONTAINER" and _name(i) == codes.DCM.MeasurementGroup.value]


def _sources(group: Dataset) -> list[tuple[str, list[int]]]:
    """(SOP Instance UID, frame numbers) of every image a group references (its source or its ROI's)."""
    found = []
    for item in _items(group):
        for ref in item.get("ReferencedSOPSequence", []):
            frames = ref.get("ReferencedFrameNumber")
            frames = [int(f) for f in (frames if isinstance(frames, pydicom.multival.MultiValue) else [frames])]
            found.append((ref.ReferencedSOPInstanceUID, frames))
    return found


def validate(path: Path) -> None:
    """dciodvfy (dicom3tools): the SR's IOD, modules and attributes against the standard; no errors allowed."""
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert result.returncode == 0 and not errors, report
    assert "Comprehensive3DSR" in report, report


def check_sr(sr_path: Path, summary_path: Path, report_path: Path, source_path: Path) -> pydicom.Dataset:
    """The SR against the JSON summary and report and the source cine; returns the SR dataset."""
    summary = json.loads(summary_path.read_text())
    report = json.loads(report_path.read_text())
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert hd.sr.srread(sr_path).content is not None  # highdicom reads it back as a TID 1500 report
    # patient and study identifiers from the source, nothing else of the patient
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDate"):
        assert str(sr.get(key, "")) == str(source.get(key, "")), key
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert str(sr.PatientBirthDate) == "" and str(sr.PatientSex) == ""
    for key in ("PatientAge", "PatientWeight", "PatientSize", "OtherPatientIDs", "PatientAddress", "EthnicGroup"):
        assert key not in sr, key
    # every reference resolves to the source cine and its frames
    groups = _groups(sr)
    valid = [b for b in report["beats"] if b["accepted"] and b["ef_percent"] is not None]  # rejected beats: not in it
    assert len(groups) == 3 * len(valid) + 1
    n_frames = int(source.NumberOfFrames)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    for group in groups:
        for uid, frames in _sources(group):
            assert uid == source.SOPInstanceUID
            assert frames and all(1 <= f <= n_frames for f in frames)
    # the cine's values equal the JSON summary's (the last group) when the verdict is ok; under review that group
    # says so (a coded finding and the reasons) and carries no cine values; the beats' values equal the report's
    overall = groups[-1]
    if summary["quality"]["verdict"] == "ok":
        assert _num(overall, EF) == pytest.approx(summary["ef_percent"], rel=1e-9)
        assert _num(overall, EDV) == pytest.approx(summary["edv_ml"], rel=1e-9)
        assert _num(overall, ESV) == pytest.approx(summary["esv_ml"], rel=1e-9)
    else:
        codes_found = [i.ConceptCodeSequence[0].CodeValue for i in _items(overall) if i.ValueType == "CODE"]
        assert "REVIEW" in codes_found and not [i for i in _items(overall) if i.ValueType == "NUM"]
        (text,) = [i.TextValue for i in _items(overall) if i.ValueType == "TEXT" and _name(i) == "121106"]  # Comment
        assert text == "; ".join(summary["quality"]["reasons"])
        assert "REVIEW" in sr.SeriesDescription
    assert "research use only" in sr.SeriesDescription
    methods = [i for i in _items(sr) if i.ValueType == "CODE" and _name(i) == "370129005"]  # Measurement Method
    assert methods and all(m.ConceptCodeSequence[0].CodeValue == "125208" for m in methods)  # disks, single plane
    pairs = [[b["ed"], b["es"]] for b in valid]
    assert [p for p in summary["ed_es_pairs"] if p in pairs] == pairs
    crop = summary["crop"] or [0, source.Rows, 0, source.Columns]
    for k, beat in enumerate(valid):
        ed_group, es_group, ef_group = groups[3 * k : 3 * k + 3]
        assert _num(ed_group, EDV) == pytest.approx(beat["edv_ml"], rel=1e-9)
        assert _num(es_group, ESV) == pytest.approx(beat["esv_ml"], rel=1e-9)
        assert _num(ef_group, EF) == pytest.approx(beat["ef_percent"], rel=1e-9)
        assert _sources(ed_group) == [(source.SOPInstanceUID, [beat["ed"] + 1])]
        assert _sources(es_group) == [(source.SOPInstanceUID, [beat["es"] + 1])]
        assert sorted(_sources(ef_group)[0][1]) == [beat["ed"] + 1, beat["es"] + 1]
        for group in (ed_group, es_group):
            (scoord,) = [i for i in _items(group) if i.ValueType == "SCOORD"]
            assert scoord.GraphicType == "POLYLINE"
            xy = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
            assert np.allclose(xy[0], xy[-1])  # closed
            assert (xy[:, 0] >= crop[2]).all() and (xy[:, 0] <= crop[3]).all()  # inside the ultrasound region
            assert (xy[:, 1] >= crop[0]).all() and (xy[:, 1] <= crop[1]).all()
    validate(sr_path)
    return sr


@pytest.fixture(scope="module")
def real_cine(tmp_path_factory) -> Path:
    """The real apical four-chamber cine of pydicom (30 frames, region calibrated, cropped by the loader)."""
    path = tmp_path_factory.mktemp("real") / "apical.dcm"
    shutil.copy(examples.get_path("ybr_color"), path)
    return path


@pytest.fixture(scope="module")
def synthetic_cine(tmp_path_factory) -> Path:
    """A synthetic ultrasound cine with a region and a full set of patient/study attributes (some not to copy)."""
    path = tmp_path_factory.mktemp("synthetic") / "IM0001.dcm"
    write_dicom(path, np.moveaxis(phantom(60, 72, 14, seed=2)[0], -1, 0), region=(8, 4, 67, 55))
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "S1", "ACC42", "20260101", "101500"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge, ds.OtherPatientIDs = "19700101", "F", "056Y", "X9"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("which", ["real_cine", "synthetic_cine"])
def test_sr_of_a_cine_matches_its_json_and_source(which: str, request, tmp_path: Path) -> None:
    source = request.getfixturevalue(which)
    image, meta = load_cine(source)
    assert meta["spacing_known"] and meta["crop"] is not None
    H, W, T = image.shape
    saver = SaveCineResultd(output_dir=tmp_path, overlay=False, keep_aspect=False, write_sr=True)
    files = saver.write(beating_lv(H, W, T)[None], source, "cine")
    assert set(files) >= {"sr", "summary", "json"}
    summary = json.loads(Path(files["summary"]).read_text())
    assert summary["outputs"]["sr"] == "cine_sr.dcm" and summary["sr_reason"] is None
    assert math.isfinite(summary["ef_percent"]) and 10 < summary["ef_percent"] < 60
    check_sr(Path(files["sr"]), Path(files["summary"]), Path(files["json"]), source)


def test_outline_is_in_the_source_frame(synthetic_cine: Path) -> None:
    """The outline is the measured contour shifted by the crop: its centre is the mask's centre in the full frame."""
    image, meta = load_cine(synthetic_cine)
    mask = beating_lv(*image.shape)[..., 0] == 1
    xy = lv_outline(mask, meta["spacing"], meta["crop"])
    rows, cols = np.nonzero(mask)
    y0, _, x0, _ = meta["crop"]
    x, y = xy[:, 0].astype(float), xy[:, 1].astype(float)
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]  # polygon centroid (shoelace)
    cx, cy = ((x[:-1] + x[1:]) * cross).sum() / (3 * cross.sum()), ((y[:-1] + y[1:]) * cross).sum() / (3 * cross.sum())
    assert cx == pytest.approx(cols.mean() + x0 + 0.5, abs=0.25)
    assert cy == pytest.approx(rows.mean() + y0 + 0.5, abs=0.25)
    with pytest.raises(SRUnavailableError, match="no LV outline"):
        lv_outline(np.zeros_like(mask), meta["spacing"], meta["crop"])


def test_no_sr_without_dicom_or_spacing(tmp_path: Path) -> None:
    """A NIfTI, or a DICOM without calibration, gets no SR, and the JSON (and the log) says why."""
    nifti = tmp_path / "clip.nii.gz"
    save_nifti_hwt(phantom(48, 40, 12)[0], nifti)
    uncalibrated = write_dicom(tmp_path / "raw.dcm", np.moveaxis(phantom(48, 40, 12)[0], -1, 0), region=None)
    saver = SaveCineResultd(output_dir=tmp_path / "out", overlay=False, clinical=False, write_sr=True)
    for source, reason in ((nifti, "not DICOM"), (uncalibrated, "no pixel spacing")):
        files = saver.write(beating_lv(48, 40, 12)[None], source)
        summary = json.loads(Path(files["summary"]).read_text())
        assert "sr" not in files and "sr" not in summary["outputs"]
        assert reason in summary["sr_reason"]


def test_no_sr_when_ef_is_not_measurable(synthetic_cine: Path, tmp_path: Path) -> None:
    image, _ = load_cine(synthetic_cine)
    saver = SaveCineResultd(output_dir=tmp_path, overlay=False, clinical=False, write_sr=True)
    files = saver.write(np.zeros((1, *image.shape), np.uint8), synthetic_cine)
    summary = json.loads(Path(files["summary"]).read_text())
    assert summary["sr_reason"].startswith("verdict reject: an LV is measurable in only 0% of the frames")
    assert summary["quality"]["verdict"] == "reject" and not list(tmp_path.glob("*_sr.dcm"))


def test_validator_catches_a_broken_sr(synthetic_cine: Path, tmp_path: Path) -> None:
    """The validator used above fails an SR that lacks a type 1 attribute of the General Study module."""
    image, _ = load_cine(synthetic_cine)
    files = SaveCineResultd(output_dir=tmp_path, overlay=False, write_sr=True).write(
        beating_lv(*image.shape)[None], synthetic_cine
    )
    broken = pydicom.dcmread(files["sr"])
    del broken.StudyInstanceUID
    broken.save_as(tmp_path / "broken.dcm")
    with pytest.raises(AssertionError, match="StudyInstanceUID"):
        validate(tmp_path / "broken.dcm")


def test_inference_command_writes_the_sr_on_request(real_cine: Path, tmp_path: Path) -> None:
    """``--write_sr True`` on the bundle's inference command, for the real cine and a NIfTI beside it: the real cine's
    SR matches its JSON; the NIfTI gets none and its JSON and the log say why. The network is a stand-in that draws a
    beating LV (tests/fake_lv_network.py), since an untrained GDKVM gives no measurable LV."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(real_cine, data / "apical.dcm")
    save_nifti_hwt(phantom(48, 40, 12)[0], data / "clip.nii.gz")
    out = tmp_path / "out"
    result = run_bundle_inference(data, out, tmp_path, "--write_overlays", "False", "--write_sr", "True")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "apical_seg.json").read_text())
    assert summary["sr_reason"] is None and summary["outputs"]["sr"] == "apical_sr.dcm"
    check_sr(out / "apical_sr.dcm", out / "apical_seg.json", out / "apical_report.json", data / "apical.dcm")
    nifti = json.loads((out / "clip_seg.json").read_text())
    assert "not DICOM" in nifti["sr_reason"] and not (out / "clip_sr.dcm").exists()
    assert "clip.nii.gz: no DICOM SR: the input is nifti" in (out / "inference.log").read_text()


def test_sr_names_the_model_that_made_it(synthetic_cine: Path, tmp_path: Path) -> None:
    """The SR says which weights made it: their SHA-256 and training data as algorithm parameters, research use only,
    and a device observer UID that is the same for the same weights and differs for other weights."""
    import torch

    image, _ = load_cine(synthetic_cine)
    weights = {}
    for name, value in (("a", 1.0), ("b", 2.0)):
        weights[name] = tmp_path / name / "model.pt"
        weights[name].parent.mkdir()
        torch.save({"w": torch.full((3,), value)}, weights[name])

    def device_and_parameters(model_file: Path, out: str) -> tuple[str, list[str]]:
        saver = SaveCineResultd(output_dir=tmp_path / out, overlay=False, write_sr=True, model_file=model_file)
        files = saver.write(beating_lv(*image.shape)[None], synthetic_cine, "cine")
        sr = pydicom.dcmread(files["sr"])
        (uid,) = {i.UID for i in _items(sr) if i.ValueType == "UIDREF" and _name(i) == "121012"}  # Device Observer UID
        parameters = [i.TextValue for i in _items(sr) if i.ValueType == "TEXT" and _name(i) == "111002"]
        summary = json.loads(Path(files["summary"]).read_text())
        assert summary["model"]["sha256"] in " ".join(parameters) and "research use only" in parameters
        assert "research use only" in sr.SeriesDescription
        return uid, parameters

    first, parameters = device_and_parameters(weights["a"], "a1")
    again, _ = device_and_parameters(weights["a"], "a2")
    other, _ = device_and_parameters(weights["b"], "b")
    assert first == again != other
    assert "trained on not recorded" in parameters  # a checkpoint without a description records no training data
