"""Clip sampling, resize with spacing, augmentations shared by all frames and by image and label."""

import numpy as np
import pytest
import torch
from fixtures_echo import phantom, write_camus_nifti
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose

from scripts.data import (
    LoadCamusd,
    RandContrastCined,
    RandGammaCined,
    RandRotateCined,
    RandScaleCined,
    ResizeCined,
    SampleClipd,
    aspect_padding,
    camus_datalist,
    clip_frame_indices,
)


def test_clip_indices():
    np.testing.assert_array_equal(clip_frame_indices(0, 18, 10), np.rint(np.linspace(0, 18, 10)))
    assert clip_frame_indices(20, 5, 4).tolist() == [20, 15, 10, 5]  # linear: backwards in time
    assert clip_frame_indices(20, 5, 4, n_total=30, mode="forward").tolist() == [20, 25, 0, 5]
    assert clip_frame_indices(2, 4, 5).tolist() == [2, 2, 3, 4, 4]  # short span: repeats


def test_sample_clip_keeps_flags():
    img = MetaTensor(torch.rand(1, 8, 8, 30), affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0])))
    flags = np.zeros(30, bool)
    flags[[5, 20]] = True
    d = {"image": img, "label": torch.zeros(1, 8, 8, 30, dtype=torch.uint8), "label_frames": flags}
    d.update(ed_index=20, es_index=5)
    out = SampleClipd(num_frames=10)(d)
    assert out["image"].shape == (1, 8, 8, 10) and isinstance(out["image"], MetaTensor)
    assert out["label_frames"].tolist() == [True] + [False] * 8 + [True]
    assert out["frame_indices"][0] == 20 and out["frame_indices"][-1] == 5
    assert (out["ed_index"], out["es_index"]) == (0, 9)
    torch.testing.assert_close(out["image"].as_tensor()[..., 0], img.as_tensor()[..., 20])
    np.testing.assert_allclose(out["image"].pixdim.numpy(), [0.5, 0.5, 1.0])


def test_resize_updates_spacing_and_keeps_labels():
    image, label = phantom(48, 40, 3)
    aff = torch.diag(torch.tensor([0.3, 0.2, 1.0, 1.0], dtype=torch.float64))
    d = {
        "image": MetaTensor(torch.as_tensor(image[None] / 255.0, dtype=torch.float32), affine=aff),
        "label": MetaTensor(torch.as_tensor(label[None]), affine=aff),
        "spacing": np.array([0.3, 0.2], np.float32),
    }
    out = ResizeCined(spatial_size=(96, 80))(d)
    assert out["image"].shape == (1, 96, 80, 3) and out["label"].dtype == torch.uint8
    np.testing.assert_allclose(out["spacing"], [0.15, 0.1], rtol=1e-6)
    np.testing.assert_allclose(out["image"].pixdim.numpy(), [0.15, 0.1, 1.0], rtol=1e-6)
    assert set(torch.unique(out["label"]).tolist()) == {0, 1, 2, 3}
    area_mm2 = (out["label"] == 1).sum().item() * 0.15 * 0.1
    assert area_mm2 == pytest.approx((label == 1).sum() * 0.3 * 0.2, rel=0.03)


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "expected"),
    [
        ((240, 320), (0.5, 0.5), (128, 128), (40, 40, 0, 0)),  # 4:3 frame, square pixels: bands above and below
        ((320, 240), None, (64, 64), (0, 0, 40, 40)),  # portrait, unknown spacing counts as square pixels
        ((100, 200), (0.4, 0.2), (64, 64), (0, 0, 0, 0)),  # anisotropic pixels, physically square already
        ((101, 100), (float("nan"), float("nan")), (32, 32), (0, 0, 0, 1)),  # odd padding goes to the right
        ((60, 80), (1.0, 1.0), (96, 64), (30, 30, 0, 0)),  # non-square target: 3:2 physical aspect
    ],
)
def test_aspect_padding(shape, spacing, target, expected):
    assert aspect_padding(*shape, spacing, target) == expected


def _disc_labels(H: int, W: int, cy: float, cx: float, radius_mm: float, spacing: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (np.hypot((yy - cy) * spacing[0], (xx - cx) * spacing[1]) < radius_mm).astype(np.uint8)


def test_resize_keep_aspect_keeps_shape_geometry_and_restores():
    """A 4:3 frame with a circle stays a circle (squashing makes it an ellipse); labels map back onto the input."""
    from scripts.inference import restore_labels

    H, W, T, spacing = 60, 80, 2, (0.5, 0.5)
    label = np.repeat(_disc_labels(H, W, 25.0, 55.0, 8.0, spacing)[..., None], T, axis=-1)
    aff = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    d = {
        "image": MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), affine=aff),
        "label": MetaTensor(torch.as_tensor(label[None]), affine=aff),
        "spacing": np.asarray(spacing, np.float32),
    }
    out = ResizeCined(spatial_size=64, keep_aspect=True)(d)
    assert out["label"].shape == (1, 64, 64, T)
    assert out["resize_padding"].tolist() == [10, 10, 0, 0]
    np.testing.assert_allclose(out["spacing"], [0.625, 0.625], rtol=1e-6)  # 80 x 0.5 mm over 64 pixels, both axes
    np.testing.assert_allclose(out["label"].pixdim.numpy()[:2], [0.625, 0.625], rtol=1e-6)
    rows, cols = np.nonzero(out["label"].as_tensor()[0, ..., 0].numpy())
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still round
    # The affine maps the disc's centre (output pixels) to the same place in mm as in the input.
    centre_out = out["label"].affine.numpy() @ np.array([rows.mean(), cols.mean(), 0.0, 1.0])
    np.testing.assert_allclose(centre_out[:2], [25.0 * 0.5, 55.0 * 0.5], atol=0.35)
    squashed = ResizeCined(spatial_size=64)(d)
    rows_s, cols_s = np.nonzero(squashed["label"].as_tensor()[0, ..., 0].numpy())
    assert (rows_s.max() - rows_s.min()) - (cols_s.max() - cols_s.min()) >= 3  # squashing stretches rows

    back = restore_labels(out["label"].as_tensor()[0].numpy(), H, W, spacing, keep_aspect=True)
    assert back.shape == (H, W, T)
    dice = 2 * (back & label).sum() / (back.sum() + label.sum())
    assert dice > 0.95
    wrong = restore_labels(out["label"].as_tensor()[0].numpy(), H, W, spacing, keep_aspect=False)
    assert 2 * (wrong & label).sum() / (wrong.sum() + label.sum()) < dice - 0.1  # the inverse must match the forward


AUGS = [
    RandGammaCined(prob=1.0),
    RandContrastCined(prob=1.0),
    RandRotateCined(prob=1.0, degrees=30),
    RandScaleCined(prob=1.0, scale=(0.7, 0.8)),
]


@pytest.mark.parametrize("aug", AUGS, ids=lambda a: type(a).__name__)
def test_augmentation_same_draw_for_every_frame(aug):
    image, label = phantom(48, 40, 1, seed=4)
    d = {
        "image": MetaTensor(torch.as_tensor(np.repeat(image, 6, -1)[None] / 255.0, dtype=torch.float32)),
        "label": MetaTensor(torch.as_tensor(np.repeat(label, 6, -1)[None])),
        "spacing": np.array([0.3, 0.2], np.float32),
    }
    aug.set_random_state(seed=7)
    out = aug(d)
    img, lab = out["image"].as_tensor(), out["label"].as_tensor()
    assert img.shape == (1, 48, 40, 6) and lab.dtype == torch.uint8 and img.dtype == torch.float32
    assert not torch.equal(img, d["image"].as_tensor())  # it did something
    for t in range(1, 6):  # identical frames stay identical
        assert torch.equal(img[..., t], img[..., 0]) and torch.equal(lab[..., t], lab[..., 0])
    assert 0 <= img.min() and img.max() <= 1
    if isinstance(aug, (RandRotateCined, RandScaleCined)):  # label moved with the image: LV stays dark blood pool
        lv = img[lab == 1]
        assert lv.numel() > 0 and lv.mean() < 0.2 and img[lab == 2].mean() > 0.55
        assert set(torch.unique(lab).tolist()) <= {0, 1, 2, 3}
    if isinstance(aug, RandScaleCined):
        assert (lab == 1).sum() < (d["label"] == 1).sum()
        assert out["spacing"][0] > 0.3


def test_prob_zero_is_identity():
    d = {"image": torch.rand(1, 8, 8, 3)}
    assert RandGammaCined(prob=0.0)(d)["image"] is d["image"]


def test_camus_pipeline_batches(tmp_path):
    root = write_camus_nifti(tmp_path / "CAMUS_public", n_patients=2, T=7, reversed_ids=(1,))
    train = Compose([
        LoadCamusd(labels="lv"), SampleClipd(num_frames=5), ResizeCined(spatial_size=32),
        RandGammaCined(), RandContrastCined(), RandRotateCined(), RandScaleCined(),
    ])  # fmt: skip
    train.set_random_state(seed=0)
    batch = next(iter(DataLoader(Dataset(camus_datalist(root), train), batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32, 5) and batch["label"].shape == (2, 1, 32, 32, 5)
    assert batch["label_frames"].shape == (2, 5) and batch["label_frames"].all()
    assert batch["spacing"].shape == (2, 2)
