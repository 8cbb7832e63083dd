"""Whether the memory kept to the images: a few frames of each cine segmented again, each alone, by the same network.

A recurrent memory can drift: a network that trusts the previous mask it carries can let the LV shrink frame after
frame through systole, and every frame still looks plausible (on physics-simulated echo the stepped mask of the
`make demo` model reached LV Dice 0.00 at ES on one cine where the frame segmented alone got 0.74; see
docs/benchmarks_physics.md). Nothing in the stepped output shows it, so every door checks it: :func:`memory_check`
segments ``frames`` frames of the cine again as one-frame cines (empty memory; the warm start when the network has
it), with the same weights, and gives the LV Dice between those masks and the stepped ones.
:func:`scripts.clinical.quality.cine_quality` turns a low agreement into the verdict "review" (one of the two is
wrong; a reader must look) and reports it in ``checks["memory_agreement"]``.

Cost: one frame in :data:`FRAMES_PER_CHECK` segmented again (at least :data:`MIN_CHECKED_FRAMES`, at most
``frames``; twice each with the warm start), folded into one batch. Frame 0 is not checked (it is segmented alone in
both runs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_CHECKED_FRAMES", "MEMORY_CHECK_KEY", "checked_frames", "memory_check"]

MEMORY_CHECK_KEY = "memory_check"  # the item key the doors put the result under, for the measurement
DEFAULT_CHECKED_FRAMES = 8  # at most this many frames per cine segmented alone (``memory_check_frames``; 0: off)
FRAMES_PER_CHECK = 8  # one checked frame for every this many frames of the cine ...
MIN_CHECKED_FRAMES = 3  # ... but at least this many (a half cycle of 16 frames: 3)


def checked_frames(n_frames: int, count: int = DEFAULT_CHECKED_FRAMES) -> list[int]:
    """The frames to check: one for every :data:`FRAMES_PER_CHECK` frames of the cine, at least
    :data:`MIN_CHECKED_FRAMES` and at most ``count``, spread evenly over frames ``1 .. n_frames - 1`` with the last
    frame (where a drift has gone furthest) always among them."""
    if count <= 0 or n_frames < 2:
        return []
    wanted = min(int(count), max(MIN_CHECKED_FRAMES, math.ceil((n_frames - 1) / FRAMES_PER_CHECK)), n_frames - 1)
    picks = np.linspace(1, n_frames - 1, wanted).round().astype(int)
    return sorted({int(p) for p in picks})


def lv_agreement(first_HWF: np.ndarray, second_HWF: np.ndarray) -> list[float]:
    """LV Dice between two ``[H, W, F]`` boolean masks, per frame (1.0 where both are empty)."""
    both = first_HWF.sum(axis=(0, 1)) + second_HWF.sum(axis=(0, 1))
    overlap = (first_HWF & second_HWF).sum(axis=(0, 1))
    return [float(2.0 * o / b) if b > 0 else 1.0 for o, b in zip(overlap, both)]


@torch.inference_mode()
def memory_check(
    network: Any,
    video_1CHWT: torch.Tensor,
    stepped_logits_KHWT: torch.Tensor,
    frames: int = DEFAULT_CHECKED_FRAMES,
    lv_label: int = 1,
) -> dict[str, Any] | None:
    """The stepped LV against the same frames segmented alone.

    Args:
        network: the network that stepped the cine (a ``GDKVM``, its TorchScript or any module taking
            ``[B, C, H, W, T]`` and giving ``[B, K, H, W, T]`` logits), in eval mode.
        video_1CHWT: ``[1, C, H, W, T]`` (or ``[C, H, W, T]``) the preprocessed cine the network stepped.
        stepped_logits_KHWT: ``[K, H, W, T]`` (or ``[1, K, H, W, T]``) its logits.
        frames: at most this many frames to check (see :func:`checked_frames`); 0 turns the check off.
        lv_label: the LV's class.

    Returns:
        ``{"frames": [t, ...], "lv_dice": [d, ...]}`` (frame indices and the LV Dice of stepped vs alone there),
        or ``None`` when nothing is checked (``frames`` 0, a cine of one frame).
    """
    video = video_1CHWT if video_1CHWT.ndim == 5 else video_1CHWT[None]
    stepped = stepped_logits_KHWT[0] if stepped_logits_KHWT.ndim == 5 else stepped_logits_KHWT
    if video.ndim != 5 or video.shape[0] != 1 or stepped.ndim != 4 or stepped.shape[-1] != video.shape[-1]:
        raise ValueError(
            f"memory_check needs a [1, C, H, W, T] cine and [K, H, W, T] logits of as many frames, got "
            f"{tuple(video_1CHWT.shape)} and {tuple(stepped_logits_KHWT.shape)}"
        )
    picked = checked_frames(int(video.shape[-1]), frames)
    if not picked:
        return None
    param = next(iter(network.parameters()), None) if hasattr(network, "parameters") else None
    device = param.device if param is not None else video.device
    alone_F1HW1 = video[0, ..., picked].permute(3, 0, 1, 2).unsqueeze(-1).to(device, torch.float32)
    alone_FKHW = network(alone_F1HW1)[..., 0].float()
    alone_HWF = (alone_FKHW.argmax(dim=1) == lv_label).permute(1, 2, 0).cpu().numpy()
    stepped_HWF = (stepped[..., picked].float().argmax(dim=0) == lv_label).cpu().numpy()
    return {"frames": picked, "lv_dice": [round(d, 4) for d in lv_agreement(stepped_HWF, alone_HWF)]}
