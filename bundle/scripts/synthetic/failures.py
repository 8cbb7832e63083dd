"""Realistic failure modes of apical echo, drawn per patient and scheduled over the frames of one cine.

Each mode is drawn from its own random stream (independent of the phantom and of the baseline appearance), so
``failures=()`` renders exactly the generator's baseline look and switching one mode on or off leaves the others'
draws unchanged. The per-frame schedules are arrays in ``FailureSchedule.params``; :func:`to_json` gives the
record that ``generate_sequence(...)["failures"]`` and the CAMUS truth JSON carry. See ``docs/synthetic.md``.

Occlusion (``occluded``) is computed from the same physics the renderer uses, at points along the endocardial
border (the LV cavity's boundary from mitral annulus to mitral annulus through the apex, uniform in arc length):
a point is *hidden* where the failure modes cost at least :data:`HIDDEN_DB` dB of wall-to-cavity contrast
(dropout and clutter: the drop in ``10 log10((W^2 + C^2) / (B^2 + C^2))`` with W the expected wall echo, B the
blood echo, C the clutter, against the same frame without the modes; a shadow adds its attenuation in dB), and a
frame is occluded where at least :data:`OCCLUDED_FRACTION` of the border is hidden.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .anatomy import wall_normals
from .phantom import Phantom, frame_geometry, from_lv_frame, to_lv_frame

FAILURE_MODES = (
    "dropout",
    "shadow",
    "clutter",
    "gain_drift",
    "decorrelation",
    "out_of_plane",
    "translation",
    "frame_rate",
    "background",
)
PROBABILITY = {
    "dropout": 0.4,
    "shadow": 0.3,
    "clutter": 0.5,
    "gain_drift": 0.6,
    "decorrelation": 0.6,
    "out_of_plane": 0.5,
    "translation": 0.5,
    "frame_rate": 1.0,
    "background": 0.85,
}
"""Probability that a mode is on for one patient in the realistic default (``failures=None``)."""
OCCLUDERS = ("dropout", "shadow", "clutter")
HIDDEN_DB = 12.0
"""A border point is hidden where the failure modes cost at least this much wall-to-cavity contrast (dB)."""
OCCLUDED_FRACTION = 0.10
"""A frame is occluded where at least this fraction of the endocardial border is hidden."""
HARD_RUN = 3
"""``hard=True``: at least ``min(HARD_RUN, n_frames)`` consecutive occluded frames."""
FRAME_RATE_RANGE = (15.0, 80.0)
N_BORDER = 120


def resolve_failures(failures: Iterable[str] | str | None) -> tuple[frozenset[str], bool]:
    """``(modes forced on, realistic)``: None is the realistic default (each mode on with :data:`PROBABILITY`).

    An iterable of names (or a comma-separated string; ``"all"``, ``"none"``) turns exactly those modes on.
    Unknown names raise ``ValueError``.
    """
    if failures is None:
        return frozenset(), True
    if isinstance(failures, str):
        text = failures.strip().lower()
        if text in ("default", "realistic"):
            return frozenset(), True
        if text == "all":
            return frozenset(FAILURE_MODES), False
        failures = [] if text in ("none", "") else [n.strip() for n in text.split(",") if n.strip()]
    names = [str(n) for n in failures]
    unknown = sorted(set(names) - set(FAILURE_MODES))
    if unknown:
        raise ValueError(f"unknown failure modes {unknown}; expected names from {FAILURE_MODES}")
    return frozenset(names), False


def _curve(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth random curve in [-1, 1] over ``n`` frames (two sines, 0.4-1.5 cycles over the clip)."""
    x = np.linspace(0.0, 1.0, n)
    f = rng.uniform(0.4, 1.5, 2)
    p = rng.uniform(0.0, 2.0 * np.pi, 2)
    w = rng.uniform(0.3, 1.0)
    y = np.sin(2 * np.pi * f[0] * x + p[0]) + w * np.sin(2 * np.pi * f[1] * x + p[1])
    return y / (1.0 + w)


def _window(n: int, start: int, length: int) -> np.ndarray:
    """1 on frames ``start .. start + length - 1``, 0.5 on the frame either side (onset and fade), else 0."""
    w = np.zeros(n)
    w[max(start - 1, 0) : start + length + 1] = 0.5
    w[start : start + length] = 1.0
    return w


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def border_points(ph: Phantom, s: float, n: int = N_BORDER) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (LV frame, mm) on the endocardium below the mitral plane, uniform in arc length."""
    g = frame_geometry(ph, s)
    phi = np.linspace(0.0, 2.0 * np.pi, 721)
    u, v = g.a + g.a * np.cos(phi), g.b * np.sin(phi)
    keep = u < g.mitral_u
    # the kept arc runs through the apex (phi = pi); start it at one annulus point
    phi = phi[keep]
    u, v = g.a + g.a * np.cos(phi), g.b * np.sin(phi)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(u), np.diff(v)))])
    t = np.linspace(0.0, arc[-1], n)
    return np.interp(t, arc, u), np.interp(t, arc, v)


class FailureSchedule:
    """The failure modes of one cine: per-patient parameters and per-frame schedules.

    Built by :func:`sample_failures`; the renderer asks it for anatomy coordinates (translation, out-of-plane),
    tissue dropout, gain (drift, TGC drift, shadow, darker sides), clutter, speckle decorrelation and the bright
    band behind the atria. ``params`` is the JSON-serialisable record.
    """

    def __init__(self, ph: Phantom, n_frames: int, params: dict[str, Any]) -> None:
        self.ph, self.n, self.params = ph, n_frames, params
        self.mitral_ref = ph.lv_length_ed

    def on(self, mode: str) -> bool:
        return self.params.get(mode) is not None

    @property
    def moves_anatomy(self) -> bool:
        return self.on("out_of_plane") or self.on("translation")

    # --- geometry: image plane (mm, probe at the origin) <-> anatomy (LV frame of the phantom) -------------------
    def _shift(self, t: int) -> tuple[float, float]:
        p = self.params.get("translation")
        return (0.0, 0.0) if p is None else tuple(p["shift_mm"][t])

    def _scale(self, t: int) -> float:
        p = self.params.get("out_of_plane")
        return 1.0 if p is None else float(p["length_scale"][t])

    def anatomy_coords(self, x: np.ndarray, z: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Image-plane points to the phantom's LV frame at frame ``t`` (undoing the probe shift and the
        foreshortening: the imaged LV below the ED mitral plane is the true one shortened by ``length_scale``
        towards that plane)."""
        dx, dz = self._shift(t)
        u, v = to_lv_frame(self.ph, x - dx, z - dz)
        f = self._scale(t)
        if f != 1.0:
            m = self.mitral_ref
            u = np.where(u < m, m - (m - u) / f, u)
        return u, v

    def image_coords(self, u: np.ndarray, v: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`anatomy_coords`: where the anatomy point ``(u, v)`` is imaged at frame ``t`` (mm)."""
        f = self._scale(t)
        m = self.mitral_ref
        u = np.where(u < m, m - f * (m - u), u)
        x, z = from_lv_frame(self.ph, u, v)
        dx, dz = self._shift(t)
        return x + dx, z + dz

    # --- echo modifications -------------------------------------------------------------------------------------
    def dropout_db(self, t: int, u: np.ndarray, v: np.ndarray, cos: np.ndarray, s: float) -> np.ndarray:
        """Angle-dependent loss (dB, >= 0) of the wall echo at anatomy points with |cos(beam, wall normal)|."""
        p = self.params.get("dropout")
        if p is None:
            return np.zeros(np.shape(u))
        length = frame_geometry(self.ph, s).mitral_u
        along = np.exp(-(((u / length - p["center"]) / p["width"]) ** 2))
        side = 1.0 / (1.0 + np.exp(-np.clip(p["side"] * v / 2.0, -30, 30)))
        sin = np.sqrt(np.clip(1.0 - cos * cos, 0.0, 1.0))
        return p["level_db"][t] * sin ** p["power"] * along * side

    def gain_db(self, t: int, rel: np.ndarray, ang: np.ndarray) -> np.ndarray:
        """Gain change (dB) at relative depth ``rel`` and angle ``ang`` (fraction of the half-angle): drift, TGC
        drift, darker sides and the shadow. Broadcasts ``rel`` [n_r, 1] against ``ang`` [1, n_t]."""
        out = np.zeros(np.broadcast_shapes(np.shape(rel), np.shape(ang)))
        p = self.params.get("gain_drift")
        if p is not None:
            out = out + p["gain_db"][t] + p["tgc_db"][t] * (2.0 * rel - 1.0)
        p = self.params.get("background")
        if p is not None:
            out = out - p["side_db"] * np.abs(ang) ** 2
        return out - self.shadow_db(t, rel, ang)

    def shadow_db(self, t: int, rel: np.ndarray, ang: np.ndarray) -> np.ndarray:
        """Attenuation (dB, >= 0) of the acoustic shadow at frame ``t``."""
        p = self.params.get("shadow")
        if p is None or p["level_db"][t] <= 0.0:
            return np.zeros(np.broadcast_shapes(np.shape(rel), np.shape(ang)))
        across = _smoothstep((p["width"] - np.abs(ang - p["angle"])) / 0.04 + 0.5)
        deep = _smoothstep((rel - p["depth"]) / 0.04)
        return p["level_db"][t] * across * deep

    def clutter_amp(self, t: int, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
        """Extra apex clutter amplitude (linear) at probe-fixed LV-frame points ``(us, vs)`` at frame ``t``."""
        p = self.params.get("clutter")
        if p is None:
            return np.zeros(np.shape(us))
        d2 = ((us - p["center_mm"]) ** 2 + vs**2) / p["radius_mm"] ** 2
        return p["level"][t] * p["amp"] * np.exp(-d2)

    def band_factor(self, u: np.ndarray) -> np.ndarray | None:
        """Echo factor of the background tissue: the bright band behind the atria (anatomy coordinate ``u``)."""
        p = self.params.get("background")
        if p is None:
            return None
        start = self.ph.lv_length_ed + self.ph.la_length + p["band_offset_mm"]
        inside = _smoothstep((u - start) / 4.0) * _smoothstep((start + p["band_width_mm"] - u) / 4.0)
        return 1.0 + (p["band_gain"] - 1.0) * inside

    # --- occlusion ----------------------------------------------------------------------------------------------
    def border_hidden(self, app: Any, s: np.ndarray) -> np.ndarray:
        """Fraction [T] of the endocardial border hidden by the failure modes (see the module docstring)."""
        ph = self.ph
        out = np.zeros(self.n)
        for t in range(self.n):
            u, v = border_points(ph, float(s[t]))
            x, z = self.image_coords(u, v, t)
            r, th = np.hypot(x, z), np.arctan2(x, z)
            rel, ang = r / ph.depth, th / ph.half_angle
            g = frame_geometry(ph, float(s[t]))
            nu, nv = wall_normals(u, v, g)
            bu, bv = to_lv_frame(ph, ph.apex_x + np.sin(th), ph.apex_z + np.cos(th))
            cos = np.abs(nu * bu + nv * bv)
            wall = app.myocardium * (app.specular_floor + (1.0 - app.specular_floor) * cos**app.specular_power)
            us, vs = to_lv_frame(ph, x, z)  # probe-fixed frame of the static clutter
            base_clutter = app.haze * np.exp(-r / 16.0) + app.apex_clutter * np.exp(-(((us - 8.0) ** 2 + vs**2) / 196))
            blood = app.blood + app.fog
            drop = 10.0 ** (-self.dropout_db(t, u, v, cos, float(s[t])) / 20.0)
            extra = self.clutter_amp(t, us, vs)
            c0 = 10 * np.log10((wall**2 + base_clutter**2) / (blood**2 + base_clutter**2))
            c2 = base_clutter**2 + extra**2
            cf = 10 * np.log10(((wall * drop) ** 2 + c2) / (blood**2 + c2))
            loss = (c0 - cf) + self.shadow_db(t, rel, ang)
            out[t] = float(np.mean(loss >= HIDDEN_DB))
        return out


def longest_run(flags: np.ndarray) -> int:
    """Length of the longest stretch of consecutive True values."""
    best = run = 0
    for f in np.asarray(flags, bool):
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def _lv_angles(ph: Phantom) -> np.ndarray:
    """Angles (fraction of the half-angle) of the ED endocardial border points seen from the probe."""
    x, z = from_lv_frame(ph, *border_points(ph, 0.0))
    return np.arctan2(x, z) / ph.half_angle


def _draw(rng: np.random.Generator, ph: Phantom, n: int, s: np.ndarray, app: Any) -> dict[str, dict[str, Any]]:
    """Parameters of every mode (drawn whether on or not, in a fixed order, so the draws do not depend on which
    modes are on)."""
    four = ph.view == "4CH"
    out: dict[str, dict[str, Any]] = {}
    # 1. lateral-wall dropout: stronger where the beam runs along the wall, modulated over the cycle
    m, at_es = rng.uniform(0.5, 1.0), bool(rng.random() < 0.5)
    level = rng.uniform(4.0, 26.0) * ((1.0 - m) + m * (s if at_es else 1.0 - s))
    out["dropout"] = {
        "side": 1.0 if four else float(rng.choice([-1.0, 1.0])),
        "center": rng.uniform(0.35, 0.8),
        "width": rng.uniform(0.2, 0.45),
        "power": rng.uniform(1.0, 3.0),
        "max_db": float(level.max()),
        "stronger_at": "ES" if at_es else "ED",
        "level_db": level,
    }
    # 2. acoustic shadow over part of the sector for part of the cycle
    lv_ang = _lv_angles(ph)
    angle = float(rng.choice(lv_ang)) if rng.random() < 0.7 else rng.uniform(-0.85, 0.85)
    length = max(1, int(round(rng.uniform(0.2, 0.6) * n)))
    start = int(rng.integers(0, max(1, n - length + 1)))
    max_db = rng.uniform(15.0, 35.0)
    out["shadow"] = {
        "angle": angle,
        "width": rng.uniform(0.08, 0.2),
        "depth": rng.uniform(0.04, 0.12),
        "max_db": max_db,
        "start": start,
        "frames": length,
        "level_db": max_db * _window(n, start, length),
    }
    # 3. apex clutter / reverberation haze, varying in time (probe-fixed)
    out["clutter"] = {
        "amp": app.myocardium * rng.uniform(0.3, 1.2),
        "center_mm": rng.uniform(4.0, 14.0),
        "radius_mm": rng.uniform(12.0, 22.0),
        "level": 0.6 + 0.4 * _curve(rng, n),
    }
    # 4. gain and TGC drift
    out["gain_drift"] = {
        "gain_db": rng.uniform(2.0, 6.0) * _curve(rng, n),
        "tgc_db": rng.uniform(2.0, 6.0) * _curve(rng, n),
    }
    # 5. speckle decorrelation
    out["decorrelation"] = {"static": rng.uniform(0.15, 0.6), "rho": rng.uniform(0.0, 0.5)}
    # 6. out-of-plane motion: foreshortening over the cycle, none at ED and ES (so the masks' EF is the phantom's)
    # and small enough that the imaged LV area stays largest at ED and smallest at ES (the dip is quadratic in the
    # distance to ED/ES, the area change linear)
    area_rate = 0.5 * (1.0 + ph.long_share) * abs(np.log(1.0 - ph.ef))
    f_max = min(rng.uniform(0.05, 0.15), 0.3 * area_rate)
    out["out_of_plane"] = {"max": f_max, "length_scale": 1.0 - f_max * (4.0 * s * (1.0 - s)) ** 2}
    # 7. probe translation (in-plane), none at ED and ES (as 6.), kept small enough that the LV stays in the sector
    amp = rng.uniform(2.0, 5.0)
    envelope = ((4.0 * s * (1.0 - s)) ** 2)[:, None]
    shift = np.stack([0.6 * amp * _curve(rng, n), amp * _curve(rng, n)], axis=1) * envelope
    out["translation"] = {"amp_mm": amp, "shift_mm": _fit_shift(ph, shift)}
    out["frame_rate"] = {}  # drawn before the timing, by draw_frame_rate
    # 9. background statistics: darker sides, bright band behind the atria
    out["background"] = {
        "side_db": rng.uniform(6.0, 15.0),
        "band_gain": rng.uniform(2.5, 6.0),
        "band_offset_mm": rng.uniform(2.0, 8.0),
        "band_width_mm": rng.uniform(8.0, 20.0),
    }
    return out


def _fit_shift(ph: Phantom, shift: np.ndarray) -> np.ndarray:
    """Scale the shifts down (sideways first, then along the depth) until the ED epicardium, shifted, stays inside
    the sector at every frame (the labels are never cut by the sector edge)."""
    g = frame_geometry(ph, 0.0)
    phi = np.linspace(0.0, 2.0 * np.pi, 181)
    u, v = g.a + (g.a + g.wall_apex) * np.cos(phi), (g.b + g.wall_side) * np.sin(phi)
    keep = u <= g.mitral_u
    x, z = from_lv_frame(ph, u[keep], v[keep])
    limit = ph.half_angle - np.deg2rad(0.2)
    shift = shift.copy()
    for k in range(12):
        xs, zs = x[None] + shift[:, :1], z[None] + shift[:, 1:]
        if np.all(np.abs(np.arctan2(xs, zs)) < limit):
            break
        axis = 0 if k < 6 else 1
        shift[:, axis] *= 0.0 if k in (5, 11) else 0.6
    return shift


def draw_frame_rate(seed_entropy: list[int]) -> float:
    """The cine's frame rate, uniform in :data:`FRAME_RATE_RANGE` (its own random stream)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed_entropy, spawn_key=(17,)))
    return float(rng.uniform(*FRAME_RATE_RANGE))


def sample_failures(
    seed_entropy: list[int],
    ph: Phantom,
    app: Any,
    s: np.ndarray,
    modes: frozenset[str],
    realistic: bool,
    hard: bool,
) -> tuple[FailureSchedule, np.random.Generator]:
    """Draw the failure modes of one cine of ``len(s)`` frames (contraction ``s``) from their own random stream.

    Returns the schedule and the stream (the renderer draws the decorrelating speckle from it).
    ``hard``: make one occluder (dropout, shadow or apex clutter, among those on) strong over a stretch of frames
    and check with :meth:`FailureSchedule.border_hidden` that at least ``min(HARD_RUN, T)`` consecutive frames are
    occluded; strengthen it until they are.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed_entropy, spawn_key=(15,)))
    n = len(s)
    coins = rng.random(len(FAILURE_MODES))
    drawn = _draw(rng, ph, n, s, app)
    active = [m for m, c in zip(FAILURE_MODES, coins) if (m in modes) or (realistic and c < PROBABILITY[m])]
    params: dict[str, Any] = {m: (drawn[m] if m in active else None) for m in FAILURE_MODES}
    schedule = FailureSchedule(ph, n, params)
    hard_rng = np.random.default_rng(np.random.SeedSequence(seed_entropy, spawn_key=(16,)))
    occluder = None
    if hard:
        usable = [m for m in OCCLUDERS if realistic or m in modes]
        if not usable:
            raise ValueError(f"hard=True needs one of the occluding failure modes {OCCLUDERS} switched on")
        occluder = str(hard_rng.choice(usable))
        need = min(HARD_RUN, n)
        length = min(n, need + int(hard_rng.integers(1, max(2, n // 3) + 1)))
        start = int(hard_rng.integers(0, n - length + 1))
        window = _window(n, start, length)
        lv_ang = _lv_angles(ph)
        u = hard_rng.random(4)
        active_default = list(active)
        for attempt in range(8):
            boost = 1.3**attempt
            was_on = occluder in active_default
            params[occluder] = _hard_params(occluder, u, app, window, lv_ang, drawn[occluder], was_on, boost)
            if occluder not in active:
                active.append(occluder)
            if longest_run(schedule.border_hidden(app, s) >= OCCLUDED_FRACTION) >= need:
                break
        else:  # pragma: no cover - the boosts always reach it in practice
            raise RuntimeError(f"could not occlude {need} frames with {occluder} for seed {seed_entropy}")
    params["active"] = [m for m in FAILURE_MODES if m in active]
    params["realistic_default"] = bool(realistic)
    params["hard"] = bool(hard)
    params["hard_occluder"] = occluder
    return schedule, rng


def _hard_params(
    mode: str,
    u: np.ndarray,
    app: Any,
    window: np.ndarray,
    lv_ang: np.ndarray,
    base: dict,
    was_on: bool,
    boost: float,
) -> dict[str, Any]:
    """A strong occluder of kind ``mode`` over ``window`` (1 on the stretch) from the uniform draws ``u`` [4];
    ``boost`` >= 1 strengthens it. Outside the window the mode keeps its default draw if it was on, else is off."""
    on = window >= 1.0
    keep = (~on) * float(was_on)
    if mode == "shadow":
        max_db = min((25.0 + 15.0 * u[0]) * boost, 60.0)
        return {
            "angle": float(lv_ang[int(u[1] * len(lv_ang))]),
            "width": min((0.1 + 0.1 * u[2]) * boost, 0.5),
            "depth": 0.04,
            "max_db": max_db,
            "start": int(np.argmax(on)),
            "frames": int(on.sum()),
            "level_db": max_db * window,
        }
    if mode == "dropout":
        strong = min((25.0 + 15.0 * u[0]) * boost, 60.0) * window
        level = np.maximum(np.asarray(base["level_db"]) * keep, strong)
        return {
            **base,
            "center": 0.4 + 0.3 * u[1],
            "width": min((0.35 + 0.15 * u[2]) * boost, 1.0),
            "power": max((1.0 + 0.5 * u[3]) / boost, 0.5),
            "max_db": float(level.max()),
            "level_db": level,
        }
    amp = app.myocardium * min((1.5 + 1.5 * u[0]) * boost, 8.0)
    return {
        **base,
        "amp": amp,
        "radius_mm": min((18.0 + 8.0 * u[2]) * boost, 45.0),
        "center_mm": 6.0 + 8.0 * u[1],
        "level": np.maximum(np.asarray(base["level"]) * keep * base["amp"] / amp, window),
    }


def to_json(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with arrays as lists and numpy scalars as Python numbers (JSON-serialisable)."""

    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple, np.ndarray)):
            return [conv(v) for v in np.asarray(x).tolist()] if isinstance(x, np.ndarray) else [conv(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        return x

    return conv(params)
