"""Clinical measurements from LV masks: volumes (Simpson's rule, area-length, biplane), ED/ES frames, ejection
fraction, agreement statistics, plots, per-cine reports and contour overlays. Methods: ``docs/clinical.md``."""

from .cycle import analyse_beats, cardiac_period, estimate_period, find_ed_es, motion_period
from .plots import plot_bland_altman, plot_correlation, plot_volume_curve
from .quality import cine_quality, lv_confidence, measure_cine, measurement_summary
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
    "analyse_beats",
    "biplane_volume",
    "biplane_volume_details",
    "cardiac_period",
    "cine_quality",
    "cine_report",
    "ejection_fraction",
    "ejection_fraction_details",
    "estimate_period",
    "find_ed_es",
    "lv_geometry",
    "lv_volume",
    "lv_confidence",
    "lv_volume_details",
    "mask_problem",
    "measure_cine",
    "measurement_summary",
    "motion_period",
    "plot_bland_altman",
    "plot_correlation",
    "plot_volume_curve",
    "save_overlay",
    "write_cine_report",
]
