"""Clinical measurements from LV masks: volumes (Simpson's rule, area-length, biplane), ED/ES frames, ejection
fraction, agreement statistics, plots, per-cine reports and contour overlays. Methods: ``docs/clinical.md``."""

from .cycle import estimate_period, find_ed_es
from .plots import plot_bland_altman, plot_correlation, plot_volume_curve
from .report import cine_report, save_overlay, write_cine_report
from .stats import agreement
from .volumes import (
    LVGeometry,
    VolumeResult,
    biplane_volume,
    biplane_volume_details,
    ejection_fraction,
    ejection_fraction_details,
    lv_geometry,
    lv_volume,
    lv_volume_details,
    mask_problem,
)

__all__ = [
    "LVGeometry",
    "VolumeResult",
    "agreement",
    "biplane_volume",
    "biplane_volume_details",
    "cine_report",
    "ejection_fraction",
    "ejection_fraction_details",
    "estimate_period",
    "find_ed_es",
    "lv_geometry",
    "lv_volume",
    "lv_volume_details",
    "mask_problem",
    "plot_bland_altman",
    "plot_correlation",
    "plot_volume_curve",
    "save_overlay",
    "write_cine_report",
]
