"""Every bad input of docs/datasets.md raises EchoDataError (a ValueError) naming the file and the problem."""

import shutil

import numpy as np
import pytest
from fixtures_echo import phantom, save_nifti_hwt, write_avi, write_camus_nifti, write_dicom, write_echonet

from scripts.data import EchoDataError, LoadCamusd, camus_datalist, echonet_datalist, load_cine


def raises(match, fn, *args, path=None):
    with pytest.raises(EchoDataError, match=match) as info:
        fn(*args)
    assert isinstance(info.value, ValueError)
    if path is not None:
        assert str(path) in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def frames():
    return np.moveaxis(phantom(32, 40, 4)[0], -1, 0)


def test_truncated_and_non_image_files(tmp_path, frames):
    dcm = write_dicom(tmp_path / "a.dcm", frames, "mono")
    (tmp_path / "t.dcm").write_bytes(dcm.read_bytes()[:700])
    raises("pixel data|DICOM", load_cine, tmp_path / "t.dcm", path=tmp_path / "t.dcm")
    save_nifti_hwt(np.moveaxis(frames, 0, -1), tmp_path / "a.nii.gz")
    (tmp_path / "t.nii.gz").write_bytes((tmp_path / "a.nii.gz").read_bytes()[:300])
    raises("not a readable nifti", load_cine, tmp_path / "t.nii.gz", path=tmp_path / "t.nii.gz")
    write_avi(frames, tmp_path / "a.avi")
    (tmp_path / "t.avi").write_bytes((tmp_path / "a.avi").read_bytes()[:200])
    raises("zero readable frames|not a readable video", load_cine, tmp_path / "t.avi", path=tmp_path / "t.avi")
    for name in ("x.dcm", "x.nii.gz", "x.avi", "x.txt"):
        (tmp_path / name).write_text("hello, not an image")
        raises("not|unknown", load_cine, tmp_path / name, path=tmp_path / name)


def test_2d_image_where_cine_expected(tmp_path, frames):
    raises("single 2D image", load_cine, write_dicom(tmp_path / "one.dcm", frames[:1], "mono"))
    save_nifti_hwt(frames[0], tmp_path / "2d.nii.gz")
    raises("expected a cine", load_cine, tmp_path / "2d.nii.gz", path=tmp_path / "2d.nii.gz")


def test_zero_frames(tmp_path, frames):
    save_nifti_hwt(np.zeros((32, 40, 0), np.uint8), tmp_path / "z.nii.gz")
    raises("zero frames", load_cine, tmp_path / "z.nii.gz", path=tmp_path / "z.nii.gz")
    path = write_dicom(tmp_path / "z.dcm", frames, "mono")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 0
    ds.save_as(path)
    raises("zero frames", load_cine, path, path=path)


def test_nan_and_constant_frames(tmp_path, frames):
    cine = np.moveaxis(frames, 0, -1).astype(np.float32) / 255
    cine[..., 2] = np.nan
    save_nifti_hwt(cine, tmp_path / "nan.nii.gz")
    raises(r"NaN or infinite values in frames \[2\]", load_cine, tmp_path / "nan.nii.gz", path=tmp_path / "nan.nii.gz")
    blank = frames.copy()
    blank[1] = 0
    raises(r"constant \(blank\) frames \[1\]", load_cine, write_dicom(tmp_path / "c.dcm", blank, "mono"))


def test_dicom_without_pixel_data(tmp_path, frames):
    import pydicom

    path = write_dicom(tmp_path / "np.dcm", frames, "mono")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    raises("DICOM without pixel data", load_cine, path, path=path)


@pytest.fixture
def camus(tmp_path):
    root = write_camus_nifti(tmp_path / "CAMUS_public", n_patients=2, T=6, reversed_ids=())
    return root, root / "database_nifti" / "patient0001"


def test_label_shape_differs(camus):
    root, folder = camus
    gt = folder / "patient0001_2CH_half_sequence_gt.nii.gz"
    save_nifti_hwt(np.zeros((30, 40, 6), np.uint8), gt)
    raises("differs from its image shape", LoadCamusd(), camus_datalist(root)[0], path=gt)


def test_label_values_outside_set(camus):
    root, folder = camus
    gt = folder / "patient0001_2CH_half_sequence_gt.nii.gz"
    _, label = phantom(48, 40, 6, seed=10)
    label[0, 0, 0] = 7
    save_nifti_hwt(label, gt)
    raises(r"label values \[7\] outside", LoadCamusd(), camus_datalist(root)[0], path=gt)


@pytest.mark.parametrize(
    ("text", "match"),
    [("ES: 6\nNbFrame: 6\n", "has no ED"), ("ED: 9\nES: 1\nNbFrame: 6\n", "ED = 9 is outside"),
     ("ED: 1\nES: 0\nNbFrame: 6\n", "ES = 0 is outside")],
)  # fmt: skip
def test_info_cfg_missing_or_outside(camus, text, match):
    root, folder = camus
    (folder / "Info_4CH.cfg").write_text(text)
    raises(match, camus_datalist, root, path=folder / "Info_4CH.cfg")


def test_info_cfg_outside_actual_sequence(camus):
    root, folder = camus
    item = camus_datalist(root)[0]
    (folder / "Info_2CH.cfg").write_text("ED: 1\nES: 8\n")  # no NbFrame: checked against the file's 6 frames
    raises("ES = 8 is outside the sequence of 6", LoadCamusd(), item, path=folder / "Info_2CH.cfg")


def test_filelist_row_video_missing(tmp_path):
    root = write_echonet(tmp_path / "EchoNet-Dynamic", untraced=())
    (root / "Videos" / "0X2B.avi").unlink()
    raises("video of FileList row '0X2B' is missing", echonet_datalist, root, "val", path=root / "Videos" / "0X2B.avi")
    shutil.rmtree(root / "Videos")
    raises("missing", echonet_datalist, root, "train")
