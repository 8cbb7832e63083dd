"""Image scatterer phantoms with PyMUST: a phased array, SIMUS echoes, delay-and-sum, envelope, log compression.

The probe is PyMUST's ``P4-2v`` (64 elements, 2.7 MHz, 0.3 mm pitch) at the origin, looking down ``z``. Each frame
is ``transmits`` diverging waves (tilts spread over the sector) simulated by ``pymust.simus`` with frequency-
dependent attenuation, demodulated to I/Q, beamformed by a delay-and-sum matrix (``pymust.dasmtx``, built once per
imaging set-up and reused for every frame) on a Cartesian grid, compounded coherently, time-gain compensated (the
round trip's attenuation and the wave's spreading undone by depth), log-compressed over ``dynamic_range_db`` and
averaged down to the output pixel. Pixels outside the sector are 0, as scanners write them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Imaging:
    """What the simulated scanner does; the defaults image a 90-degree sector to 170 mm."""

    half_angle_deg: float = 45.0
    depth_mm: float = 170.0
    output_size: int = 256  # output image: output_size x output_size pixels
    fov_mm: float = 240.0  # the square output image's side; the probe at the top centre
    beamform_mm: float = 0.5  # delay-and-sum grid step (the output pixel is an average of these)
    transmits: int = 3
    attenuation_db_cm_mhz: float = 0.5
    dynamic_range_db: float = 45.0
    speed_m_s: float = 1540.0

    @property
    def sector(self) -> tuple[float, float]:
        """(half-angle in radians, depth mm), as the phantom module takes it."""
        return float(np.deg2rad(self.half_angle_deg)), self.depth_mm

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.output_size

    def pixel_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) mm of the output pixels' centres, each [output_size, output_size] (rows = depth)."""
        coords = (np.arange(self.output_size) + 0.5) * self.pixel_mm
        z, x = np.meshgrid(coords, coords - self.fov_mm / 2.0, indexing="ij")
        return x, z


class _DropPyMUST(logging.Filter):
    """Drops the records PyMUST logs through the root logger (``logging.warning`` on every call of its beamformer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pymust" not in Path(record.pathname).parts


def _quiet_pymust() -> None:
    """PyMUST's root-logger warnings off, everything else's left as it is (once per process)."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropPyMUST) for f in root.filters):
        root.addFilter(_DropPyMUST())


class Scanner:
    """A simulated scanner for one :class:`Imaging` set-up (the beamforming matrices are built on first use)."""

    def __init__(self, imaging: Imaging) -> None:
        import pymust

        _quiet_pymust()
        self.imaging = imaging
        self.param = pymust.getparam("P4-2v")
        self.param.fs = 4 * self.param.fc
        self.param.c = imaging.speed_m_s
        self.param.attenuation = imaging.attenuation_db_cm_mhz
        self.options = pymust.utils.Options()
        self.options.dBThresh = -20
        half = np.deg2rad(imaging.half_angle_deg)
        tilts = np.linspace(-half / 2, half / 2, imaging.transmits) if imaging.transmits > 1 else np.zeros(1)
        self.delays = [pymust.txdelay(self.param, float(t), float(2 * half)) for t in tilts]
        # every echo padded or cut to the round trip to the deepest point of the output image
        deepest_m = np.hypot(imaging.fov_mm / 2.0, imaging.fov_mm) / 1000.0
        self.n_samples = int(np.ceil(2 * deepest_m / self.param.c * self.param.fs)) + 64
        step = imaging.beamform_mm
        factor = max(1, int(round(imaging.pixel_mm / step)))
        self.factor = factor
        n = imaging.output_size * factor
        coords = (np.arange(n) + 0.5) * imaging.pixel_mm / factor
        z, x = np.meshgrid(coords, coords - imaging.fov_mm / 2.0, indexing="ij")
        self.in_sector = (np.hypot(x, z) < imaging.depth_mm) & (np.abs(np.arctan2(x, z)) < half)
        self.grid_x_m, self.grid_z_m = x[self.in_sector] / 1000.0, z[self.in_sector] / 1000.0
        self.fine_shape = (n, n)
        # time-gain compensation: the round trip's attenuation at the centre frequency and the diverging wave's
        # cylindrical spreading, undone by depth (what a scanner's TGC curve does)
        r_cm = np.hypot(x, z) / 10.0
        round_trip_db = 2.0 * imaging.attenuation_db_cm_mhz * self.param.fc / 1e6 * r_cm
        self.gain = 10.0 ** (round_trip_db / 20.0) * np.sqrt(np.maximum(r_cm, 0.5))
        self._das = None

    def _das_matrices(self):
        import pymust

        if self._das is None:
            shape = 1j * np.array([self.n_samples, int(self.param.Nelements)])
            self._das = []
            for delays in self.delays:
                self.param.pop("TXdelay", None)
                self._das.append(pymust.dasmtx(shape, self.grid_x_m, self.grid_z_m, delays, self.param))
        return self._das

    def frame(self, x_mm: np.ndarray, z_mm: np.ndarray, reflectivity: np.ndarray) -> np.ndarray:
        """B-mode image [output_size, output_size] float32 in [0, 1] (0 outside the sector) of the scatterers."""
        import pymust

        x_m, z_m = np.asarray(x_mm) / 1000.0, np.asarray(z_mm) / 1000.0
        compound = np.zeros(len(self.grid_x_m), dtype=np.complex128)
        for delays, das in zip(self.delays, self._das_matrices()):
            self.param.pop("TXdelay", None)  # simus stores the last transmit's delays in param
            rf, _ = pymust.simus(x_m, z_m, np.asarray(reflectivity, dtype=np.float64), delays, self.param, self.options)
            rf = _fit_rows(np.asarray(rf), self.n_samples)
            iq = pymust.rf2iq(rf, self.param)
            compound += das @ iq.flatten(order="F")
        fine = np.zeros(self.fine_shape, dtype=np.complex128)
        fine[self.in_sector] = compound
        envelope = np.abs(fine) * self.gain
        f = self.factor
        n = self.imaging.output_size
        power = (envelope**2).reshape(n, f, n, f).mean(axis=(1, 3))
        sector = self.in_sector.reshape(n, f, n, f).mean(axis=(1, 3)) > 0.5
        reference = np.percentile(power[sector], 99.5) if sector.any() else 1.0
        db = 10.0 * np.log10(power / max(reference, 1e-30) + 1e-12)
        image = np.clip(1.0 + db / self.imaging.dynamic_range_db, 0.0, 1.0)
        image[~sector] = 0.0
        return image.astype(np.float32)


def _fit_rows(rf: np.ndarray, n_samples: int) -> np.ndarray:
    """RF [samples, elements] zero-padded or cut to ``n_samples`` rows."""
    if rf.shape[0] >= n_samples:
        return rf[:n_samples]
    return np.concatenate([rf, np.zeros((n_samples - rf.shape[0], rf.shape[1]), dtype=rf.dtype)])
