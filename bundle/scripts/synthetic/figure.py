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


def make_failure_modes_figure(
    out: str | Path, seed: int = 24, size: int = 192, n_frames: int = 14, hard_seed: int = 0
) -> Path:
    """Write a PNG: every failure mode off vs on (same seed, same frame), and a strip of a ``hard=True`` cine.

    Per mode, the frame shown is where the mode is strongest (shadow on, largest gain change, most foreshortened,
    largest shift); decorrelation shows the difference of two consecutive frames; frame rate shows the LV area
    curve of one second of cine at the lowest and highest drawn rates. Occluded frames of the strip are flagged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .failures import FAILURE_MODES

    fig, axes = plt.subplots(5, 6, figsize=(18, 15.6), facecolor="black")
    panels = [ax for ax in axes[:3].ravel()]
    kw = dict(view="4CH", size=size, n_frames=n_frames)
    for k, mode in enumerate(FAILURE_MODES):
        ax_off, ax_on = panels[2 * k], panels[2 * k + 1]
        if mode == "frame_rate":
            for ax, label in ((ax_off, "off: 50 /s"), (ax_on, "on: drawn 15..80 /s")):
                ax.set_facecolor("black")
                rates = [50.0] if ax is ax_off else []
                seeds = [seed] if ax is ax_off else range(40)
                for sd in seeds:
                    seq = generate_sequence(sd, view="4CH", size=32, n_frames=40, mode="cine", render=False,
                                            failures=(() if ax is ax_off else ("frame_rate",)))  # fmt: skip
                    rates.append(seq["frame_rate"])
                ax.hist(rates, bins=np.linspace(10, 85, 16), color="white")
                ax.tick_params(colors="white")
                ax.set_title(f"frame_rate {label}", color="white", fontsize=10)
            continue
        off = generate_sequence(seed, failures=(), **kw)
        on = generate_sequence(seed, failures=(mode,), **kw)
        p = on["failures"][mode]
        t = 0
        if mode == "shadow":
            t = int(np.argmax(p["level_db"]))
        elif mode == "gain_drift":
            t = int(np.argmax(np.abs(np.asarray(p["gain_db"])) + np.abs(np.asarray(p["tgc_db"]))))
        elif mode == "out_of_plane":
            t = int(np.argmin(p["length_scale"]))
        elif mode == "translation":
            t = int(np.argmax(np.hypot(*np.asarray(p["shift_mm"]).T)))
        elif mode == "dropout":
            t = int(np.argmax(p["level_db"]))
        elif mode == "clutter":
            t = int(np.argmax(p["level"]))
        rows, cols = np.nonzero(off["image"].max(axis=-1) > 0)
        crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        for ax, seq, tag in ((ax_off, off, "off"), (ax_on, on, "on")):
            img = seq["image"][crop]
            if mode == "decorrelation":
                ax.imshow(np.abs(img[..., 1] - img[..., 0]), cmap="gray", vmin=0, vmax=0.5)
                ax.set_title(f"{mode} {tag}: |frame 1 - frame 0|", color="white", fontsize=10)
                continue
            ax.imshow(img[..., t], cmap="gray", vmin=0, vmax=1)
            if mode in ("out_of_plane", "translation"):
                ax.contour(off["label"][crop][..., 0] == 1, levels=[0.5], colors="yellow", linewidths=0.6)
                ax.contour(seq["label"][crop][..., t] == 1, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{mode} {tag} (frame {t})", color="white", fontsize=10)
    hard = generate_sequence(hard_seed, view="4CH", size=size, n_frames=12, hard=True)
    rows, cols = np.nonzero(hard["image"].max(axis=-1) > 0)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    strip = [ax for ax in axes[3:].ravel()]
    for t, ax in enumerate(strip[: hard["image"].shape[-1]]):
        ax.imshow(hard["image"][crop][..., t], cmap="gray", vmin=0, vmax=1)
        ax.contour(hard["label"][crop][..., t] == 1, levels=[0.5], colors="red", linewidths=0.6)
        occ = bool(hard["occluded"][t])
        ax.set_title(f"hard frame {t}: {'OCCLUDED' if occ else 'visible'} ({100 * hard['border_hidden'][t]:.0f} %)",
                     color="orange" if occ else "white", fontsize=10)  # fmt: skip
    for ax in axes.ravel():
        if not ax.images and not ax.patches:
            ax.set_facecolor("black")
        ax.set_xticks([]) if ax.images else None
        ax.set_yticks([]) if ax.images else None
    fig.suptitle(f"failure modes, 4CH seed {seed} (yellow: LV at frame 0 without the mode; red: LV on this frame); "
                 f"hard cine: {hard['failures']['hard_occluder']}", color="white", fontsize=12)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70, facecolor="black")
    plt.close(fig)
    return out
