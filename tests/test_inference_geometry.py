"""Labels predicted at network resolution land on the right pixels of the input file (keep_aspect on and off)."""

import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt, write_dicom

from scripts.data import LoadCined, ResizeCined
from scripts.inference import SaveCineResultd
from scripts.serving import LabelToInputGeometryd


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture()
def dicom_case(tmp_path):
    """A DICOM whose ultrasound region (73 x 81 pixels, 0.4 mm rows, 0.3 mm columns) is not square in mm."""
    image, label = phantom(80, 96, 5, seed=2)
    path = write_dicom(tmp_path / "us.dcm", np.moveaxis(image, -1, 0), kind="mono", region=(8, 4, 88, 76))
    lv_in_region = (label[4:77, 8:89] == 1).astype(np.uint8)  # [73, 81, 5]
    return path, lv_in_region


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_save_cine_result_maps_labels_back_to_the_input(dicom_case, tmp_path, keep_aspect):
    path, lv = dicom_case
    d = LoadCined(keys="image")({"image": str(path), "source": str(path)})
    d["label"] = torch.as_tensor(lv[None])
    d = ResizeCined(keys=("image", "label"), spatial_size=48, keep_aspect=keep_aspect)(d)
    assert d["image"].shape == (1, 48, 48, 5)
    saver = SaveCineResultd(tmp_path / "out", clinical=False, overlay=False, keep_aspect=keep_aspect)
    files = saver.write(d["label"], path)
    saved = np.asarray(nib.load(files["label"]).dataobj)
    assert saved.shape == lv.shape
    assert _dice(saved == 1, lv == 1) > 0.93
    if keep_aspect:  # the resized pixels are square in mm: 81 columns x 0.3 mm padded to 73 rows x 0.4 mm
        np.testing.assert_allclose(d["spacing"], [73 * 0.4 / 48, 73 * 0.4 / 48], rtol=0.02)


def test_monailabel_geometry_transform_uses_the_same_inverse(dicom_case):
    path, lv = dicom_case
    d = LoadCined(keys="image")({"image": str(path)})
    d["pred"] = torch.as_tensor(lv[None])
    d = ResizeCined(keys=("image", "pred"), spatial_size=48, mode=("bilinear", "nearest"), keep_aspect=True)(d)
    out = LabelToInputGeometryd(keys="pred", keep_aspect=True)({**d, "image_path": str(path)})
    assert out["pred"].shape == (1, *lv.shape)
    assert _dice(out["pred"][0].numpy() == 1, lv == 1) > 0.93


def test_camus_style_nifti_with_anisotropic_pixels_round_trips(tmp_path):
    """A CAMUS-layout NIfTI (x, y, t on disk; 0.3 mm rows, 0.2 mm columns) comes back in the file's own layout."""
    image, label = phantom(90, 60, 4, seed=3)  # 27 x 12 mm: padded with columns to a square extent
    path = tmp_path / "patient0001_4CH_half_sequence.nii.gz"
    save_nifti_hwt(image, path, spacing_rc=(0.3, 0.2))
    lv = (label == 1).astype(np.uint8)
    d = LoadCined(keys="image")({"image": str(path), "source": str(path)})
    d["label"] = torch.as_tensor(lv[None])
    d = ResizeCined(keys=("image", "label"), spatial_size=40, keep_aspect=True)(d)
    assert d["resize_padding"].tolist()[:2] == [0, 0] and sum(d["resize_padding"].tolist()[2:]) == 75  # 135 cols
    files = SaveCineResultd(tmp_path / "out", clinical=False, overlay=False, keep_aspect=True).write(d["label"], path)
    saved = nib.load(files["label"])
    reference = nib.load(str(path))
    assert saved.shape == reference.shape
    np.testing.assert_allclose(saved.affine, reference.affine)
    back_hwt = np.transpose(np.asarray(saved.dataobj), (1, 0, 2))
    assert _dice(back_hwt == 1, lv == 1) > 0.93
