"""Cine readers: DICOM (mono, RGB, JPEG baseline, the real pydicom sample), AVI, NIfTI, MetaImage, LoadCined."""

import math
import warnings

import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt, write_avi, write_dicom, write_itk
from monai.data import MetaTensor

from scripts.data import LoadCined, load_cine


@pytest.fixture(scope="module")
def frames():
    image, _ = phantom(60, 80, 6, seed=1)
    return np.moveaxis(image, -1, 0)  # [T, H, W] uint8


def test_dicom_mono_region_crop_spacing_frame_time(tmp_path, frames):
    path = write_dicom(tmp_path / "mono.dcm", frames, "mono", region=(10, 5, 69, 54), frame_time_ms=20.0)
    image, meta = load_cine(path)
    assert image.shape == (50, 60, 6) and image.dtype == np.float32
    np.testing.assert_allclose(image, np.moveaxis(frames, 0, -1)[5:55, 10:70] / 255.0, atol=1e-6)
    assert meta["spacing"] == pytest.approx((0.4, 0.3))
    assert meta["frame_rate"] == pytest.approx(50.0) and meta["frame_time_ms"] == pytest.approx(20.0)
    assert meta["crop"] == (5, 55, 10, 70) and meta["original_shape"] == (60, 80, 6)
    full, _ = load_cine(path, crop_to_region=False)
    assert full.shape == (60, 80, 6)


def test_dicom_rgb_luminance(tmp_path, frames):
    rgb = np.stack([frames, frames // 2, 255 - frames], axis=-1)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "rgb", region=None, frame_time_ms=None)
    image, meta = load_cine(path)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(image, np.moveaxis(expected, 0, -1), atol=1e-5)
    assert not meta["spacing_known"] and math.isnan(meta["spacing"][0]) and math.isnan(meta["frame_rate"])


def test_dicom_jpeg_baseline_ybr(tmp_path, frames):
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    path = write_dicom(tmp_path / "jpeg.dcm", rgb, "jpeg", region=(0, 0, 79, 59))
    image, meta = load_cine(path)
    assert image.shape == (60, 80, 6) and meta["photometric_interpretation"] == "YBR_FULL_422"
    assert np.abs(image - np.moveaxis(frames, 0, -1) / 255.0).mean() < 0.03  # lossy


def test_ybr_conversion_by_table_is_pydicoms_own(tmp_path, frames):
    """The colour cines decode to exactly pydicom's RGB (its float32 conversion, done once per (Y, Cb, Cr))."""
    import pydicom
    from pydicom import examples, pixels

    from scripts.data.video_io import _decode_dicom

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (*frames.shape, 3), dtype=np.uint8)  # saturated colours: clipping at 0 and 255
    colour[..., 0] = frames
    for path in (write_dicom(tmp_path / "colour.dcm", colour, "jpeg"), examples.get_path("ybr_color")):
        ds = pydicom.dcmread(path)
        assert str(ds.PhotometricInterpretation) == "YBR_FULL_422"
        assert np.array_equal(_decode_dicom(ds), pixels.pixel_array(ds)), path


def test_colour_jpeg_cines_are_read_as_their_luminance_plane(tmp_path, frames, monkeypatch):
    """A YBR JPEG-baseline cine is read as the Y plane libjpeg decodes alone (pydicom's Y exactly); against the full
    decode (RGB, then BT.601 luma) only the RGB's rounding and clipping differ. A frame that does not decode so falls
    back to the full decoder."""
    import pydicom
    from pydicom import examples, pixels

    import scripts.data.video_io as video_io

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (*frames.shape, 3), dtype=np.uint8)  # saturated colours: RGB clipped at 0 and 255
    colour[..., 0] = frames
    grey = np.repeat(frames[..., None], 3, axis=-1)
    paths = [write_dicom(tmp_path / f"{k}.dcm", c, "jpeg") for k, c in (("colour", colour), ("grey", grey))]
    for path in [*paths, examples.get_path("ybr_color")]:
        ds = pydicom.dcmread(path)
        luminance = video_io._jpeg_luminance(ds)
        assert luminance is not None and np.array_equal(luminance, pixels.pixel_array(ds, as_rgb=False)[..., 0]), path
        image, _ = load_cine(path, crop_to_region=False)
        with monkeypatch.context() as m:
            m.setattr(video_io, "_jpeg_luminance", lambda ds: None)
            full, _ = load_cine(path, crop_to_region=False)
        assert np.array_equal(image, np.moveaxis(luminance, 0, -1) / np.float32(255.0)), path
        levels = np.abs(image - full) * 255
        assert levels.mean() < 0.6 and (levels.max() <= 1.0 if "grey" in str(path) else True), (path, levels.max())
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # frames cut short: not decodable as Y alone
    assert video_io._jpeg_luminance(ds) is None


def test_pydicom_real_a4c_sample():
    from pydicom import examples

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, meta = load_cine(examples.get_path("ybr_color"))
    assert image.shape[-1] == 30 and image.shape[:2] == (193, 256)  # region 84-595 x 31-414 at half resolution
    assert meta["original_shape"] == (240, 320, 30) and meta["crop"] is not None
    assert meta["spacing"] == pytest.approx((1.021, 1.021), abs=1e-3)
    assert meta["frame_time_ms"] == pytest.approx(33.333) and meta["frame_rate"] == pytest.approx(30.0, abs=0.01)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.mean() > 0.02
    assert any("downsampled by 2" in str(w.message) for w in caught)


def test_avi_spacing_unknown(tmp_path, frames):
    write_avi(frames, tmp_path / "v.avi", fps=25.0)
    image, meta = load_cine(tmp_path / "v.avi")
    assert image.shape == (60, 80, 6)
    assert np.abs(image - np.moveaxis(frames, 0, -1) / 255.0).mean() < 0.05
    assert meta["frame_rate"] == pytest.approx(25.0) and not meta["spacing_known"]
    assert np.allclose(meta["affine"], np.eye(4))


def test_nifti_camus_orientation(tmp_path, frames):
    hwt = np.moveaxis(frames, 0, -1)
    save_nifti_hwt(hwt, tmp_path / "c.nii.gz", spacing_rc=(0.3, 0.2))
    image, meta = load_cine(tmp_path / "c.nii.gz")
    np.testing.assert_allclose(image, hwt / 255.0, atol=1e-6)
    assert meta["spacing"] == pytest.approx((0.3, 0.2))


def test_mhd_orientation(tmp_path, frames):
    write_itk(frames, tmp_path / "c.mhd", (0.2, 0.3, 1.0))
    image, meta = load_cine(tmp_path / "c.mhd")
    np.testing.assert_allclose(image, np.moveaxis(frames, 0, -1) / 255.0, atol=1e-6)
    assert meta["spacing"] == pytest.approx((0.3, 0.2))


def test_load_cined_contract(tmp_path, frames):
    path = write_dicom(tmp_path / "mono.dcm", frames, "mono", region=(10, 5, 69, 54))
    d = LoadCined(keys="image")({"image": str(path)})
    img = d["image"]
    assert isinstance(img, MetaTensor) and img.shape == (1, 50, 60, 6) and img.dtype == torch.float32
    np.testing.assert_allclose(img.pixdim.numpy(), [0.4, 0.3, 1.0], atol=1e-6)
    np.testing.assert_allclose(d["spacing"], [0.4, 0.3], atol=1e-6)
    assert d["frame_rate"] == pytest.approx(50.0) and d["label_frames"].shape == (6,) and not d["label_frames"].any()
