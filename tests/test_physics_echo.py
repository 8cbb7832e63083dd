"""The physics-simulated validation set (bench/physics, issue 24): phantom geometry, the simulated scanner, the set."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.physics import phantom  # noqa: E402
from bench.physics.build import build_physics_set, case_bases, contraction  # noqa: E402
from bench.physics.imaging import Imaging, Scanner  # noqa: E402

SMALL = Imaging(depth_mm=70.0, output_size=48, fov_mm=100.0, beamform_mm=1.0, transmits=1)


def _spec(base: str = "four_chamber", seed: int = 1) -> phantom.PhantomSpec:
    return phantom.sample_spec(np.random.default_rng(seed), base)


def test_exact_volume_against_disks_of_the_cavity() -> None:
    """lv_volume_ml (closed form) equals a plain sum of disks of the cavity rotated about its axis."""
    spec = _spec()
    for s in (0.0, 0.5, 1.0):
        shape = phantom.shape_at(spec, s)
        v = np.linspace(0.0, shape.v_base, 20001)
        half_width = shape.a * np.sqrt(np.clip(1.0 - ((v - shape.v_centre) / shape.c) ** 2, 0.0, None))
        disks_ml = float(np.sum(np.pi * half_width[:-1] ** 2 * np.diff(v))) / 1000.0
        assert phantom.lv_volume_ml(shape, spec.truncation) == pytest.approx(disks_ml, rel=1e-3)


def test_phantom_ef_and_fixed_apex() -> None:
    """ED -> ES loses exactly the drawn EF of volume; the apex stays; the wall keeps its area (thickens)."""
    spec = _spec(seed=4)
    ed, es = phantom.shape_at(spec, 0.0), phantom.shape_at(spec, 1.0)
    ef = 1.0 - phantom.lv_volume_ml(es, spec.truncation) / phantom.lv_volume_ml(ed, spec.truncation)
    assert ef == pytest.approx(spec.ef, abs=1e-9)
    assert ed.v_centre - ed.c == es.v_centre - es.c == 0.0
    assert es.h > ed.h and es.v_base < ed.v_base


@pytest.mark.parametrize("base", phantom.BASES)
def test_labels_follow_the_phantom(base: str) -> None:
    """The mask's LV area is the truncated ellipse's; LA only with an open base; wall scatterers lie in the wall."""
    spec = _spec(base, seed=2)
    step = 0.25
    coords = np.arange(0.0, 200.0, step) + step / 2
    z, x = np.meshgrid(coords, coords - 100.0, indexing="ij")
    for s in (0.0, 1.0):
        shape = phantom.shape_at(spec, s)
        lab = phantom.labels(spec, s, x, z)
        t = spec.truncation  # area of the ellipse from the apex to t c below its centre
        area = shape.a * shape.c * (np.arcsin(t) + t * np.sqrt(1 - t * t) + np.pi / 2)
        assert (lab == 1).sum() * step * step == pytest.approx(area, rel=0.01)
        assert ((lab == 3).sum() > 0) == (base != "closed")
    rng = np.random.default_rng(0)
    wall = phantom.sample_wall(rng, spec, 1.0)
    for s in (0.0, 1.0):
        shape = phantom.shape_at(spec, s)
        u, v = phantom.wall_positions(shape, wall)
        u, v = u[v <= shape.v_base], v[v <= shape.v_base]
        in_wall = phantom.myocardium(shape, u + 1e-6 * np.sign(u), v, closed=False)
        assert in_wall.mean() > 0.99


def test_scanner_puts_a_point_where_it_is() -> None:
    """A single scatterer is imaged at its position (within 2 output pixels); outside the sector stays black."""
    scanner = Scanner(SMALL)
    target_x, target_z = 12.0, 45.0
    image = scanner.frame(np.array([target_x]), np.array([target_z]), np.array([1.0]))
    assert image.shape == (SMALL.output_size, SMALL.output_size) and image.dtype == np.float32
    row, column = np.unravel_index(np.argmax(image), image.shape)
    x, z = SMALL.pixel_centres_mm()
    assert abs(x[row, column] - target_x) <= 2 * SMALL.pixel_mm
    assert abs(z[row, column] - target_z) <= 2 * SMALL.pixel_mm
    outside = (np.hypot(x, z) > SMALL.depth_mm + SMALL.pixel_mm) | (np.abs(np.arctan2(x, z)) > np.deg2rad(47))
    assert image[outside].max() == 0.0


def test_cavity_is_darker_than_the_wall() -> None:
    """The simulated echo shows the phantom: blood dark, myocardium bright (mean grey in the mask's regions)."""
    imaging = replace(SMALL, depth_mm=150.0, fov_mm=220.0, output_size=64)
    spec = replace(_spec("open", seed=3), blood_brightness=0.01)
    rng = np.random.default_rng(0)
    wall = phantom.sample_wall(rng, spec, 0.4)
    background = phantom.sample_background(rng, imaging.sector, 0.2)
    sx, sz, amplitude = phantom.scatterers(rng, spec, wall, background, 0.0, imaging.sector, 0.2)
    image = Scanner(imaging).frame(sx, sz, amplitude)
    lab = phantom.labels(spec, 0.0, *imaging.pixel_centres_mm())
    assert image[lab == 2].mean() > image[lab == 1].mean() + 0.15


def test_build_writes_a_camus_test_set(tmp_path: Path) -> None:
    """The set reads as CAMUS (every case a test case, 4CH), its EF is the phantom's, and a rebuild is a no-op."""
    from scripts.data.camus import camus_datalist

    out = build_physics_set(tmp_path / "set", n_cases=2, seed=0, imaging=SMALL, density_per_mm2=0.05, workers=1)
    items = camus_datalist(out, "testing", views=["4CH"])
    assert [item["patient"] for item in items] == ["patient0001", "patient0002"]
    assert case_bases(2) == ["four_chamber", "open"]
    for item in items:
        import nibabel as nib

        image, label = nib.load(item["image"]), nib.load(item["label"])
        truth = json.loads(Path(item["image"]).with_name(f"{item['case_id']}_physics.json").read_text())
        assert image.shape == label.shape == (SMALL.output_size, SMALL.output_size, truth["nb_frames"])
        assert item["ed"] == 0 and item["es"] == truth["nb_frames"] - 1
        assert item["ef"] == pytest.approx(100 * truth["phantom"]["ef"], abs=0.05)
        assert np.asarray(label.dataobj)[..., 0].max() >= 1
        volumes = np.array(truth["volumes_ml"])
        assert np.all(np.diff(volumes) <= 1e-9) and volumes[0] > volumes[-1]
    assert (out / "database_split" / "subgroup_training.txt").read_text() == ""
    stamp_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    build_physics_set(out, n_cases=2, seed=0, imaging=SMALL, density_per_mm2=0.05, workers=1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamp_before


def test_contraction_runs_ed_to_es() -> None:
    states = contraction(13)
    assert states[0] == 0.0 and states[-1] == pytest.approx(1.0) and np.all(np.diff(states) > 0)


def test_the_cache_stamp_follows_only_the_code_that_writes_the_set(tmp_path) -> None:
    """Editing the report or the checks keeps the cached set; editing the phantom, imaging or build code rebuilds."""
    from bench.physics.build import DATA_SOURCES, package_version

    for name in (*DATA_SOURCES, "page.py"):
        (tmp_path / name).write_text(f"# {name}\n")
    before = package_version(tmp_path)
    (tmp_path / "page.py").write_text("# the page, edited\n")
    assert package_version(tmp_path) == before
    (tmp_path / "imaging.py").write_text("# the imaging, edited\n")
    assert package_version(tmp_path) != before
    assert package_version() != package_version(tmp_path)  # this package's own files


def test_pymust_warnings_are_dropped_and_no_other_log_line(caplog) -> None:
    """The scanner silences PyMUST's root-logger warnings only: the root logger's level and other records stay."""
    import logging

    from bench.physics.imaging import _quiet_pymust

    level = logging.getLogger().level
    _quiet_pymust()
    _quiet_pymust()
    assert logging.getLogger().level == level
    with caplog.at_level(logging.WARNING):
        logging.getLogger().handle(
            logging.LogRecord("root", logging.WARNING, "/x/site-packages/pymust/simus.py", 1, "aliasing", None, None)
        )
        logging.warning("the bench's own warning")
    assert [r.getMessage() for r in caplog.records] == ["the bench's own warning"]
