"""Agreement statistics between predicted and reference measurements (Pearson r, Bland-Altman)."""

from __future__ import annotations

import math

import numpy as np


def agreement(pred, ref) -> dict:
    """Agreement of predictions with references (e.g. EF in %), pairs with a non-finite value dropped.

    Args:
        pred, ref: ``[N]`` array-likes of the same length.

    Returns:
        dict with ``n`` (pairs used), ``n_dropped`` (pairs with NaN/inf), ``r`` (Pearson), ``bias``
        (mean of pred - ref), ``sd`` (SD of the differences, ddof=1), ``loa_low``/``loa_high`` (bias -/+ 1.96 sd,
        the 95 % limits of agreement), ``mae`` (mean |pred - ref|), ``rmse``, ``slope``/``intercept`` (least-squares
        line of pred on ref). Values that need more pairs (r and sd need 2, r a non-constant input) are ``NaN``.
    """
    p = np.asarray(pred, dtype=float).ravel()
    q = np.asarray(ref, dtype=float).ravel()
    if p.shape != q.shape:
        raise ValueError(f"pred and ref must have the same length, got {p.shape} and {q.shape}")
    keep = np.isfinite(p) & np.isfinite(q)
    p, q = p[keep], q[keep]
    n = int(len(p))
    out = {"n": n, "n_dropped": int((~keep).sum())}
    nan = math.nan
    if n == 0:
        keys = ("r", "bias", "sd", "loa_low", "loa_high", "mae", "rmse", "slope", "intercept")
        return {**out, **dict.fromkeys(keys, nan)}
    diff = p - q
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n >= 2 else nan
    varying = n >= 2 and np.ptp(p) > 0 and np.ptp(q) > 0
    r = float(np.corrcoef(p, q)[0, 1]) if varying else nan
    slope, intercept = (float(v) for v in np.polyfit(q, p, 1)) if n >= 2 and np.ptp(q) > 0 else (nan, nan)
    return {
        **out,
        "r": r,
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "mae": float(np.abs(diff).mean()),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "slope": slope,
        "intercept": intercept,
    }
