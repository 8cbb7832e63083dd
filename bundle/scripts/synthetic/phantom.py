"""Anatomy and motion of the synthetic apical echo phantom (no image formation here).

Coordinates are physical, in mm. The image plane has ``x`` to the right and ``z`` down, with the origin at the
probe (the apex of the scan sector); the probe sits at ``(probe_x, probe_z)`` in the square image (``x`` from the
image's vertical centre line, ``z`` from its top edge). The LV has its own frame: origin at the endocardial
apex (fixed over the cycle), ``u`` along the long axis towards the mitral plane, ``v`` perpendicular (``+v`` to
the screen right before tilt).

LV cavity: a prolate ellipse (semi-axes ``a`` along ``u``, ``b`` across, centre at ``u = a``) truncated at the
mitral plane ``u = a (1 + kappa)``. Rotated about its long axis it is a truncated prolate ellipsoid with
volume ``pi a b^2 (kappa - kappa^3 / 3 + 2 / 3)``; the phantom's true volume is the numeric integral of its
disks (:func:`lv_volume_ml`), which equals that formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIEWS = ("2CH", "4CH")
EF_RANGE = (0.10, 0.85)


@dataclass(frozen=True)
class Phantom:
    """Static parameters of one simulated acquisition (one view of one patient); lengths in mm, angles in rad."""

    view: str
    depth: float  # scan depth (sector radius)
    half_angle: float  # sector half opening angle
    fov: float  # side of the square image (mm); pixel size = fov / image size
    apex_x: float  # LV apex position (image plane)
    apex_z: float
    tilt: float  # angle of the LV long axis from the vertical (positive: base to the right)
    a_ed: float  # ED semi-axis along the long axis
    b_ed: float  # ED semi-axis across
    kappa: float  # mitral plane at u = a (1 + kappa)
    wall_apex: float  # ED myocardial thickness at the apex
    wall_side: float  # ED myocardial thickness of the side walls
    thickening: float  # relative systolic wall thickening
    ef: float  # ejection fraction (fraction, 0..1)
    long_share: float  # share of the volume change due to long-axis shortening
    la_width: float  # LA semi-axis across at ED, relative to the mitral half-width
    la_length: float  # LA length beyond the mitral plane at ED
    rv_apex: float  # 4CH: RV apex position along u, fraction of the LV length
    rv_width: float  # 4CH: RV semi-axis across at ED
    heart_rate: float  # beats per minute
    systole_fraction: float  # duration of systole / duration of the cycle
    probe_x: float = 0.0  # probe (sector apex) position in the image: from the vertical centre line
    probe_z: float = 0.0  # ... and from the top edge

    @property
    def lv_length_ed(self) -> float:
        """Apex to mitral-plane distance at ED (mm)."""
        return self.a_ed * (1.0 + self.kappa)


def sample_phantom(rng: np.random.Generator, view: str, ef: float | None = None) -> Phantom:
    """Draw a random but plausible phantom; ``ef`` (fraction) fixes the ejection fraction, else U(0.20, 0.75).

    4CH is laid out as a standard apical four-chamber view: the interventricular septum runs near the sector's
    midline, the LV (and LA) in the right half, the RV (and RA) in the left half. 2CH has the LV roughly central.
    The field of view is randomly larger than the sector (zoom) and the probe a little off the top centre, so the
    heart is sometimes small in the image, as in real frames padded to a square.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    ef_draw = rng.uniform(0.20, 0.75)
    if ef is None:
        ef = ef_draw
    if not EF_RANGE[0] <= ef <= EF_RANGE[1]:
        raise ValueError(f"ef={ef!r} is out of range; give a fraction in [{EF_RANGE[0]}, {EF_RANGE[1]}]")
    four = view == "4CH"
    length = rng.uniform(75.0, 92.0) * (1.0 + 0.25 * (0.55 - ef))  # dilated ventricles when EF is low
    kappa = rng.uniform(0.62, 0.8)
    a_ed = length / (1.0 + kappa)
    b_ed = a_ed * rng.uniform(0.44, 0.54) * (1.0 + 0.4 * (0.55 - ef))
    wall_apex, wall_side = rng.uniform(6.0, 9.0), rng.uniform(8.0, 11.0)
    la_length = rng.uniform(38.0, 52.0)
    apex_z = rng.uniform(30.0, 55.0)
    tilt = np.deg2rad(rng.uniform(3.0, 14.0) if four else rng.uniform(-8.0, 8.0))
    # scan depth: at least the far wall of the atria plus some tissue behind them
    depth = max(rng.uniform(140.0, 210.0), apex_z + length + la_length + rng.uniform(12.0, 30.0))
    half_angle = np.deg2rad(rng.uniform(40.0, 47.0) if four else rng.uniform(34.0, 42.0))
    c, s = np.cos(tilt), np.sin(tilt)
    if four:
        # mid-septum (centre line of the septal wall at the LV's widest level) near the sector midline
        x_septum = rng.uniform(-12.0, 3.0)
        apex_x = x_septum - a_ed * s + (b_ed + 0.5 * wall_side) * c
    else:
        apex_x = rng.uniform(-6.0, 6.0)
    apex_x += _sector_shift(apex_x, apex_z, tilt, a_ed, b_ed, kappa, wall_apex, wall_side, half_angle)
    fov = depth * rng.uniform(1.0, 1.6)
    probe_z = rng.uniform(0.0, 1.0) * min(0.2 * fov, fov - depth)
    probe_x = rng.uniform(-0.05, 0.05) * fov
    return Phantom(
        view=view,
        depth=depth,
        half_angle=half_angle,
        fov=fov,
        apex_x=apex_x,
        apex_z=apex_z,
        tilt=tilt,
        a_ed=a_ed,
        b_ed=b_ed,
        kappa=kappa,
        wall_apex=wall_apex,
        wall_side=wall_side,
        thickening=rng.uniform(0.3, 0.6) * min(1.0, ef / 0.55),
        ef=float(ef),
        long_share=rng.uniform(0.15, 0.3),
        la_width=rng.uniform(1.15, 1.4),
        la_length=la_length,
        rv_apex=rng.uniform(0.22, 0.35),
        rv_width=rng.uniform(0.7, 0.95) * b_ed,
        heart_rate=rng.uniform(55.0, 95.0),
        systole_fraction=rng.uniform(0.34, 0.42),
        probe_x=probe_x,
        probe_z=probe_z,
    )


def _sector_shift(
    apex_x: float,
    apex_z: float,
    tilt: float,
    a: float,
    b: float,
    kappa: float,
    wall_apex: float,
    wall_side: float,
    half_angle: float,
    margin: float = np.deg2rad(1.5),
) -> float:
    """Smallest sideways shift (mm) of the apex that keeps the ED epicardium of the LV inside the sector.

    The whole LV (cavity and wall, up to the mitral plane) then lies ``margin`` inside the sector edges, so its
    labels are never cut by the sector. If it cannot fit, the shift centres it.
    """
    t = np.linspace(0.0, 2.0 * np.pi, 181)
    u = a + (a + wall_apex) * np.cos(t)
    v = (b + wall_side) * np.sin(t)
    keep = u <= a * (1.0 + kappa)
    u, v = u[keep], v[keep]
    c, s = np.cos(tilt), np.sin(tilt)
    x, z = apex_x + u * s + v * c, apex_z + u * c - v * s
    reach = np.clip(z, 0.0, None) * np.tan(half_angle - margin)
    lo, hi = float(np.max(-reach - x)), float(np.min(reach - x))
    if lo > hi:
        return 0.5 * (lo + hi)
    return float(np.clip(0.0, lo, hi))


def contraction(phase: np.ndarray | float, systole_fraction: float) -> np.ndarray:
    """Contraction state ``s`` in [0, 1] (0 = ED, 1 = ES) at cycle phase in [0, 1) (0 = ED).

    Systole is a raised cosine; diastole has rapid filling (E wave), diastasis and the atrial kick (A wave).
    """
    p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    ts = systole_fraction
    sys_s = 0.5 * (1.0 - np.cos(np.pi * np.clip(p / ts, 0.0, 1.0)))
    x = np.clip((p - ts) / (1.0 - ts), 0.0, 1.0)

    def smooth(t: np.ndarray) -> np.ndarray:
        t = np.clip(t, 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    dia_s = 1.0 - (0.8 * smooth(x / 0.35) + 0.2 * smooth((x - 0.72) / 0.28))
    return np.where(p <= ts, sys_s, dia_s)


@dataclass(frozen=True)
class FrameGeometry:
    """Chamber shapes at one contraction state (LV frame, mm)."""

    a: float
    b: float
    kappa: float
    wall_apex: float
    wall_side: float
    la_center: float  # LA ellipse centre along u
    la_a: float  # LA semi-axes
    la_b: float
    rv_center_u: float
    rv_center_v: float
    rv_a: float
    rv_b: float
    tricuspid_u: float

    @property
    def mitral_u(self) -> float:
        """Position of the mitral plane along the long axis (mm from the apex)."""
        return self.a * (1.0 + self.kappa)

    @property
    def mitral_half_width(self) -> float:
        """Half width of the cavity at the mitral plane (mm)."""
        return self.b * np.sqrt(1.0 - self.kappa**2)


def frame_geometry(ph: Phantom, s: float) -> FrameGeometry:
    """Chamber shapes at contraction state ``s`` (0 = ED, 1 = ES); the LV volume is ``EDV (1 - EF)^s``."""
    keep = 1.0 - ph.ef
    a = ph.a_ed * keep ** (ph.long_share * s)
    b = ph.b_ed * keep ** (0.5 * (1.0 - ph.long_share) * s)
    thick = 1.0 + ph.thickening * s
    mitral_u = a * (1.0 + ph.kappa)
    half = b * np.sqrt(1.0 - ph.kappa**2)
    # LA: its far wall stays put while the base descends; it widens as it fills during systole.
    la_b = ph.la_width * ph.b_ed * np.sqrt(1.0 - ph.kappa**2) * (1.0 + 0.12 * s)
    far = ph.lv_length_ed + ph.la_length
    m = np.sqrt(max(1.0 - (half / la_b) ** 2, 0.0))
    la_a = (far - mitral_u) / (1.0 + m)
    rv_shrink = 1.0 - 0.12 * s
    rv_b = ph.rv_width * rv_shrink
    tricuspid_u = mitral_u - 6.0
    rv_apex_u = ph.rv_apex * ph.lv_length_ed
    rv_a = 0.5 * (tricuspid_u - rv_apex_u) / 0.8
    return FrameGeometry(
        a=a,
        b=b,
        kappa=ph.kappa,
        wall_apex=ph.wall_apex * thick,
        wall_side=ph.wall_side * thick,
        la_center=mitral_u + m * la_a,
        la_a=la_a,
        la_b=la_b,
        rv_center_u=rv_apex_u + rv_a,
        rv_center_v=-(b + ph.wall_side * thick) - 0.75 * rv_b,
        rv_a=rv_a,
        rv_b=rv_b,
        tricuspid_u=tricuspid_u,
    )


def lv_volume_ml(g: FrameGeometry, n_disks: int = 2000) -> float:
    """True LV cavity volume (mL): body of revolution of the truncated ellipse about its long axis.

    Numeric integration with ``n_disks`` disks (midpoint rule) of radius ``b sqrt(1 - ((u - a) / a)^2)``.
    """
    length = g.mitral_u
    du = length / n_disks
    u = (np.arange(n_disks) + 0.5) * du
    r2 = g.b**2 * np.clip(1.0 - ((u - g.a) / g.a) ** 2, 0.0, None)
    return float(np.pi * r2.sum() * du / 1000.0)


def lv_volume_exact_ml(g: FrameGeometry) -> float:
    """Closed form of :func:`lv_volume_ml`: ``pi a b^2 (kappa - kappa^3 / 3 + 2 / 3)`` in mL."""
    k = g.kappa
    return float(np.pi * g.a * g.b**2 * (k - k**3 / 3.0 + 2.0 / 3.0) / 1000.0)


def to_lv_frame(ph: Phantom, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane points (mm) to LV-frame coordinates ``(u, v)`` (mm), same shapes."""
    dx, dz = x - ph.apex_x, z - ph.apex_z
    c, s = np.cos(ph.tilt), np.sin(ph.tilt)
    return dx * s + dz * c, dx * c - dz * s


def from_lv_frame(ph: Phantom, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_lv_frame`: LV-frame ``(u, v)`` to image-plane ``(x, z)`` in mm."""
    c, s = np.cos(ph.tilt), np.sin(ph.tilt)
    return ph.apex_x + u * s + v * c, ph.apex_z + u * c - v * s


def _ellipse_radius(cu: np.ndarray, cv: np.ndarray, a: float, b: float) -> np.ndarray:
    """Distance from the centre to an ellipse (semi-axes a, b) along unit directions (cu, cv)."""
    return 1.0 / np.sqrt((cu / a) ** 2 + (cv / b) ** 2)


def reference_coords(
    g_ref: FrameGeometry, g: FrameGeometry, u: np.ndarray, v: np.ndarray, reach: float = 18.0
) -> tuple[np.ndarray, np.ndarray]:
    """Material coordinates: where the tissue now at ``(u, v)`` sat in the reference (ED) configuration.

    Polar map about the LV centre: the cavity scales, the wall maps endocardium to endocardium and epicardium
    to epicardium (so it thickens), and beyond the epicardium the displacement fades over ``reach`` mm.
    Inputs and outputs have the same shape (mm, LV frame).
    """
    U, V = u - g.a, v
    r = np.hypot(U, V) + 1e-9
    cu, cv = U / r, V / r
    endo = _ellipse_radius(cu, cv, g.a, g.b)
    epi = _ellipse_radius(cu, cv, g.a + g.wall_apex, g.b + g.wall_side)
    endo0 = _ellipse_radius(cu, cv, g_ref.a, g_ref.b)
    epi0 = _ellipse_radius(cu, cv, g_ref.a + g_ref.wall_apex, g_ref.b + g_ref.wall_side)
    r0 = np.where(
        r <= endo,
        r * endo0 / endo,
        np.where(r <= epi, endo0 + (r - endo) * (epi0 - endo0) / (epi - endo), r + epi0 - epi),
    )
    u0, v0 = g_ref.a + r0 * cu, r0 * cv
    w = np.exp(-((np.clip(r - epi, 0.0, None) / reach) ** 2))
    return u + w * (u0 - u), v + w * (v0 - v)
