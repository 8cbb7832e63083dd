"""Left-ventricular volume from 2D LV masks: method of disks (Simpson's rule) and area-length.

All geometry is done in millimetres on the sub-pixel LV contour, so anisotropic pixel spacing is handled exactly:
the contour found on the native pixel grid is scaled by the (row, column) spacing, which is the same as resampling
the mask to isotropic spacing (linear interpolation) before tracing it, without nearest-neighbour staircases.

Degenerate masks never raise and never give a negative volume: the result carries ``NaN`` and a ``reason``.
Programming errors (a mask that is not 2D, a bad spacing, an unknown method) raise ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

METHODS = ("simpson", "area_length")
ANNULUS_MAX_ANGLE_DEG = 45.0  # the mitral plane is at most this far from horizontal (image rows are vertical)
ANNULUS_TOL_MM = 2.0  # contour points between the annulus ends lie within this distance of the chord
MIN_MASK_PIXELS = 20  # smaller masks are noise, not a ventricle
_MAX_SEARCH_POINTS = 240  # the annulus search runs on the contour resampled to at most this many points
_EPS = 1e-9
_STRAIGHTNESS_BLOCK = 256  # chords whose straightness is tested at a time, longest first


@dataclass(frozen=True)
class VolumeResult:
    """One LV volume measurement and the geometry behind it.

    Attributes:
        volume_ml: LV volume in mL, ``NaN`` when the mask is degenerate (see ``reason``).
        area_mm2: mask area in mm^2 (pixel count times pixel area, holes filled); ``NaN`` for an empty mask.
        length_mm: long axis L in mm, from the middle of the mitral annulus to the apex.
        method: ``"simpson"``, ``"area_length"`` or ``"biplane"``.
        reason: why the volume is ``NaN`` (``None`` when it is valid).
        apex_rc: apex as (row, column) in pixel coordinates of the input mask.
        base_rc: the two ends of the mitral annulus chord, each (row, column) in pixel coordinates.
        base_mid_rc: middle of the annulus (the contour point halfway between the chord ends), (row, column) pixels.
        diameters_mm: the disk diameters d_i in mm, base to apex (Simpson only, else empty).
        disk_height_mm: the disk height h in mm (Simpson only, else ``NaN``).
    """

    volume_ml: float
    area_mm2: float = math.nan
    length_mm: float = math.nan
    method: str = "simpson"
    reason: str | None = None
    apex_rc: tuple[float, float] | None = None
    base_rc: tuple[tuple[float, float], tuple[float, float]] | None = None
    base_mid_rc: tuple[float, float] | None = None
    diameters_mm: tuple[float, ...] = ()
    disk_height_mm: float = math.nan

    @property
    def ok(self) -> bool:
        """True when the volume is a valid number."""
        return self.reason is None and math.isfinite(self.volume_ml)


@dataclass(frozen=True)
class LVGeometry:
    """The LV contour and long axis of one mask, in millimetres (row, column) of the mask's pixel grid.

    Attributes:
        contour_mm: closed contour ``[N, 2]`` (last point not repeated).
        area_mm2: mask area in mm^2.
        apex_mm, base_mid_mm: ``[2]`` the long-axis ends; ``base_ends_mm``: ``[2, 2]`` the annulus chord ends.
        spacing_mm: (row, column) pixel spacing used to convert back to pixels.
    """

    contour_mm: np.ndarray
    area_mm2: float
    apex_mm: np.ndarray
    base_mid_mm: np.ndarray
    base_ends_mm: np.ndarray
    spacing_mm: tuple[float, float]

    @property
    def length_mm(self) -> float:
        """Long-axis length L (mm), base middle to apex."""
        return float(np.linalg.norm(self.apex_mm - self.base_mid_mm))

    def disk_diameters(self, n_disks: int) -> np.ndarray:
        """Chord widths ``[n_disks]`` (mm) perpendicular to the long axis, at the middle of each of n equal disks.

        Disk i (0 = base) is measured at the fraction (i + 0.5) / n of the way from the base middle to the apex
        (midpoint rule). The width is that of the inside segment of the perpendicular line that contains the axis
        point (or, for a strongly curved cavity whose axis leaves the contour, the nearest inside segment).
        """
        axis = (self.apex_mm - self.base_mid_mm) / max(self.length_mm, _EPS)
        normal = np.array([-axis[1], axis[0]])
        edges_a = self.contour_mm
        edges_b = np.roll(self.contour_mm, -1, axis=0)
        widths = np.zeros(n_disks)
        for i in range(n_disks):
            point = self.base_mid_mm + (i + 0.5) / n_disks * self.length_mm * axis
            along_a = (edges_a - point) @ axis  # signed distance of each edge end from the disk line
            along_b = (edges_b - point) @ axis
            crosses = (along_a > 0) != (along_b > 0)
            if not np.any(crosses):
                continue
            frac = along_a[crosses] / (along_a[crosses] - along_b[crosses])
            pos = (edges_a[crosses] - point) @ normal + frac * ((edges_b[crosses] - edges_a[crosses]) @ normal)
            pos = np.sort(pos)
            if len(pos) % 2:  # a closed contour crosses an even number of times; drop a grazing duplicate
                pos = pos[:-1]
            starts, ends = pos[0::2], pos[1::2]
            inside = np.nonzero((starts <= 0) & (ends >= 0))[0]
            k = inside[0] if len(inside) else int(np.argmin(np.minimum(np.abs(starts), np.abs(ends))))
            widths[i] = ends[k] - starts[k]
        return widths

    def to_pixels(self, point_mm: np.ndarray) -> tuple[float, float]:
        """(row, column) pixel coordinates of a point given in mm."""
        return (float(point_mm[0] / self.spacing_mm[0]), float(point_mm[1] / self.spacing_mm[1]))


def _check_spacing(spacing_mm) -> tuple[float, float]:
    spacing = tuple(float(s) for s in np.asarray(spacing_mm, dtype=float).ravel())
    if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be two positive finite numbers (row, column) in mm, got {spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def _check_mask(mask_HW) -> np.ndarray:
    mask = np.asarray(mask_HW)
    if mask.ndim != 2:
        raise ValueError(f"an LV mask must be 2D [H, W], got shape {mask.shape}")
    if mask.dtype.kind == "f" and not np.all(np.isfinite(mask)):
        raise ValueError("the LV mask contains NaN or infinite values")
    return mask != 0


def mask_problem(binary_HW: np.ndarray) -> str | None:
    """Why a binary LV mask ``[H, W]`` cannot give a volume, or ``None`` when it can.

    Rules: an empty mask; fewer than ``MIN_MASK_PIXELS`` pixels; several separate blobs (8-connectivity; the
    prediction is ambiguous, so no blob is picked silently); a mask touching the image border (the ventricle may
    be cut off, so its length and volume are unknown).
    """
    count = int(binary_HW.sum())
    if count == 0:
        return "empty mask (no LV pixels)"
    _, n_blobs = ndimage.label(binary_HW, structure=np.ones((3, 3), dtype=bool))
    if n_blobs > 1:
        return f"mask has {n_blobs} separate blobs; expected one LV cavity"
    if binary_HW[0].any() or binary_HW[-1].any() or binary_HW[:, 0].any() or binary_HW[:, -1].any():
        return "mask touches the image border; the LV may be cut off"
    if count < MIN_MASK_PIXELS:
        return f"mask too small ({count} pixels < {MIN_MASK_PIXELS})"
    return None


def _resample_closed(contour: np.ndarray, n_points: int) -> np.ndarray:
    """Resample a closed polyline ``[N, 2]`` to ``[n_points, 2]`` points equally spaced by arc length."""
    closed = np.vstack([contour, contour[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, cum[-1], n_points, endpoint=False)
    return np.stack([np.interp(targets, cum, closed[:, d]) for d in range(2)], axis=1)


def _find_mitral_plane(points: np.ndarray, tol_mm: float, max_angle_deg: float) -> tuple[int, int] | None:
    """The mitral plane as the longest near-horizontal straight stretch of a closed contour, below its centre.

    Apical views show the apex toward the probe, at the top of the image: a straight stretch above the contour's
    mean row (a flat or cut-off apex) is not the annulus.

    The chords ``[start, span]`` that are near-horizontal, below the centre and at least 2 steps long are ranked by
    length (longest first, ties in ``(start, span)`` order); their straightness (the largest distance of an
    intermediate point from the chord's line) is computed for blocks of ``_STRAIGHTNESS_BLOCK`` of them in that order
    until one qualifies. The first block almost always holds it, so this costs about 1 ms per frame where testing
    every chord costs 40 ms; the arithmetic per chord is the same, so the chord found is the same.

    Args:
        points: closed contour ``[M, 2]`` (row, column) in mm, equally spaced by arc length.
        tol_mm: every contour point between the chord's ends lies within this distance of the chord's line.
        max_angle_deg: the chord is at most this far from horizontal (the image's column direction).

    Returns:
        ``(start, span)``: the chord joins ``points[start]`` and ``points[(start + span) % M]``, following the
        contour forwards; ``None`` when no chord qualifies.
    """
    n = len(points)
    max_span = n // 2  # a straight stretch cannot hold more than half of a closed contour
    spans = np.arange(max_span + 1)
    idx = (np.arange(n)[:, None] + spans[None, :]) % n  # [start, span]
    chord = points[idx] - points[:, None, :]  # [start, span, 2]: vector from the start to every later point
    length = np.hypot(chord[..., 0], chord[..., 1])  # [start, span]
    flat = np.abs(chord[..., 0]) <= math.tan(math.radians(max_angle_deg)) * np.abs(chord[..., 1]) + _EPS
    # apical views have the probe, and so the apex, at the top: the annulus lies on the lower half of the contour
    chord_mid_row = points[:, None, 0] + chord[..., 0] / 2.0
    below = chord_mid_row > points[:, 0].mean()
    candidates = np.flatnonzero(flat & below & (spans[None, :] >= 2))  # flat indices into [start, span]
    # longest first; a stable sort keeps (start, span) order among equal lengths, as argmax over the grid picks
    candidates = candidates[np.argsort(-length.ravel()[candidates], kind="stable")]
    between = spans[None, :] < spans[:, None]  # [s, k]: k < s
    for first in range(0, len(candidates), _STRAIGHTNESS_BLOCK):
        block = candidates[first : first + _STRAIGHTNESS_BLOCK]
        start, span = np.unravel_index(block, length.shape)
        ends, inner = chord[start, span], chord[start]  # [c, 2], [c, k, 2]
        # distance of intermediate point k from the line start -> end: |cross(chord_s, chord_k)| / |chord_s|
        cross = ends[:, None, 0] * inner[..., 1] - ends[:, None, 1] * inner[..., 0]  # [c, k]
        max_dist = np.where(between[span], np.abs(cross), 0.0).max(axis=1) / np.maximum(length[start, span], _EPS)
        straight = np.flatnonzero(max_dist <= tol_mm)
        if len(straight):
            return int(start[straight[0]]), int(span[straight[0]])
    return None


def lv_geometry(
    mask_HW, spacing_mm, annulus_tol_mm: float = ANNULUS_TOL_MM, max_angle_deg: float = ANNULUS_MAX_ANGLE_DEG
) -> tuple[LVGeometry | None, str | None, float]:
    """Contour, mitral annulus and apex of a 2D LV mask, as the official CAMUS evaluation finds them.

    Steps:
        1. Binary mask = non-zero pixels; reject degenerate masks (``mask_problem``); fill holes.
        2. Trace the sub-pixel contour (``skimage.measure.find_contours`` at level 0.5 on the zero-padded mask)
           and scale it by the (row, column) spacing to millimetres, i.e. to an isotropic frame.
        3. Mitral plane: resample the contour by arc length (about 1 mm steps) and take the longest chord between
           two contour points whose line is at most 45 degrees from horizontal, whose middle lies below the
           contour's mean row (apical views: apex up, toward the probe) and whose intermediate contour
           points (the shorter way round) lie within ``max(annulus_tol_mm, 1.5 pixels)`` of the chord.
        4. Middle of the annulus: the contour point halfway (by arc length) between the chord's ends, which lies
           on the valve plane itself even when the chord rides slightly up a flaring wall.
        5. Apex: the contour point farthest from the annulus middle. L = |apex - middle|.

    Args:
        mask_HW: ``[H, W]`` LV mask, the LV is non-zero.
        spacing_mm: (row, column) pixel spacing in mm.

    Returns:
        ``(geometry, reason, area_mm2)``: geometry is ``None`` with a reason when the mask is degenerate;
        area_mm2 is ``NaN`` only for an empty mask.
    """
    spacing = _check_spacing(spacing_mm)
    binary = _check_mask(mask_HW)
    problem = mask_problem(binary)
    if problem is not None:
        area = float(binary.sum()) * spacing[0] * spacing[1] if binary.any() else math.nan
        return None, problem, area
    binary = ndimage.binary_fill_holes(binary)
    area = float(binary.sum()) * spacing[0] * spacing[1]
    contours = find_contours(np.pad(binary, 1).astype(np.float32), 0.5)
    contour_mm = (max(contours, key=len)[:-1] - 1.0) * np.asarray(spacing)  # drop the repeated closing point
    seg = np.hypot(*np.diff(np.vstack([contour_mm, contour_mm[:1]]), axis=0).T)
    perimeter = float(seg.sum())
    n_search = int(np.clip(round(perimeter / 1.0), 16, _MAX_SEARCH_POINTS))
    points = _resample_closed(contour_mm, n_search)
    tol = max(annulus_tol_mm, 1.5 * max(spacing))
    found = _find_mitral_plane(points, tol, max_angle_deg)
    if found is None:
        return None, "no mitral plane found (no straight near-horizontal stretch of contour)", area
    start, span = found
    ends = np.stack([points[start], points[(start + span) % n_search]])
    half = start + span / 2.0
    lo = int(math.floor(half))
    w = half - lo
    mid = (1 - w) * points[lo % n_search] + w * points[(lo + 1) % n_search]
    apex = contour_mm[int(np.argmax(np.linalg.norm(contour_mm - mid, axis=1)))]
    geometry = LVGeometry(contour_mm, area, apex, mid, ends, spacing)
    if geometry.length_mm <= 0:
        return None, "degenerate long axis (zero length)", area
    return geometry, None, area


def _result_from_geometry(geo: LVGeometry, volume_ml: float, method: str, **extra) -> VolumeResult:
    return VolumeResult(
        volume_ml=float(volume_ml),
        area_mm2=geo.area_mm2,
        length_mm=geo.length_mm,
        method=method,
        apex_rc=geo.to_pixels(geo.apex_mm),
        base_rc=(geo.to_pixels(geo.base_ends_mm[0]), geo.to_pixels(geo.base_ends_mm[1])),
        base_mid_rc=geo.to_pixels(geo.base_mid_mm),
        **extra,
    )


def _check_n_disks(n_disks: int) -> int:
    if int(n_disks) != n_disks or n_disks < 1:
        raise ValueError(f"n_disks must be a positive integer, got {n_disks!r}")
    return int(n_disks)


def lv_volume_details(mask_HW, spacing_mm, method: str = "simpson", n_disks: int = 20) -> VolumeResult:
    """LV volume of one 2D mask with the geometry behind it; ``NaN`` and a reason for degenerate masks.

    Methods (see ``docs/clinical.md``):
        ``"simpson"``: single-plane method of disks, V = pi/4 * sum_i d_i^2 * h, h = L / n_disks, disks as
        circles whose diameter d_i is the chord width perpendicular to the long axis at the middle of disk i.
        ``"area_length"``: V = 8 A^2 / (3 pi L), A the mask area, L the annulus-middle-to-apex length.

    Args:
        mask_HW: ``[H, W]`` LV mask, the LV is non-zero.
        spacing_mm: (row, column) pixel spacing in mm.
        method: ``"simpson"`` or ``"area_length"``.
        n_disks: number of disks (Simpson), 20 by convention.

    Returns:
        ``VolumeResult`` with the volume in mL.
    """
    if method not in METHODS:
        raise ValueError(f"unknown volume method {method!r}; expected one of {METHODS}")
    n_disks = _check_n_disks(n_disks)
    geo, reason, area = lv_geometry(mask_HW, spacing_mm)
    if geo is None:
        return VolumeResult(math.nan, area_mm2=area, method=method, reason=reason)
    if method == "area_length":
        volume = 8.0 * geo.area_mm2**2 / (3.0 * math.pi * geo.length_mm) / 1000.0
        return _result_from_geometry(geo, volume, method)
    h = geo.length_mm / n_disks
    d = geo.disk_diameters(n_disks)
    volume = math.pi / 4.0 * float(np.sum(d**2)) * h / 1000.0
    return _result_from_geometry(geo, volume, method, diameters_mm=tuple(map(float, d)), disk_height_mm=h)


def lv_volume(mask_HW, spacing_mm, method: str = "simpson", n_disks: int = 20) -> float:
    """LV volume (mL) of one 2D mask ``[H, W]`` (LV non-zero, spacing (row, column) mm); ``NaN`` if degenerate.

    See ``lv_volume_details`` for the methods and ``VolumeResult.reason`` for why a volume is ``NaN``.
    """
    return lv_volume_details(mask_HW, spacing_mm, method=method, n_disks=n_disks).volume_ml


def biplane_volume_details(mask_2ch, spacing_2ch, mask_4ch, spacing_4ch, n_disks: int = 20) -> VolumeResult:
    """Biplane method of disks from the apical two- and four-chamber masks of the same phase.

    V = pi/4 * sum_i a_i * b_i * h, with a_i and b_i the diameters of disk i in the 2CH and 4CH views (each view
    split into n_disks along its own long axis) and one common disk height h = max(L_2ch, L_4ch) / n_disks
    (ASE/EACVI; the official CAMUS evaluation does the same).

    Args:
        mask_2ch, mask_4ch: ``[H, W]`` LV masks (non-zero LV); the two may differ in size.
        spacing_2ch, spacing_4ch: (row, column) pixel spacing in mm of each mask.

    Returns:
        ``VolumeResult`` (method ``"biplane"``; geometry fields from the 2CH view, area the mean of the two,
        length the common max(L_2ch, L_4ch)); ``NaN`` and a reason naming the view when either is degenerate.
    """
    n_disks = _check_n_disks(n_disks)
    geo_2, reason_2, area_2 = lv_geometry(mask_2ch, spacing_2ch)
    geo_4, reason_4, area_4 = lv_geometry(mask_4ch, spacing_4ch)
    if geo_2 is None or geo_4 is None:
        reasons = [f"{view}: {r}" for view, r in (("2CH", reason_2), ("4CH", reason_4)) if r is not None]
        return VolumeResult(math.nan, method="biplane", reason="; ".join(reasons))
    length = max(geo_2.length_mm, geo_4.length_mm)
    h = length / n_disks
    a = geo_2.disk_diameters(n_disks)
    b = geo_4.disk_diameters(n_disks)
    volume = math.pi / 4.0 * float(np.sum(a * b)) * h / 1000.0
    result = _result_from_geometry(geo_2, volume, "biplane", diameters_mm=tuple(map(float, a)), disk_height_mm=h)
    return VolumeResult(**{**result.__dict__, "area_mm2": (area_2 + area_4) / 2.0, "length_mm": length})


def biplane_volume(mask_2ch, spacing_2ch, mask_4ch, spacing_4ch, n_disks: int = 20) -> float:
    """Biplane method-of-disks LV volume (mL) from 2CH and 4CH masks ``[H, W]``; ``NaN`` if either is degenerate."""
    return biplane_volume_details(mask_2ch, spacing_2ch, mask_4ch, spacing_4ch, n_disks=n_disks).volume_ml


def ejection_fraction_details(edv, esv) -> tuple[float, str | None]:
    """Ejection fraction in percent, 100 * (EDV - ESV) / EDV, with the reason when it is ``NaN``.

    ``NaN`` when either volume is ``NaN``/infinite, EDV <= 0 or ESV < 0. ESV > EDV gives a negative EF (kept, not
    swapped: it means the ED/ES frames or the masks are wrong) with a note as the second element.
    """
    edv, esv = float(edv), float(esv)
    if not (math.isfinite(edv) and math.isfinite(esv)):
        return math.nan, f"EDV or ESV is not a finite number (EDV={edv}, ESV={esv})"
    if edv <= 0:
        return math.nan, f"EDV must be positive (EDV={edv})"
    if esv < 0:
        return math.nan, f"ESV must not be negative (ESV={esv})"
    ef = 100.0 * (edv - esv) / edv
    return ef, ("ESV > EDV: negative EF, check the ED/ES frames" if esv > edv else None)


def ejection_fraction(edv, esv) -> float:
    """Ejection fraction (%) = 100 * (EDV - ESV) / EDV; ``NaN`` for EDV <= 0, ESV < 0 or non-finite inputs."""
    return ejection_fraction_details(edv, esv)[0]
