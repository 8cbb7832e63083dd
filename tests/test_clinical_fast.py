"""The vectorised clinical measurement gives the numbers of the per-chord reference loop it replaced.

``reference_find_mitral_plane`` below is the search ``scripts/clinical/volumes.py`` ran until 0.4.x (every chord's
straightness, ~40 ms per frame); ``reference_motion_period`` the per-lag similarity of ``scripts/clinical/cycle.py``.
The product's fast versions must find the same chord, the same period and so the same volumes, EF and verdicts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import scripts.clinical as clin
from scripts.clinical import cycle, volumes

_EPS = 1e-9


def reference_find_mitral_plane(points: np.ndarray, tol_mm: float, max_angle_deg: float) -> tuple[int, int] | None:
    """The straightness of every chord ``[start, span]`` of ``points [M, 2]`` at once; the longest that qualifies."""
    n = len(points)
    max_span = n // 2
    idx = (np.arange(n)[:, None] + np.arange(max_span + 1)[None, :]) % n
    chord = points[idx] - points[:, None, :]
    length = np.hypot(chord[..., 0], chord[..., 1])
    cross = chord[:, :, None, 0] * chord[:, None, :, 1] - chord[:, :, None, 1] * chord[:, None, :, 0]
    between = np.arange(max_span + 1)[None, :] < np.arange(max_span + 1)[:, None]
    max_dist = (np.where(between[None], np.abs(cross), 0.0).max(axis=2)) / np.maximum(length, _EPS)
    flat = np.abs(chord[..., 0]) <= math.tan(math.radians(max_angle_deg)) * np.abs(chord[..., 1]) + _EPS
    chord_mid_row = points[:, None, 0] + chord[..., 0] / 2.0
    below = chord_mid_row > points[:, 0].mean()
    ok = (max_dist <= tol_mm) & flat & below & (np.arange(max_span + 1)[None, :] >= 2)
    if not ok.any():
        return None
    start, span = np.unravel_index(int(np.argmax(np.where(ok, length, -1.0))), ok.shape)
    return int(start), int(span)


def reference_motion_period(image_HWT, frame_rate: float | None = None, max_side: int = 64) -> int | None:
    """The image period with the similarity of each lag summed over its frame pairs, one lag at a time."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks
    from skimage.transform import downscale_local_mean

    image = np.nan_to_num(np.asarray(image_HWT, dtype=np.float64))
    factor = max(1, math.ceil(max(image.shape[:2]) / max_side))
    small = downscale_local_mean(image, (factor, factor, 1)) if factor > 1 else image
    frames = small.reshape(-1, small.shape[-1]).T
    frames = frames[:, frames.std(axis=0) > 1e-3]
    n = len(frames)
    lo, hi = cycle._lag_range(n, frame_rate)
    if frames.shape[1] == 0 or hi < lo:
        return None
    frames = (frames - frames.mean(axis=1, keepdims=True)) / (frames.std(axis=1, keepdims=True) + 1e-9)
    similarity = np.array(
        [np.mean(np.sum(frames[: n - lag] * frames[lag:], axis=1)) / frames.shape[1] for lag in range(hi + 2)]
    )
    similarity = gaussian_filter1d(similarity, 1.0, mode="nearest")
    peaks, found = find_peaks(similarity, prominence=cycle.MIN_MOTION_PROMINENCE)
    keep = (peaks >= lo) & (peaks <= hi)
    peaks, prominence = peaks[keep], found["prominences"][keep]
    if len(peaks) == 0:
        return None
    return int(peaks[prominence >= 0.5 * prominence.max()][0])


def _fixture_cines() -> list[dict]:
    """Synthetic cines of both views, 2 to 3 beats, with noisy labels (blobs, holes, cut edges) as a network gives."""
    synthetic = pytest.importorskip("scripts.synthetic")
    rng = np.random.default_rng(3)
    cines = []
    for seed, view, mode in ((0, "4CH", "cine"), (1, "2CH", "cine"), (2, "4CH", "systole"), (5, "2CH", "systole")):
        s = synthetic.generate_sequence(seed, view=view, size=160, n_frames=60 if mode == "cine" else 16, mode=mode)
        labels = np.asarray(s["label"]).astype(np.uint8)
        noisy = labels.copy()
        flips = rng.random(noisy.shape) < 0.004  # speckle of wrong pixels: blobs, holes
        noisy[flips] = np.where(noisy[flips] == 1, 0, 1)
        cines.append(
            {
                "labels": labels,
                "image": np.asarray(s["image"], np.float32),
                "spacing": s["spacing_mm"],
                "rate": s["frame_rate"],
            }
        )
        cines.append(
            {
                "labels": noisy,
                "image": np.asarray(s["image"], np.float32),
                "spacing": s["spacing_mm"],
                "rate": s["frame_rate"],
            }
        )
    return cines


def _contours(cines: list[dict]) -> list[tuple[np.ndarray, float]]:
    """The resampled contours (``[M, 2]`` mm) that ``lv_geometry`` searches, with the tolerance it uses."""
    from skimage.measure import find_contours

    found = []
    for cine in cines:
        spacing = tuple(float(s) for s in cine["spacing"])
        for t in range(cine["labels"].shape[-1]):
            binary = cine["labels"][..., t] == 1
            if volumes.mask_problem(binary) is not None:
                continue
            contours = find_contours(np.pad(volumes.ndimage.binary_fill_holes(binary), 1).astype(np.float32), 0.5)
            contour = (max(contours, key=len)[:-1] - 1.0) * np.asarray(spacing)
            perimeter = float(np.hypot(*np.diff(np.vstack([contour, contour[:1]]), axis=0).T).sum())
            n = int(np.clip(round(perimeter), 16, volumes._MAX_SEARCH_POINTS))
            found.append((volumes._resample_closed(contour, n), max(volumes.ANNULUS_TOL_MM, 1.5 * max(spacing))))
    return found


def test_mitral_plane_search_finds_the_reference_chord_on_every_contour() -> None:
    cines = _fixture_cines()
    contours = _contours(cines)
    assert len(contours) > 150
    rng = np.random.default_rng(0)
    # tilted and flattened contours too: chords that are straight only within a looser or tighter tolerance
    extra = [(p * np.array([1.0, 1.0 + rng.uniform(-0.3, 0.3)]), tol * rng.uniform(0.3, 2.0)) for p, tol in contours]
    for points, tol in contours + extra:
        for angle in (volumes.ANNULUS_MAX_ANGLE_DEG, 20.0):
            assert volumes._find_mitral_plane(points, tol, angle) == reference_find_mitral_plane(points, tol, angle)


def test_measure_cine_numbers_equal_the_reference_loops(monkeypatch) -> None:
    """Volumes, lengths, beats, EF and the verdict of whole cines, fast against reference, to 1e-6."""
    cines = _fixture_cines()
    fast = [clin.measure_cine(c["labels"], c["spacing"], c["rate"], None, c["image"]) for c in cines]
    monkeypatch.setattr(volumes, "_find_mitral_plane", reference_find_mitral_plane)
    monkeypatch.setattr("scripts.clinical.quality.motion_period", reference_motion_period)
    slow = [clin.measure_cine(c["labels"], c["spacing"], c["rate"], None, c["image"]) for c in cines]
    for new, old in zip(fast, slow):
        for key in ("volume_ml", "area_mm2", "length_mm"):
            np.testing.assert_allclose(new[key], old[key], rtol=1e-6, atol=1e-9, equal_nan=True)
        assert new["image_period_frames"] == old["image_period_frames"]
        assert [(b["ed"], b["es"], b["accepted"]) for b in new["beats"]] == [
            (b["ed"], b["es"], b["accepted"]) for b in old["beats"]
        ]
        assert new["ef_percent"] == pytest.approx(old["ef_percent"], rel=1e-6, nan_ok=True)
        assert new["quality"]["verdict"] == old["quality"]["verdict"]
        assert new["quality"]["reasons"] == old["quality"]["reasons"]
    assert sum(math.isfinite(r["ef_percent"]) for r in fast) >= 4


@pytest.mark.parametrize("shape", [(600, 800, 45), (97, 130, 33), (48, 40, 20)])
def test_motion_period_equals_the_reference(shape) -> None:
    """The image period of cines of several sizes (blocks that do not divide the frame) and motions."""
    rng = np.random.default_rng(shape[0])
    H, W, T = shape
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    for period in (9, 14):
        phase = 2 * np.pi * np.arange(T) / period
        image = 0.5 + 0.3 * np.sin(8 * xx[..., None] + np.sin(phase)[None, None]) * np.cos(5 * yy[..., None])
        image = (image + rng.normal(0, 0.05, (H, W, T))).astype(np.float32)
        for rate in (None, 30.0):
            assert cycle.motion_period(image, rate) == reference_motion_period(image, rate)
