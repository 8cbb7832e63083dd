"""docs/benchmarks_physics.md and its figure: the physics-simulated cines with the truth and a model's outline."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from . import REPO_ROOT
from .build import load_case

PAGE = REPO_ROOT / "docs" / "benchmarks_physics.md"
FIGURE = REPO_ROOT / "docs" / "images" / "physics_echo_examples.png"


def write_figure(checkpoint: Path, data: Path, path: Path = FIGURE) -> Path:
    """ED and ES frames of the first cine of each base: truth LV (green) and the checkpoint's LV (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from real_echo import segment

    from scripts.checkpoint import build_network, trained_settings

    settings = trained_settings(checkpoint)
    net = build_network(checkpoint)
    firsts: dict[str, Path] = {}
    for truth_path in sorted((data / "database_nifti").glob("patient*/*_physics.json")):
        firsts.setdefault(json.loads(truth_path.read_text())["phantom"]["base"], truth_path)
    fig, axes = plt.subplots(2, len(firsts), figsize=(4 * len(firsts), 8), squeeze=False)
    torch.set_num_threads(2)
    for column, (base, truth_path) in enumerate(firsts.items()):
        stem = truth_path.name.removesuffix("_physics.json")
        image, label, truth = load_case(truth_path)
        spacing = tuple(truth["spacing_mm"])
        predicted = segment(
            net, image.astype(np.float32) / 255.0, spacing, settings["spatial_size"], settings["keep_aspect"]
        )
        for row, (phase, frame) in enumerate((("ED", 0), ("ES", image.shape[-1] - 1))):
            ax = axes[row, column]
            ax.imshow(image[..., frame], cmap="gray", vmin=0, vmax=255)
            ax.contour(label[..., frame] == 1, [0.5], colors="lime", linewidths=1.2)
            ax.contour(predicted[..., frame] == 1, [0.5], colors="red", linewidths=1.2)
            ax.set_title(f"{stem}, {base.replace('_', ' ')} base, {phase}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"physics-simulated echo: truth LV (green), {checkpoint.parent.name}/{checkpoint.name} (red)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_page(result: dict, table: str, names: list[str], checkpoints: list[Path], data: Path) -> Path:
    """The benchmark page: how the set is made, the command, the table, the figure (first checkpoint)."""
    figure = write_figure(checkpoints[0], data)
    imaging = result["imaging"]
    how = (
        f"{result['cases']} apical four-chamber half cycles (ED -> ES, a label on every frame), seed {result['seed']}, "
        f"simulated by PyMUST (`pymust`: SIMUS and delay-and-sum; a 64-element 2.7 MHz phased array, "
        f"{imaging['transmits']} diverging waves per frame compounded, {imaging['attenuation_db_cm_mhz']} dB/cm/MHz "
        f"attenuation and its time-gain compensation, a {2 * imaging['half_angle_deg']:.0f}-degree sector to "
        f"{imaging['depth_mm']:.0f} mm, {imaging['dynamic_range_db']:.0f} dB dynamic range, "
        f"{result['density_per_mm2']} tissue scatterers per mm^2, twice that in the LV wall) from scatterer phantoms "
        "that share no code with the synthetic generator: LV length, width, wall thickness, base truncation, EF, "
        "long-axis shortening and tissue contrast drawn per cine; three bases in turn: **four-chamber** (mitral "
        "opening with closed leaflets, left and right atria, right ventricle), **open** (mitral opening and left "
        "atrium only), **closed** (a closed ellipsoid: myocardium across the base, no atria). Masks are exact (CAMUS "
        "convention: the LV closed by the annulus line); the reference EF is that of the phantom's exact volumes "
        "(truncated prolate ellipsoid), the model's EF the bundle's single-plane Simpson. Every number but the last "
        "column comes from the bundle's own `run evaluating` (evaluate.json, every frame) on the set; the last column "
        "is LV Dice with the same weights stepped with their memory and with every frame segmented alone (a one-frame "
        "cine: empty state, warm start), over all frames and on the ES frame (the last). The set is for measuring "
        "and for choosing the generator's settings, never for training."
    )
    checkpoints_line = "Checkpoints: " + ", ".join(f"`{name}` = `{result['checkpoints'][name]}`" for name in names)
    checkpoints_line += f". Run time {result['seconds'] / 60:.1f} min (the set is built once and cached)."
    text = "\n\n".join(
        [
            "# Physics-simulated echo (issue 24)",
            "Produced by `python -m bench.physics --docs` (`bench/physics/`); JSON: `results/bench_physics_echo.json`.",
            textwrap.fill(how, 118),
            table,
            textwrap.fill(checkpoints_line, 118),
            "![physics-simulated cines](images/physics_echo_examples.png)",
            textwrap.fill(
                f"The figure: ED (top) and ES (bottom) of the first cine of each base, the truth (green) and "
                f"`{names[0]}` (red).",
                118,
            ),
        ]
    )
    PAGE.write_text(text + "\n")
    print(f"wrote {PAGE} and {figure}")
    return PAGE
