"""Segmentation metrics (``scripts.metrics``): MONAI metrics per structure on annotated frames, the re-release's
empty-mask rules, reports, and the Ignite pieces on a fake engine and a real MONAI SupervisedEvaluator."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy.ndimage import binary_erosion, distance_transform_edt

from scripts import metrics as M
from scripts.metrics import (
    CSV_COLUMNS,
    AnnotatedFrameDice,
    EchoSegmentationMetricSaver,
    case_metrics,
    fov_diagonal,
    frame_metrics,
    summarize,
    write_metric_reports,
)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius_mm: float, spacing=(1.0, 1.0)) -> np.ndarray:
    """``[H, W]`` int mask of the pixels whose centres lie within ``radius_mm`` of ``centre`` (pixel units)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((((yy - centre[0]) * spacing[0]) ** 2 + ((xx - centre[1]) * spacing[1]) ** 2) <= radius_mm**2).astype(int)


def rr_reference(pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0)) -> dict[str, float]:
    """The re-release's definitions written directly with scipy/numpy (both masks non-empty)."""
    sp = np.asarray(spacing, dtype=float)
    sp_pred, sp_ref = pred ^ binary_erosion(pred), ref ^ binary_erosion(ref)
    d_pr = distance_transform_edt(~sp_ref, sampling=sp)[sp_pred]
    d_rp = distance_transform_edt(~sp_pred, sampling=sp)[sp_ref]
    inter = (pred & ref).sum()
    return {
        "dice": 2 * inter / (pred.sum() + ref.sum()),
        "iou": inter / (pred | ref).sum(),
        "hd": max(d_pr.max(), d_rp.max()),
        "hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
        "asd": np.concatenate([d_pr, d_rp]).mean(),
    }


def test_dice_iou_of_two_discs_are_analytic():
    a, b = disc((128, 128), (64, 64), 40), disc((128, 128), (64, 64), 30)
    m = frame_metrics(a, b, (1.0, 1.0), {1: "lv"})["lv"]
    inter = (a & b).sum()
    assert m["dice"] == pytest.approx(2 * inter / (a.sum() + b.sum()), abs=1e-6)
    assert m["iou"] == pytest.approx(inter / (a | b).sum(), abs=1e-6)
    # continuous values for concentric discs: Dice = 2 r2^2 / (r1^2 + r2^2), IoU = r2^2 / r1^2
    assert m["dice"] == pytest.approx(2 * 30**2 / (40**2 + 30**2), abs=0.01)
    assert m["iou"] == pytest.approx(30**2 / 40**2, abs=0.01)


def test_iou_dice_identity_for_single_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = (rng.random((40, 50)) < 0.4).astype(int)
        b = (rng.random((40, 50)) < 0.5).astype(int)
        m = frame_metrics(a, b, (0.5, 0.5), {1: "lv"})["lv"]
        assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]), abs=1e-6)


@pytest.mark.parametrize("spacing", [(0.3, 0.5), (0.5, 0.2)])
def test_hausdorff_of_concentric_circles_with_anisotropic_spacing(spacing):
    r1, r2 = 12.0, 17.0  # mm
    shape, centre = (160, 160), (80.0, 80.0)
    a, b = disc(shape, centre, r1, spacing), disc(shape, centre, r2, spacing)
    m = frame_metrics(a, b, spacing, {1: "lv"})["lv"]
    assert m["unit"] == "mm"
    assert m["hd"] == pytest.approx(abs(r2 - r1), abs=max(spacing))
    assert m["hd95"] <= m["hd"] + 1e-6
    assert m["asd"] <= m["hd95"] + 1e-6
    assert m["asd"] == pytest.approx(abs(r2 - r1), abs=max(spacing))


def test_monai_surface_distances_equal_the_re_release_definitions():
    rng = np.random.default_rng(1)
    for spacing in [(1.0, 1.0), (0.31, 0.47)]:
        for _ in range(3):
            a = disc((64, 72), rng.uniform(20, 44, 2), rng.uniform(8, 18)).astype(bool)
            b = disc((64, 72), rng.uniform(20, 44, 2), rng.uniform(8, 18)).astype(bool)
            a[rng.integers(0, 64), rng.integers(0, 72)] = True  # an outlier pixel
            b[:3, 30:40] = True  # touching the image border
            got = frame_metrics(a.astype(int), b.astype(int), spacing, {1: "lv"})["lv"]
            want = rr_reference(a, b, spacing)
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k


def test_empty_mask_rules():
    spacing, shape = (0.3, 0.5), (40, 60)
    diag = math.sqrt((39 * 0.3) ** 2 + (59 * 0.5) ** 2)
    assert fov_diagonal(shape, spacing) == pytest.approx(diag)
    full, empty = disc(shape, (20, 30), 8), np.zeros(shape, int)
    both = frame_metrics(empty, empty, spacing)
    assert set(both) == {"lv", "myo", "la"}
    assert all(math.isnan(both["lv"][k]) for k in M.METRIC_NAMES) and both["lv"]["status"] == "both_empty"
    for pred, ref in [(full, empty), (empty, full)]:
        m = frame_metrics(pred, ref, spacing, {1: "lv"})["lv"]
        assert m["status"] == "one_empty"
        assert (m["dice"], m["iou"]) == (0.0, 0.0)
        assert m["hd"] == m["hd95"] == m["asd"] == pytest.approx(diag)
    rows = case_metrics(
        np.stack([full, empty], -1), np.stack([empty, empty], -1), [True, True], spacing, 0, 1, {1: "lv"}
    )
    s = summarize(rows)["structures"]["lv"]["all"]
    assert (s["n_items"], s["n_both_empty"], s["n_one_empty"], s["dice"]["n"]) == (2, 1, 1, 1)
    assert s["dice"]["mean"] == 0.0 and s["hd"]["mean"] == pytest.approx(diag)


def test_unannotated_frames_are_never_scored():
    ref = np.stack([disc((48, 48), (24, 24), 10)] * 6, -1)
    pred = ref.copy()
    pred[..., [1, 2, 4]] = 0  # wrong (empty) only where there is no annotation
    pred[:5, :5, 3] = 1
    frames = np.array([True, False, False, True, False, True])
    frames_ok = frames.copy()
    frames_ok[3] = False
    rows = case_metrics(pred, ref, frames_ok, (0.4, 0.4), 0, 5, {1: "lv"})
    assert [r["frame"] for r in rows] == [0, 5]
    assert all(r["dice"] == 1.0 and r["hd"] == 0.0 and r["asd"] == 0.0 for r in rows)
    assert [r["frame"] for r in case_metrics(pred, ref, frames, (0.4, 0.4), 0, 5, {1: "lv"})] == [0, 3, 5]
    assert case_metrics(pred, ref, np.zeros(6, bool), (0.4, 0.4), 0, 5) == []


def test_ed_es_split_and_summary():
    ref = np.stack([disc((40, 40), (20, 20), r) for r in (12, 10, 8)], -1)
    pred = np.stack([disc((40, 40), (20, 20), r) for r in (11, 10, 8)], -1)
    rows = case_metrics(pred, ref, [True] * 3, (1.0, 1.0), 0, 2, {1: "lv"})
    assert [r["phase"] for r in rows] == ["ED", "other", "ES"]
    s = summarize([{"case_id": "a", **r} for r in rows])
    lv = s["structures"]["lv"]
    assert (lv["all"]["n_items"], lv["ED"]["n_items"], lv["ES"]["n_items"]) == (3, 1, 1)
    assert lv["ED"]["dice"]["mean"] == pytest.approx(rows[0]["dice"])
    assert lv["ES"]["dice"]["mean"] == 1.0
    assert lv["all"]["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    assert lv["all"]["dice"]["median"] == 1.0
    assert s["overall"]["all"]["n_items"] == 3 and s["n_cases"] == 1 and s["unit"] == "mm"
    # EchoNet-style: ES before ED in the clip
    rows = case_metrics(pred, ref, [True, False, True], None, 2, 0, {1: "lv"})
    assert [r["phase"] for r in rows] == ["ES", "ED"]


def test_nan_spacing_gives_pixels():
    a, b = disc((50, 50), (25, 25), 10), disc((50, 50), (25, 27), 10)
    px = frame_metrics(a, b, (float("nan"), float("nan")), {1: "lv"})["lv"]
    ones = frame_metrics(a, b, (1.0, 1.0), {1: "lv"})["lv"]
    assert px["unit"] == "px" and ones["unit"] == "mm"
    assert frame_metrics(a, b, float("nan"), {1: "lv"})["lv"]["unit"] == "px"
    assert frame_metrics(a, b, None, {1: "lv"})["lv"]["unit"] == "px"
    for k in M.METRIC_NAMES:
        assert px[k] == pytest.approx(ones[k])
    rows = case_metrics(np.stack([a], -1), np.stack([b], -1), [True], np.array([np.nan, np.nan]), 0, 0, {1: "lv"})
    assert summarize(rows)["unit"] == "px"
    with pytest.raises(ValueError, match="positive"):
        frame_metrics(a, b, (0.0, 1.0))


def _two_case_rows() -> list[dict]:
    a, b = disc((30, 30), (15, 15), 8), disc((30, 30), (15, 16), 8)
    rows = []
    for case_id, spacing in [("p1", (0.5, 0.5)), ("p2", (0.5, 0.5))]:
        pred, ref = np.stack([a, a * 2, a], -1), np.stack([b, b * 2, b], -1)
        rows += [{"case_id": case_id, **r} for r in case_metrics(pred, ref, [True, False, True], spacing, 0, 2)]
    return rows


def test_reports_have_exact_columns_and_summary(tmp_path: Path):
    rows = _two_case_rows()
    paths = write_metric_reports(rows, tmp_path / "eval")
    assert paths == {
        "csv": tmp_path / "eval" / "metrics_per_case.csv",
        "json": tmp_path / "eval" / "metrics_summary.json",
    }
    with open(paths["csv"], newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == 1 + 2 * 3 * 2  # cases x structures x annotated frames
    first = dict(zip(table[0], table[1]))
    assert (first["case_id"], first["structure"], first["frame"], first["phase"], first["unit"]) == (
        "p1",
        "lv",
        "0",
        "ED",
        "mm",
    )
    la = [dict(zip(table[0], r)) for r in table[1:] if r[1] == "la"]
    assert all(r["dice"] == "nan" for r in la)  # both empty
    summary = json.loads(paths["json"].read_text())
    assert summary["n_cases"] == 2 and summary["unit"] == "mm"
    assert set(summary["structures"]) == {"lv", "myo", "la"}
    assert set(summary["structures"]["lv"]) == {"all", "ED", "ES"}
    assert summary["structures"]["la"]["all"]["n_both_empty"] == 4
    assert summary["structures"]["la"]["all"]["dice"]["mean"] is None  # NaN -> null
    assert set(summary["structures"]["lv"]["ED"]["hd95"]) == {"mean", "std", "median", "n"}
    assert not list((tmp_path / "eval").glob(".*tmp"))


def test_reports_are_all_or_nothing(tmp_path: Path, monkeypatch):
    rows = _two_case_rows()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(M.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_metric_reports(rows, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mixed_units_split_by_unit():
    a = disc((30, 30), (15, 15), 8)
    rows = [{"case_id": "mm", **r} for r in case_metrics(a[..., None], a[..., None], [True], (0.5, 0.5), 0, 0)]
    rows += [{"case_id": "px", **r} for r in case_metrics(a[..., None], a[..., None], [True], None, 0, 0)]
    s = summarize(rows)
    assert s["unit"] == "mixed" and s["structures"]["lv"]["all"]["hd"]["n"] == 0
    assert s["structures"]["lv"]["all"]["dice"]["n"] == 2
    assert s["by_unit"]["mm"]["structures"]["lv"]["all"]["hd"]["n"] == 1


# ---------------------------------------------------------------------------------------------- Ignite pieces

H = W = 24
T = 4


def _sample(case_id: str, shift: int, one_hot: bool) -> tuple[dict, dict]:
    """(output, batch) of one decollated sample: LV disc, pred shifted by ``shift`` px; frames 0 and 3 annotated."""
    ref = np.stack([disc((H, W), (12, 12), 6)] * T, -1)
    pred = np.stack([disc((H, W), (12, 12 + shift), 6)] * T, -1)
    pred[..., 1] = 0  # wrong on an unannotated frame
    pred_t = torch.as_tensor(pred)[None]
    if one_hot:
        pred_t = torch.nn.functional.one_hot(pred_t[0].long(), 4).permute(3, 0, 1, 2).float()
    output = {"pred": pred_t, "label": torch.as_tensor(ref)[None]}
    batch = {
        "label_frames": torch.tensor([True, False, False, True]),
        "spacing": torch.tensor([0.5, 0.5]),
        "ed_index": torch.tensor(0),
        "es_index": torch.tensor(T - 1),
        "case_id": case_id,
    }
    return output, batch


def _expected_dice(shift: int) -> float:
    a, b = disc((H, W), (12, 12 + shift), 6), disc((H, W), (12, 12), 6)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("batched", [False, True])
def test_saver_and_key_metric_on_a_fake_engine(tmp_path: Path, batched: bool):
    samples = [_sample("c0", 0, one_hot=False), _sample("c1", 2, one_hot=True)]
    if batched:  # one batch dict, first dimension = batch (no decollation); one-hot preds for both
        samples = [_sample("c0", 0, one_hot=True), _sample("c1", 2, one_hot=True)]
        outputs = [{k: torch.stack([s[0][k] for s in samples]) for k in ("pred", "label")}]
        batches = [
            {
                **{
                    k: torch.stack([s[1][k] for s in samples])
                    for k in ("label_frames", "spacing", "ed_index", "es_index")
                },
                "case_id": ["c0", "c1"],
            }
        ]
    else:  # MONAI decollate=True: lists of per-sample dicts; one iteration per sample
        outputs, batches = [[s[0]] for s in samples], [[s[1]] for s in samples]

    engine = Engine(lambda e, batch: outputs[e.state.iteration - 1])
    saver = EchoSegmentationMetricSaver(tmp_path / "out", structures={"1": "lv"})
    saver.attach(engine)
    AnnotatedFrameDice(structures={1: "lv"}).attach(engine, "val_mean_dice")
    state = engine.run(batches, max_epochs=1)

    want = np.mean([1.0, _expected_dice(2)])
    assert state.metrics["val_mean_dice"] == pytest.approx(want, abs=1e-6)
    assert saver.summary["structures"]["lv"]["all"]["dice"]["mean"] == pytest.approx(want, abs=1e-6)
    assert saver.summary["structures"]["lv"]["all"]["n_items"] == 4  # 2 cases x frames 0, 3
    assert [r["phase"] for r in saver.rows] == ["ED", "ES", "ED", "ES"]
    assert {r["case_id"] for r in saver.rows} == {"c0", "c1"}
    assert saver.paths["csv"].is_file() and saver.paths["json"].is_file()


def test_key_metric_skips_both_empty_and_needs_data():
    metric = AnnotatedFrameDice()
    with pytest.raises(Exception, match="at least one sample"):
        metric.compute()
    out, batch = _sample("c", 0, one_hot=False)
    metric.update(([out["pred"]], [out["label"]], [batch["label_frames"]]))
    assert metric.compute() == pytest.approx(1.0)  # myo and LA both empty: skipped, not 1 or 0


def test_saver_requires_label_frames(tmp_path: Path):
    out, batch = _sample("c", 0, one_hot=False)
    del batch["label_frames"]
    engine = Engine(lambda e, b: [out])
    EchoSegmentationMetricSaver(tmp_path).attach(engine)
    with pytest.raises(KeyError, match="label_frames"):
        engine.run([[batch]], max_epochs=1)


class _Oracle(torch.nn.Module):
    """Logits [B, 4, H, W, T] of the label encoded in the image (image = label / 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.round(x[:, 0] * 3).long()
        return 10.0 * torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()


def test_with_a_monai_supervised_evaluator(tmp_path: Path):
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator

    items = []
    for i in range(3):
        label = np.zeros((1, H, W, T), np.uint8)
        label[0] = np.stack([disc((H, W), (12, 12), 6 + t % 2) for t in range(T)], -1)
        label[0, 2:5, 2:5] = 3
        image = label.astype(np.float32) / 3
        image[0, ..., 1:3] = 0  # the network is wrong on frames 1, 2, which are not annotated
        items.append(
            {
                "image": image,
                "label": label,
                "label_frames": np.array([True, False, False, True]),
                "spacing": np.array([0.4, 0.6], np.float32),
                "ed_index": 0,
                "es_index": T - 1,
                "case_id": f"patient{i:04d}_4CH",
            }
        )
    saver = EchoSegmentationMetricSaver(tmp_path / "eval")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=2),
        network=_Oracle(),
        key_val_metric={"val_mean_dice": AnnotatedFrameDice()},
        val_handlers=[saver],
    )
    evaluator.run()
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(1.0)
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["unit"] == "mm"
    assert summary["structures"]["lv"]["all"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["structures"]["la"]["ES"]["hd"]["mean"] == pytest.approx(0.0)
    assert summary["structures"]["myo"]["all"]["n_both_empty"] == 6
    with open(tmp_path / "eval" / "metrics_per_case.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * 3 * 2
