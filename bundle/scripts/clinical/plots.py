"""Pictures of the clinical measurements: correlation and Bland-Altman plots, LV volume curve (PNG, Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._io import atomic_paths
from .stats import agreement


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (PNG by the suffix); returns the path."""
    FigureCanvasAgg(fig)
    with atomic_paths(path) as (temp,):
        fig.savefig(temp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def _finite_pairs(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=float).ravel()
    q = np.asarray(ref, dtype=float).ravel()
    keep = np.isfinite(p) & np.isfinite(q)
    return p[keep], q[keep]


def plot_correlation(
    pred, ref, path: str | os.PathLike, quantity: str = "LVEF", unit: str = "%", title: str | None = None
) -> Path:
    """Scatter of prediction against reference with the regression line and the identity line; r in the title.

    Args:
        pred, ref: ``[N]`` values (NaN pairs dropped); path: the PNG to write.
    """
    stats = agreement(pred, ref)
    p, q = _finite_pairs(pred, ref)
    fig = Figure(figsize=(4.8, 4.5))
    ax = fig.add_subplot()
    ax.scatter(q, p, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    lo, hi = (min(p.min(), q.min()), max(p.max(), q.max())) if len(p) else (0.0, 1.0)
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "--", color="grey", lw=1, label="identity")
    if math.isfinite(stats["slope"]):
        ax.plot(
            xs,
            stats["slope"] * xs + stats["intercept"],
            color="tab:red",
            lw=1.5,
            label=f"y = {stats['slope']:.2f}x + {stats['intercept']:.1f}",
        )
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.set_title(title or f"{quantity}: r = {stats['r']:.3f} (n = {stats['n']})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bland_altman(
    pred, ref, path: str | os.PathLike, quantity: str = "LVEF", unit: str = "%", title: str | None = None
) -> Path:
    """Bland-Altman plot: mean of (pred, ref) against pred - ref, with the bias and 95 % limits of agreement.

    Args:
        pred, ref: ``[N]`` values (NaN pairs dropped); path: the PNG to write.
    """
    stats = agreement(pred, ref)
    p, q = _finite_pairs(pred, ref)
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    ax.scatter((p + q) / 2, p - q, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    lines = (("bias", stats["bias"], "-"), ("-1.96 SD", stats["loa_low"], "--"), ("+1.96 SD", stats["loa_high"], "--"))
    for name, value, style in lines:
        if math.isfinite(value):
            ax.axhline(value, color="tab:red", ls=style, lw=1.2)
            ax.annotate(
                f"{name}: {value:.2f}",
                xy=(1.0, value),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                fontsize=8,
                color="tab:red",
            )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(f"mean of predicted and reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted - reference {quantity} ({unit})")
    ax.set_title(title or f"{quantity}: bias {stats['bias']:.2f}, SD {stats['sd']:.2f} (n = {stats['n']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_volume_curve(
    values_T,
    ed_es_pairs,
    path: str | os.PathLike,
    frame_rate: float | None = None,
    ylabel: str = "LV volume (mL)",
    title: str | None = None,
) -> Path:
    """LV volume (or area) over time with the ED (red) and ES (blue) frames of each beat marked; writes a PNG.

    Args:
        values_T: ``[T]`` per-frame values (NaN frames show as gaps).
        ed_es_pairs: ``[(ed, es), ...]`` frame indices of the (accepted) beats.
        path: the PNG to write.
        frame_rate: frames per second; the x axis is in seconds when given, in frames otherwise.
    """
    return save_figure(volume_curve_figure(values_T, ed_es_pairs, frame_rate, ylabel, title), path)


def volume_curve_figure(
    values_T,
    ed_es_pairs,
    frame_rate: float | None = None,
    ylabel: str = "LV volume (mL)",
    title: str | None = None,
    rejected_pairs=(),
) -> Figure:
    """The figure drawn by ``plot_volume_curve`` (not saved); ``rejected_pairs`` (beats the analysis rejected) are
    drawn in grey with crosses, the accepted ``ed_es_pairs`` in colour."""
    v = np.asarray(values_T, dtype=float).ravel()
    t = np.arange(len(v), dtype=float)
    xlabel = "frame"
    if frame_rate:
        t = t / float(frame_rate)
        xlabel = "time (s)"
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.add_subplot()
    ax.plot(t, v, "-o", ms=2.5, lw=1.2, color="black")
    for k, (ed, es) in enumerate(ed_es_pairs):
        ax.plot(t[ed], v[ed], "v", color="tab:red", ms=8, label="ED" if k == 0 else None)
        ax.plot(t[es], v[es], "^", color="tab:blue", ms=8, label="ES" if k == 0 else None)
        ax.axvline(t[ed], color="tab:red", lw=0.6, alpha=0.5)
        ax.axvline(t[es], color="tab:blue", lw=0.6, alpha=0.5)
    for k, (ed, es) in enumerate(rejected_pairs):
        ax.plot([t[ed], t[es]], [v[ed], v[es]], "x", color="grey", ms=8, label="rejected beat" if k == 0 else None)
        ax.axvspan(min(t[ed], t[es]), max(t[ed], t[es]), color="grey", alpha=0.12, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(ed_es_pairs) or len(rejected_pairs):
        ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
