"""What the annotator sees lines up: the image MONAI Label hands a viewer (:func:`scripts.serving.viewer_image`) and
the label ``/infer`` returns for it read, as 3D Slicer reads them (ITK), with the same size, spacing, origin and
direction, for DICOM, AVI, NIfTI and MetaImage cines; a label an annotator draws on that image and saves (written by
ITK with the image's geometry, as Slicer writes a labelmap) is accepted back and read on the right pixels by the
corrections (``LoadCorrectionsd``) and ``/train`` (``LoadLabelledCined``) readers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures_echo import (
    annotate_as_slicer,
    assert_same_geometry,
    itk_view,
    phantom,
    save_nifti_hwt,
    write_avi,
    write_dicom,
)

from scripts.data import LoadCined, ResizeCined, load_cine
from scripts.geometry import labels_from_nifti_like_input
from scripts.serving import (
    LabelToInputGeometryd,
    LoadLabelledCined,
    check_uploaded_label,
    holds_its_pixels,
    remove_viewer_image,
    viewer_image,
    viewer_image_name,
    viewer_reads_as_is,
)

REGION = (8, 4, 88, 76)  # DICOM region (x0, y0, x1, y1), inclusive; 0.3 mm columns, 0.4 mm rows (fixtures_echo)
DRAWN = (slice(30, 50), slice(30, 60))  # rows, columns of the whole frame an annotator fills, inside REGION
DRAWN_FRAMES = (0, 3)


def write_label_as_monailabel(path: str | Path, out: Path) -> Path:
    """The label ``/infer`` returns for ``path``: the bundle's :class:`LabelToInputGeometryd` on a "network output"
    (the phantom's LV of the segmented region), written as MONAI Label's ``Writer`` writes it (ITK, the affine taken
    from RAS to LPS)."""
    d = LoadCined(keys="image")({"image": str(path)})
    image, _ = load_cine(path)
    d["pred"] = torch.as_tensor((image > 0.5).astype(np.uint8)[None])
    d = ResizeCined(keys=("image", "pred"), spatial_size=48, mode=("bilinear", "nearest"), keep_aspect=True)(d)
    d = LabelToInputGeometryd(keys="pred", keep_aspect=True)({**d, "image_path": str(path)})
    array = d["pred"][0].numpy()  # file voxel order (x, y, t)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ d["image"].meta["original_affine"]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    written = itk.image_from_array(np.ascontiguousarray(array.transpose()))
    written.SetSpacing(spacing.tolist())
    written.SetOrigin(affine[:3, 3].tolist())
    written.SetDirection(itk.matrix_from_array(np.ascontiguousarray(affine[:3, :3] / spacing)))
    itk.imwrite(written, str(out))
    return out


def dicom(tmp_path: Path) -> Path:
    image, _ = phantom(80, 96, 5, seed=2)
    return write_dicom(tmp_path / "us.dcm", np.moveaxis(image, -1, 0), kind="mono", region=REGION)


def avi(tmp_path: Path) -> Path:
    image, _ = phantom(72, 88, 5, seed=1)
    path = tmp_path / "clip.avi"
    write_avi(np.moveaxis(image, -1, 0), path, fps=25.0)
    return path


def nifti(tmp_path: Path) -> Path:
    image, _ = phantom(70, 60, 5, seed=3)
    path = tmp_path / "patient0001_4CH_half_sequence.nii.gz"
    save_nifti_hwt(image, path, spacing_rc=(0.3, 0.2))
    return path


def metaimage(tmp_path: Path, suffix: str = ".mhd") -> Path:
    image, _ = phantom(64, 56, 5, seed=4)
    source = itk.image_from_array(np.ascontiguousarray(np.moveaxis(image, -1, 0)))  # (t, y, x)
    source.SetSpacing([0.2, 0.3, 0.05])
    source.SetOrigin([12.5, -3.0, 0.0])
    source.SetDirection(itk.matrix_from_array(np.diag([1.0, -1.0, 1.0])))  # rows run towards -y
    path = tmp_path / f"cine{suffix}"
    itk.imwrite(source, str(path))
    return path


CASES = {"dicom": dicom, "avi": avi, "nifti": nifti, "mhd": metaimage, "mha": lambda p: metaimage(p, ".mha")}
HANDED_OUT_AS_IS = {"nifti", "mha"}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_viewer_image_and_label_read_with_the_same_geometry(kind: str, tmp_path: Path) -> None:
    source = CASES[kind](tmp_path)
    handed = viewer_image(source, tmp_path / "viewer", source.name.split(".")[0])
    assert viewer_reads_as_is(source) == (kind in HANDED_OUT_AS_IS)
    assert (handed == source) == (kind in HANDED_OUT_AS_IS)
    assert handed.name == viewer_image_name(source.name.split(".")[0], source)
    image = itk_view(handed)
    label = itk_view(write_label_as_monailabel(source, tmp_path / "label.nii.gz"))
    assert_same_geometry(image, label)
    height, width, frames = load_cine(source)[1]["original_shape"]
    np.testing.assert_array_equal(image["size"], [width, height, frames])  # the whole frame, x = column first


def test_dicom_is_handed_out_in_the_ultrasound_regions_millimetres(tmp_path: Path) -> None:
    """ITK reads the DICOM with 1 mm pixels: the file itself would show the label at another scale. The copy
    handed out carries the region's 0.3 mm x 0.4 mm and the frame time, like the label, and the DICOM's pixels."""
    source = dicom(tmp_path)
    as_read = itk_view(source)
    np.testing.assert_allclose(as_read["spacing"], [1, 1, 1])
    handed = itk_view(viewer_image(source, tmp_path / "viewer", "us"))
    np.testing.assert_allclose(handed["spacing"], [0.3, 0.4, 0.02], rtol=1e-5)
    np.testing.assert_array_equal(handed["array"], as_read["array"])
    label = itk_view(write_label_as_monailabel(source, tmp_path / "label.nii.gz"))
    assert_same_geometry(handed, label)
    assert not label["array"][:, :4].any() and not label["array"][:, 77:].any()  # 0 outside the region's rows


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_label_drawn_on_the_handed_out_image_is_read_on_the_same_pixels(kind: str, tmp_path: Path) -> None:
    """Saved back (``save_label``'s check), then read by ``/train``'s loader and by the corrections' reader: the
    drawn LV lies on the same pixels of the cine the network reads (a DICOM's region cut out the same way)."""
    source = CASES[kind](tmp_path)
    handed = viewer_image(source, tmp_path / "viewer", "case")
    drawing_tyx = annotate_as_slicer(handed, tmp_path / "annotated.nii.gz", *DRAWN, DRAWN_FRAMES)
    check_uploaded_label(tmp_path / "annotated.nii.gz", "annotated.nii.gz", source)
    expected_HWT = np.moveaxis(drawing_tyx, 0, -1)
    _, meta = load_cine(source)
    if meta.get("crop") is not None:
        y0, y1, x0, x1 = meta["crop"]
        expected_HWT = expected_HWT[y0:y1, x0:x1]

    item = LoadLabelledCined(labels="lv")({"image": str(source), "label": str(tmp_path / "annotated.nii.gz")})
    first, last = DRAWN_FRAMES
    np.testing.assert_array_equal(item["label"][0].numpy(), expected_HWT[..., first : last + 1])
    assert item["label_frames"].tolist() == [f in DRAWN_FRAMES for f in range(first, last + 1)]
    assert tuple(item["image"].shape[1:3]) == expected_HWT.shape[:2]

    corrections = labels_from_nifti_like_input(tmp_path / "annotated.nii.gz", source, meta)
    np.testing.assert_array_equal(corrections, expected_HWT)


def test_the_copy_is_made_once_and_again_when_the_cine_changes(tmp_path: Path) -> None:
    source = dicom(tmp_path)
    folder = tmp_path / "viewer"
    copy = viewer_image(source, folder, "us")
    made = copy.stat().st_mtime_ns
    assert oct(copy.stat().st_mode & 0o777) == oct(0o644)
    time.sleep(0.01)
    assert viewer_image(source, folder, "us").stat().st_mtime_ns == made  # kept
    image, _ = phantom(80, 96, 5, seed=9)
    write_dicom(source, np.moveaxis(image, -1, 0), kind="mono", region=REGION)
    os.utime(source, ns=(made + 10**9, made + 10**9))
    again = viewer_image(source, folder, "us")
    assert again.stat().st_mtime_ns != made
    np.testing.assert_array_equal(itk_view(again)["array"], itk_view(source)["array"])
    assert sorted(p.name for p in folder.iterdir()) == ["us.nii.gz", "us.nii.gz.source"]  # no partial file left
    remove_viewer_image(folder, "us")
    assert not any(folder.iterdir())


def test_which_metaimage_and_nrrd_files_hold_their_pixels(tmp_path: Path) -> None:
    assert not holds_its_pixels(metaimage(tmp_path, ".mhd"))
    assert holds_its_pixels(metaimage(tmp_path, ".mha"))
    attached = tmp_path / "attached.nrrd"
    attached.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 1\nencoding: raw\n\n" + bytes(4))
    detached = tmp_path / "detached.nrrd"
    detached.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 1\nencoding: raw\ndata file: x.raw\n\n")
    assert holds_its_pixels(attached) and not holds_its_pixels(detached)
    assert nib.load(str(viewer_image(metaimage(tmp_path, ".mhd"), tmp_path / "v", "cine"))).shape == (56, 64, 5)
