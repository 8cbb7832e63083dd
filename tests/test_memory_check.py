"""The memory check every door runs: a few frames of each cine segmented again alone, compared with the stepped masks,
and the verdict it feeds (scripts.memory_check, scripts.clinical.quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_lv_network import run_bundle_inference
from fixtures_echo import phantom, save_nifti_hwt

from scripts.clinical import measure_cine
from scripts.clinical.quality import MIN_MEMORY_AGREEMENT
from scripts.gdkvm import GDKVM
from scripts.memory_check import checked_frames, memory_check


def test_checked_frames_spread_over_the_cine_without_the_first() -> None:
    assert checked_frames(17, 8) == [1, 8, 16]  # a half cycle: 3 frames, the last one (often ES) always in
    assert checked_frames(41, 8) == [1, 11, 20, 30, 40]  # one in 8
    assert checked_frames(120, 8) == [1, 18, 35, 52, 68, 85, 102, 119] and len(checked_frames(600, 8)) == 8  # at most
    assert checked_frames(3, 8) == [1, 2]  # a short cine: every frame after the first
    assert checked_frames(1, 8) == [] and checked_frames(30, 0) == []  # nothing to compare; switched off


def test_memory_check_equals_a_plain_loop_over_the_frames() -> None:
    """Each checked frame is segmented as a one-frame cine by the same network (warm start included), and the LV
    Dice against the stepped argmax is the textbook one."""
    torch.manual_seed(0)
    net = GDKVM(size="small", out_channels=2).eval()
    video = torch.rand(1, 1, 32, 32, 7)
    with torch.inference_mode():
        stepped = net(video)[0]  # [K, H, W, T]
    result = memory_check(net, video, stepped, frames=3)
    assert result is not None and result["frames"] == [1, 4, 6]
    for t, got in zip(result["frames"], result["lv_dice"]):
        with torch.inference_mode():
            alone = net(video[..., t : t + 1])[0, ..., 0].argmax(dim=0) == 1
        mine = stepped[..., t].argmax(dim=0) == 1
        total = int(alone.sum() + mine.sum())
        expected = 1.0 if total == 0 else 2.0 * int((alone & mine).sum()) / total
        assert got == pytest.approx(expected, abs=1e-4), t
    assert memory_check(net, video[..., :1], stepped[..., :1]) is None  # one frame: nothing to check
    with pytest.raises(ValueError, match=r"\[1, C, H, W, T\] cine and \[K, H, W, T\] logits"):
        memory_check(net, video, stepped[..., :5])


def _beating_labels(frames: int = 24, period: int = 12) -> np.ndarray:
    """``[64, 64, T]`` labels of an LV (an ellipse) that shrinks and grows every ``period`` frames."""
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64, frames), np.uint8)
    for t in range(frames):
        s = 1.0 - 0.3 * (0.5 - 0.5 * np.cos(2 * np.pi * t / period))
        labels[..., t] = (((yy - 30) / (18 * s)) ** 2 + ((xx - 32) / (8 * s)) ** 2) < 1
    return labels


def test_a_drifting_memory_makes_the_verdict_review_and_says_where() -> None:
    labels = _beating_labels()
    agreeing = measure_cine(labels, (0.5, 0.5), 30.0, memory_check={"frames": [3, 9, 23], "lv_dice": [0.97, 0.9, 0.95]})
    assert agreeing["quality"]["checks"]["memory_agreement"] == 0.9
    assert agreeing["quality"]["checks"]["memory_checked_frames"] == [3, 9, 23]
    assert not any("memory" in r for r in agreeing["quality"]["reasons"])
    drifted = measure_cine(labels, (0.5, 0.5), 30.0, memory_check={"frames": [3, 9, 23], "lv_dice": [0.97, 0.4, 0.7]})
    assert drifted["quality"]["verdict"] == "review"
    (reason,) = [r for r in drifted["quality"]["reasons"] if "memory" in r]
    assert "frame 9" in reason and "LV Dice 0.40" in reason and "2 of 3 checked frames" in reason
    assert drifted["ef_percent"] == agreeing["ef_percent"]  # the numbers stay, marked for review
    unchecked = measure_cine(labels, (0.5, 0.5), 30.0)
    assert unchecked["quality"]["checks"]["memory_agreement"] is None
    with pytest.raises(ValueError, match="2 frames and 1 Dice"):
        measure_cine(labels, (0.5, 0.5), 30.0, memory_check={"frames": [3, 9], "lv_dice": [0.9]})


def test_the_bundles_inference_flags_a_network_whose_stepped_masks_drift(tmp_path) -> None:
    """Through ``run inferring``: the stand-in network's stepped LV shrinks with the frame index while every frame
    segmented alone gets the full LV (a memory that drifted): review, with the frames checked in seg.json; with
    ``--memory_check_frames 0`` nothing is checked."""
    data = tmp_path / "cines"
    data.mkdir()
    save_nifti_hwt(phantom(64, 64, 30, seed=3)[0], data / "cine.nii.gz")
    summaries = {}
    for frames in ("8", "0"):
        out = tmp_path / f"out{frames}"
        result = run_bundle_inference(data, out, tmp_path, "--write_overlays", "False", "--memory_check_frames", frames)
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[frames] = json.loads((out / "cine_seg.json").read_text())["quality"]
    checked = summaries["8"]
    assert checked["checks"]["memory_checked_frames"] == checked_frames(30, 8)
    assert checked["checks"]["memory_agreement"] < MIN_MEMORY_AGREEMENT and checked["verdict"] == "review"
    assert any(r.startswith("the memory drifted from the images: frame ") for r in checked["reasons"])
    assert (
        summaries["0"]["checks"]["memory_agreement"] is None and summaries["0"]["checks"]["memory_checked_frames"] == []
    )
    assert not any("memory" in r for r in summaries["0"]["reasons"])


def test_the_drift_benchmark_counts_lost_and_flagged_cines() -> None:
    """bench/drift_check.py: a cine is lost when its stepped Dice is >= 5 points below the frames alone, flagged when
    its worst checked agreement is below the threshold; cines without a truth count only as flagged or not."""
    from bench.drift_check import summarise

    def row(agreement, memory=None, alone=None):
        out = {"agreement": agreement, "stepped_s": 1.0, "check_s": 0.5}
        return out if memory is None else {**out, "dice_memory": memory, "dice_alone": alone}

    rows = [row(0.3, 0.6, 0.9), row(0.95, 0.80, 0.90), row(0.7, 0.93, 0.88), row(0.9, 0.92, 0.93), row(0.5), row(None)]
    s = summarise(rows, threshold=0.85, lost=0.05)
    assert (s["cines"], s["flagged"], s["lost"], s["lost_and_flagged"], s["flagged_not_lost"]) == (6, 3, 2, 1, 1)
    assert s["agreement_min"] == 0.3 and s["dice_memory_flagged"] == pytest.approx((0.6 + 0.93) / 2)
    assert s["check_s"] / s["stepped_s"] == pytest.approx(0.5)
