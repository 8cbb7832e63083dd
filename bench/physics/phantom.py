"""Apical four-chamber scatterer phantoms with exact masks, independent of the bundle's synthetic generator.

Coordinates are in millimetres: ``x`` lateral (the image's columns, positive to the right), ``z`` depth from the
probe (the image's rows). The left ventricle's cavity is a prolate half-ellipse with its apex near the sector's
centre line, truncated at the mitral annulus; its wall is a band of thickness ``wall_mm`` around it. Three bases:

- ``closed``: the wall runs across the base (a closed ellipsoid, no mitral opening, no atria);
- ``open``: the wall stops at the annulus; closed mitral leaflets bow into a left atrium below it;
- ``four_chamber``: ``open`` plus a right ventricle beside the septum and a right atrium below it.

The cavity contracts from end-diastole (``s = 0``) to end-systole (``s = 1``) about a fixed apex: its length by
``1 - long_shortening * s``, its width by the factor that gives the phantom's EF; the wall thickens so that its area
stays constant. Wall scatterers keep their identity (their fraction through the wall and their angle), so speckle
moves with the tissue; blood scatterers are drawn again every frame.

The mask is the CAMUS convention: LV cavity closed by the line between the annulus points (1), myocardium (2), left
atrium (3); ``lv_volume_ml`` is the exact volume of the truncated prolate ellipsoid (the cavity rotated about its
long axis), the reference for the EF.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BASES = ("closed", "open", "four_chamber")


@dataclass(frozen=True)
class PhantomSpec:
    """One phantom, all lengths in mm at end-diastole."""

    base: str
    apex_x_mm: float
    apex_z_mm: float
    tilt_deg: float
    length_mm: float
    width_mm: float
    wall_mm: float
    truncation: float  # the annulus lies at truncation * semi-major axis below the ellipse's centre (0..1)
    ef: float  # fraction, 0..1
    long_shortening: float  # fractional length change ED -> ES
    la_length_mm: float
    la_width_mm: float
    rv_width_mm: float
    tissue_brightness: float  # background tissue reflectivity relative to the myocardium
    blood_brightness: float
    n_frames: int
    frame_rate: float

    def to_json(self) -> dict:
        return asdict(self)


def sample_spec(rng: np.random.Generator, base: str) -> PhantomSpec:
    """A phantom of base ``base`` with length, width, wall, base shape, EF, atrium and tissue contrast drawn."""
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    n_frames = int(rng.integers(12, 17))
    systole_s = float(rng.uniform(0.28, 0.36))
    return PhantomSpec(
        base=base,
        apex_x_mm=float(rng.uniform(2.0, 14.0)),
        apex_z_mm=float(rng.uniform(38.0, 52.0)),
        tilt_deg=float(rng.uniform(-4.0, 12.0)),
        length_mm=float(rng.uniform(72.0, 95.0)),
        width_mm=float(rng.uniform(38.0, 54.0)),
        wall_mm=float(rng.uniform(7.0, 12.0)),
        truncation=float(rng.uniform(0.15, 0.5)),
        ef=float(rng.uniform(0.25, 0.70)),
        long_shortening=float(rng.uniform(0.06, 0.16)),
        la_length_mm=float(rng.uniform(38.0, 55.0)),
        la_width_mm=float(rng.uniform(32.0, 46.0)),
        rv_width_mm=float(rng.uniform(24.0, 34.0)),
        tissue_brightness=float(rng.uniform(0.25, 0.5)),
        blood_brightness=float(rng.uniform(0.005, 0.03)),
        n_frames=n_frames,
        frame_rate=(n_frames - 1) / systole_s,
    )


@dataclass(frozen=True)
class Shape:
    """The LV at one contraction state, in its own frame: ``u`` lateral, ``v`` along the axis (apex -> base)."""

    a: float  # cavity semi-minor axis
    c: float  # cavity semi-major axis
    h: float  # wall thickness
    v_centre: float  # ellipse centre on the axis, measured from the apex (= c)
    v_base: float  # the annulus, measured from the apex


def shape_at(spec: PhantomSpec, s: float) -> Shape:
    """The cavity at contraction ``s`` (0 = ED, 1 = ES); the apex stays where it is."""
    c_ed = spec.length_mm / (1.0 + spec.truncation)
    a_ed = spec.width_mm / 2.0
    length_factor = 1.0 - spec.long_shortening * s
    es_width = np.sqrt((1.0 - spec.ef) / (1.0 - spec.long_shortening))  # a^2 c scales the volume
    width_factor = 1.0 - (1.0 - es_width) * s
    a, c = a_ed * width_factor, c_ed * length_factor
    h = spec.wall_mm * (a_ed + c_ed) / (a + c)  # wall area (perimeter x thickness) about constant
    return Shape(a=a, c=c, h=h, v_centre=c, v_base=c * (1.0 + spec.truncation))


def lv_volume_ml(shape: Shape, truncation: float) -> float:
    """Exact volume of the truncated prolate ellipsoid: pi a^2 c [(1 + t) - (1 + t^3) / 3], mm^3 -> ml."""
    t = truncation
    return float(np.pi * shape.a**2 * shape.c * ((1.0 + t) - (1.0 + t**3) / 3.0) / 1000.0)


def to_lv_frame(spec: PhantomSpec, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (x, z) mm -> LV frame (u, v) mm: v from the apex towards the base, u to its right."""
    tilt = np.deg2rad(spec.tilt_deg)
    dx, dz = x - spec.apex_x_mm, z - spec.apex_z_mm
    return dx * np.cos(tilt) - dz * np.sin(tilt), dx * np.sin(tilt) + dz * np.cos(tilt)


def from_lv_frame(spec: PhantomSpec, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LV frame (u, v) -> image (x, z), the inverse of :func:`to_lv_frame`."""
    tilt = np.deg2rad(spec.tilt_deg)
    return spec.apex_x_mm + u * np.cos(tilt) + v * np.sin(tilt), spec.apex_z_mm - u * np.sin(tilt) + v * np.cos(tilt)


def _elliptic_radius(u: np.ndarray, v: np.ndarray, a: float, c: float, v_centre: float) -> np.ndarray:
    return np.sqrt((u / a) ** 2 + ((v - v_centre) / c) ** 2)


def cavity(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """LV cavity (bool), closed by the annulus line ``v = v_base``."""
    return (_elliptic_radius(u, v, shape.a, shape.c, shape.v_centre) < 1.0) & (v <= shape.v_base)


def myocardium(shape: Shape, u: np.ndarray, v: np.ndarray, closed: bool) -> np.ndarray:
    """LV wall (bool): the band between the cavity and the ellipse ``h`` larger; across the base when ``closed``."""
    outer = _elliptic_radius(u, v, shape.a + shape.h, shape.c + shape.h, shape.v_centre) < 1.0
    inside = outer & ~cavity(shape, u, v)
    if closed:
        return inside & (v <= shape.v_base + shape.h)
    return inside & (v <= shape.v_base)


def annulus_half_width(shape: Shape) -> float:
    """Half the distance between the annulus points (the cavity's width at ``v_base``)."""
    t = (shape.v_base - shape.v_centre) / shape.c
    return float(shape.a * np.sqrt(max(0.0, 1.0 - t * t)))


def left_atrium(spec: PhantomSpec, shape: Shape, s: float) -> tuple[float, float, float]:
    """(u centre, v centre, (semi-axis u, semi-axis v)) of the LA ellipse below the annulus; it fills in systole."""
    grow = 1.0 + 0.12 * s
    half_u, half_v = spec.la_width_mm / 2.0 * grow, spec.la_length_mm / 2.0 * grow
    return 0.0, shape.v_base + 0.8 * half_v, (half_u, half_v)


def _inside_ellipse(u, v, cu, cv, au, av) -> np.ndarray:
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 < 1.0


def right_heart(spec: PhantomSpec, shape: Shape) -> list[tuple[float, float, float, float]]:
    """Right ventricle and right atrium cavities (u centre, v centre, semi-axis u, semi-axis v), septal side."""
    rv_half = spec.rv_width_mm / 2.0
    rv_u = -(shape.a + shape.h + 3.0 + rv_half)
    rv = (rv_u, 0.55 * shape.v_base + 4.0, rv_half, 0.55 * shape.v_base)
    ra = (rv_u + 2.0, shape.v_base + 0.8 * spec.la_length_mm / 2.0, rv_half * 1.05, spec.la_length_mm / 2.0)
    return [rv, ra]


def labels(spec: PhantomSpec, s: float, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """CAMUS labels (uint8) at image points (x, z) mm: 1 LV cavity, 2 LV myocardium, 3 left atrium."""
    shape = shape_at(spec, s)
    u, v = to_lv_frame(spec, x, z)
    out = np.zeros(np.shape(x), dtype=np.uint8)
    if spec.base != "closed":
        cu, cv, (au, av) = left_atrium(spec, shape, s)
        out[_inside_ellipse(u, v, cu, cv, au, av) & (v > shape.v_base)] = 3
    out[myocardium(shape, u, v, closed=spec.base == "closed")] = 2
    out[cavity(shape, u, v)] = 1
    return out


@dataclass
class WallScatterers:
    """Myocardial scatterers by identity: angle on the ellipse, fraction through the wall, reflectivity."""

    angle: np.ndarray
    depth_fraction: np.ndarray
    amplitude: np.ndarray


def sample_wall(rng: np.random.Generator, spec: PhantomSpec, density_per_mm2: float) -> WallScatterers:
    """Wall scatterers spread uniformly over the end-diastolic wall's area (their identity then moves with it)."""
    shape = shape_at(spec, 0.0)
    reach_u, reach_v = shape.a + shape.h, shape.v_base + shape.h
    n_try = int(density_per_mm2 * (2 * reach_u) * reach_v * 1.3) + 10
    u = rng.uniform(-reach_u, reach_u, n_try)
    v = rng.uniform(-shape.h, reach_v, n_try)
    keep = _elliptic_radius(u, v, shape.a + shape.h, shape.c + shape.h, shape.v_centre) < 1.0
    keep &= ~(_elliptic_radius(u, v, shape.a, shape.c, shape.v_centre) < 1.0)
    u, v = u[keep], v[keep]
    # fraction q through the wall: (u / (a + q h))^2 + ((v - vc) / (c + q h))^2 = 1, monotone in q: bisection
    lo, hi = np.zeros_like(u), np.ones_like(u)
    for _ in range(40):
        q = (lo + hi) / 2.0
        r = _elliptic_radius(u, v, shape.a + q * shape.h, shape.c + q * shape.h, shape.v_centre)
        lo, hi = np.where(r > 1.0, q, lo), np.where(r > 1.0, hi, q)
    q = (lo + hi) / 2.0
    angle = np.arctan2(u / (shape.a + q * shape.h), (v - shape.v_centre) / (shape.c + q * shape.h))
    return WallScatterers(angle=angle, depth_fraction=q, amplitude=rng.normal(size=len(u)))


def wall_positions(shape: Shape, wall: WallScatterers) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of the wall scatterers at ``shape``."""
    scale_u = shape.a + wall.depth_fraction * shape.h
    scale_v = shape.c + wall.depth_fraction * shape.h
    return scale_u * np.sin(wall.angle), shape.v_centre + scale_v * np.cos(wall.angle)


def _uniform_in(rng, density, x_range, z_range, inside) -> tuple[np.ndarray, np.ndarray]:
    area = (x_range[1] - x_range[0]) * (z_range[1] - z_range[0])
    n = rng.poisson(density * area)
    x, z = rng.uniform(*x_range, n), rng.uniform(*z_range, n)
    keep = inside(x, z)
    return x[keep], z[keep]


def scatterers(
    rng: np.random.Generator,
    spec: PhantomSpec,
    wall: WallScatterers,
    background: tuple[np.ndarray, np.ndarray, np.ndarray],
    s: float,
    sector: tuple[float, float],
    density_per_mm2: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatterers of the frame at contraction ``s``: (x mm, z mm, reflectivity).

    ``background``: the static tissue scatterers (x, z, amplitude) drawn once per phantom by
    :func:`sample_background`; those that fall in a cavity or the LV wall at this frame are left out.
    ``sector``: (half-angle in radians, depth mm) of the imaged sector.
    """
    shape = shape_at(spec, s)
    closed = spec.base == "closed"
    bx, bz, b_amp = background
    bu, bv = to_lv_frame(spec, bx, bz)
    chambers = _chambers(spec, shape, s)
    in_cavities = _in_any(chambers, bu, bv) | cavity(shape, bu, bv) | myocardium(shape, bu, bv, closed)
    walls = chamber_walls(spec, s, bu, bv)  # septum, atrial and right-ventricular walls: as bright as the LV wall
    gain = np.where(walls, 1.0, spec.tissue_brightness)
    parts_x, parts_z, parts_amp = [bx[~in_cavities]], [bz[~in_cavities]], [(b_amp * gain)[~in_cavities]]

    wu, wv = wall_positions(shape, wall)
    keep = wv <= (shape.v_base + (shape.h if closed else 0.0))
    if closed:  # the basal wall across the annulus: keep only what lies in the band below the cavity's base line
        keep &= ~cavity(shape, wu, wv)
    wx, wz = from_lv_frame(spec, wu[keep], wv[keep])
    parts_x.append(wx), parts_z.append(wz), parts_amp.append(wall.amplitude[keep])

    half_angle, depth = sector

    def in_sector(x, z):
        return (np.hypot(x, z) < depth) & (np.abs(np.arctan2(x, z)) < half_angle)

    # pericardium: a bright band just outside the LV's lateral wall and apex
    span = (-depth * np.sin(half_angle), depth * np.sin(half_angle)), (0.0, depth)

    def pericardium(x, z):
        u, v = to_lv_frame(spec, x, z)
        r_in = _elliptic_radius(u, v, shape.a + shape.h + 1.0, shape.c + shape.h + 1.0, shape.v_centre)
        r_out = _elliptic_radius(u, v, shape.a + shape.h + 3.5, shape.c + shape.h + 3.5, shape.v_centre)
        return in_sector(x, z) & (r_in >= 1.0) & (r_out < 1.0) & (u > -0.3 * shape.a) & (v < 0.85 * shape.v_base)

    px, pz = _uniform_in(rng, density_per_mm2, *span, pericardium)
    parts_x.append(px), parts_z.append(pz), parts_amp.append(2.5 * rng.normal(size=len(px)))

    if not closed:  # closed mitral leaflets: two thin bright arcs bowing into the atrium
        half = annulus_half_width(shape)
        n_leaf = int(density_per_mm2 * 2 * half * 2.0) + 4
        t = rng.uniform(-1.0, 1.0, n_leaf)
        lu = t * half
        lv = shape.v_base + 4.0 * (1.0 - t**2) + rng.uniform(0.0, 1.5, n_leaf)
        lx, lz = from_lv_frame(spec, lu, lv)
        parts_x.append(lx), parts_z.append(lz), parts_amp.append(1.5 * rng.normal(size=n_leaf))

    def blood(x, z):
        u, v = to_lv_frame(spec, x, z)
        return in_sector(x, z) & (cavity(shape, u, v) | _in_any(chambers, u, v))

    ox, oz = _uniform_in(rng, density_per_mm2, *span, blood)
    parts_x.append(ox), parts_z.append(oz), parts_amp.append(spec.blood_brightness * rng.normal(size=len(ox)))
    return np.concatenate(parts_x), np.concatenate(parts_z), np.concatenate(parts_amp)


def sample_background(
    rng: np.random.Generator, sector: tuple[float, float], density_per_mm2: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static tissue scatterers filling the sector (x mm, z mm, amplitude ~ N(0, 1))."""
    half_angle, depth = sector
    width = depth * np.sin(half_angle)
    x, z = _uniform_in(
        rng,
        density_per_mm2,
        (-width, width),
        (0.0, depth),
        lambda x, z: (np.hypot(x, z) < depth) & (np.abs(np.arctan2(x, z)) < half_angle),
    )
    return x, z, rng.normal(size=len(x))


def _chambers(spec: PhantomSpec, shape: Shape, s: float) -> list[tuple[float, float, float, float, float]]:
    """Blood-filled chambers other than the LV: (u centre, v centre, semi u, semi v, v minimum)."""
    if spec.base == "closed":
        return []
    cu, cv, (au, av) = left_atrium(spec, shape, s)
    out = [(cu, cv, au, av, shape.v_base)]
    if spec.base == "four_chamber":
        out += [(*chamber, -np.inf) for chamber in right_heart(spec, shape)]
    return out


def _in_any(chambers, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.zeros(np.shape(u), dtype=bool)
    for cu, cv, au, av, v_min in chambers:
        inside |= _inside_ellipse(u, v, cu, cv, au, av) & (v > v_min)
    return inside


def chamber_walls(spec: PhantomSpec, s: float, u: np.ndarray, v: np.ndarray, thickness_mm: float = 3.5) -> np.ndarray:
    """Thin walls around the atria and the right ventricle (bool), for the tissue between chambers."""
    shape = shape_at(spec, s)
    inside = np.zeros(np.shape(u), dtype=bool)
    for cu, cv, au, av, v_min in _chambers(spec, shape, s):
        grown = _inside_ellipse(u, v, cu, cv, au + thickness_mm, av + thickness_mm)
        inside |= grown & ~_inside_ellipse(u, v, cu, cv, au, av) & (v > v_min - thickness_mm)
    return inside
