"""EF during evaluation: per-clip and biplane EF from masks, agreement files and plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from scripts.clinical.evaluation import EjectionFractionSaver, clip_ef, largest_component
from scripts.synthetic import generate_sequence


def test_largest_component_drops_specks() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:20] = True
    mask[30:32, 30:32] = True
    kept = largest_component(mask)
    assert kept.sum() == 20 * 15 and not kept[30, 30]
    assert largest_component(np.zeros((4, 4), bool)).sum() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_clip_ef_on_phantom_matches_truth_and_ignores_specks(seed: int) -> None:
    seq = generate_sequence(seed, view="4CH", size=192, n_frames=10)
    label = seq["label"]
    pred = label.copy()
    pred[2:4, 2:4, :] = 1  # a speck far from the LV must not change the measurement
    result = clip_ef(pred, label, seq["spacing_mm"], seq["ed"], seq["es"])
    assert result["volume_unit"] == "mL"
    assert result["pred_ef"] == pytest.approx(result["gt_ef"], abs=1e-9)
    assert result["gt_ef"] == pytest.approx(seq["ef"], abs=3.0)
    assert result["gt_edv_ml"] == pytest.approx(seq["edv_ml"], rel=0.05)


def test_ef_saver_writes_agreement_files(tmp_path) -> None:
    saver = EjectionFractionSaver(tmp_path)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        gt = float(rng.uniform(25, 70))
        rows.append(
            {
                "case_id": f"c{i}",
                "patient": f"p{i}",
                "view": "4CH",
                "ed_index": 0,
                "es_index": 9,
                "pred_edv_ml": 100.0,
                "pred_esv_ml": 50.0,
                "pred_ef": gt + float(rng.normal(0, 2)),
                "gt_edv_ml": 100.0,
                "gt_esv_ml": 50.0,
                "gt_ef": gt,
                "dataset_ef": gt + 1.0,
                "volume_unit": "mL",
            }
        )
    summary = saver.write(rows, [])
    stats = summary["per_clip"]["vs_gt_masks"]
    assert stats["n"] == 6 and stats["r"] > 0.9
    assert summary["per_clip"]["gt_masks_vs_dataset"]["bias"] == pytest.approx(-1.0)
    saved = json.loads((tmp_path / "ef_agreement.json").read_text())
    assert saved["per_clip"]["vs_gt_masks"]["n"] == 6
    with open(tmp_path / "ef_per_case.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    for name in ("ef_correlation.png", "ef_bland_altman.png", "ef_correlation_dataset.png"):
        assert (tmp_path / name).stat().st_size > 1000
