"""The hard split through the bundle's evaluation path: the generator's per-frame occlusion flags reach the metric
rows (``LoadCamusd`` -> ``SampleClipd`` -> ``case_metrics``) and the summary reads the occluded frames alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scripts.data import LoadCamusd, SampleClipd, camus_datalist
from scripts.data.errors import EchoDataError
from scripts.metrics import case_metrics, summarize, write_metric_reports
from scripts.synthetic.writers import read_stamp
from scripts.training import ensure_synthetic_data


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory) -> Path:
    """The hard split of a 10-patient synthetic set at 48 px: only its test patients are written."""
    root = tmp_path_factory.mktemp("hard")
    ensure_synthetic_data(root, patients=10, seed=3, size=48, progress=False, hard=True)
    return root


def test_hard_split_writes_only_the_test_patients_with_an_occluded_stretch(hard_root: Path):
    testing = (hard_root / "database_split" / "subgroup_testing.txt").read_text().split()
    training = (hard_root / "database_split" / "subgroup_training.txt").read_text().split()
    assert testing and not training
    assert sorted(p.name for p in (hard_root / "database_nifti").iterdir()) == sorted(testing)
    stamp = read_stamp(hard_root)
    assert stamp["hard"] is True and stamp["subsets"] == ["testing"]
    for item in camus_datalist(hard_root, "testing"):
        flags = json.loads(Path(item["truth"]).read_text())["occluded"]
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, flags, 0])))[::2]  # lengths of the runs of 1s
        assert runs.size and runs.max() >= min(3, len(flags)), (item["case_id"], flags)


def test_second_call_keeps_the_hard_split_and_default_data_differ(hard_root: Path, tmp_path: Path):
    before = {p: p.stat().st_mtime_ns for p in (hard_root / "database_nifti").rglob("*.nii.gz")}
    ensure_synthetic_data(hard_root, patients=10, seed=3, size=48, progress=False, hard=True)
    assert before == {p: p.stat().st_mtime_ns for p in (hard_root / "database_nifti").rglob("*.nii.gz")}
    # The same patients without `hard`: the same anatomy (labels), other images.
    clean = tmp_path / "clean"
    ensure_synthetic_data(clean, patients=10, seed=3, size=48, progress=False)
    case = camus_datalist(hard_root, "testing")[0]
    twin = next(i for i in camus_datalist(clean, "testing") if i["case_id"] == case["case_id"])
    hard_sample, clean_sample = LoadCamusd()(case), LoadCamusd()(twin)
    assert np.array_equal(hard_sample["label"].numpy(), clean_sample["label"].numpy())
    assert not np.array_equal(hard_sample["image"].numpy(), clean_sample["image"].numpy())


def test_the_other_split_asked_for_is_refused_not_regenerated(hard_root: Path, tmp_path: Path):
    """A forgotten --synthetic_hard (or one too many) names the folder and the flag; nothing is rewritten."""
    before = {p: p.stat().st_mtime_ns for p in hard_root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds the hard split .*--synthetic_hard True"):
        ensure_synthetic_data(hard_root, patients=10, seed=3, size=48, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in hard_root.rglob("*") if p.is_file()}
    clean = ensure_synthetic_data(tmp_path / "clean", patients=10, seed=3, size=48, progress=False)
    with pytest.raises(ValueError, match=r"holds the default synthetic data.*--synthetic_hard False"):
        ensure_synthetic_data(clean, patients=10, seed=3, size=48, progress=False, hard=True)


def test_flags_follow_the_clip_order_and_sampling(hard_root: Path):
    for item in camus_datalist(hard_root, "testing"):
        truth = np.asarray(json.loads(Path(item["truth"]).read_text())["occluded"], dtype=np.int8)
        sample = LoadCamusd()(item)
        assert np.array_equal(sample["occluded"], truth[sample["frame_indices"]])  # ED -> ES order, as stored
        clip = SampleClipd(num_frames=5)(sample)
        assert np.array_equal(clip["occluded"], truth[clip["frame_indices"]])


def test_data_without_flags_are_unknown_and_a_wrong_length_is_refused(hard_root: Path, tmp_path: Path):
    item = dict(camus_datalist(hard_root, "testing")[0])
    assert set(LoadCamusd()({**item, "truth": ""})["occluded"].tolist()) == {-1}
    bad = tmp_path / "bad_phantom.json"
    bad.write_text(json.dumps({"occluded": [0, 1]}))
    with pytest.raises(EchoDataError, match="'occluded' lists 2 frames"):
        LoadCamusd()({**item, "truth": str(bad)})


def test_occluded_summary_equals_a_plain_loop(tmp_path: Path):
    rng = np.random.default_rng(0)
    ref = np.zeros((24, 24, 6), dtype=np.int64)
    ref[6:18, 6:18] = 1
    pred = ref.copy()
    for t in range(6):  # a different error per frame
        pred[rng.integers(0, 24, 20), rng.integers(0, 24, 20), t] = 1 - pred[0, 0, t]
        pred[6 : 6 + t, 6:18, t] = 0
    occluded = np.array([0, 1, 1, -1, 0, 1])
    rows = case_metrics(pred, ref, np.ones(6, bool), (0.5, 0.5), 0, 5, {1: "lv"}, occluded)
    assert [r["occluded"] for r in rows] == [False, True, True, None, False, True]
    summary = summarize([{**r, "case_id": "c"} for r in rows])["structures"]["lv"]

    def dice(t: int) -> float:
        p, g = pred[..., t] == 1, ref[..., t] == 1
        return 2.0 * (p & g).sum() / (p.sum() + g.sum())

    assert summary["occluded"]["dice"]["mean"] == pytest.approx(np.mean([dice(t) for t in (1, 2, 5)]))
    assert summary["visible"]["dice"]["mean"] == pytest.approx(np.mean([dice(t) for t in (0, 4)]))
    assert summary["all"]["dice"]["n"] == 6
    paths = write_metric_reports([{**r, "case_id": "c"} for r in rows], tmp_path)
    with open(paths["csv"]) as f:
        assert [r["occluded"] for r in csv.DictReader(f)] == ["0", "1", "1", "", "0", "1"]
    # Rows without flags (real data) keep the summary as it was: no occluded/visible blocks.
    plain = summarize([{**r, "case_id": "c"} for r in case_metrics(pred, ref, np.ones(6, bool), None, 0, 5)])
    assert set(plain["overall"]) == {"all", "ED", "ES"}
