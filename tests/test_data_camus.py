"""CAMUS datalists (NIfTI and .mhd releases), ED -> ES ordering, labels, flags, spacing."""

import numpy as np
import pytest
from fixtures_echo import H_CAMUS, W_CAMUS, write_camus_mhd, write_camus_nifti

from scripts.data import LoadCamusd, camus_datalist


@pytest.fixture(scope="module")
def camus_root(tmp_path_factory):
    return write_camus_nifti(tmp_path_factory.mktemp("CAMUS_public"), n_patients=3, T=8, reversed_ids=(2,))


def lv_areas(label):
    return (np.asarray(label)[0] == 1).sum(axis=(0, 1))


def test_datalist_split_and_keys(camus_root):
    train = camus_datalist(camus_root)  # official split files by default
    assert [(d["patient"], d["view"]) for d in train] == [
        ("patient0001", "2CH"), ("patient0001", "4CH"), ("patient0002", "2CH"), ("patient0002", "4CH"),
    ]  # fmt: skip
    val = camus_datalist(camus_root, split="validation", views=("4CH",))
    assert [d["case_id"] for d in val] == ["patient0003_4CH"]
    d = train[0]
    assert d["ed"] == 0 and d["es"] == 7 and d["n_frames"] == 8 and d["ef"] == 55.0 and d["frame_rate"] == 25.0
    assert d["image"].endswith("patient0001_2CH_half_sequence.nii.gz") and d["label"].endswith("_gt.nii.gz")
    assert train[2]["ed"] == 7 and train[2]["es"] == 0
    assert len(camus_datalist(camus_root, split="all")) == 6


@pytest.mark.parametrize("index", [0, 2])  # patient0001 ED < ES, patient0002 ED > ES
def test_load_orders_ed_to_es(camus_root, index):
    item = camus_datalist(camus_root)[index]
    d = LoadCamusd()(item)
    img, lab = d["image"], d["label"]
    assert img.shape == (1, H_CAMUS, W_CAMUS, 8) and lab.shape == img.shape
    areas = lv_areas(lab)
    assert areas[0] == areas.max() and areas[-1] == areas.min() and np.all(np.diff(areas) <= 0)
    assert d["label_frames"].all() and d["ed_index"] == 0 and d["es_index"] == 7
    expected = np.arange(8) if index == 0 else np.arange(7, -1, -1)
    np.testing.assert_array_equal(d["frame_indices"], expected)
    np.testing.assert_allclose(d["spacing"], [0.3, 0.2], atol=1e-6)
    np.testing.assert_allclose(img.pixdim.numpy(), [0.3, 0.2, 1.0], atol=1e-6)
    assert set(np.unique(lab.numpy()).tolist()) == {0, 1, 2, 3} and 0 <= float(img.min()) <= float(img.max()) <= 1


def test_lv_only(camus_root):
    d = LoadCamusd(labels="lv")(camus_datalist(camus_root)[0])
    assert set(np.unique(d["label"].numpy()).tolist()) == {0, 1}


def test_mhd_release_ed_es_gt_only(tmp_path):
    root = write_camus_mhd(tmp_path / "camus_mhd", T=8)
    items = camus_datalist(root, split="training", views=("2CH",))
    assert len(items) == 1 and items[0]["ed"] == 7 and items[0]["es"] == 2 and items[0]["ef"] == 55.0
    assert items[0]["label"] == "" and items[0]["label_ed"].endswith("_ED_gt.mhd")
    d = LoadCamusd()(items[0])
    assert d["image"].shape == (1, H_CAMUS, W_CAMUS, 6)  # frames 8..3 (1-based), ED -> ES
    np.testing.assert_array_equal(d["frame_indices"], [7, 6, 5, 4, 3, 2])
    np.testing.assert_array_equal(d["label_frames"], [True, False, False, False, False, True])
    areas = lv_areas(d["label"])
    assert areas[0] > areas[-1] > 0 and areas[1:-1].sum() == 0
    np.testing.assert_allclose(d["spacing"], [0.3, 0.2], atol=1e-6)
