"""Tests of scripts.clinical: volumes on shapes of known volume, ED/ES, EF, agreement, reports and overlays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

import scripts.clinical as clin


def lv_mask(
    a: float, b: float, spacing, base_u: float = 0.0, angle_deg: float = 0.0, size_mm: float = 200.0, full=False
):
    """LV-shaped mask ``[H, W]``: ellipse (semi-axes ``a`` along the long axis, ``b`` across) centred in the image,
    apex up, cut by the base line ``u = -base_u`` (``base_u = 0``: at the equator), rotated by ``angle_deg``.

    Its body of revolution about the long axis is a truncated prolate ellipsoid of volume ``truncated_volume_ml``.
    """
    sr, sc = spacing
    r = np.arange(int(size_mm / sr)) * sr
    c = np.arange(int(size_mm / sc)) * sc
    R, C = np.meshgrid(r - size_mm / 2, c - size_mm / 2, indexing="ij")
    th = math.radians(angle_deg)
    up = np.array([-math.cos(th), math.sin(th)])  # long axis towards the apex (rows grow downwards)
    u = R * up[0] + C * up[1] + (a - base_u) / 2  # centre the shape's extent in the image
    v = R * up[1] - C * up[0]
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    return inside if full else inside & (u >= -base_u)


def truncated_volume_ml(a: float, b: float, base_u: float) -> float:
    """pi b^2 * integral_{-base_u}^{a} (1 - u^2/a^2) du, in mL."""
    return math.pi * b * b * ((a + base_u) - (a**3 + base_u**3) / (3 * a * a)) / 1000.0


def rel_err(value: float, truth: float) -> float:
    return abs(value / truth - 1.0)


# --- volumes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0, 15, 30])
@pytest.mark.parametrize("spacing", [(0.3, 0.3), (0.6, 0.6)])
def test_simpson_half_ellipsoid_within_2_percent_any_rotation(angle, spacing):
    a, b = 80.0, 22.0
    truth = 2.0 / 3.0 * math.pi * a * b * b / 1000.0
    res = clin.lv_volume_details(lv_mask(a, b, spacing, angle_deg=angle), spacing)
    assert res.ok, res.reason
    assert rel_err(res.volume_ml, truth) < 0.02
    assert abs(res.length_mm - a) < 1.5
    assert len(res.diameters_mm) == 20 and res.disk_height_mm == pytest.approx(res.length_mm / 20)


@pytest.mark.parametrize("angle", [0, 15, 30])
def test_simpson_truncated_ellipsoid_base_below_equator(angle):
    a, b, base_u, spacing = 70.0, 25.0, 20.0, (0.5, 0.5)
    truth = truncated_volume_ml(a, b, base_u)
    vol = clin.lv_volume(lv_mask(a, b, spacing, base_u=base_u, angle_deg=angle), spacing)
    assert rel_err(vol, truth) < 0.02


def test_anisotropic_spacing_matches_truth():
    a, b = 80.0, 25.0
    truth = 2.0 / 3.0 * math.pi * a * b * b / 1000.0
    for spacing in [(0.3, 0.6), (0.6, 0.3), (0.25, 0.5)]:
        for angle in (0, 20):
            vol = clin.lv_volume(lv_mask(a, b, spacing, angle_deg=angle), spacing)
            assert rel_err(vol, truth) < 0.02, (spacing, angle, vol, truth)


def test_apex_and_base_positions_in_pixels():
    a, b, spacing = 80.0, 25.0, (0.4, 0.5)
    res = clin.lv_volume_details(lv_mask(a, b, spacing), spacing)
    (r0, c0), (r1, c1) = res.base_rc
    assert abs(r0 - r1) * spacing[0] < 2.5  # the annulus is horizontal
    assert res.apex_rc[0] < res.base_mid_rc[0]  # apex above the base (rows grow downwards)
    assert abs(res.base_mid_rc[0] - res.apex_rc[0]) * spacing[0] == pytest.approx(a, abs=1.5)


@pytest.mark.parametrize("angle", [0, 30])
def test_area_length_exact_case(angle):
    """8 A^2 / (3 pi L) equals the ellipsoid's volume for an ellipse of revolution (half ellipsoid: L = a)."""
    a, b, spacing = 80.0, 25.0, (0.3, 0.3)
    truth = 2.0 / 3.0 * math.pi * a * b * b / 1000.0
    res = clin.lv_volume_details(lv_mask(a, b, spacing, angle_deg=angle), spacing, method="area_length")
    assert res.method == "area_length"
    assert rel_err(res.volume_ml, truth) < 0.02
    area_truth = math.pi * a * b / 2
    assert rel_err(res.area_mm2, area_truth) < 0.01


def test_full_ellipse_upright_pole_to_pole():
    """No straight mitral plane: the finder takes the longest near-horizontal stretch of the rounded end (a shoulder
    beside the pole), so the axis is a little short and tilted; upright, the volume is still within 2 %."""
    a, b, spacing = 45.0, 22.0, (0.4, 0.4)
    truth = 4.0 / 3.0 * math.pi * a * b * b / 1000.0
    res = clin.lv_volume_details(lv_mask(a, b, spacing, full=True), spacing)
    assert rel_err(res.volume_ml, truth) < 0.02
    assert res.ok and 0.9 * 2 * a < res.length_mm <= 2 * a + 1.0
    al = clin.lv_volume(lv_mask(a, b, spacing, full=True), spacing, method="area_length")
    assert rel_err(al, truth) < 0.08  # area-length with the short axis: +5 %


def test_biplane_orthogonal_ellipses():
    a, b, c = 80.0, 25.0, 19.0
    truth = 2.0 / 3.0 * math.pi * a * b * c / 1000.0
    m2, m4 = lv_mask(a, b, (0.4, 0.4), angle_deg=10), lv_mask(a, c, (0.3, 0.5), angle_deg=-15)
    vol = clin.biplane_volume(m2, (0.4, 0.4), m4, (0.3, 0.5))
    assert rel_err(vol, truth) < 0.02
    # common disk height: the longer axis; a shorter 4CH view shortens nothing in the 2CH view's count
    res = clin.biplane_volume_details(m2, (0.4, 0.4), lv_mask(70.0, c, (0.4, 0.4)), (0.4, 0.4))
    assert res.ok and res.disk_height_mm == pytest.approx(res.length_mm / 20)
    assert res.length_mm == pytest.approx(a, abs=1.5)


def test_biplane_equals_single_plane_for_identical_views():
    m, sp = lv_mask(75.0, 24.0, (0.5, 0.5), base_u=10.0), (0.5, 0.5)
    assert clin.biplane_volume(m, sp, m, sp) == pytest.approx(clin.lv_volume(m, sp), rel=1e-9)


def test_degenerate_masks_give_nan_with_reason():
    sp = (0.5, 0.5)
    cases = {
        "empty": np.zeros((100, 100), bool),
        "blobs": lv_mask(30.0, 10.0, sp, size_mm=50.0),
        "border": np.ones((60, 60), bool),
        "tiny": np.pad(np.ones((3, 3), bool), 10),
    }
    two = np.zeros((200, 200), bool)
    two[20:60, 20:50] = two[120:180, 100:150] = True
    cases["blobs"] = two
    expected = {"empty": "empty", "blobs": "2 separate blobs", "border": "border", "tiny": "too small"}
    for name, mask in cases.items():
        for method in clin.volumes.METHODS:
            res = clin.lv_volume_details(mask, sp, method=method)
            assert math.isnan(res.volume_ml) and expected[name] in res.reason, (name, res)
            assert math.isnan(clin.lv_volume(mask, sp, method=method))
    bi = clin.biplane_volume_details(cases["empty"], sp, lv_mask(60.0, 20.0, sp), sp)
    assert math.isnan(bi.volume_ml) and bi.reason.startswith("2CH: empty")


def test_holes_filled_and_labels_nonzero():
    sp = (0.5, 0.5)
    m = lv_mask(70.0, 22.0, sp).astype(np.uint8) * 3
    holed = m.copy()
    holed[200, 200] = 0
    assert clin.lv_volume(holed, sp) == pytest.approx(clin.lv_volume(m, sp))


def test_bad_arguments_raise():
    m = lv_mask(60.0, 20.0, (0.5, 0.5))
    with pytest.raises(ValueError, match="2D"):
        clin.lv_volume(m[None], (0.5, 0.5))
    with pytest.raises(ValueError, match="spacing"):
        clin.lv_volume(m, (0.5, -1))
    with pytest.raises(ValueError, match="method"):
        clin.lv_volume(m, (0.5, 0.5), method="teichholz")


def test_ejection_fraction():
    assert clin.ejection_fraction(120.0, 48.0) == pytest.approx(60.0)
    for edv, esv in [(0.0, 10.0), (-5.0, 1.0), (math.nan, 10.0), (100.0, math.nan), (100.0, -1.0)]:
        ef, reason = clin.ejection_fraction_details(edv, esv)
        assert math.isnan(ef) and reason
    ef, note = clin.ejection_fraction_details(50.0, 60.0)
    assert ef == pytest.approx(-20.0) and "ESV > EDV" in note


# --- ED / ES -----------------------------------------------------------------------------------------------------


def synthetic_curve(n_beats: int, period: int, start_phase: float, noise: float, seed: int = 0):
    """Volume curve ``[T]``: fast systole (35 % of the beat) then slower filling, with Gaussian noise.

    Returns the curve and the true (ed, es) frames of the complete beats.
    """
    t = np.arange(int(n_beats * period + start_phase * period * 0 + period * 0.2))
    phase = (t / period + start_phase) % 1.0
    sys_frac = 0.35
    s = np.where(phase < sys_frac, 0.5 - 0.5 * np.cos(np.pi * phase / sys_frac), 0.0)
    s = np.where(phase >= sys_frac, 0.5 + 0.5 * np.cos(np.pi * (phase - sys_frac) / (1 - sys_frac)), s)
    v = 130.0 - 70.0 * s + np.random.default_rng(seed).normal(0, noise, len(t))
    ed = [int(round((k - start_phase) * period)) for k in range(n_beats + 2)]
    pairs = [(e, int(round(e + sys_frac * period))) for e in ed if 0 <= e and e + sys_frac * period < len(t) - 1]
    return v, pairs


@pytest.mark.parametrize("start_phase", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("frame_rate", [None, 50.0])
def test_find_ed_es_three_beats(start_phase, frame_rate):
    v, truth = synthetic_curve(3, 40, start_phase, noise=1.0, seed=int(start_phase * 10))
    pairs = clin.find_ed_es(v, frame_rate=frame_rate)
    assert len(pairs) == len(truth) == 3, (pairs, truth)
    for (ed, es), (ed0, es0) in zip(pairs, truth):
        assert abs(ed - ed0) <= 1 and abs(es - es0) <= 1, (pairs, truth)


def test_find_ed_es_half_sequence_and_edge_cases():
    half = np.linspace(120.0, 50.0, 18) + np.random.default_rng(1).normal(0, 0.5, 18)
    assert clin.find_ed_es(half) == [(int(np.argmax(half)), int(np.argmin(half)))]
    assert clin.find_ed_es(half[::-1]) == [(17 - int(np.argmax(half)), 17 - int(np.argmin(half)))]
    one_beat = 100 - 40 * np.sin(np.linspace(0, np.pi, 25))  # ED -> ES -> ED
    assert clin.find_ed_es(one_beat) == [(0, 12)]
    with_nan = half.copy()
    with_nan[5] = np.nan
    assert clin.find_ed_es(with_nan)[0][1] == int(np.nanargmin(with_nan))
    assert clin.find_ed_es([np.nan, np.nan, 3.0]) == []
    assert clin.find_ed_es(np.full(10, 5.0)) == [(0, 0)]


# --- agreement and plots -----------------------------------------------------------------------------------------


def test_agreement_matches_numpy_scipy():
    rng = np.random.default_rng(3)
    ref = rng.uniform(25, 70, 60)
    pred = ref + rng.normal(1.0, 4.0, 60)
    pred[[4, 9]] = np.nan
    ref[17] = np.inf
    out = clin.agreement(pred, ref)
    keep = np.isfinite(pred) & np.isfinite(ref)
    d = pred[keep] - ref[keep]
    assert out["n"] == 57 and out["n_dropped"] == 3
    assert out["r"] == pytest.approx(sps.pearsonr(pred[keep], ref[keep])[0])
    assert out["bias"] == pytest.approx(d.mean())
    assert out["sd"] == pytest.approx(np.std(d, ddof=1))
    assert out["loa_low"] == pytest.approx(d.mean() - 1.96 * np.std(d, ddof=1))
    assert out["loa_high"] == pytest.approx(d.mean() + 1.96 * np.std(d, ddof=1))
    assert out["mae"] == pytest.approx(np.abs(d).mean())
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(d**2)))
    lin = sps.linregress(ref[keep], pred[keep])
    assert out["slope"] == pytest.approx(lin.slope) and out["intercept"] == pytest.approx(lin.intercept)
    empty = clin.agreement([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["r"])
    with pytest.raises(ValueError, match="same length"):
        clin.agreement([1, 2], [1, 2, 3])


def test_plots_written(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.uniform(30, 70, 30)
    pred = ref + rng.normal(0, 5, 30)
    for fn, name in [(clin.plot_correlation, "corr.png"), (clin.plot_bland_altman, "ba.png")]:
        path = fn(pred, ref, tmp_path / name)
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    v, pairs = synthetic_curve(2, 30, 0.0, noise=1.0)
    path = clin.plot_volume_curve(v, pairs, tmp_path / "sub" / "curve.png", frame_rate=30.0)
    assert path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ba.png", "corr.png", "curve.png", "sub"]


# --- per-cine report and overlays --------------------------------------------------------------------------------


def beating_labels(n_frames: int = 30, period: int = 15, spacing=(0.6, 0.6)):
    """``[H, W, T]`` labels of a contracting half-ellipsoid LV (label 1) with a myocardium ring (2), EF ~ 49 %."""
    frames, volumes = [], []
    for t in range(n_frames):
        s = 0.5 - 0.5 * math.cos(2 * math.pi * t / period)  # 0 at ED, 1 at ES
        a, b = 80.0 - 10.0 * s, 24.0 - 5.0 * s
        lv = lv_mask(a, b, spacing, size_mm=130.0)
        outer = lv_mask(a + 8, b + 8, spacing, size_mm=130.0)
        frames.append(np.where(lv, 1, np.where(outer, 2, 0)).astype(np.uint8))
        volumes.append(2.0 / 3.0 * math.pi * a * b * b / 1000.0)
    return np.stack(frames, axis=-1), np.array(volumes)


def test_cine_report_and_files(tmp_path):
    labels, true_vol = beating_labels()
    rep = clin.cine_report(labels[None], (0.6, 0.6), frame_rate=25.0)  # channel-first [1, H, W, T] accepted
    assert rep["n_frames"] == 30 and len(rep["volume_ml"]) == 30 and rep["reason"] is None
    assert np.allclose(rep["volume_ml"], true_vol, rtol=0.02)
    assert [(b["ed"], b["es"]) for b in rep["beats"]] == [(0, 7), (15, 22)] or all(
        abs(b["ed"] - e) <= 1 and abs(b["es"] - s) <= 1 for b, (e, s) in zip(rep["beats"], [(0, 7), (15, 22)])
    )
    true_ef = 100 * (true_vol.max() - true_vol.min()) / true_vol.max()
    assert rep["ef_percent"] == pytest.approx(true_ef, abs=2.0)
    paths = clin.write_cine_report(rep, tmp_path, "cine1")
    assert {p.name for p in tmp_path.iterdir()} == {"cine1_lv_curve.csv", "cine1_report.json", "cine1_lv_curve.png"}
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "frame,time_s,area_mm2,volume_ml" and len(lines) == 31
    assert json.loads(paths["json"].read_text())["ed_index"] == rep["ed_index"]


def test_cine_report_degenerate_frames(tmp_path):
    labels, _ = beating_labels(n_frames=15)
    labels[..., 3] = 0  # an empty frame
    labels[:, :5, 5] = 1  # a second blob touching the border
    rep = clin.cine_report(labels, (0.6, 0.6))
    assert math.isnan(rep["volume_ml"][3]) and "empty" in rep["frame_reasons"][3]
    assert "blobs" in rep["frame_reasons"][5]
    assert math.isfinite(rep["ef_percent"])
    empty = clin.cine_report(np.zeros((40, 40, 6), np.uint8), (0.5, 0.5))
    assert empty["beats"] == [] and math.isnan(empty["ef_percent"]) and "no measurable" in empty["reason"]
    paths = clin.write_cine_report(empty, tmp_path, "empty")
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert data["ef_percent"] is None and data["volume_ml"] == [None] * 6


def test_overlay_files_and_bad_input(tmp_path):
    labels, _ = beating_labels(n_frames=20)
    image = np.random.default_rng(0).uniform(0, 1, labels.shape).astype(np.float32)
    paths = clin.save_overlay(image, labels, tmp_path, "cine1", ed_es_pairs=[(0, 7)], frame_rate=25.0, max_frames=8)
    assert paths["png"].stat().st_size > 1000
    from PIL import Image

    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 20
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"labels shape .* does not match image shape"):
        clin.save_overlay(image[:, :-1], labels, out, "bad")
    with pytest.raises(ValueError, match="missing keys"):
        clin.write_cine_report({"n_frames": 3}, out, "bad")
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "cine1_overlay.gif", "cine1_overlay.png"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["cine1_overlay.gif", "cine1_overlay.png"]


def test_ef_from_synthetic_ground_truth_masks():
    """EF of the generator's ground-truth LV masks (single-plane Simpson) against the phantom's known EF."""
    synthetic = pytest.importorskip("scripts.synthetic")
    pred, ref = [], []
    for seed in range(3):
        for view in ("2CH", "4CH"):
            s = synthetic.generate_sequence(seed, view=view, size=256, n_frames=16, mode="systole")
            rep = clin.cine_report(s["label"], s["spacing_mm"], frame_rate=s["frame_rate"])
            assert (rep["ed_index"], rep["es_index"]) == (s["ed"], s["es"])
            pred.append(rep["ef_percent"])
            ref.append(s["ef"])
    stats = clin.agreement(pred, ref)
    assert stats["n"] == 6 and stats["r"] > 0.99 and abs(stats["bias"]) < 1.0 and stats["mae"] < 2.0


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Results are readable by others as any file the user writes (umask), not private like mkstemp's temporaries."""
    import os

    from scripts.clinical._io import atomic_paths

    old = os.umask(0o022)
    try:
        with atomic_paths(tmp_path / "a.json") as (tmp,):
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask_at_import()


def _umask_at_import() -> int:
    from scripts.clinical import _io

    return _io._UMASK
