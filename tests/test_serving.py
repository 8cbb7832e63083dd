"""What MONAI Label's adapter refuses (``scripts.serving``): studies folders it cannot serve, unreadable uploads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures_echo import phantom, save_nifti_hwt, write_dicom

from scripts.data import EchoDataError
from scripts.serving import check_uploaded_cine, check_uploaded_label, datastore_layout_problem


@pytest.fixture()
def cine(tmp_path) -> Path:
    image, _ = phantom(40, 48, 6)
    save_nifti_hwt(image, tmp_path / "cine.nii.gz")
    return tmp_path / "cine.nii.gz"


def test_servable_folders(tmp_path, cine) -> None:
    flat = tmp_path / "flat"
    (flat / "labels" / "final").mkdir(parents=True)
    assert datastore_layout_problem(flat) is None  # empty: filled by uploads
    (flat / "a.nii.gz").write_bytes(cine.read_bytes())
    (flat / "labels" / "final" / "a.nii.gz").write_bytes(cine.read_bytes())
    (flat / "datastore_v2.json").write_text("{}")
    (flat / "old").mkdir()
    (flat / "old" / "b.nii.gz").write_bytes(cine.read_bytes())  # not listed, but the folder has cines to serve
    assert datastore_layout_problem(flat) is None


def test_unservable_folders_have_a_reason(tmp_path, cine) -> None:
    assert "no such folder" in datastore_layout_problem(tmp_path / "missing")
    tree = tmp_path / "camus"
    for patient in ("patient0001", "patient0002"):
        (tree / "database_nifti" / patient).mkdir(parents=True)
        (tree / "database_nifti" / patient / f"{patient}_4CH_half_sequence.nii.gz").write_bytes(cine.read_bytes())
        (tree / "database_nifti" / patient / f"{patient}_4CH_half_sequence_gt.nii.gz").write_bytes(cine.read_bytes())
    problem = datastore_layout_problem(tree)
    assert "its 2 cine(s) lie in 2 subfolder(s) (database_nifti/patient0001/, ...)" in problem
    assert "\n" not in problem
    study = tmp_path / "dicom_study"
    (study / "series1").mkdir(parents=True)
    frames = phantom(8, 8, 3)[0].transpose(2, 0, 1)  # [T, H, W]
    write_dicom(study / "series1" / "IM0001", frames)
    assert "lie in 1 subfolder(s) (series1/, ...)" in datastore_layout_problem(study)
    (study / "IM0002").write_bytes((study / "series1" / "IM0001").read_bytes())
    assert "1 DICOM file(s) without a .dcm suffix (IM0002, ...)" in datastore_layout_problem(study)
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "p1_4CH.nii.gz").write_bytes(cine.read_bytes())
    (beside / "p1_4CH_gt.nii.gz").write_bytes(cine.read_bytes())
    assert "1 ground-truth file(s) among the images (p1_4CH_gt.nii.gz, ...)" in datastore_layout_problem(beside)


def test_uploads_are_checked_and_named_by_the_upload(tmp_path, cine) -> None:
    check_uploaded_cine(cine, "mine.nii.gz")
    empty = tmp_path / "tmpabc.dcm"
    empty.write_bytes(b"")
    with pytest.raises(EchoDataError, match=r"^mine\.dcm: empty file \(0 bytes\)$"):
        check_uploaded_cine(empty, "mine.dcm")
    shape = nib.load(str(cine)).shape
    good = tmp_path / "tmp1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), str(good))
    check_uploaded_label(good, "label of a.nii.gz", cine)
    wrong = tmp_path / "tmp2.nii.gz"
    nib.save(nib.Nifti1Image(np.full(shape, 7, np.uint8), np.eye(4)), str(wrong))
    with pytest.raises(EchoDataError, match=r"^label of a\.nii\.gz: label values \[7\] outside"):
        check_uploaded_label(wrong, "label of a.nii.gz", cine)
    dicom = write_dicom(tmp_path / "a.dcm", phantom(40, 40, 6)[0].transpose(2, 0, 1))
    with pytest.raises(EchoDataError, match="label shape"):
        check_uploaded_label(good, "label of a.dcm", dicom)
