"""End-diastole (ED) and end-systole (ES) frames from an LV volume (or area) curve, one pair per beat."""

from __future__ import annotations

import math

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


# ------------------------------------------------------------------------------------------- beat analysis
# Plausibility bounds of the beat analysis (docs/clinical.md "Beats" says where each comes from).
HEART_RATE_RANGE_BPM = (30.0, 200.0)  # periods searched for when the frame rate is known
MIN_MOTION_PROMINENCE = 0.01  # of the image similarity's peak at the period (real and synthetic cines: 0.03-0.06)
CURVE_CYCLES = 2.0  # an LV curve's period is searched only where the cine holds two cycles of it
CURVE_MIN_CORRELATION = 0.5  # a period found in the LV curve alone (white noise reaches it in 2.5 % of 90-frame cines)
CURVE_CHANCE_FACTOR = 3.5  # the correlation must also exceed this many chance SDs of its overlap ...
CURVE_SURE_CORRELATION = 0.9  # ... or this (a clean curve in a short cine)
MIN_PERIODIC_SWING = 1.0  # from the anti-correlation half a period on to the peak at the period
SYSTOLE_FRACTION_RANGE = (0.15, 0.6)  # ED -> ES interval as a fraction of the period (about a third at rest)
HALF_CYCLE_SYSTOLE_S = (0.08, 0.65)  # ED -> ES interval in seconds of a cine shorter than a period
LONG_CINE_S = 2.5  # a cine this long holds more than a cycle at any heart rate >= 30 bpm: it must be periodic
LONG_CINE_FRAMES = 60  # the same, for a cine without a frame rate
START_STROKE_FRACTION = 0.8  # a beat from frame 0 needs this fraction of the other beats' median stroke
MIN_STROKE_FRACTION = 0.3  # a beat's EDV - ESV against the curve's 5-95 % spread; below it the beat is a wiggle
OUTLIER_EF_POINTS = 12.0  # a beat whose EF is this far (and 3 robust SDs) from the other beats' median is rejected
MISSED_CYCLE_GAP = 1.5  # periods without an ED candidate (between two, or to the cine's end) that hide a cycle
ED_SEPARATION_FRACTION = 0.7  # of the period: the least distance between two ED candidates


def _lag_range(n: int, frame_rate: float | None, cycles: float = 1.5) -> tuple[int, int]:
    """Lags (frames) of a plausible heart rate at ``frame_rate`` (4 and up without one) leaving ``cycles`` in ``n``."""
    if frame_rate is not None and math.isfinite(frame_rate) and frame_rate > 0:
        lo = max(3, int(math.floor(frame_rate * 60.0 / HEART_RATE_RANGE_BPM[1])))
        return lo, min(int(n / cycles), int(math.ceil(frame_rate * 60.0 / HEART_RATE_RANGE_BPM[0])))
    return 4, int(n / cycles)


def _high_pass(values_T: np.ndarray, window: int) -> np.ndarray:
    """The curve lightly smoothed (sigma 1 frame) minus its running mean over ``window`` frames (slow drift)."""
    from scipy.ndimage import uniform_filter1d

    return gaussian_filter1d(values_T, 1.0, mode="nearest") - uniform_filter1d(values_T, max(1, window), mode="nearest")


def lag_correlation(values_T, lag: int, frame_rate: float | None = None) -> float:
    """Pearson correlation of the high-passed curve with itself ``lag`` frames later (NaN when undefined)."""
    values = _fill_nan(np.asarray(values_T, dtype=float).ravel())
    n = len(values)
    if not 1 <= lag < n - 2:
        return math.nan
    x = _high_pass(values, _lag_range(n, frame_rate, CURVE_CYCLES)[1] or n)
    a, b = x[:-lag], x[lag:]
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def cardiac_period(values_T, frame_rate: float | None = None) -> tuple[int | None, float]:
    """The cardiac period in frames of an LV curve, and how periodic the curve is.

    The curve (non-finite frames interpolated) minus its running mean over the longest plausible period (slow drift
    of the heart in the sector, or of a network's memory, is not a beat) is correlated with itself at each lag of a
    plausible heart rate (``HEART_RATE_RANGE_BPM`` at ``frame_rate``; 4 frames and up without one) that leaves at
    least ``CURVE_CYCLES`` cycles in the cine (Pearson over the overlap, so long lags are not penalised). A peak counts
    when it reaches ``CURVE_MIN_CORRELATION`` and, unless the correlation repeats at twice its lag, also
    ``CURVE_CHANCE_FACTOR`` chance SDs of its overlap (1 / sqrt of half the overlapping frames; at most
    ``CURVE_SURE_CORRELATION``), and when it rises
    ``MIN_PERIODIC_SWING`` above the lowest correlation before it (a periodic curve is anti-correlated half a period
    later; noise correlates by chance, both ways, far less). The period is the shortest such lag reaching 0.8 of the
    highest one (a multiple of the period correlates as well as the period itself).

    Args:
        values_T: ``[T]`` LV volumes or areas.
        frame_rate: frames per second, if known.

    Returns:
        ``(period_frames, correlation)``: the period (``None`` when no peak qualifies or the cine is too short for
        ``CURVE_CYCLES`` cycles) and the correlation at it (0.0 when none was found).
    """
    raw = np.asarray(values_T, dtype=float).ravel()
    n = len(raw)
    lo, hi = _lag_range(n, frame_rate, CURVE_CYCLES)
    if np.isfinite(raw).sum() < 8 or hi < lo:
        return None, 0.0
    corr = np.array([lag_correlation(raw, lag, frame_rate) for lag in range(hi + 2)])
    corr = np.nan_to_num(corr, nan=0.0)
    corr[0] = 1.0
    peaks, _ = find_peaks(corr)
    if len(peaks):
        swing = np.array([corr[p] - corr[1:p].min() if p > 1 else 0.0 for p in peaks])
        # chance correlations of a short overlap are large: about 1 / sqrt(independent pairs), a pair every 2 frames;
        # a peak that repeats at twice its lag (where the cine holds that) is no chance
        chance = CURVE_CHANCE_FACTOR / np.sqrt(np.maximum(n - peaks, 2) / 2.0)
        repeats = np.array(
            [n - 2 * p >= 8 and lag_correlation(raw, 2 * int(p), frame_rate) >= CURVE_MIN_CORRELATION for p in peaks]
        )
        needed = np.where(
            repeats, CURVE_MIN_CORRELATION, np.clip(chance, CURVE_MIN_CORRELATION, CURVE_SURE_CORRELATION)
        )
        keep = (peaks >= lo) & (peaks <= hi) & (corr[peaks] >= needed) & (swing >= MIN_PERIODIC_SWING)
        peaks = peaks[keep]
    if len(peaks) == 0:
        return None, 0.0
    lag = int(peaks[corr[peaks] >= 0.8 * corr[peaks].max()][0])
    return lag, float(corr[lag])


def _block_means(image_HWT: np.ndarray, factor: int) -> np.ndarray:
    """``[ceil(H / factor), ceil(W / factor), T]`` float64 means of ``factor x factor`` blocks of every frame.

    As ``skimage.transform.downscale_local_mean(image, (factor, factor, 1))``: the frame is padded with zeros to a
    multiple of ``factor`` and the zeros count in the edge blocks' means. The sums run in float64 over the input's
    own dtype, without a float64 copy of the whole cine (what made this cost ~1.5 s on a 120-frame DICOM).
    """
    H, W, T = image_HWT.shape
    if not np.isfinite(image_HWT).all():  # NaN -> 0, +-inf -> the float64 extremes, as before
        image_HWT = np.nan_to_num(image_HWT.astype(np.float64))
    if factor == 1:
        return image_HWT.astype(np.float64)
    Hb, Wb = -(-H // factor), -(-W // factor)
    if (Hb * factor, Wb * factor) != (H, W):
        image_HWT = np.pad(image_HWT, ((0, Hb * factor - H), (0, Wb * factor - W), (0, 0)))
    sums = image_HWT.reshape(Hb, factor, Wb, factor, T).sum(axis=(1, 3), dtype=np.float64)
    return sums / float(factor * factor)


def motion_period(image_HWT, frame_rate: float | None = None, max_side: int = 64) -> int | None:
    """The period in frames of the picture's motion, from the images alone (no segmentation), or ``None``.

    Frames are reduced to at most ``max_side`` pixels a side (block means); ``s(lag)`` is the mean Pearson
    correlation between frame t and frame t + lag over the pixels that change; the period is the first local
    maximum of ``s`` at a plausible lag (see :func:`cardiac_period`) whose prominence is at least
    ``MIN_MOTION_PROMINENCE`` and half the largest one (speckle and noise make small bumps; a multiple of the period
    stands out as well as the period itself). ``s`` comes from one ``[T, T]`` Gram matrix of the normalised frames
    (``s(lag)`` is the mean of its ``lag``-th diagonal).

    Args:
        image_HWT: ``[H, W, T]`` grey frames.
    """
    image = np.asarray(image_HWT)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, T], got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
    factor = max(1, math.ceil(max(image.shape[:2]) / max_side))
    small = _block_means(image, factor)
    frames = small.reshape(-1, small.shape[-1]).T  # [T, P]
    frames = frames[:, frames.std(axis=0) > 1e-3]
    n = len(frames)
    lo, hi = _lag_range(n, frame_rate)
    if frames.shape[1] == 0 or hi < lo:
        return None
    frames = (frames - frames.mean(axis=1, keepdims=True)) / (frames.std(axis=1, keepdims=True) + 1e-9)
    gram = frames @ frames.T  # [T, T]: gram[t, u] = sum over pixels of frame t * frame u
    similarity = np.array([np.mean(np.diagonal(gram, lag)) / frames.shape[1] for lag in range(hi + 2)])
    similarity = gaussian_filter1d(similarity, 1.0, mode="nearest")  # frame-to-frame noise bumps are one lag wide
    peaks, found = find_peaks(similarity, prominence=MIN_MOTION_PROMINENCE)
    keep = (peaks >= lo) & (peaks <= hi)
    peaks, prominence = peaks[keep], found["prominences"][keep]
    if len(peaks) == 0:
        return None
    return int(peaks[prominence >= 0.5 * prominence.max()][0])


def _beat(volumes: np.ndarray, ed: int, es: int, frame_problems: dict[int, str]) -> dict:
    from .volumes import ejection_fraction_details

    ef, note = ejection_fraction_details(volumes[ed], volumes[es])
    reason = None
    for frame, phase in ((ed, "ED"), (es, "ES")):
        if reason is None and frame in frame_problems:
            reason = f"frame {frame} ({phase}): {frame_problems[frame]}"
    if reason is None and not math.isfinite(ef):
        reason = f"frame {ed} (ED) or {es} (ES): {note}"
    if reason is None and volumes[ed] <= volumes[es]:
        reason = f"the ED volume ({volumes[ed]:.4g}) is not above the ES volume ({volumes[es]:.4g})"
    return {
        "ed": int(ed),
        "es": int(es),
        "edv_ml": float(volumes[ed]),
        "esv_ml": float(volumes[es]),
        "ef_percent": float(ef),
        "accepted": reason is None,
        "reason": reason,
    }


def _reject(beat: dict, reason: str) -> None:
    if beat["accepted"]:
        beat["accepted"], beat["reason"] = False, reason


def _reject_wiggles(beats: list[dict], volumes: np.ndarray) -> None:
    """Reject a beat whose stroke (EDV - ESV) is below ``MIN_STROKE_FRACTION`` of the curve's 5-95 % spread."""
    finite = volumes[np.isfinite(volumes)]
    if len(finite) < 2:
        return
    spread = float(np.percentile(finite, 95) - np.percentile(finite, 5))
    for beat in beats:
        stroke = beat["edv_ml"] - beat["esv_ml"]
        if spread > 0 and math.isfinite(stroke) and stroke < MIN_STROKE_FRACTION * spread:
            _reject(beat, f"a wiggle, not a beat: its stroke is {stroke / spread:.0%} of the LV curve's swing")


def _systole_after(light: np.ndarray, frame: int, period: int) -> tuple[bool, float]:
    """Whether the curve ``light`` [T] has an end-systole within ``SYSTOLE_FRACTION_RANGE`` of the period after
    ``frame``, and how far it falls from ``frame`` to the lowest frame there.

    It has none when that lowest frame is the window's last and the curve still falls after it: the systole does
    not start at ``frame`` (an early-filling hump, followed by a dip and the late filling, falls into the next
    systole only past the window). A window cut by the cine's end counts as having one (the beat is cut instead).
    """
    n = len(light)
    lo_frac, hi_frac = SYSTOLE_FRACTION_RANGE
    first, last = frame + max(1, int(round(lo_frac * period))), min(n - 1, frame + int(round(hi_frac * period)))
    if first > last:
        return False, 0.0
    lowest = first + int(np.argmin(light[first : last + 1]))
    still_falling = lowest == last and lowest + 1 < n and light[lowest + 1] < light[lowest]
    return not still_falling, float(light[frame] - light[lowest])


def _move_eds_to_systole_onsets(
    candidates: np.ndarray, detection: np.ndarray, light: np.ndarray, period: int
) -> np.ndarray:
    """ED candidates on an early-filling hump moved to the maximum their cycle's systole starts from.

    A diastole with two humps (early filling, a dip, the atrial kick: real LV curves show it) whose early hump is
    the higher one gives the peak search a candidate that no systole follows within ``SYSTOLE_FRACTION_RANGE``
    (:func:`_systole_after`). Such a candidate is moved to the later local maximum of ``detection`` inside that
    window that a systole does follow (the largest fall when several do), when that one is at least
    ``ED_SEPARATION_FRACTION`` of a period before the next candidate; otherwise it stays (and its beat is rejected
    for having no end-systole).

    Args:
        candidates: sorted ED candidate frames.
        detection: ``[T]`` the curve minus its running mean over a period (where the candidates were found).
        light: ``[T]`` the lightly smoothed curve (where ED and ES are placed).
        period: the cardiac period in frames.

    Returns:
        the sorted candidates.
    """
    local_maxima, _ = find_peaks(detection)
    separation = ED_SEPARATION_FRACTION * period
    window = int(round(SYSTOLE_FRACTION_RANGE[1] * period))
    moved = []
    for k, candidate in enumerate(int(c) for c in candidates):
        following = int(candidates[k + 1]) if k + 1 < len(candidates) else math.inf
        if not _systole_after(light, candidate, period)[0]:
            later = [
                int(m)
                for m in local_maxima[(local_maxima > candidate) & (local_maxima <= candidate + window)]
                if m <= following - separation and _systole_after(light, int(m), period)[0]
            ]
            if later:
                candidate = max(later, key=lambda frame: _systole_after(light, frame, period)[1])
        moved.append(candidate)
    return np.asarray(sorted(moved), dtype=int)


def _add_missed_eds(candidates: np.ndarray, detection: np.ndarray, light: np.ndarray, period: int) -> np.ndarray:
    """ED candidates with one added in every stretch of the cine that holds a cycle the peak search missed.

    The peak search keeps maxima ``ED_SEPARATION_FRACTION`` of a period apart and 25 % of the spread prominent, so
    in a double-humped diastole (early filling, a dip, the atrial kick) the early hump can suppress the late one
    and neither be kept: the whole cycle would be missing from the beats. A stretch holds a missed cycle when it
    runs more than ``MISSED_CYCLE_GAP`` periods without a candidate: between two candidates, or from the cine's
    first frame to the first candidate, or from the last candidate to the last frame (the next ED, a period on,
    lies more than half a period inside it, so its systole is in the cine). Its ED is the local maximum of
    ``detection`` at least the separation from the candidates that a systole follows (:func:`_systole_after`: the
    frame systole starts from, not an early-filling hump), the one the curve falls most from when several do (or
    none does). Repeated until no such stretch is left; nothing is added to a cine without a candidate.

    Args:
        candidates: sorted ED candidate frames.
        detection: ``[T]`` the curve minus its running mean over a period (where the candidates were found).
        light: ``[T]`` the lightly smoothed curve (where ED and ES are placed).
        period: the cardiac period in frames.

    Returns:
        the sorted candidates, the added ones included.
    """
    n = len(light)
    found = sorted(int(c) for c in candidates)
    if not found:
        return np.asarray(candidates, dtype=int)
    local_maxima, _ = find_peaks(detection)
    separation = ED_SEPARATION_FRACTION * period
    gap = MISSED_CYCLE_GAP * period
    while True:
        stretches = []  # (first, last) frame where the missed ED may lie
        if found[0] > gap:
            stretches.append((1, found[0] - separation))
        stretches += [(a + separation, b - separation) for a, b in zip(found[:-1], found[1:]) if b - a > gap]
        if n - 1 - found[-1] > gap:
            stretches.append((found[-1] + separation, n - 2))
        added = []
        for first, last in stretches:
            inside = local_maxima[(local_maxima >= first) & (local_maxima <= last)]
            if len(inside):
                added.append(int(max(inside, key=lambda frame: _systole_after(light, int(frame), period))))
        if not added:
            return np.asarray(found, dtype=int)
        found = sorted(found + added)


def _periodic_beats(volumes: np.ndarray, period: int, frame_problems: dict[int, str]) -> list[dict]:
    """Beats of a periodic curve: ED at each cycle's maximum, ES at the minimum inside the systolic window.

    Every cycle the curve shows is listed: an ED candidate on an early-filling hump is moved to where systole
    starts (:func:`_move_eds_to_systole_onsets`) and a cycle the peak search missed is found
    (:func:`_add_missed_eds`).
    """
    filled = _fill_nan(volumes)
    n = len(filled)
    light = gaussian_filter1d(filled, max(0.8, period / 20.0), mode="nearest")
    trend = np.convolve(np.pad(light, period // 2, mode="edge"), np.ones(period) / period, mode="valid")[:n]
    detection = light - trend
    spread = float(np.percentile(detection, 95) - np.percentile(detection, 5))
    candidates, _ = find_peaks(
        detection, distance=max(1, int(ED_SEPARATION_FRACTION * period)), prominence=0.25 * spread
    )
    candidates = _move_eds_to_systole_onsets(candidates, detection, light, period)
    candidates = _add_missed_eds(candidates, detection, light, period)
    # a cine that may start at ED: frame 0 is a candidate when no ED is near it and the curve falls from it; its
    # beat is kept only if its stroke matches the other beats' (a cine that starts in systole has a short one)
    starts_at_ed = bool(
        len(candidates) > 0 and candidates[0] >= ED_SEPARATION_FRACTION * period and light[1] <= light[0]
    )
    if starts_at_ed:
        candidates = np.concatenate([[0], candidates])
    reach = max(1, int(round(period / 6.0)))
    lo_frac, hi_frac = SYSTOLE_FRACTION_RANGE
    beats: list[dict] = []
    for candidate in candidates:
        a, b = max(0, candidate - reach), min(n, candidate + reach + 1)
        ed = a + int(np.argmax(light[a:b]))
        w0, w1 = ed + max(1, int(round(lo_frac * period))), ed + int(round(hi_frac * period))
        if w0 > n - 1:
            beat = _beat(volumes, ed, n - 1, frame_problems)
            _reject(beat, f"cut by the cine's end: ES would fall after the last frame ({n - 1})")
            beats.append(beat)
            continue
        es = w0 + int(np.argmin(light[w0 : min(n, w1 + 1)]))
        beat = _beat(volumes, ed, es, frame_problems)
        if ed == 0 and not (starts_at_ed and candidate == 0):
            _reject(beat, "cut by the cine's start: ED on the first frame may lie before it")
        elif w1 > n - 1 and (es >= n - 2 or not beat["accepted"]):
            beat["accepted"] = False
            beat["reason"] = f"cut by the cine's end: its systole runs past the last frame ({n - 1})"
        elif (es == w1 and es + 1 < n and light[es + 1] < light[es]) or (es == w0 and light[es - 1] < light[es]):
            _reject(
                beat,
                f"no end-systole {lo_frac:.2f}-{hi_frac:.2f} of the period after ED: the lowest volume there is on "
                f"the window's edge (ED + {es - ed} frames, {(es - ed) / period:.2f} of the period)",
            )
        beats.append(beat)
    if starts_at_ed and beats and beats[0]["ed"] == 0 and beats[0]["accepted"]:
        others = [b["edv_ml"] - b["esv_ml"] for b in beats[1:] if b["accepted"]]
        stroke = beats[0]["edv_ml"] - beats[0]["esv_ml"]
        if not others or stroke < START_STROKE_FRACTION * float(np.median(others)):
            shown = f"{stroke / float(np.median(others)):.0%} of the other beats'" if others else "not comparable"
            _reject(beats[0], f"cut by the cine's start: the cine may start after ED (its stroke is {shown})")
    _reject_wiggles(beats, volumes)
    return beats


def _reject_outliers(beats: list[dict]) -> None:
    """Reject the beat whose EF lies farthest from the median of the other accepted beats, if it lies beyond
    ``OUTLIER_EF_POINTS`` and 3 robust SDs of them; repeated while 3 or more other beats remain accepted."""
    while True:
        accepted = [b for b in beats if b["accepted"]]
        if len(accepted) < 4:
            return
        efs = np.array([b["ef_percent"] for b in accepted])
        worst, worst_excess, worst_median = None, 0.0, 0.0
        for k, beat in enumerate(accepted):
            others = np.delete(efs, k)
            median = float(np.median(others))
            limit = max(OUTLIER_EF_POINTS, 3.0 * 1.4826 * float(np.median(np.abs(others - median))))
            excess = abs(beat["ef_percent"] - median) - limit
            if excess > worst_excess:
                worst, worst_excess, worst_median = beat, excess, median
        if worst is None:
            return
        _reject(
            worst, f"outlier: EF {worst['ef_percent']:.1f} % against {worst_median:.1f} % (median of the other beats)"
        )


def analyse_beats(
    volumes_T,
    frame_rate: float | None = None,
    frame_problems: dict[int, str] | None = None,
    image_period: int | None = None,
) -> dict:
    """Beats of an LV volume curve, each accepted or rejected with its reason, and the cine's EF over accepted beats.

    A cine that holds more than a cycle (a period is found in the images by :func:`motion_period`, passed as
    ``image_period``, or else in the curve by :func:`cardiac_period`): each cycle's ED is a maximum
    of the lightly smoothed curve (maxima found on the curve minus its running mean over a period, at least 0.7 of a
    period apart; a maximum on the early hump of a double-humped diastole moved to where systole starts, and a
    stretch of more than ``MISSED_CYCLE_GAP`` periods without one searched again, so that every cycle is listed), its
    ES the minimum within ``SYSTOLE_FRACTION_RANGE`` of the period after ED. A beat is rejected
    when it is cut by the cine's ends, when the minimum lies on the window's edge (no end-systole where the period
    allows one), when its ED or ES frame has a broken mask (``frame_problems``), when the ED volume is not above the
    ES volume, or (with 3 or more accepted beats) when its EF is an outlier against the others.

    A cine shorter than a period (a half cycle as CAMUS stores it, ED -> ES), or shorter than ``LONG_CINE_S`` when
    its period gives no accepted beat (the period of so short a cine is not established), has one pair, the
    curve's maximum and minimum, rejected only for broken masks, volumes or (with a frame rate) an ED -> ES
    interval outside ``HALF_CYCLE_SYSTOLE_S``. A long cine (``LONG_CINE_S``, or ``LONG_CINE_FRAMES`` without a frame
    rate) whose curve is not periodic has that pair rejected: its maximum and minimum need not belong to one beat.

    Args:
        volumes_T: ``[T]`` LV volumes in ml (or areas), NaN where the frame has no measurable LV.
        frame_rate: frames per second, if known.
        frame_problems: ``{frame: reason}`` for frames whose mask cannot be trusted.
        image_period: the period of the cine's images in frames (:func:`motion_period`), if known: it does not
            depend on the segmentation, so it is preferred to the curve's own.

    Returns:
        dict with ``period_frames`` (``None`` without a period), ``period_source`` (``"images"``, ``"lv_curve"`` or
        ``None``), ``periodicity`` (correlation of the curve with itself one period later, NaN without a period),
        ``heart_rate_bpm`` (``None`` without period or frame rate), ``beats`` (dicts ``ed``, ``es``, ``edv_ml``,
        ``esv_ml``, ``ef_percent``, ``accepted``, ``reason``), ``beats_accepted``, ``ef_percent``/``edv_ml``/
        ``esv_ml`` (means over the accepted beats, NaN without one), ``ef_sd`` (sample SD, NaN with fewer than 2)
        and ``reason`` (why the EF is NaN, else ``None``).
    """
    volumes = np.asarray(volumes_T, dtype=float).ravel()
    problems = dict(frame_problems or {})
    n = len(volumes)
    rate = frame_rate if frame_rate is not None and math.isfinite(frame_rate) and frame_rate > 0 else None
    period, strength = cardiac_period(volumes, rate)
    source = "lv_curve" if period is not None else None
    if image_period is not None:
        period, strength, source = int(image_period), lag_correlation(volumes, int(image_period), rate), "images"
    beats: list[dict] = []
    long_cine = n / rate >= LONG_CINE_S if rate else n >= LONG_CINE_FRAMES
    if np.isfinite(volumes).sum() >= 2:
        if period is not None:
            beats = _periodic_beats(volumes, period, problems)
        if not beats or (not long_cine and not any(b["accepted"] for b in beats)):
            # a cine shorter than LONG_CINE whose period gives no beat: the period is not established, the cine is
            # measured as a half cycle
            period, strength, source = None, 0.0, None
            filled = _fill_nan(volumes)
            ed, es = int(np.argmax(filled)), int(np.argmin(filled))
            if rate and abs(es - ed) / rate > HALF_CYCLE_SYSTOLE_S[1]:
                # more than a cycle but no period found: the first frame at the curve's top (within 5 % of its range)
                # followed, within a systole's reach, by a minimum inside that reach at least half the swing lower
                reach = int(HALF_CYCLE_SYSTOLE_S[1] * rate)
                for top in np.flatnonzero(filled >= filled.max() - 0.05 * float(np.ptp(filled))):
                    hi_i = min(n, top + reach + 1)
                    near = top + 1 + int(np.argmin(filled[top + 1 : hi_i])) if hi_i > top + 2 else hi_i
                    if near < hi_i - 1 and filled[near] <= filled.max() - 0.5 * float(np.ptp(filled)):
                        ed, es = int(top) + int(np.argmax(filled[top:near])), int(near)
                        break
            beat = _beat(volumes, ed, es, problems)
            if ed == es:
                _reject(beat, "the LV curve is flat: ED and ES are the same frame")
            elif long_cine and period is None:
                length = f"{n / rate:.1f} s" if rate else f"{n} frames"
                _reject(
                    beat, f"no cardiac period in the LV curve of a {length} cine: ED and ES may be of different beats"
                )
            elif rate and not HALF_CYCLE_SYSTOLE_S[0] <= abs(es - ed) / rate <= HALF_CYCLE_SYSTOLE_S[1]:
                _reject(
                    beat,
                    f"ED -> ES interval {abs(es - ed) / rate:.3f} s outside {HALF_CYCLE_SYSTOLE_S[0]}-"
                    f"{HALF_CYCLE_SYSTOLE_S[1]} s",
                )
            beats = [beat]
    _reject_outliers(beats)
    accepted = [b for b in beats if b["accepted"]]
    efs = [b["ef_percent"] for b in accepted]
    if accepted:
        reason = None
    elif not beats:
        reason = f"no measurable LV volume in {n - int(np.isfinite(volumes).sum())} of {n} frames"
    else:
        reason = "no accepted beat: " + "; ".join(f"{b['ed']}->{b['es']}: {b['reason']}" for b in beats)
    return {
        "period_frames": period,
        "period_source": source,
        "periodicity": strength if period is not None else math.nan,
        "heart_rate_bpm": 60.0 * rate / period if rate and period else None,
        "beats": beats,
        "beats_accepted": len(accepted),
        "ef_percent": float(np.mean(efs)) if efs else math.nan,
        "ef_sd": float(np.std(efs, ddof=1)) if len(efs) >= 2 else math.nan,
        "edv_ml": float(np.mean([b["edv_ml"] for b in accepted])) if accepted else math.nan,
        "esv_ml": float(np.mean([b["esv_ml"] for b in accepted])) if accepted else math.nan,
        "reason": reason,
    }
