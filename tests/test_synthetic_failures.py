"""The synthetic generator's failure modes and hard split: each mode measured in the images, same seed on vs off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.synthetic import FAILURE_MODES, generate_sequence, generator_version, write_camus_dataset
from scripts.synthetic.failures import longest_run
from scripts.synthetic.writers import dataset_stamp

SIZE = 80
ANATOMY_FIXED = ("dropout", "shadow", "clutter", "gain_drift", "decorrelation", "background")


def pair(seed: int, mode: str, **kw) -> tuple[dict, dict]:
    """The same cine without any failure mode and with only ``mode``."""
    args = {"view": "4CH", "size": SIZE, "n_frames": 10, **kw}
    return generate_sequence(seed, failures=(), **args), generate_sequence(seed, failures=(mode,), **args)


def polar(seq: dict) -> tuple[np.ndarray, np.ndarray]:
    """Relative depth and angle (fraction of the half-angle) of every pixel centre from the probe."""
    geo, size = seq["geometry"], seq["image"].shape[0]
    sp = seq["spacing_mm"][0]
    c = (np.arange(size) + 0.5) * sp
    z, x = np.meshgrid(c - geo["probe_xz_mm"][1], c - 0.5 * geo["fov_mm"] - geo["probe_xz_mm"][0], indexing="ij")
    return np.hypot(x, z) / geo["depth_mm"], np.arctan2(x, z) / np.deg2rad(geo["half_angle_deg"])


def in_sector(seq: dict) -> np.ndarray:
    rel, ang = polar(seq)
    return (rel < 0.97) & (np.abs(ang) < 0.97)


def test_api_names_keys_and_json() -> None:
    assert FAILURE_MODES == (
        "dropout", "shadow", "clutter", "gain_drift", "decorrelation", "out_of_plane", "translation", "frame_rate",
        "background",
    )  # fmt: skip
    with pytest.raises(ValueError, match="bogus"):
        generate_sequence(0, size=48, n_frames=3, failures=("dropout", "bogus"))
    seq = generate_sequence(0, size=48, n_frames=5)
    assert seq["occluded"].dtype == bool and seq["occluded"].shape == (5,)
    json.dumps(seq["failures"])
    assert set(seq["failures"]["active"]) <= set(FAILURE_MODES)
    dry = generate_sequence(0, size=48, n_frames=5, render=False)
    np.testing.assert_array_equal(dry["occluded"], seq["occluded"])
    none = generate_sequence(0, size=48, n_frames=5, failures=())
    assert none["failures"]["active"] == [] and not none["occluded"].any()
    every = generate_sequence(0, size=48, n_frames=5, failures="all")
    assert every["failures"]["active"] == list(FAILURE_MODES)


def test_labels_unchanged_by_modes_that_do_not_move_anatomy() -> None:
    for seed in (1, 2):
        base = generate_sequence(seed, size=64, n_frames=6, failures=())
        other = generate_sequence(seed, size=64, n_frames=6, failures=ANATOMY_FIXED)
        hard = generate_sequence(seed, size=64, n_frames=6, failures=ANATOMY_FIXED, hard=True)
        np.testing.assert_array_equal(base["label"], other["label"])
        np.testing.assert_array_equal(base["label"], hard["label"])
        assert not np.array_equal(base["image"], other["image"])


def test_dropout_lowers_lateral_wall_contrast() -> None:
    for seed in (1, 2, 3):
        off, on = pair(seed, "dropout")
        p = on["failures"]["dropout"]
        lab = off["label"]
        cols = np.arange(SIZE)[None, :, None]
        cx = np.array([np.nonzero(lab[..., t] == 1)[1].mean() for t in range(lab.shape[-1])])[None, None, :]
        lateral = (lab == 2) & ((cols - cx) * p["side"] > 0)  # 4CH: the lateral wall, right of the LV centre
        cavity = lab == 1

        contrast_on = float(on["image"][lateral].mean() - on["image"][cavity].mean())
        contrast_off = float(off["image"][lateral].mean() - off["image"][cavity].mean())
        assert contrast_on < 0.85 * contrast_off, (seed, p["max_db"])


def test_shadow_darkens_its_sector_on_its_frames_only() -> None:
    off, on = pair(4, "shadow", n_frames=12)
    p = on["failures"]["shadow"]
    level = np.asarray(p["level_db"])
    rel, ang = polar(on)
    wedge = (np.abs(ang - p["angle"]) < 0.6 * p["width"]) & (rel > p["depth"] + 0.1) & (rel < 0.9)
    assert wedge.sum() > 20
    means = np.array([on["image"][..., t][wedge].mean() for t in range(12)])
    shadow, clear = level >= 0.99 * p["max_db"], level == 0
    assert shadow.any() and clear.any()
    assert means[shadow].mean() < 0.5 * means[clear].mean()
    off_means = np.array([off["image"][..., t][wedge].mean() for t in range(12)])
    assert off_means[shadow].mean() > 0.7 * off_means[clear].mean()  # the same frames without it are not dark


def test_clutter_fills_the_apex() -> None:
    for seed in (5, 6):
        off, on = pair(seed, "clutter")
        lab = off["label"]
        rows = np.arange(SIZE)[:, None, None]
        top = np.array([np.nonzero(lab[..., t] == 1)[0].min() for t in range(lab.shape[-1])])
        length = np.array([np.ptp(np.nonzero(lab[..., t] == 1)[0]) for t in range(lab.shape[-1])])
        apex = (lab == 1) & (rows < top + 0.3 * length)  # apical third of the cavity
        assert on["image"][apex].mean() > off["image"][apex].mean() + 0.05


def test_gain_drift_varies_the_frame_mean() -> None:
    off, on = pair(7, "gain_drift", n_frames=12)
    sector = in_sector(on)
    mean_off = np.array([off["image"][..., t][sector].mean() for t in range(12)])
    mean_on = np.array([on["image"][..., t][sector].mean() for t in range(12)])
    assert np.std(mean_on / mean_off) > 0.02
    assert np.std(mean_on) > 2.0 * np.std(mean_off)


def test_decorrelation_lowers_frame_to_frame_speckle_correlation() -> None:
    from scipy import ndimage as ndi

    def corr(seq: dict) -> float:  # of the speckle: the image minus its local mean
        img, lab = seq["image"], seq["label"]
        img = img - ndi.uniform_filter(img, (5, 5, 1))
        out = []
        for t in range(img.shape[-1] - 1):
            m = (lab[..., t] == 2) & (lab[..., t + 1] == 2)
            out.append(np.corrcoef(img[..., t][m], img[..., t + 1][m])[0, 1])
        return float(np.mean(out))

    off, on = pair(8, "decorrelation", size=112, n_frames=6)
    assert corr(on) < corr(off) - 0.1, (corr(on), corr(off), on["failures"]["decorrelation"])


def lv_length_px(lab: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Extent [T] (pixels) of the LV cavity label along the phantom's long axis."""
    t = np.deg2rad(tilt_deg)
    out = []
    for k in range(lab.shape[-1]):
        r, c = np.nonzero(lab[..., k] == 1)
        proj = c * np.sin(t) + r * np.cos(t)
        out.append(np.ptp(proj))
    return np.array(out)


def test_out_of_plane_foreshortens_the_labelled_lv() -> None:
    off, on = pair(9, "out_of_plane", ef=0.6, size=112, n_frames=12)
    scale = np.asarray(on["failures"]["out_of_plane"]["length_scale"])
    assert scale[0] == 1.0 and scale[-1] == 1.0 and scale.min() < 0.95
    tilt = on["geometry"]["tilt_deg"]
    ratio = lv_length_px(on["label"], tilt) / lv_length_px(off["label"], tilt)
    assert np.std(ratio) > 0.015 and ratio.min() < 0.96
    np.testing.assert_allclose(ratio, scale, atol=0.04)
    area = (on["label"] == 1).sum(axis=(0, 1)) / (off["label"] == 1).sum(axis=(0, 1))
    np.testing.assert_allclose(area, scale, atol=0.03)  # the imaged cavity is the true one shortened
    np.testing.assert_array_equal(on["label"][..., 0], off["label"][..., 0])  # none at ED and ES
    assert on["ef"] == off["ef"]


def test_translation_moves_the_label_centroid() -> None:
    off, on = pair(19, "translation", view="2CH", size=144, n_frames=12)
    shift = np.asarray(on["failures"]["translation"]["shift_mm"]) / on["spacing_mm"][0]  # (x, z) in pixels
    assert np.abs(shift).max() > 1.0
    moved = []
    for t in range(12):
        r0, c0 = np.nonzero(off["label"][..., t] == 1)
        r1, c1 = np.nonzero(on["label"][..., t] == 1)
        moved.append((c1.mean() - c0.mean(), r1.mean() - r0.mean()))
    moved = np.array(moved)
    np.testing.assert_allclose(moved, shift, atol=0.5)  # rasterisation of a small mask: a few tenths of a pixel
    axis = int(np.argmax(np.abs(shift).max(axis=0)))
    assert np.corrcoef(moved[:, axis], shift[:, axis])[0, 1] > 0.9


def test_frame_rates_span_15_to_80_in_cine_mode() -> None:
    rates = [
        generate_sequence(s, size=32, n_frames=60, mode="cine", render=False, failures=("frame_rate",))["frame_rate"]
        for s in range(60)
    ]
    assert 15.0 <= min(rates) < 22.0 and 72.0 < max(rates) <= 80.0
    baseline = generate_sequence(0, size=32, n_frames=60, mode="cine", render=False, failures=())
    assert baseline["frame_rate"] == 50.0
    fixed = generate_sequence(0, size=32, n_frames=60, mode="cine", frame_rate=30.0, render=False)
    assert fixed["frame_rate"] == 30.0


def test_background_darker_sides_and_bright_band_behind_the_atria() -> None:
    off, on = pair(11, "background", size=112, n_frames=3)
    rel, ang = polar(on)
    bg = (off["label"][..., 0] == 0) & (rel > 0.2) & (rel < 0.95)
    side, centre = bg & (np.abs(ang) > 0.7) & (np.abs(ang) < 0.95), bg & (np.abs(ang) < 0.3)

    def ratio(seq: dict) -> float:
        img = seq["image"][..., 0]
        return float(img[side].mean() / img[centre].mean())

    assert ratio(on) < 0.8 * ratio(off)
    p = on["failures"]["background"]
    ph = on["phantom"]
    start = ph.lv_length_ed + ph.la_length + p["band_offset_mm"]
    u = on["schedule"].anatomy_coords(*xz_mm(on), 0)[0]
    band = (u > start + 2) & (u < start + p["band_width_mm"] - 2) & (rel < 0.95) & (np.abs(ang) < 0.9)
    if band.sum() > 20:  # the band lies inside the sector
        assert on["image"][..., 0][band].mean() > 1.3 * off["image"][..., 0][band].mean()


def xz_mm(seq: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane coordinates (mm, probe at the origin) of the pixel centres."""
    geo, size = seq["geometry"], seq["image"].shape[0]
    c = (np.arange(size) + 0.5) * seq["spacing_mm"][0]
    z, x = np.meshgrid(c - geo["probe_xz_mm"][1], c - 0.5 * geo["fov_mm"] - geo["probe_xz_mm"][0], indexing="ij")
    return x, z


def border_contrast(img: np.ndarray, lab: np.ndarray, n_sectors: int = 12) -> float:
    """Weakest local endocardial contrast: per angular sector about the LV centroid, the mean grey of the
    myocardium ring touching the cavity minus that of the cavity ring touching the myocardium; the minimum."""
    from scipy import ndimage as ndi

    lv, myo = lab == 1, lab == 2
    wall = myo & ndi.binary_dilation(lv, iterations=2)
    cav = lv & ndi.binary_dilation(myo, iterations=2)
    r, c = np.nonzero(lv)
    rr, cc = np.indices(lab.shape)
    sector = ((np.arctan2(rr - r.mean(), cc - c.mean()) + np.pi) / (2 * np.pi) * n_sectors).astype(int) % n_sectors
    vals = []
    for k in range(n_sectors):
        w, b = wall & (sector == k), cav & (sector == k)
        if w.sum() >= 3 and b.sum() >= 3:
            vals.append(img[w].mean() - img[b].mean())
    return float(min(vals))


def test_hard_split_has_an_occluded_stretch_with_lower_border_contrast() -> None:
    occ, vis = [], []
    for seed in range(6):
        n = 4 if seed == 5 else 10
        seq = generate_sequence(seed, view=("2CH", "4CH")[seed % 2], size=96, n_frames=n, hard=True)
        assert longest_run(seq["occluded"]) >= min(3, n), (seed, seq["occluded"])
        assert seq["failures"]["hard"] and seq["failures"]["hard_occluder"] in ("dropout", "shadow", "clutter")
        for t in range(n):
            (occ if seq["occluded"][t] else vis).append(border_contrast(seq["image"][..., t], seq["label"][..., t]))
    assert len(occ) >= 18 and len(vis) >= 5
    assert np.mean(occ) < np.mean(vis) - 0.03, (np.mean(occ), np.mean(vis))


def test_hard_needs_an_occluder() -> None:
    with pytest.raises(ValueError, match="hard"):
        generate_sequence(0, size=48, n_frames=4, failures=("gain_drift",), hard=True)


def test_camus_writer_records_occlusion_and_stamp(tmp_path: Path) -> None:
    out = write_camus_dataset(
        tmp_path / "hard", 1, seed=3, size=48, frames=(4, 5), failures="dropout,shadow", hard=True
    )
    for view in ("2CH", "4CH"):
        truth = json.loads((out / "database_nifti/patient0001" / f"patient0001_{view}_phantom.json").read_text())
        assert len(truth["occluded"]) == truth["nb_frames"] and set(truth["occluded"]) <= {0, 1}
        assert longest_run(np.array(truth["occluded"], bool)) >= 3
        assert truth["failures"]["hard"] and set(truth["failures"]["active"]) <= {"dropout", "shadow"}
    stamp = json.loads((out / "synthetic_generator.json").read_text())
    assert stamp["failures"] == ["dropout", "shadow"] and stamp["hard"] is True
    assert stamp["generator_version"] == generator_version()
    assert dataset_stamp(1, 3, 48, (4, 5)) != dataset_stamp(1, 3, 48, (4, 5), failures=())
    assert dataset_stamp(1, 3, 48, (4, 5)) != dataset_stamp(1, 3, 48, (4, 5), hard=True)
    with pytest.raises(ValueError, match="nope"):
        write_camus_dataset(tmp_path / "bad", 1, failures=("nope",))


def test_cli_failures_and_hard(tmp_path: Path) -> None:
    from scripts.synthetic.__main__ import main

    main(str(tmp_path / "x"), patients=1, size=48, min_frames=4, max_frames=4, failures="none")
    truth = json.loads((tmp_path / "x/database_nifti/patient0001/patient0001_4CH_phantom.json").read_text())
    assert truth["failures"]["active"] == [] and truth["occluded"] == [0, 0, 0, 0]
    main(str(tmp_path / "y"), patients=1, size=48, min_frames=4, max_frames=4, failures=("clutter",), hard=True)
    truth = json.loads((tmp_path / "y/database_nifti/patient0001/patient0001_2CH_phantom.json").read_text())
    assert truth["failures"]["hard_occluder"] == "clutter" and sum(truth["occluded"]) >= 3
    with pytest.raises(ValueError, match="bogus"):
        main(str(tmp_path / "z"), patients=1, size=48, failures="bogus")
