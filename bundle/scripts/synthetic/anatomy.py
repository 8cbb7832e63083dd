"""Labels and mean echogenicity of the phantom's structures at points given in LV-frame coordinates (mm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import FrameGeometry

BACKGROUND, LV_CAVITY, MYOCARDIUM, LEFT_ATRIUM = 0, 1, 2, 3


@dataclass(frozen=True)
class Regions:
    """Boolean masks (shape of the query points) of each structure at one frame."""

    lv: np.ndarray
    myo: np.ndarray
    la: np.ndarray
    rv: np.ndarray
    ra: np.ndarray
    rv_wall: np.ndarray
    pericardium: np.ndarray
    atrial_wall: np.ndarray

    @property
    def blood(self) -> np.ndarray:
        """All blood pools (LV, LA, RV, RA)."""
        return self.lv | self.la | self.rv | self.ra

    def labels(self) -> np.ndarray:
        """CAMUS labels, uint8: 0 background, 1 LV cavity, 2 myocardium, 3 left atrium (RV/RA are 0)."""
        out = np.zeros(self.lv.shape, np.uint8)
        out[self.lv] = LV_CAVITY
        out[self.myo] = MYOCARDIUM
        out[self.la] = LEFT_ATRIUM
        return out


def _inside(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Normalised squared radius of the ellipse (centre (cu, cv), semi-axes a along u and b along v)."""
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2


def regions(u: np.ndarray, v: np.ndarray, g: FrameGeometry, four_chamber: bool) -> Regions:
    """Structure masks at LV-frame points ``(u, v)`` (any equal shapes) for frame geometry ``g``."""
    below = u < g.mitral_u
    endo = _inside(u, v, g.a, 0.0, g.a, g.b) < 1.0
    epi_r = _inside(u, v, g.a, 0.0, g.a + g.wall_apex, g.b + g.wall_side)
    epi = epi_r < 1.0
    lv = endo & below
    myo = epi & ~endo & below
    peri = (epi_r >= 1.0) & (_inside(u, v, g.a, 0.0, g.a + g.wall_apex + 2.5, g.b + g.wall_side + 2.5) < 1.0) & below
    la_r = _inside(u, v, g.la_center, 0.0, g.la_a, g.la_b)
    la = (la_r < 1.0) & ~below
    atrial_wall = (la_r >= 1.0) & (_inside(u, v, g.la_center, 0.0, g.la_a + 2.5, g.la_b + 2.5) < 1.0) & ~below
    empty = np.zeros_like(lv)
    rv = ra = rv_wall = empty
    if four_chamber:
        rv_r = _inside(u, v, g.rv_center_u, g.rv_center_v, g.rv_a, g.rv_b)
        free = ~epi & ~peri & (u < g.tricuspid_u)
        rv = (rv_r < 1.0) & free
        rv_wall = (rv_r >= 1.0) & (_inside(u, v, g.rv_center_u, g.rv_center_v, g.rv_a + 4.0, g.rv_b + 4.0) < 1.0)
        rv_wall &= free
        ra_a, ra_b = 0.9 * g.la_a, 1.05 * g.rv_b + 4.0
        ra_u = g.tricuspid_u + 0.7 * ra_a
        ra_v = g.rv_center_v - 0.2 * g.rv_b
        sept = _inside(u, v, g.la_center, 0.0, g.la_a + 4.0, g.la_b + 4.0) < 1.0
        ra_r = _inside(u, v, ra_u, ra_v, ra_a, ra_b)
        ra = (ra_r < 1.0) & (u >= g.tricuspid_u) & ~sept & ~epi
        atrial_wall = atrial_wall | ((ra_r >= 1.0) & (_inside(u, v, ra_u, ra_v, ra_a + 3.0, ra_b + 3.0) < 1.0) & ~la)
        atrial_wall &= ~ra & ~rv & ~myo
    return Regions(lv=lv, myo=myo, la=la, rv=rv, ra=ra, rv_wall=rv_wall, pericardium=peri, atrial_wall=atrial_wall)


def _segment_distance(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from points to the segment p0-p1 (LV frame)."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
    return np.hypot(u - p0[0] - t * du, v - p0[1] - t * dv)


def valve_lines(u: np.ndarray, v: np.ndarray, g: FrameGeometry, opening: float, four_chamber: bool) -> np.ndarray:
    """Brightness (0..1) of the mitral (and tricuspid) leaflets: closed across the annulus, open towards the apex."""
    annuli = [(g.mitral_u, 0.0, g.mitral_half_width, 1.0)]
    if four_chamber:
        annuli.append((g.tricuspid_u, g.rv_center_v, 0.8 * g.rv_b, 0.8))
    out = np.zeros(u.shape, np.float32)
    for mu, mv, h, amp in annuli:
        for side in (-1.0, 1.0):
            du = (1.0 - opening) * 0.15 - opening  # closed: across the orifice, bulging to the atrium
            dv = -side * ((1.0 - opening) + 0.25 * opening)
            n = np.hypot(du, dv)
            length = 0.95 * h if opening < 0.5 else 0.75 * h
            tip = (mu + length * du / n, mv + side * h + length * dv / n)
            d = _segment_distance(u, v, (mu, mv + side * h), tip)
            out = np.maximum(out, amp * np.exp(-((d / 0.9) ** 2)))
    return out


def annulus_spots(u: np.ndarray, v: np.ndarray, g: FrameGeometry, four_chamber: bool) -> np.ndarray:
    """Brightness (0..1) of the fibrous valve annuli (the bright AV plane): blobs at the mitral (and tricuspid)
    annulus points and, in 4CH, the crux where the septa meet."""
    h = g.mitral_half_width
    spots = [(g.mitral_u, -h, 3.0), (g.mitral_u, h, 3.0)]
    if four_chamber:
        spots += [
            (g.tricuspid_u, g.rv_center_v - 0.8 * g.rv_b, 2.5),
            (0.5 * (g.mitral_u + g.tricuspid_u), -h - 5.0, 4.0),
        ]
    out = np.zeros(u.shape, np.float32)
    for su, sv, r in spots:
        out = np.maximum(out, np.exp(-((u - su) ** 2 + (v - sv) ** 2) / r**2))
    return out


def wall_normals(u: np.ndarray, v: np.ndarray, g: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (LV frame) of the mid-wall ellipse family through each point, used for specular dropout."""
    a = g.a + 0.5 * g.wall_apex
    b = g.b + 0.5 * g.wall_side
    nu, nv = (u - g.a) / a**2, v / b**2
    n = np.hypot(nu, nv) + 1e-12
    return nu / n, nv / n
