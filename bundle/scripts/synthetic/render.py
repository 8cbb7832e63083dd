"""Image formation: speckle that moves with the tissue, beam-domain PSF, attenuation/TGC, log compression, scan
conversion into the sector. Works frame by frame on a polar (beam) grid, then scan-converts to ``size x size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .anatomy import annulus_spots, regions, valve_lines, wall_normals
from .failures import FailureSchedule
from .phantom import FrameGeometry, Phantom, frame_geometry, reference_coords, to_lv_frame


@dataclass(frozen=True)
class Appearance:
    """Random acquisition settings of one sequence (amplitudes linear, gains in dB)."""

    dynamic_range: float
    gamma: float
    gain_db: float
    attenuation_db: float  # net depth loss left after TGC, at full depth
    tgc_db: tuple[float, ...]  # TGC ripple at equally spaced depths
    lateral_db: tuple[float, ...]  # lateral gain ripple across the sector
    edge_db: float  # loss at the sector edges
    blood: float
    background: float
    myocardium: float
    septum: float  # 4CH: extra echo of the interventricular septum (factor)
    annulus: float  # bright valve annuli / AV plane (relative to the myocardium)
    pericardium: float
    specular_floor: float
    specular_power: float
    dropout_db: float
    dropout_angle: float  # fraction of the half-angle, signed
    shadow_db: float
    shadow_angle: float
    haze: float
    fog: float  # diffuse clutter over the whole sector (haze in the blood pools)
    apex_clutter: float
    noise: float
    psf_axial_mm: float
    psf_lateral_deg: float
    display_blur: float  # Gaussian smoothing of the displayed image (pixels at 256 px)
    brightness: float  # display gain: the brightest echoes map to this grey level


RANGES: dict[str, tuple[float, float]] = {
    "dynamic_range": (45.0, 70.0),
    "gamma": (1.2, 2.4),
    "gain_db": (-3.0, 3.0),
    "attenuation_db": (4.0, 16.0),
    "edge_db": (6.0, 24.0),
    "blood": (0.004, 0.02),
    "background": (0.04, 0.16),
    "myocardium": (0.35, 0.8),
    "septum": (1.0, 1.8),
    "annulus": (0.8, 2.2),
    "pericardium": (0.8, 2.6),
    "specular_floor": (0.15, 0.6),
    "specular_power": (1.0, 3.0),
    "haze": (0.15, 0.8),
    "fog": (0.0, 0.012),
    "apex_clutter": (0.03, 0.2),
    "noise": (0.0003, 0.003),
    "psf_axial_mm": (0.55, 1.6),
    "psf_lateral_deg": (0.9, 2.6),
    "display_blur": (0.0, 1.2),
    "brightness": (0.4, 1.0),
}
"""Ranges of the uniform draws of :func:`sample_appearance` (dropout, shadow and the ripples are drawn apart)."""


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw acquisition settings: contrast, gamma, gain/TGC, clutter and haze, dropout, PSF size, display gain.

    The ranges (:data:`RANGES`) span crisp, bright, high-contrast images and dark, blurry, hazy, low-contrast ones
    like many real apical views. The PSF size is drawn skewed towards blurry (the maximum of two draws).
    """

    def draw(name: str) -> float:
        lo, hi = RANGES[name]
        return float(rng.uniform(lo, hi))

    values = {name: draw(name) for name in RANGES}
    blur = max(rng.random(), rng.random())
    for name in ("psf_axial_mm", "psf_lateral_deg"):
        lo, hi = RANGES[name]
        values[name] = lo + blur * (hi - lo)
    return Appearance(
        tgc_db=tuple(rng.uniform(-2.5, 2.5, 5)),
        lateral_db=tuple(rng.uniform(-2.0, 2.0, 4)),
        dropout_db=rng.uniform(0.0, 12.0) if rng.random() < 0.6 else 0.0,
        dropout_angle=rng.uniform(0.2, 0.7) * rng.choice([-1.0, 1.0]),
        shadow_db=rng.uniform(6.0, 14.0) if rng.random() < 0.3 else 0.0,
        shadow_angle=rng.uniform(-0.9, 0.9),
        **values,
    )


class Renderer:
    """Renders frames of one phantom at ``size x size`` pixels; all per-sequence set-up is done once here.

    Call :meth:`frame` with a contraction state to get ``(image [H, W] float32 in [0, 1], label [H, W] uint8)``.
    ``failures`` (a :class:`FailureSchedule`, with its random stream ``failure_rng``) adds the failure modes; then
    pass the frame index to :meth:`frame`. Without it the rendering is the baseline, unchanged.
    """

    def __init__(
        self,
        ph: Phantom,
        app: Appearance,
        size: int,
        rng: np.random.Generator,
        failures: FailureSchedule | None = None,
        failure_rng: np.random.Generator | None = None,
    ) -> None:
        self.ph, self.app, self.size, self.rng = ph, app, size, rng
        self.fs, self.frng = failures, failure_rng
        self._decor: np.ndarray | None = None
        self.four = ph.view == "4CH"
        self.spacing = ph.fov / size
        self.g_ref = frame_geometry(ph, 0.0)
        # Polar (beam) grid: rows = depth samples, columns = beams.
        n_r, n_t = max(size, 192), max(int(0.9 * size), 160)
        self.dr = ph.depth / n_r
        self.dt = 2.0 * ph.half_angle / n_t
        r = (np.arange(n_r) + 0.5) * self.dr
        th = -ph.half_angle + (np.arange(n_t) + 0.5) * self.dt
        R, TH = np.meshgrid(r, th, indexing="ij")
        px, pz = R * np.sin(TH), R * np.cos(TH)
        self.px, self.pz = px, pz
        self.pu, self.pv = to_lv_frame(ph, px, pz)
        # beam direction in the LV frame (unit, pointing away from the probe)
        bu, bv = to_lv_frame(ph, ph.apex_x + np.sin(TH), ph.apex_z + np.cos(TH))
        self.bu, self.bv = bu, bv
        self.R = R
        # Gain map (dB) on the polar grid: net attenuation, TGC and lateral ripple, edge fade, dropout, shadow.
        rel = R / ph.depth
        ang = TH / ph.half_angle
        gain = app.gain_db - app.attenuation_db * rel
        gain += np.interp(rel, np.linspace(0, 1, len(app.tgc_db)), app.tgc_db)
        gain += np.interp(ang, np.linspace(-1, 1, len(app.lateral_db)), app.lateral_db)
        gain -= app.edge_db * np.abs(ang) ** 4
        gain -= app.dropout_db * np.exp(-(((ang - app.dropout_angle) / 0.15) ** 2) - ((rel - 0.45) / 0.2) ** 2)
        gain -= app.shadow_db * np.exp(-(((ang - app.shadow_angle) / 0.08) ** 2)) * (rel > 0.12)
        self.gain = (10.0 ** (gain / 20.0)).astype(np.float32)
        self.rel_col, self.ang_row = rel[:, :1], ang[:1, :]
        # Speckle: complex scatterer field fixed to the tissue (material coordinates of the ED frame, LV frame).
        self.grid = 0.5 * min(self.dr, ph.depth * self.dt)
        self.grid = max(self.grid, 0.2)
        margin = 25.0
        self.u_min, self.v_min = self.pu.min() - margin, self.pv.min() - margin
        nu = int((self.pu.max() + margin - self.u_min) / self.grid) + 1
        nv = int((self.pv.max() + margin - self.v_min) / self.grid) + 1
        noise = rng.standard_normal((nu, nv), np.float32) + 1j * rng.standard_normal((nu, nv), np.float32)
        self.scatter = ndi.gaussian_filter(noise, 0.8).astype(np.complex64)
        coarse = ndi.gaussian_filter(rng.standard_normal((nu // 16 + 2, nv // 16 + 2)).astype(np.float32), 1.0)
        fine = ndi.gaussian_filter(rng.standard_normal((nu // 5 + 2, nv // 5 + 2)).astype(np.float32), 1.0)
        self.texture = np.exp(0.6 * coarse / (coarse.std() + 1e-6)).astype(np.float32)
        self.fine_texture = np.exp(0.45 * fine / (fine.std() + 1e-6)).astype(np.float32)
        # Clutter fixed to the probe (reverberation haze near the transducer and at the apex).
        clutter_amp = app.haze * np.exp(-R / 16.0)
        apex_d = np.hypot(self.pu - 8.0, self.pv) / 14.0
        clutter_amp += app.apex_clutter * np.exp(-(apex_d**2))
        fog = ndi.gaussian_filter(rng.standard_normal((12, 12)).astype(np.float32), 1.5)
        fog = ndi.map_coordinates(fog, [rel * 11.0, (ang + 1.0) * 5.5], order=1, mode="nearest")
        clutter_amp += app.fog * np.exp(0.8 * fog / (fog.std() + 1e-6)) * np.clip(rel / 0.15, 0.0, 1.0)
        clutter_noise = rng.standard_normal(R.shape, np.float32) + 1j * rng.standard_normal(R.shape, np.float32)
        self.clutter = (clutter_amp * clutter_noise).astype(np.complex64)
        self.clutter_unit = clutter_noise.astype(np.complex64)
        self.sig_axial = app.psf_axial_mm / self.dr
        self.sig_lateral = np.deg2rad(app.psf_lateral_deg) / self.dt
        # A wider PSF averages more scatterers: keep the speckle energy (relative to the noise) independent of it
        # (white input loses a factor sqrt(4 pi sig_a sig_l) in amplitude; 7 is that factor at the original size).
        self.psf_norm = float(np.sqrt(4.0 * np.pi * self.sig_axial * self.sig_lateral) / 7.0)
        # Scan conversion: Cartesian pixel centres to fractional polar indices.
        c = (np.arange(size) + 0.5) * self.spacing
        Z, X = np.meshgrid(c - ph.probe_z, c - 0.5 * ph.fov - ph.probe_x, indexing="ij")
        cr, ct = np.hypot(X, Z), np.arctan2(X, Z)
        self.sector = (cr < ph.depth) & (np.abs(ct) < ph.half_angle)
        self.taper = (
            np.clip((ph.half_angle - np.abs(ct)) / (1.5 * self.dt), 0, 1) * np.clip((ph.depth - cr) / self.dr, 0, 1)
        ).astype(np.float32)
        self.scan = np.stack([cr / self.dr - 0.5, (ct + ph.half_angle) / self.dt - 0.5])
        self.X, self.Z = X, Z
        self.cu, self.cv = to_lv_frame(ph, X, Z)
        self.ref_level: float | None = None
        self.blur = app.display_blur * size / 256.0

    def _echogenicity(
        self, g: FrameGeometry, opening: float, pu: np.ndarray, pv: np.ndarray, t: int, s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tissue amplitude and blood amplitude on the polar grid (anatomy coordinates ``pu, pv``), [n_r, n_t]."""
        app = self.app
        reg = regions(pu, pv, g, self.four)
        nu, nv = wall_normals(pu, pv, g)
        cos = np.abs(nu * self.bu + nv * self.bv)
        spec = app.specular_floor + (1.0 - app.specular_floor) * cos**app.specular_power
        tissue = np.full(self.pu.shape, app.background, np.float32)
        tissue[reg.myo] = app.myocardium
        tissue *= np.where(reg.myo, spec, 1.0).astype(np.float32)
        if self.four:  # the septum stays bright although parallel to the beams (two blood interfaces, thick)
            sept = reg.myo & (pv < 0.0)
            tissue[sept] = app.myocardium * app.septum * np.maximum(spec[sept], 0.75)
        tissue = np.where(reg.pericardium, app.pericardium * spec, tissue)
        tissue = np.where(reg.rv_wall, 0.8 * app.myocardium, tissue)
        fs = self.fs
        if fs is not None and fs.on("background"):  # the bright band behind the atria (background tissue only)
            plain = ~(reg.myo | reg.pericardium | reg.rv_wall | reg.atrial_wall)
            tissue[plain] *= fs.band_factor(pu[plain])
        if fs is not None and fs.on("dropout"):  # angle-dependent dropout of the (lateral) wall
            wall = reg.myo | reg.pericardium
            tissue[wall] *= 10.0 ** (-fs.dropout_db(t, pu[wall], pv[wall], cos[wall], s) / 20.0)
        au, av = (pu - g.la_center) / g.la_a**2, pv / g.la_b**2
        a_cos = np.abs(au * self.bu + av * self.bv) / (np.hypot(au, av) + 1e-12)
        tissue = np.where(reg.atrial_wall, app.myocardium * (0.3 + 1.2 * a_cos**2), tissue)
        blood = reg.blood
        tissue[blood] = 0.0
        tissue = np.maximum(tissue, 1.3 * valve_lines(pu, pv, g, opening, self.four))
        tissue = np.maximum(tissue, app.annulus * app.myocardium * annulus_spots(pu, pv, g, self.four))
        return tissue.astype(np.float32), np.where(blood, app.blood, 0.0).astype(np.float32)

    def frame(self, s: float, opening: float = 0.0, t: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Render contraction state ``s`` (0 ED .. 1 ES) with valve ``opening`` (0..1) as frame ``t`` of the cine.

        Returns ``image [size, size]`` float32 in [0, 1] and ``label [size, size]`` uint8 (CAMUS numbering).
        """
        fs = self.fs
        g = frame_geometry(self.ph, s)
        pu, pv, cu, cv = self.pu, self.pv, self.cu, self.cv
        if fs is not None and fs.moves_anatomy:  # probe translation and foreshortening move the imaged anatomy
            pu, pv = fs.anatomy_coords(self.px, self.pz, t)
            cu, cv = fs.anatomy_coords(self.X, self.Z, t)
        tissue, blood = self._echogenicity(g, opening, pu, pv, t, s)
        u0, v0 = reference_coords(self.g_ref, g, pu, pv)
        iu, iv = (u0 - self.u_min) / self.grid, (v0 - self.v_min) / self.grid
        speck = ndi.map_coordinates(self.scatter, [iu, iv], order=1, mode="nearest")
        if fs is not None and fs.on("decorrelation"):  # part of the speckle is fresh (AR(1) in time) each frame
            p = fs.params["decorrelation"]
            scale = np.float32(np.sqrt(np.mean(np.abs(speck) ** 2) / 2.0))
            w = self.frng.standard_normal(speck.shape, np.float32) + 1j * self.frng.standard_normal(
                speck.shape, np.float32
            )
            w *= scale
            rho = p["rho"]
            self._decor = w if self._decor is None else rho * self._decor + np.sqrt(1.0 - rho**2) * w
            speck = np.sqrt(p["static"]) * speck + np.sqrt(1.0 - p["static"]) * self._decor
        tex = ndi.map_coordinates(self.texture, [iu / 16.0, iv / 16.0], order=1, mode="nearest")
        tex *= ndi.map_coordinates(self.fine_texture, [iu / 5.0, iv / 5.0], order=1, mode="nearest")
        shape = tissue.shape
        fresh = self.rng.standard_normal(shape, np.float32) + 1j * self.rng.standard_normal(shape, np.float32)
        amp = tissue * tex
        sidelobe = ndi.gaussian_filter1d(amp, min(5.0 * self.sig_lateral, 20.0), axis=1, truncate=2.0)
        clutter = self.clutter
        if fs is not None and fs.on("clutter"):
            clutter = clutter + fs.clutter_amp(t, self.pu, self.pv).astype(np.float32) * self.clutter_unit
        field = amp * speck + blood * fresh + clutter + (0.06 * sidelobe) * self.clutter_unit
        field = ndi.gaussian_filter1d(field, self.sig_axial, axis=0, truncate=3.0)
        field = ndi.gaussian_filter1d(field, self.sig_lateral, axis=1, truncate=3.0)
        gain = self.gain
        if fs is not None and (fs.on("gain_drift") or fs.on("background") or fs.on("shadow")):
            gain = gain * (10.0 ** (fs.gain_db(t, self.rel_col, self.ang_row) / 20.0)).astype(np.float32)
        env = np.abs(field) * (gain * self.psf_norm)
        noise = self.rng.standard_normal(shape, np.float32) + 1j * self.rng.standard_normal(shape, np.float32)
        env = np.abs(env + self.app.noise * noise)
        if self.ref_level is None:
            self.ref_level = float(np.percentile(env, 99.5))
        db = 20.0 * np.log10(env / self.ref_level + 1e-6)
        polar = np.clip((db + self.app.dynamic_range) / self.app.dynamic_range, 0.0, 1.0) ** self.app.gamma
        img = ndi.map_coordinates(polar.astype(np.float32), self.scan, order=1, mode="nearest") * self.taper
        if self.blur > 0.3:
            img = ndi.gaussian_filter(img, self.blur, truncate=2.5)
        img *= self.app.brightness
        label = regions(cu, cv, g, self.four).labels()
        label[~self.sector] = 0
        return np.clip(img, 0.0, 1.0).astype(np.float32), label
