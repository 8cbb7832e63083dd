"""Labels predicted at network resolution land on the right pixels of the input file (keep_aspect on and off), and
the written label opens over its source: the whole frame, in the voxel order ITK and MONAI ``LoadImage`` give the
source (x = column, y = row, t = frame), with the image NIfTI of ``--save_image`` in exactly the label's geometry.
"""

import cv2
import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt, write_avi, write_dicom
from monai.transforms import LoadImage

from scripts.data import EchoDataError, LoadCined, ResizeCined, load_cine
from scripts.geometry import image_nifti_like_label, label_nifti_like_input, uncrop
from scripts.inference import SaveCineResultd
from scripts.serving import LabelToInputGeometryd

REGION = (8, 4, 88, 76)  # DICOM region (x0, y0, x1, y1), inclusive: rows 4..76, columns 8..88 of an 80 x 96 frame


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _itk_geometry(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ITK's view of a file: (array (t, y, x), spacing (x, y, t), origin, direction 3 x 3)."""
    image = itk.imread(str(path))
    return (
        np.asarray(itk.array_view_from_image(image)).copy(),
        np.asarray(image.GetSpacing(), dtype=float),
        np.asarray(image.GetOrigin(), dtype=float),
        np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=float),
    )


def _saved(image: nib.Nifti1Image, path) -> nib.Nifti1Image:
    """Save and reload (the affine on disk is float32, as the label's)."""
    nib.save(image, str(path))
    return nib.load(str(path))


def _segment(path, lv_HWT: np.ndarray, tmp_path, keep_aspect: bool = True) -> dict[str, str]:
    """Run the inference writer on a "perfect network": the known LV of the segmented region, resized to 48 x 48."""
    d = LoadCined(keys="image")({"image": str(path), "source": str(path)})
    d["label"] = torch.as_tensor(lv_HWT[None])
    d = ResizeCined(keys=("image", "label"), spatial_size=48, keep_aspect=keep_aspect)(d)
    assert d["image"].shape[1:3] == (48, 48)
    return SaveCineResultd(tmp_path / "out", clinical=False, overlay=False, keep_aspect=keep_aspect).write(
        d["label"], path
    )


@pytest.fixture()
def dicom_case(tmp_path):
    """An 80 x 96 x 5 DICOM whose ultrasound region (73 x 81 pixels, 0.4 mm rows, 0.3 mm columns) is not square.

    Returns the path, the phantom's LV on the whole frame ``[80, 96, 5]`` and on the region ``[73, 81, 5]``.
    """
    image, label = phantom(80, 96, 5, seed=2)
    path = write_dicom(tmp_path / "us.dcm", np.moveaxis(image, -1, 0), kind="mono", region=REGION)
    lv = (label == 1).astype(np.uint8)
    return path, lv, np.ascontiguousarray(lv[4:77, 8:89])


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_save_cine_result_maps_labels_back_to_the_input(dicom_case, tmp_path, keep_aspect):
    path, lv, lv_in_region = dicom_case
    d = LoadCined(keys="image")({"image": str(path), "source": str(path)})
    d["label"] = torch.as_tensor(lv_in_region[None])
    d = ResizeCined(keys=("image", "label"), spatial_size=48, keep_aspect=keep_aspect)(d)
    assert d["image"].shape == (1, 48, 48, 5)
    saver = SaveCineResultd(tmp_path / "out", clinical=False, overlay=False, keep_aspect=keep_aspect)
    files = saver.write(d["label"], path)
    saved = np.asarray(nib.load(files["label"]).dataobj)
    assert saved.shape == (96, 80, 5)  # the whole frame, x = column first
    saved_hwt = np.transpose(saved, (1, 0, 2))
    assert _dice(saved_hwt == 1, lv == 1) > 0.93
    outside = np.ones(saved_hwt.shape, bool)
    outside[4:77, 8:89] = False
    assert not saved_hwt[outside].any()
    if keep_aspect:  # the resized pixels are square in mm: 81 columns x 0.3 mm padded to 73 rows x 0.4 mm
        np.testing.assert_allclose(d["spacing"], [73 * 0.4 / 48, 73 * 0.4 / 48], rtol=0.02)


def test_monailabel_geometry_transform_uses_the_same_inverse(dicom_case, tmp_path):
    path, lv, lv_in_region = dicom_case
    d = LoadCined(keys="image")({"image": str(path)})
    d["pred"] = torch.as_tensor(lv_in_region[None])
    d = ResizeCined(keys=("image", "pred"), spatial_size=48, mode=("bilinear", "nearest"), keep_aspect=True)(d)
    out = LabelToInputGeometryd(keys="pred", keep_aspect=True)({**d, "image_path": str(path)})
    assert out["pred"].shape == (1, 96, 80, 5)
    assert _dice(out["pred"][0].numpy() == 1, np.transpose(lv, (1, 0, 2)) == 1) > 0.93
    # MONAI Label's Restored keeps an array whose shape is spatial_shape; its writer uses original_affine
    assert tuple(out["image"].meta["spatial_shape"]) == (96, 80, 5)
    files = _segment(path, lv_in_region, tmp_path)
    written = nib.load(files["label"])
    np.testing.assert_allclose(out["image"].meta["original_affine"], written.affine)
    np.testing.assert_array_equal(out["pred"][0].numpy(), np.asarray(written.dataobj))


def test_dicom_label_and_image_open_over_the_source(dicom_case, tmp_path):
    """ITK and MONAI LoadImage read the DICOM and the label with the same size, axis order, origin and direction."""
    path, lv, lv_in_region = dicom_case
    files = _segment(path, lv_in_region, tmp_path)
    source, src_spacing, src_origin, src_direction = _itk_geometry(path)
    label, spacing, origin, direction = _itk_geometry(files["label"])
    assert source.shape == label.shape == (5, 80, 96)  # ITK arrays (t, y, x)
    np.testing.assert_allclose(src_spacing, [1, 1, 1])  # ITK ignores the ultrasound region's calibration
    np.testing.assert_allclose(spacing, [0.3, 0.4, 0.02], rtol=1e-5)  # the label carries it (mm, mm, s)
    np.testing.assert_allclose(origin, src_origin)
    np.testing.assert_allclose(direction, src_direction)
    lv_tyx = np.moveaxis(lv, -1, 0) == 1
    assert _dice(label == 1, lv_tyx) > 0.93
    y0, y1, x0, x1 = 4, 77, 8, 89
    assert label[:, y0:y1, x0:x1].sum() == label.sum() > 0  # the LV lies inside the ultrasound region

    loader = LoadImage(image_only=True)  # default readers: ITKReader for .dcm, NibabelReader for .nii.gz
    source_m, label_m = loader(str(path)), loader(files["label"])
    assert source_m.shape == label_m.shape == (96, 80, 5)
    np.testing.assert_allclose(np.sign(np.diag(label_m.affine)), np.sign(np.diag(source_m.affine)))
    assert _dice(label_m.numpy() == 1, np.transpose(lv, (1, 0, 2)) == 1) > 0.93

    _, meta = load_cine(path)
    image = _saved(image_nifti_like_label(path, meta), tmp_path / "us_image.nii.gz")
    written = nib.load(files["label"])
    assert image.shape == written.shape and image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(image.affine, written.affine)
    pixels, *_ = _itk_geometry(tmp_path / "us_image.nii.gz")
    np.testing.assert_array_equal(pixels, source)  # the source's own uint8 values, whole frame
    np.testing.assert_array_equal(loader(str(tmp_path / "us_image.nii.gz")).numpy(), source_m.numpy())


def test_avi_label_and_image_cover_the_video_frame(tmp_path):
    image, label = phantom(72, 88, 6, seed=1)
    path = tmp_path / "clip.avi"
    write_avi(np.moveaxis(image, -1, 0), path, fps=25.0)
    lv = (label == 1).astype(np.uint8)
    files = _segment(path, lv, tmp_path)
    written = nib.load(files["label"])
    assert written.shape == (88, 72, 6)  # (x = column, y = row, t), as ITK would order a 2D + t image
    np.testing.assert_allclose(written.affine, np.diag([-1.0, -1.0, 0.04, 1.0]))  # pixels, 1 / 25 s per frame
    assert _dice(np.asarray(written.dataobj) == 1, np.transpose(lv, (1, 0, 2)) == 1) > 0.93
    label_itk, spacing, origin, direction = _itk_geometry(files["label"])
    assert label_itk.shape == (6, 72, 88)
    np.testing.assert_allclose(direction, np.eye(3))
    np.testing.assert_allclose(origin, 0)

    cap = cv2.VideoCapture(str(path))  # neither ITK nor MONAI LoadImage reads AVI: OpenCV is the reference
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        ok, frame = cap.read()
    cap.release()
    grey_xyt = np.transpose(np.stack(frames), (2, 1, 0))  # (t, y, x) -> (x, y, t)
    _, meta = load_cine(path)
    picture = _saved(image_nifti_like_label(path, meta), tmp_path / "clip_image.nii.gz")
    assert picture.shape == written.shape
    np.testing.assert_array_equal(picture.affine, written.affine)
    assert np.abs(np.asarray(picture.dataobj).astype(int) - grey_xyt.astype(int)).max() <= 1  # luminance rounding


def test_metaimage_label_keeps_the_files_spacing_origin_direction(tmp_path):
    image, label = phantom(48, 40, 5, seed=4)
    source = itk.image_from_array(np.ascontiguousarray(np.moveaxis(image, -1, 0)))  # ITK array (t, y, x)
    source.SetSpacing([0.2, 0.3, 0.05])
    source.SetOrigin([12.5, -3.0, 0.0])
    source.SetDirection(itk.matrix_from_array(np.diag([1.0, -1.0, 1.0])))  # rows run towards -y
    path = tmp_path / "cine.mhd"
    itk.imwrite(source, str(path))
    lv = (label == 1).astype(np.uint8)
    files = _segment(path, lv, tmp_path)
    src, src_spacing, src_origin, src_direction = _itk_geometry(path)
    lab, spacing, origin, direction = _itk_geometry(files["label"])
    assert lab.shape == src.shape == (5, 48, 40)
    np.testing.assert_allclose(spacing, src_spacing, rtol=1e-6)
    np.testing.assert_allclose(origin, src_origin, atol=1e-6)
    np.testing.assert_allclose(direction, src_direction, atol=1e-6)
    assert _dice(lab == 1, np.moveaxis(lv, -1, 0) == 1) > 0.93

    loader = LoadImage(image_only=True)
    source_m, label_m = loader(str(path)), loader(files["label"])
    assert source_m.shape == label_m.shape == (40, 48, 5)
    np.testing.assert_allclose(label_m.affine, source_m.affine, atol=1e-6)

    _, meta = load_cine(path)
    picture = _saved(image_nifti_like_label(path, meta), tmp_path / "cine_image.nii.gz")
    written = nib.load(files["label"])
    assert picture.shape == written.shape
    np.testing.assert_array_equal(picture.affine, written.affine)
    np.testing.assert_array_equal(_itk_geometry(tmp_path / "cine_image.nii.gz")[0], src)


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
    picture = _saved(image_nifti_like_label(path, load_cine(path)[1]), tmp_path / "camus_image.nii.gz")
    assert picture.shape == saved.shape
    np.testing.assert_array_equal(picture.affine, saved.affine)
    np.testing.assert_array_equal(np.asarray(picture.dataobj), np.asarray(reference.dataobj))


def test_full_frame_labels_are_kept_and_wrong_shapes_are_refused(dicom_case):
    path, lv, lv_in_region = dicom_case
    _, meta = load_cine(path)
    np.testing.assert_array_equal(uncrop(lv, meta), lv)  # already the whole frame
    from_region = np.asarray(label_nifti_like_input(lv_in_region, path, meta).dataobj)
    np.testing.assert_array_equal(from_region, np.transpose(lv * (uncrop(lv_in_region, meta) > 0), (1, 0, 2)))
    with pytest.raises(EchoDataError, match="fits neither"):
        uncrop(lv[:50, :50], meta)
