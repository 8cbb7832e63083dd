"""EchoNet-Dynamic full-video EF against FileList.csv (``configs/echonet_ef.json``, ``scripts.echonet_ef``): the
comparison on seg.json files written here with known EFs (statistics against numpy/scipy), the verdict subsets, bad
input, and the command a user types, end to end with the stand-in network."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_echo import write_echonet
from scipy import stats as scipy_stats

from scripts.data import EchoDataError
from scripts.echonet_ef import OUTPUT_NAMES, EchoNetEF, read_file_list

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "['bundle/configs/inference.json','bundle/configs/echonet_ef.json']"
NAMES = ("0X01", "0X02", "0X03", "0X04", "0X05", "0X06", "0X07", "0X08", "0X09")
# FileName: (FileList EF, Split)
FILE_LIST = {
    "0X01": (62.0, "TEST"),
    "0X02": (35.5, "TEST"),
    "0X03": (58.1, "TEST"),
    "0X04": (71.3, "TEST"),
    "0X05": (44.0, "TEST"),
    "0X06": (55.0, "TEST"),  # seg.json with ef_percent null (no accepted beat)
    "0X07": (50.0, "TEST"),  # failed in inference: listed in failures.csv, no seg.json
    "0X08": (66.0, "TEST"),  # no seg.json, not listed anywhere
    "0X09": (48.0, "TRAIN"),  # another split
}
# FileName: (ef_percent, ef_sd, beats_accepted, beats_total, verdict, reasons) of the seg.json written here
PREDICTIONS = {
    "0X01": (60.5, 1.2, 3, 3, "ok", []),
    "0X02": (40.0, 2.5, 2, 3, "ok", []),
    "0X03": (52.0, None, 1, 2, "review", ["the accepted beats disagree (EF SD 9.1 points)"]),
    "0X04": (69.0, 0.4, 4, 4, "ok", []),
    "0X05": (30.0, None, 1, 3, "reject", ["the network is unsure of the LV (confidence 0.41)", "2 of 3 beats"]),
    "0X06": (None, None, 0, 2, "reject", ["no accepted beat (cut by the cine's end)"]),
    "0X09": (47.0, 1.0, 2, 2, "ok", []),
}


def write_file_list(root: Path, rows: dict[str, tuple[float | str, str]]) -> None:
    """Replace the fixture's FileList.csv by ``rows`` (same columns as the real file)."""
    with (root / "FileList.csv").open("w") as f:
        f.write("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n")
        for name, (ef, split) in rows.items():
            f.write(f"{name},{ef},40.0,100.0,112,112,50,8,{split}\n")


def write_seg_json(
    folder: Path,
    name: str,
    ef: float | None,
    ef_sd: float | None,
    accepted: int,
    total: int,
    verdict: str,
    reasons: Sequence[str],
) -> Path:
    """A ``<name>_seg.json`` with the keys the bundle's inference writes (those the comparison reads, and more)."""
    beats = [
        {"ed": 10 * k, "es": 10 * k + 4, "edv_ml": None, "esv_ml": None, "ef_percent": ef, "accepted": k < accepted,
         "reason": None if k < accepted else "cut by the cine's end"}
        for k in range(total)
    ]  # fmt: skip
    summary = {
        "input": f"/data/EchoNet-Dynamic/Videos/{name}.avi",
        "frames": 8,
        "frame_rate": 50.0,
        "ef_percent": ef,
        "ef_sd": ef_sd,
        "beats_accepted": accepted,
        "beats": beats,
        "period_frames": 10,
        "heart_rate_bpm": 300.0,
        "quality": {"verdict": verdict, "reasons": list(reasons), "checks": {}},
        "reason": None if ef is not None else "no accepted beat: 0->4: cut by the cine's end",
    }
    path = folder / f"{name}_seg.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


@pytest.fixture(scope="module")
def echonet_root(tmp_path_factory) -> Path:
    """The fixture's EchoNet-Dynamic folder (8-frame AVIs) with the FileList of :data:`FILE_LIST`."""
    root = write_echonet(tmp_path_factory.mktemp("EchoNet-Dynamic"), names=NAMES, T=8, untraced=())
    write_file_list(root, FILE_LIST)
    return root


@pytest.fixture()
def predictions(tmp_path) -> Path:
    """seg.json files of :data:`PREDICTIONS` and a failures.csv naming 0X07, as the inference command leaves them."""
    folder = tmp_path / "predictions"
    folder.mkdir()
    for name, values in PREDICTIONS.items():
        write_seg_json(folder, name, *values)
    (folder / "failures.csv").write_text("file,reason\n/data/EchoNet-Dynamic/Videos/0X07.avi,EchoDataError: bad AVI\n")
    return folder


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["FileName"]: row for row in csv.DictReader(handle)}


def expected_agreement(names: Sequence[str]) -> dict[str, float]:
    """r, bias, SD, MAE, n of the predicted EF against FileList's over ``names``, computed directly."""
    pred = np.array([PREDICTIONS[n][0] for n in names], dtype=float)
    ref = np.array([FILE_LIST[n][0] for n in names], dtype=float)
    diff = pred - ref
    return {
        "n": len(names),
        "r": scipy_stats.pearsonr(pred, ref).statistic,
        "bias": diff.mean(),
        "sd": diff.std(ddof=1),
        "mae": np.abs(diff).mean(),
        "rmse": np.sqrt((diff**2).mean()),
        "slope": scipy_stats.linregress(ref, pred).slope,
    }


def test_comparison_statistics_subsets_and_counts(echonet_root, predictions, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    job = EchoNetEF(echonet_root, out, split="test", predictions=predictions)
    job.check_inputs()
    assert job.cines() == []  # with --predictions nothing is segmented
    summary = job.compare()
    assert summary is not None

    subsets = {
        "all": ["0X01", "0X02", "0X03", "0X04", "0X05"],
        "not_rejected": ["0X01", "0X02", "0X03", "0X04"],
        "ok": ["0X01", "0X02", "0X04"],
    }
    for subset, names in subsets.items():
        got, want = summary["agreement"][subset], expected_agreement(names)
        assert got["n"] == want["n"] and got["n_dropped"] == 0, subset
        for key in ("r", "bias", "sd", "mae", "rmse", "slope"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (subset, key)
        assert got["loa_low"] == pytest.approx(want["bias"] - 1.96 * want["sd"])

    assert summary["videos"] == 8  # the TEST rows; 0X09 (TRAIN) is not compared
    assert summary["status"] == {"measured": 5, "no_ef": 1, "failed": 1, "missing": 1}
    assert summary["failures"] == 2 and summary["exit_status"] == 1
    assert summary["verdicts"] == {"ok": 3, "reject": 2, "review": 1}
    accepted = sum(PREDICTIONS[n][2] for n in NAMES[:6])
    total = sum(PREDICTIONS[n][3] for n in NAMES[:6])
    assert summary["beats"] == {
        "accepted": accepted,
        "rejected": total - accepted,
        "total": total,
        "accepted_mean_per_video": pytest.approx(accepted / 6),
    }

    rows = read_csv(out / OUTPUT_NAMES["csv"])
    assert list(rows) == list(NAMES[:8])  # FileList order
    assert float(rows["0X02"]["ef_predicted"]) == 40.0 and float(rows["0X02"]["ef_reference"]) == 35.5
    assert float(rows["0X02"]["ef_difference"]) == pytest.approx(4.5)
    assert (rows["0X02"]["ef_sd"], rows["0X02"]["beats_accepted"], rows["0X02"]["status"]) == ("2.5", "2", "measured")
    assert rows["0X05"]["verdict"] == "reject" and rows["0X05"]["reasons"] == "; ".join(PREDICTIONS["0X05"][5])
    assert rows["0X06"]["status"] == "no_ef" and rows["0X06"]["ef_predicted"] == ""
    assert rows["0X06"]["problem"].startswith("no accepted beat: 0->4: cut by")
    assert rows["0X07"]["status"] == "failed" and rows["0X07"]["problem"] == "EchoDataError: bad AVI"
    assert rows["0X08"]["status"] == "missing" and "0X08_seg.json" in rows["0X08"]["problem"]
    assert rows["0X08"]["verdict"] == "" and rows["0X08"]["ef_predicted"] == ""

    on_disk = json.loads((out / OUTPUT_NAMES["summary"]).read_text())
    assert on_disk["agreement"]["ok"]["n"] == 3 and on_disk["status"] == summary["status"]
    assert set(on_disk["outputs"]) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES.values():
        assert (out / name).stat().st_size > 0, name
    assert not any(out.glob(".*"))  # no temporary file left

    table = capsys.readouterr().out
    assert "split TEST: 8 videos, 5 with an EF, 1 without" in table
    assert "1 failed, 1 without a seg.json" in table
    assert f"outputs: {out / OUTPUT_NAMES['csv']}, {OUTPUT_NAMES['summary']}, " in table
    ok_line = next(line for line in table.splitlines() if line.startswith("ok "))
    want = expected_agreement(subsets["ok"])
    assert ok_line.split() == ["ok", "3", f"{want['r']:.3f}", f"{want['bias']:.2f}", f"{want['sd']:.2f}",
                               f"{want['mae']:.2f}"]  # fmt: skip

    with pytest.raises(SystemExit, match=r"echonet_ef: 2 of 8 videos have no seg.json"):
        job.exit_on_failure()


def test_all_splits_every_video_measured_exits_zero(echonet_root, predictions, tmp_path) -> None:
    for name in ("0X07", "0X08"):
        write_seg_json(predictions, name, 50.0 + len(name), 1.0, 2, 2, "ok", [])
    (predictions / "failures.csv").write_text("file,reason\n")
    job = EchoNetEF(echonet_root, tmp_path / "out", split="all", predictions=predictions)
    summary = job.compare()
    assert summary["videos"] == 9 and summary["failures"] == 0 and summary["status"]["no_ef"] == 1
    assert summary["exit_status"] == 0 and summary["agreement"]["all"]["n"] == 8
    job.exit_on_failure()  # returns: a video without an EF (a reject) is a result, not a failure


def test_no_video_with_an_ef_exits_one(echonet_root, tmp_path) -> None:
    folder = tmp_path / "predictions"
    folder.mkdir()
    for name, (_, split) in FILE_LIST.items():
        if split == "TEST":
            write_seg_json(folder, name, None, None, 0, 1, "reject", ["no accepted beat"])
    job = EchoNetEF(echonet_root, tmp_path / "out", predictions=folder)
    summary = job.compare()
    assert summary["failures"] == 0 and summary["agreement"]["all"]["n"] == 0
    assert math.isnan(summary["agreement"]["all"]["bias"])
    assert not (tmp_path / "out" / OUTPUT_NAMES["bland_altman"]).exists()  # nothing to plot
    assert json.loads((tmp_path / "out" / OUTPUT_NAMES["summary"]).read_text())["agreement"]["all"]["r"] is None
    with pytest.raises(SystemExit, match="no video of 8 has an EF"):
        job.exit_on_failure()


def test_file_list_reading(echonet_root, tmp_path) -> None:
    assert [r.name for r in read_file_list(echonet_root, "TRAIN")] == ["0X09"]
    assert [r.name for r in read_file_list(echonet_root, "test")][-1] == "0X08"
    write_file_list(tmp_path, {"0X01": (60.0, "TEST"), "0X02.avi": ("", "test")})  # no EF, .avi, lower case
    assert [(r.name, math.isnan(r.ef), r.split) for r in read_file_list(tmp_path)] == [
        ("0X01", False, "TEST"),
        ("0X02", True, "TEST"),
    ]
    with pytest.raises(ValueError, match="split must be"):
        read_file_list(echonet_root, "holdout")
    with pytest.raises(EchoDataError, match="no row with Split VAL"):
        read_file_list(echonet_root, "val")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "FileList.csv").write_text("FileName,EF\n0X01,60\n")
    with pytest.raises(EchoDataError, match=r"FileList.csv: missing columns \['ESV', 'EDV', 'Split'\]"):
        read_file_list(bad)
    write_file_list(bad, {"0X01": (60.0, "TEST")})
    (bad / "FileList.csv").write_text((bad / "FileList.csv").read_text() + "0X01.avi,61,40,100,112,112,50,8,TEST\n")
    with pytest.raises(EchoDataError, match=r"FileName listed more than once: \['0X01'\]"):
        read_file_list(bad)


def test_missing_file_list_and_missing_video_name_the_file(echonet_root, tmp_path) -> None:
    empty = tmp_path / "not_echonet"
    empty.mkdir()
    with pytest.raises(EchoDataError) as caught:
        EchoNetEF(empty, tmp_path / "out").check_inputs()
    assert caught.value.path == str(empty / "FileList.csv") and "FileList.csv not found" in str(caught.value)

    root = tmp_path / "root"
    root.mkdir()
    (root / "Videos").mkdir()
    write_file_list(root, {"0X01": (60.0, "TEST"), "0X02": (40.0, "TEST")})
    (root / "Videos" / "0X01.avi").write_bytes((echonet_root / "Videos" / "0X01.avi").read_bytes())
    job = EchoNetEF(root, tmp_path / "out")
    with pytest.raises(EchoDataError, match=r"Videos/0X02.avi: video of FileList row '0X02' is missing"):
        job.cines()
    with pytest.raises(EchoDataError, match="predictions folder not found"):
        EchoNetEF(root, tmp_path / "out", predictions=tmp_path / "nowhere").check_inputs()
    # comparing existing results needs no video
    folder = tmp_path / "predictions"
    folder.mkdir()
    write_seg_json(folder, "0X01", 55.0, None, 1, 1, "ok", [])
    write_seg_json(folder, "0X02", 45.0, None, 1, 1, "ok", [])
    assert EchoNetEF(root, tmp_path / "out", predictions=folder).compare()["status"]["measured"] == 2


def test_datalist_for_inference_names_outputs_by_file_name(echonet_root, tmp_path) -> None:
    items = EchoNetEF(echonet_root, tmp_path / "out").cines()
    assert [item["output_stem"] for item in items] == list(NAMES[:8])
    assert items[0]["image"] == str(echonet_root / "Videos" / "0X01.avi")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"ef_percent": ', r"unreadable seg.json \(JSONDecodeError"),
        ("[1, 2]", "not a seg.json: a JSON list"),
        ('{"ef_percent": 50.0, "frames": 8}', "no ef_sd, beats_accepted, beats, quality: written by an older bundle"),
        (None, r"ef_percent is '50 %', not a number"),
    ],
)
def test_bad_seg_json_is_named_and_leaves_no_output(echonet_root, predictions, tmp_path, content, problem) -> None:
    out = tmp_path / "out"
    EchoNetEF(echonet_root, out, predictions=predictions).compare()  # an earlier, complete comparison
    assert (out / OUTPUT_NAMES["summary"]).is_file()
    bad = predictions / "0X03_seg.json"
    if content is None:
        content = json.dumps({**json.loads(bad.read_text()), "ef_percent": "50 %"})
    bad.write_text(content)
    with pytest.raises(EchoDataError, match=problem) as caught:
        EchoNetEF(echonet_root, out, predictions=predictions).compare()
    assert caught.value.path == str(bad)
    assert "\n" not in str(caught.value)
    assert not any(out.iterdir())  # the earlier outputs are gone, no new one is half-written


# --------------------------------------------------------------------------------------------- the command
def run_command(root: Path, out: Path, *options: str, models: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of inference.json + echonet_ef.json with the stand-in network of
    ``fake_lv_network`` (small, 64 x 64, overlays off)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS,
               "--bundle_root", str(REPO_ROOT / "bundle"), "--dataset_dir", str(root), "--output_dir", str(out),
               "--network_size", "small", "--spatial_size", "64", "--network_def#_target_",
               "fake_lv_network.BeatingLV", *options]  # fmt: skip
    if models is not None:
        command += ["--ckpt_dir", str(models)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_command_segments_the_split_compares_and_reuses_predictions(tmp_path) -> None:
    names = ("0XA1", "0XA2", "0XA3", "0XA4", "0XA5")
    root = write_echonet(tmp_path / "EchoNet-Dynamic", names=names, T=30, untraced=names)
    write_file_list(root, {"0XA1": (62.0, "TEST"), "0XA2": (48.0, "TEST"), "0XA3": (55.0, "TEST"),
                           "0XA4": (40.0, "TEST"), "0XA5": (70.0, "VAL")})  # fmt: skip
    (root / "Videos" / "0XA4.avi").write_text("not a video")  # fails in inference: a row of failures.csv
    models = tmp_path / "models"
    models.mkdir()
    torch.save({}, models / "model.pt")  # the stand-in has no weights
    out = tmp_path / "out"

    result = run_command(root, out, "--write_clinical_report", "False", models=models)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    assert "echonet_ef: 1 of 4 videos have no seg.json" in result.stderr
    assert "inference: 3 segmented, 1 failed" in text
    assert "EchoNet-Dynamic EF, split TEST: 4 videos" in result.stdout
    assert not (out / "0XA5_seg.json").exists()  # VAL is not segmented
    rows = read_csv(out / OUTPUT_NAMES["csv"])
    assert rows["0XA4"]["status"] == "failed" and rows["0XA4"]["problem"]
    summary = json.loads((out / OUTPUT_NAMES["summary"]).read_text())
    assert summary["segmented_here"] and summary["status"]["failed"] == 1 and summary["failures"] == 1

    # the comparison of what inference wrote, recomputed from the seg.json files
    segs = {n: json.loads((out / f"{n}_seg.json").read_text()) for n in ("0XA1", "0XA2", "0XA3")}
    refs = {"0XA1": 62.0, "0XA2": 48.0, "0XA3": 55.0}
    with_ef = [n for n, s in segs.items() if s["ef_percent"] is not None]
    assert with_ef, segs  # the stand-in's LV beats: the bundle measures an EF
    diff = np.array([segs[n]["ef_percent"] - refs[n] for n in with_ef])
    assert summary["agreement"]["all"]["n"] == len(with_ef)
    assert summary["agreement"]["all"]["bias"] == pytest.approx(diff.mean())
    assert summary["agreement"]["all"]["mae"] == pytest.approx(np.abs(diff).mean())
    assert summary["beats"]["accepted"] == sum(s["beats_accepted"] for s in segs.values())
    verdicts = [s["quality"]["verdict"] for s in segs.values()]
    assert summary["verdicts"] == {v: verdicts.count(v) for v in sorted(set(verdicts))}
    for n, s in segs.items():
        assert rows[n]["verdict"] == s["quality"]["verdict"]
        assert rows[n]["ef_predicted"] == ("" if s["ef_percent"] is None else repr(float(s["ef_percent"])))

    # --predictions: no segmentation, no model needed; --split all; the VAL video has no seg.json -> missing
    again = tmp_path / "again"
    result = run_command(root, again, "--predictions", str(out), "--split", "all", models=tmp_path / "no_models")
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    assert "inference: " not in result.stdout + result.stderr  # nothing segmented
    assert not list(again.glob("*_seg.json"))
    rows_again = read_csv(again / OUTPUT_NAMES["csv"])
    assert rows_again["0XA5"]["status"] == "missing" and rows_again["0XA4"]["status"] == "failed"
    assert {n: rows_again[n] for n in rows} == rows
    assert json.loads((again / OUTPUT_NAMES["summary"]).read_text())["agreement"] == summary["agreement"]

    # a corrupt seg.json: one line naming it, exit status 1, the earlier comparison removed, nothing half-written
    (out / "0XA2_seg.json").write_text("{")
    result = run_command(root, again, "--predictions", str(out), models=tmp_path / "no_models")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {out / '0XA2_seg.json'}: unreadable seg.json (JSONDecodeError: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)) (GDKVM_TRACEBACK=1 shows the traceback)"
    ]
    assert "Traceback" not in result.stderr
    assert not any(again.glob("echonet_ef_*")) and not any(again.glob(".*"))

    # no FileList.csv: one line naming it
    result = run_command(tmp_path / "no_dataset", again, models=models)
    assert result.returncode == 1
    assert f"error: {tmp_path / 'no_dataset' / 'FileList.csv'}: FileList.csv not found" in result.stderr
