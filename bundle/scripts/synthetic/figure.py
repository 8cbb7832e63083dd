"""Side-by-side picture of synthetic frames and the real apical four-chamber cine that ships in pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .sequence import generate_sequence


def real_echo_frames() -> np.ndarray:
    """Grey frames ``[T, H, W]`` float32 in [0, 1] of ``pydicom.examples.ybr_color`` (real A4C cine, 30 frames)."""
    from pydicom import examples

    ds = examples.ybr_color
    rgb = ds.pixel_array  # pydicom 3 converts YBR to RGB: (30, 240, 320, 3) uint8
    return (rgb.astype(np.float32).mean(axis=-1) / 255.0).astype(np.float32)


def make_comparison_figure(out: str | Path, seed: int = 0, size: int = 256) -> Path:
    """Write a PNG: rows 2CH / 4CH synthetic (ED, ES, ES with label contours) and the real cine (two frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = real_echo_frames()
    r_lo, r_hi = int(np.argmin(real.mean(axis=(1, 2)))), int(np.argmax(real.mean(axis=(1, 2))))
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.4), facecolor="black")
    for row, view in enumerate(("2CH", "4CH")):
        seq = generate_sequence([seed, row], view=view, size=size, n_frames=12)
        img, lab = seq["image"], seq["label"]
        panels = [
            (img[..., seq["ed"]], None, f"synthetic {view} ED"),
            (img[..., seq["es"]], None, f"synthetic {view} ES"),
            (img[..., seq["ed"]], lab[..., seq["ed"]], f"{view} ED + labels (EF {seq['ef']:.0f} %)"),
        ]
        for col, (frame, labels, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(frame, cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                for k, colour in ((1, "red"), (2, "lime"), (3, "cyan")):
                    ax.contour(labels == k, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(title, color="white", fontsize=11)
        ax = axes[row, 3]
        ax.imshow(real[(r_lo, r_hi)[row]][20:230, 55:295], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"real A4C (pydicom ybr_color) frame {(r_lo, r_hi)[row]}", color="white", fontsize=11)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor="black")
    plt.close(fig)
    return out
