"""What the memory does on physics-simulated echo: the same weights with the state carried, and every frame alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .build import load_case


def _dice(predicted_HWT: np.ndarray, truth_HWT: np.ndarray) -> np.ndarray:
    """LV Dice per frame ``[T]`` (label 1)."""
    p, t = predicted_HWT == 1, truth_HWT == 1
    both = (p & t).sum(axis=(0, 1))
    return 2.0 * both / np.maximum(1, p.sum(axis=(0, 1)) + t.sum(axis=(0, 1)))


def memory_against_frames_alone(checkpoint: Path, data: Path) -> dict:
    """LV Dice of each cine stepped as inference steps it (``memory``) and with every frame segmented alone (a
    cine of one frame: empty state, and the warm start when the checkpoint's network has it), same weights, same
    geometry as the bundle's inference (``real_echo.segment``); mean over frames, and on the last (ES) frame."""
    import torch
    from real_echo import segment

    from scripts.checkpoint import build_network, trained_settings

    settings = trained_settings(checkpoint)
    net = build_network(checkpoint)
    size, keep_aspect = settings["spatial_size"], settings["keep_aspect"]
    torch.set_num_threads(2)
    memory, alone = [], []
    for truth_path in sorted((data / "database_nifti").glob("patient*/*_physics.json")):
        image, truth_labels, truth = load_case(truth_path)
        spacing = tuple(truth["spacing_mm"])
        cine = image.astype(np.float32) / 255.0
        stepped = segment(net, cine, spacing, size, keep_aspect)
        single = [segment(net, cine[..., t : t + 1], spacing, size, keep_aspect) for t in range(cine.shape[-1])]
        memory.append(_dice(stepped, truth_labels))
        alone.append(_dice(np.concatenate(single, axis=-1), truth_labels))
    return {
        "dice_memory": float(np.mean([d.mean() for d in memory])),
        "dice_frames_alone": float(np.mean([d.mean() for d in alone])),
        "dice_es_memory": float(np.mean([d[-1] for d in memory])),
        "dice_es_frames_alone": float(np.mean([d[-1] for d in alone])),
    }
