"""Tests of the synthetic echo generator (``scripts.synthetic``): truth, realism checks, on-disk layouts."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from scripts.synthetic import (
    generate_sequence,
    lv_volume_exact_ml,
    lv_volume_ml,
    tracings,
    write_camus_dataset,
    write_echonet_dataset,
)
from scripts.synthetic.__main__ import main as cli_main
from scripts.synthetic.phantom import frame_geometry


@pytest.fixture(scope="module")
def seq4() -> dict:
    """A 4CH systole at 128x128, 10 frames, baseline look (no failure modes: speckle fixed to the tissue)."""
    return generate_sequence(11, view="4CH", ef=0.55, size=128, n_frames=10, failures=())


def test_determinism_by_seed() -> None:
    a = generate_sequence(5, view="2CH", size=64, n_frames=4)
    b = generate_sequence(5, view="2CH", size=64, n_frames=4)
    c = generate_sequence(6, view="2CH", size=64, n_frames=4)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert a["ef"] == b["ef"]
    assert not np.array_equal(a["image"], c["image"])


def test_types_labels_and_structures(seq4: dict) -> None:
    img, lab = seq4["image"], seq4["label"]
    assert img.dtype == np.float32 and img.shape == (128, 128, 10)
    assert lab.dtype == np.uint8 and lab.shape == (128, 128, 10)
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    for t in range(lab.shape[-1]):
        assert all((lab[..., t] == k).sum() > 20 for k in (1, 2, 3))


@pytest.mark.parametrize("mode", ["systole", "diastole", "cine"])
def test_lv_area_largest_at_ed_smallest_at_es(mode: str) -> None:
    seq = generate_sequence(3, view="2CH", ef=0.6, size=96, n_frames=12 if mode != "cine" else 70, mode=mode)
    area = (seq["label"] == 1).sum(axis=(0, 1))
    ed, es = seq["ed"], seq["es"]
    if mode == "systole":
        assert (ed, es) == (0, 11)
    if mode == "diastole":
        assert (ed, es) == (11, 0)
    lo, hi = min(ed, es), max(ed, es)
    assert area[ed] == area[lo : hi + 1].max() and area[es] == area[lo : hi + 1].min()
    assert area[ed] > 1.3 * area[es]
    assert np.argmax(seq["volumes_ml"][lo : hi + 1]) + lo == ed


@pytest.mark.parametrize("ef", [0.25, 0.6, 72.0])
def test_phantom_ef_is_the_requested_one(ef: float) -> None:
    seq = generate_sequence(8, view="4CH", ef=ef, size=64, n_frames=5, render=False)
    want = ef * 100 if ef <= 1 else ef
    assert seq["ef"] == pytest.approx(want, abs=1e-6)
    assert seq["edv_ml"] > seq["esv_ml"] > 0
    assert 40 < seq["edv_ml"] < 300


def test_true_volume_is_body_of_revolution_and_matches_mask_area(seq4: dict) -> None:
    ph = seq4["phantom"]
    for s in (0.0, 0.5, 1.0):
        g = frame_geometry(ph, s)
        assert lv_volume_ml(g) == pytest.approx(lv_volume_exact_ml(g), rel=1e-5)
    # the rasterised ED cavity has the area of the truncated ellipse
    g = frame_geometry(ph, 0.0)
    k = g.kappa
    area_mm2 = g.a * g.b * (k * np.sqrt(1 - k**2) + np.arcsin(k) + np.pi / 2)
    sy, sx = seq4["spacing_mm"]
    assert (seq4["label"][..., seq4["ed"]] == 1).sum() * sy * sx == pytest.approx(area_mm2, rel=0.03)


def test_speckle_moves_with_tissue(seq4: dict) -> None:
    img, lab = seq4["image"], seq4["label"]
    corrs = []
    for t in range(3, 7):
        m = (lab[..., t] == 2) & (lab[..., t + 1] == 2)
        corrs.append(np.corrcoef(img[..., t][m], img[..., t + 1][m])[0, 1])
    other = generate_sequence(12, view="4CH", ef=0.55, size=128, n_frames=2, failures=())["image"][..., 0]
    m = lab[..., 5] == 2
    unrelated = np.corrcoef(img[..., 5][m], other[m])[0, 1]
    assert 0.5 < np.mean(corrs) < 0.995, corrs
    assert np.mean(corrs) > unrelated + 0.3


def test_outside_sector_is_dark_and_cavity_darker_than_wall(seq4: dict) -> None:
    geo = seq4["geometry"]
    n = seq4["image"].shape[0]
    sp = seq4["spacing_mm"][0]
    c = (np.arange(n) + 0.5) * sp
    px, pz = geo["probe_xz_mm"]
    Z, X = np.meshgrid(c - pz, c - 0.5 * geo["fov_mm"] - px, indexing="ij")
    outside = (np.hypot(X, Z) > geo["depth_mm"] + sp) | (
        np.abs(np.degrees(np.arctan2(X, Z))) > geo["half_angle_deg"] + 1.0
    )
    img = seq4["image"][..., 0]
    assert outside.sum() > 0.1 * n * n and img[outside].max() < 0.02
    lab = seq4["label"][..., 0]
    assert img[lab == 1].mean() + 0.08 < img[lab == 2].mean() and img[lab == 1].mean() < 0.7 * img[lab == 2].mean()


def test_four_chamber_layout_lv_right_rv_left() -> None:
    """Standard A4C: LV (and LA) right of the sector midline, RV (and RA) left of it, LV inside the sector."""
    from scripts.synthetic.anatomy import regions
    from scripts.synthetic.phantom import sample_phantom, to_lv_frame

    for seed in range(12):
        ph = sample_phantom(np.random.default_rng(seed), "4CH")
        sp = ph.fov / 128
        c = (np.arange(128) + 0.5) * sp
        Z, X = np.meshgrid(c - ph.probe_z, c - 0.5 * ph.fov - ph.probe_x, indexing="ij")
        u, v = to_lv_frame(ph, X, Z)
        reg = regions(u, v, frame_geometry(ph, 0.0), True)
        assert X[reg.lv].mean() > 5.0 and X[reg.la].mean() > 0.0, seed
        assert X[reg.rv].mean() < -5.0 and X[reg.ra].mean() < 0.0, seed
        assert reg.rv.sum() > 0.3 * reg.lv.sum(), seed
        inside = (np.hypot(X, Z) < ph.depth) & (np.abs(np.arctan2(X, Z)) < ph.half_angle)
        assert inside[reg.lv | reg.myo].all(), seed
    for seed in range(6):  # 2CH: LV roughly central
        ph = sample_phantom(np.random.default_rng(seed), "2CH")
        assert abs(ph.apex_x) <= 6.0 + 1e-9


def test_appearance_in_range_and_field_of_view_varies() -> None:
    from scripts.synthetic.phantom import sample_phantom
    from scripts.synthetic.render import RANGES, sample_appearance

    rng = np.random.default_rng(0)
    apps = [sample_appearance(rng) for _ in range(200)]
    for name, (lo, hi) in RANGES.items():
        values = np.array([getattr(a, name) for a in apps])
        assert lo <= values.min() and values.max() <= hi, name
        assert values.max() - values.min() > 0.5 * (hi - lo), name
    phs = [sample_phantom(rng, "4CH") for _ in range(100)]
    zoom = np.array([p.fov / p.depth for p in phs])
    assert 1.0 <= zoom.min() and zoom.max() <= 1.6 and zoom.max() > 1.4
    assert all(0.0 <= p.probe_z <= p.fov - p.depth + 1e-9 and abs(p.probe_x) <= 0.05 * p.fov for p in phs)
    # the sector (depth x width) is at most the image; the heart is sometimes small in the image
    assert min(p.lv_length_ed / p.fov for p in phs) < 0.3


def test_camus_layout(tmp_path: Path) -> None:
    import nibabel as nib
    import yaml

    out = write_camus_dataset(tmp_path / "camus", 3, seed=2, size=64, frames=(4, 6), reverse_fraction=0.5)
    ids = []
    for name in ("training", "validation", "testing"):
        ids += (out / "database_split" / f"subgroup_{name}.txt").read_text().split()
    assert sorted(ids) == ["patient0001", "patient0002", "patient0003"]
    orders = set()
    for pid in ids:
        folder = out / "database_nifti" / pid
        for view in ("2CH", "4CH"):
            cfg = yaml.safe_load((folder / f"Info_{view}.cfg").read_text())
            assert set(cfg) == {"ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality", "EF", "FrameRate"}
            assert cfg["NbFrame"] in (cfg["ED"], cfg["ES"]) and 1 in (cfg["ED"], cfg["ES"])
            orders.add(cfg["ED"] < cfg["ES"])
            seq_nii = nib.load(folder / f"{pid}_{view}_half_sequence.nii.gz")
            gt_nii = nib.load(folder / f"{pid}_{view}_half_sequence_gt.nii.gz")
            assert seq_nii.shape == (64, 64, cfg["NbFrame"]) and seq_nii.get_data_dtype() == np.uint8
            sx, sy, st = seq_nii.header.get_zooms()
            assert st == 1 and sx == sy > 0
            gt = np.transpose(np.asarray(gt_nii.dataobj), (1, 0, 2))  # (H, W, T), apex at the top
            lv_rows = np.nonzero((gt == 1).any(axis=(1, 2)))[0]
            la_rows = np.nonzero((gt == 3).any(axis=(1, 2)))[0]
            assert lv_rows.min() < la_rows.min()
            ed_gt = np.asarray(nib.load(folder / f"{pid}_{view}_ED_gt.nii.gz").dataobj)
            assert ed_gt.shape == (64, 64)
            np.testing.assert_array_equal(ed_gt.T, gt[..., cfg["ED"] - 1])
            area = (gt == 1).sum(axis=(0, 1))
            assert area[cfg["ED"] - 1] > area[cfg["ES"] - 1]
            import json

            truth = json.loads((folder / f"{pid}_{view}_phantom.json").read_text())
            assert truth["ed"] == cfg["ED"] - 1 and truth["ef"] == pytest.approx(cfg["EF"], abs=0.06)
    assert orders == {True, False}
    assert not list(out.rglob(".tmp*"))
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    write_camus_dataset(out, 3, seed=2, size=64, frames=(4, 6), reverse_fraction=0.5)
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}


def test_tracings_polygon_covers_lv_mask() -> None:
    from skimage.draw import polygon

    seq = generate_sequence(4, view="4CH", size=112, n_frames=70, mode="cine")
    for frame in (seq["ed"], seq["es"]):
        rows = np.array(tracings(seq, frame))
        assert rows.shape == (21, 4)
        x = np.concatenate([rows[1:, 0], rows[1:, 2][::-1]])
        y = np.concatenate([rows[1:, 1], rows[1:, 3][::-1]])
        mask = np.zeros((112, 112), bool)
        r, c = polygon(np.rint(y), np.rint(x), (112, 112))
        mask[r, c] = True
        lv = seq["label"][..., frame] == 1
        dice = 2 * (mask & lv).sum() / (mask.sum() + lv.sum())
        assert dice > 0.9, dice


def test_echonet_layout(tmp_path: Path) -> None:
    import cv2

    out = write_echonet_dataset(tmp_path / "echonet", 2, seed=1, beats=1.5)
    with open(out / "FileList.csv") as f:
        assert f.readline().strip() == "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
    with open(out / "VolumeTracings.csv") as f:
        assert f.readline().strip() == "FileName,X1,Y1,X2,Y2,Frame"
    files = list(csv.DictReader(open(out / "FileList.csv")))
    traces = list(csv.DictReader(open(out / "VolumeTracings.csv")))
    for row in files:
        assert not row["FileName"].endswith(".avi") and row["Split"] in ("TRAIN", "VAL", "TEST")
        cap = cv2.VideoCapture(str(out / "Videos" / f"{row['FileName']}.avi"))
        frames = []
        ok, fr = cap.read()
        while ok:
            frames.append(fr)
            ok, fr = cap.read()
        assert len(frames) == int(row["NumberOfFrames"]) and frames[0].shape == (112, 112, 3)
        mine = [t for t in traces if t["FileName"] == row["FileName"] + ".avi"]
        assert len(mine) == 42 and len({t["Frame"] for t in mine}) == 2
        assert float(row["EDV"]) > float(row["ESV"]) and 0 < float(row["EF"]) < 100


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="view"):
        generate_sequence(0, view="3CH")
    with pytest.raises(ValueError, match="ef"):
        generate_sequence(0, ef=0.95)
    with pytest.raises(ValueError, match="n_patients"):
        write_camus_dataset("/nonexistent", 0)
    with pytest.raises(ValueError, match="patients"):
        cli_main(out="/nonexistent", patients=-1)
    with pytest.raises(ValueError, match="layout"):
        cli_main(out="/nonexistent", layout="mhd")


def test_speed_256() -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_sequence(0, size=256, n_frames=2)
        t0 = time.perf_counter()
        generate_sequence(1, view="4CH", size=256, n_frames=20)
        fps = 20 / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    print(f"synthetic 4CH 256x256: {fps:.1f} frames/s (one thread)")
    assert fps > 5


def test_ensure_synthetic_data_regenerates_only_stale_synthetic_data(tmp_path, caplog):
    """Data from another generator version is rewritten; current data and non-synthetic folders are left alone."""
    import json
    import shutil

    from scripts.synthetic import generator_version
    from scripts.training import ensure_synthetic_data

    root = tmp_path / "synthetic"
    ensure_synthetic_data(root, patients=2, seed=1, size=32, progress=False)
    stamp_path = root / "synthetic_generator.json"
    stamp = json.loads(stamp_path.read_text())
    assert stamp["generator_version"] == generator_version() and stamp["n_patients"] == 2
    image = next((root / "database_nifti").glob("patient*/*_4CH_half_sequence.nii.gz"))
    before = image.stat().st_mtime_ns
    ensure_synthetic_data(root, patients=2, seed=1, size=32, progress=False)
    assert image.stat().st_mtime_ns == before  # same version and arguments: kept

    shutil.rmtree(root / "database_split")  # an interrupted run of the same version resumes: done patients stay
    ensure_synthetic_data(root, patients=2, seed=1, size=32, progress=False)
    assert image.stat().st_mtime_ns == before and (root / "database_split" / "subgroup_training.txt").is_file()

    stamp_path.write_text(json.dumps({**stamp, "generator_version": "0ld0ld0ld0ld"}))
    with caplog.at_level("WARNING"):
        ensure_synthetic_data(root, patients=2, seed=1, size=32, progress=False)
    assert "regenerating" in caplog.text
    assert json.loads(stamp_path.read_text())["generator_version"] == generator_version()
    assert image.stat().st_mtime_ns != before

    real = tmp_path / "camus"  # complete, but not written by the generator: never touched
    for name in ("training", "validation", "testing"):
        (real / "database_split").mkdir(parents=True, exist_ok=True)
        (real / "database_split" / f"subgroup_{name}.txt").write_text("patient0001\n")
    (real / "database_nifti" / "patient0001").mkdir(parents=True)
    (real / "database_nifti" / "patient0001" / "Info_4CH.cfg").write_text("ED: 1\n")
    ensure_synthetic_data(real, patients=1, seed=1, size=32, progress=False)
    assert sorted(p.name for p in (real / "database_nifti" / "patient0001").iterdir()) == ["Info_4CH.cfg"]
    assert not (real / "synthetic_generator.json").exists()
