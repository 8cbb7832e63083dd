"""Sequence-level API: timing of the cardiac cycle, ED/ES frames and the phantom's true volumes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .failures import OCCLUDED_FRACTION, draw_frame_rate, resolve_failures, sample_failures, to_json
from .phantom import VIEWS, contraction, frame_geometry, lv_volume_ml, sample_phantom
from .render import Renderer, sample_appearance

MODES = ("systole", "diastole", "cine")


def _entropy(seed: int | Sequence[int]) -> list[int] | int:
    """Seed entropy from an int or a sequence of ints (e.g. ``[seed, patient, view]``)."""
    return [int(x) for x in seed] if isinstance(seed, Sequence) else int(seed)


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    """Generator from an int or a sequence of ints (e.g. ``[seed, patient, view]``)."""
    return np.random.default_rng(_entropy(seed))


def _valve_opening(phase: np.ndarray, systole_fraction: float) -> np.ndarray:
    """Mitral opening (0 closed .. 1 open) over the cycle phase: closed in systole, open in most of diastole."""
    x = (np.mod(phase, 1.0) - systole_fraction) / (1.0 - systole_fraction)
    return np.where((x > 0.04) & (x < 0.97), np.clip(2.5 * np.sin(np.pi * np.clip(x, 0, 1)), 0, 1), 0.0)


def timing(
    phantom_hr: float,
    systole_fraction: float,
    mode: str,
    n_frames: int,
    frame_rate: float | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int, int, float, float]:
    """Cycle phase of each frame, ED and ES indices, the frame rate and the heart rate actually used.

    Systole is made a whole number of frames long so that ED and ES fall exactly on frames.
    ``systole``: frames ED..ES; ``diastole``: frames ES..next ED; ``cine``: ``n_frames`` at ``frame_rate`` from a
    random start (ED and ES are the first ones in the clip).
    """
    period = 60.0 / phantom_hr
    t_sys = systole_fraction * period
    if mode == "systole" or mode == "diastole":
        n_half = n_frames - 1
        t_half = t_sys if mode == "systole" else period - t_sys
        fr = n_half / t_half
        step = 1.0 / (fr * period)
        if mode == "systole":
            return np.arange(n_frames) * step, 0, n_frames - 1, fr, phantom_hr
        return systole_fraction + np.arange(n_frames) * step, n_frames - 1, 0, fr, phantom_hr
    fr = 50.0 if frame_rate is None else float(frame_rate)
    n_sys = max(2, int(round(t_sys * fr)))
    if n_frames <= n_sys:
        raise ValueError(f"n_frames={n_frames} is too short for a systole of {n_sys} frames at {fr:g} frames/s")
    period = n_sys / fr / systole_fraction  # so that ES is exactly n_sys frames after ED
    start = int(rng.integers(0, min(int(np.ceil(period * fr)), n_frames - n_sys)))
    phase = np.mod((np.arange(n_frames) - start) / (fr * period), 1.0)
    return phase, start, start + n_sys, fr, 60.0 / period


def generate_sequence(
    seed: int | Sequence[int],
    view: str = "4CH",
    ef: float | None = None,
    size: int = 256,
    n_frames: int = 20,
    mode: str = "systole",
    frame_rate: float | None = None,
    render: bool = True,
    failures: Iterable[str] | str | None = None,
    hard: bool = False,
) -> dict[str, Any]:
    """Simulate one apical cine of a random phantom; see the package docstring for the returned keys.

    ``failures``: None for the realistic default (each mode of :data:`FAILURE_MODES` on with its own probability
    and strength, per patient), or the names of the modes to switch on (``()``: the baseline look). ``hard``: one
    occluder (dropout, shadow or apex clutter) hides part of the LV border on at least ``min(3, n_frames)``
    consecutive frames. ``occluded`` [T] bool and ``failures`` (JSON-serialisable parameters) are in the result.
    """
    modes, realistic = resolve_failures(failures)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if ef is not None and ef > 1.0:
        ef = ef / 100.0
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2, got {n_frames!r}")
    if frame_rate is not None and frame_rate <= 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate!r}")
    rng = _rng(seed)
    entropy = _entropy(seed)
    entropy = entropy if isinstance(entropy, list) else [entropy]
    ph = sample_phantom(rng, view, ef)
    app = sample_appearance(rng)
    draw_fr = mode == "cine" and frame_rate is None and (realistic or "frame_rate" in modes)
    if draw_fr:  # at most what still fits a systole into the clip
        frame_rate = min(draw_frame_rate(entropy), 0.999 * (n_frames - 1) / (ph.systole_fraction * 60 / ph.heart_rate))
        frame_rate = max(frame_rate, 1.0)
    phase, ed, es, fr, hr = timing(ph.heart_rate, ph.systole_fraction, mode, n_frames, frame_rate, rng)
    s = contraction(phase, ph.systole_fraction)
    opening = _valve_opening(phase, ph.systole_fraction)
    schedule, frng = sample_failures(entropy, ph, app, s, modes, realistic, hard)
    if schedule.on("frame_rate") or draw_fr:
        schedule.params["frame_rate"] = {"frame_rate": float(fr), "drawn": bool(draw_fr)}
    hidden = schedule.border_hidden(app, s)
    image = label = None
    if render:
        renderer = Renderer(ph, app, size, rng, schedule, frng)
        image = np.empty((size, size, n_frames), np.float32)
        label = np.empty((size, size, n_frames), np.uint8)
        for t in range(n_frames):
            image[..., t], label[..., t] = renderer.frame(float(s[t]), float(opening[t]), t)
    volumes = np.array([lv_volume_ml(frame_geometry(ph, float(x))) for x in s])
    edv, esv = float(volumes[ed]), float(volumes[es])
    return {
        "image": image,
        "label": label,
        "ed": ed,
        "es": es,
        "edv_ml": edv,
        "esv_ml": esv,
        "ef": 100.0 * (edv - esv) / edv,
        "volumes_ml": volumes,
        "contraction": s.astype(np.float32),
        "spacing_mm": (ph.fov / size, ph.fov / size),
        "frame_rate": float(fr),
        "heart_rate": float(hr),
        "view": view,
        "geometry": {
            "apex_xz_mm": (ph.apex_x, ph.apex_z),
            "tilt_deg": float(np.rad2deg(ph.tilt)),
            "depth_mm": ph.depth,
            "half_angle_deg": float(np.rad2deg(ph.half_angle)),
            "fov_mm": ph.fov,
            "probe_xz_mm": (ph.probe_x, ph.probe_z),
        },
        "phantom": ph,
        "occluded": hidden >= OCCLUDED_FRACTION,
        "border_hidden": hidden.astype(np.float32),
        "failures": to_json(schedule.params),
        "schedule": schedule,
    }
