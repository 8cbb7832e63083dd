"""EchoNet-Dynamic: tracing -> mask as the official code, ED/ES by area, flags, warnings, missing video."""

import numpy as np
import pytest
from fixtures_echo import ellipse_trace, write_echonet

from scripts.data import LoadEchoNetd, echonet_datalist, trace_to_mask


@pytest.fixture(scope="module")
def echonet_root(tmp_path_factory):
    return write_echonet(tmp_path_factory.mktemp("EchoNet-Dynamic"))


@pytest.mark.parametrize(("a", "b"), [(40, 20), (30, 30)])
def test_polygon_area_of_traced_ellipse(a, b):
    mask = trace_to_mask(ellipse_trace(56, 56, a, b, n_chords=20), (112, 112))
    assert abs(mask.sum() / (np.pi * a * b) - 1) < 0.02
    assert mask[56, 56] == 1 and mask[56 - a - 2, 56] == 0  # long-axis row dropped: apex not filled beyond trace


def test_datalist_ed_es_and_warning(echonet_root):
    with pytest.warns(UserWarning, match="0X3C"):
        items = echonet_datalist(echonet_root, split="train")
    assert [d["case_id"] for d in items] == ["0X1A"]  # 0X3C (TRAIN) has no tracings
    d = items[0]
    assert d["ed"] == 20 and d["es"] == 5 and d["ef"] == 60.0 and d["frame_rate"] == 50.0
    assert d["image"].endswith("Videos/0X1A.avi") and d["trace_ed"].shape == (21, 4)
    with pytest.warns(UserWarning):
        assert len(echonet_datalist(echonet_root, split="all")) == 2


def test_load_flags_and_masks(echonet_root):
    with pytest.warns(UserWarning):
        item = echonet_datalist(echonet_root, split="all")[1]
    d = LoadEchoNetd()(item)
    img, lab = d["image"], d["label"]
    assert img.shape == (1, 112, 112, 30) and lab.shape == img.shape
    assert np.flatnonzero(d["label_frames"]).tolist() == [5, 20]
    areas = (lab.numpy()[0] == 1).sum(axis=(0, 1))
    assert areas[20] > areas[5] > 0 and areas.sum() == areas[20] + areas[5]
    assert d["ed_index"] == 20 and d["es_index"] == 5 and np.isnan(d["spacing"]).all()
    assert "trace_ed" not in d
