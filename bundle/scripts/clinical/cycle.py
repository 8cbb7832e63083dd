"""End-diastole (ED) and end-systole (ES) frames from an LV volume (or area) curve, one pair per beat."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

MAX_HEART_RATE_BPM = 200.0  # consecutive EDs are at least 60 / 200 s apart
PROMINENCE_FRACTION = 0.25  # an extremum must stand out by this fraction of the curve's range
EDGE_MARGIN_FRACTION = 0.10  # an extremum on the first/last frame counts if within this of the interior ones
SMOOTH_DIVISOR = 16.0
LIGHT_SIGMA = 1.5  # sigma (frames, at most the detection sigma) of the smoothing used to place ED and ES


def _fill_nan(values_T: np.ndarray) -> np.ndarray:
    """Linear interpolation over non-finite frames (constant beyond the ends)."""
    good = np.isfinite(values_T)
    t = np.arange(len(values_T))
    return np.interp(t, t[good], values_T[good])


def estimate_period(values_T: np.ndarray, min_lag: int = 2) -> int | None:
    """Cardiac period in frames from the first autocorrelation peak after its first zero crossing, or ``None``.

    Args:
        values_T: ``[T]`` finite curve (volume or area).
    """
    x = values_T - values_T.mean()
    if not np.any(x):
        return None
    ac = np.correlate(x, x, mode="full")[len(x) - 1 :]
    ac = ac / ac[0]
    below = np.nonzero(ac < 0)[0]
    if len(below) == 0:
        return None
    peaks, _ = find_peaks(ac[below[0] :], height=0.2)
    lag = int(below[0] + peaks[0]) if len(peaks) else None
    return lag if lag is not None and lag >= min_lag else None


def _extrema(smooth_T: np.ndarray, distance: int, prominence: float) -> np.ndarray:
    """Indices of local maxima of ``smooth_T`` [T], the first and last frames included.

    One frame lower than the whole curve is added at each end, so an end frame higher than its neighbour is a
    peak, its prominence measured against the curve's side only.
    """
    low = smooth_T.min() - 1.0 - abs(smooth_T.max())
    padded = np.concatenate([[low], smooth_T, [low]])
    peaks, _ = find_peaks(padded, distance=max(1, distance), prominence=prominence)
    return peaks - 1


def _drop_partial_edges(idx: np.ndarray, values: np.ndarray, n: int, margin: float) -> np.ndarray:
    """Drop an extremum on the first/last frame that is weaker than every interior one (a partial beat)."""
    interior = idx[(idx > 0) & (idx < n - 1)]
    if len(interior) == 0:
        return idx
    weakest = values[interior].min()
    keep = [i for i in idx if 0 < i < n - 1 or values[i] >= weakest - margin]
    return np.asarray(keep, dtype=int)


def find_ed_es(
    volumes_T, frame_rate: float | None = None, min_period_frames: int | None = None
) -> list[tuple[int, int]]:
    """ED and ES frame indices, one ``(ed, es)`` pair per beat, from an LV volume (or area) curve.

    Steps:
        1. Non-finite frames are interpolated; with fewer than 2 finite frames the result is ``[]``.
        2. Minimum separation between consecutive EDs: ``min_period_frames`` if given, else the frames in
           60 / 200 s at ``frame_rate`` (a heart rate of at most 200 bpm), else 0.6 of the autocorrelation period.
        3. The curve is smoothed (Gaussian, sigma = period / 16, at least 1 frame; the period is the
           autocorrelation period or, without one, the separation) and its maxima (ED
           candidates) and minima (ES candidates) found with that separation and a prominence of 25 % of its range.
           An extremum on the first or last frame counts only when it is about as extreme as the interior ones, so
           a partial beat cut by the clip's ends is dropped.
        4. ED = a maximum, ES = the lowest minimum before the next maximum; each index is then moved to the
           extremum within +-sigma frames of the curve smoothed only lightly (sigma <= 1.5 frames), because the
           heavy smoothing shifts the extrema of asymmetric beats (fast systole, slow filling).
        5. When no maximum is followed by a minimum (a monotonic half-sequence such as CAMUS ED -> ES, or a
           clip from ES to ED), the result is the single pair ``[(argmax, argmin)]`` of the raw curve.

    Args:
        volumes_T: ``[T]`` LV volumes (mL) or areas, one per frame.
        frame_rate: frames per second, if known.
        min_period_frames: the shortest possible beat in frames, overriding the frame-rate rule.

    Returns:
        ``[(ed, es), ...]`` in time order; ``[]`` when the curve has fewer than 2 finite values.
    """
    raw = np.asarray(volumes_T, dtype=float).ravel()
    if np.isfinite(raw).sum() < 2:
        return []
    values = _fill_nan(raw)
    n = len(values)
    single = [(int(np.argmax(values)), int(np.argmin(values)))]
    span = float(values.max() - values.min())
    if span <= 0 or n < 3:
        return single
    period = estimate_period(values)
    if min_period_frames is not None:
        separation = int(min_period_frames)
    elif frame_rate is not None and frame_rate > 0:
        separation = int(round(frame_rate * 60.0 / MAX_HEART_RATE_BPM))
    else:
        separation = int(round(0.6 * period)) if period is not None else n
    separation = max(1, separation)
    sigma = max(1.0, (period if period is not None else separation) / SMOOTH_DIVISOR)
    smooth = gaussian_filter1d(values, sigma, mode="nearest")
    prominence = PROMINENCE_FRACTION * float(smooth.max() - smooth.min())
    if prominence <= 0:
        return single
    margin = EDGE_MARGIN_FRACTION * span
    maxima = _drop_partial_edges(_extrema(smooth, separation, prominence), smooth, n, margin)
    minima = _drop_partial_edges(_extrema(-smooth, separation, prominence), -smooth, n, margin)
    radius = int(round(sigma))
    light = gaussian_filter1d(values, min(LIGHT_SIGMA, sigma), mode="nearest")

    def refine(i: int, sign: float) -> int:
        """The extremum of the lightly smoothed curve near i (heavy smoothing shifts extrema of asymmetric beats)."""
        lo, hi = max(0, i - radius), min(n, i + radius + 1)
        return lo + int(np.argmax(sign * light[lo:hi]))

    pairs = []
    for k, ed in enumerate(maxima):
        next_ed = maxima[k + 1] if k + 1 < len(maxima) else n
        between = minima[(minima > ed) & (minima < next_ed)]
        if len(between):
            es = between[np.argmin(smooth[between])]
            pairs.append((refine(int(ed), 1.0), refine(int(es), -1.0)))
    return pairs if pairs else single
