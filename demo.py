"""The main job on the embedded default data, as a user would run it: train, evaluate, segment real echo.

1. trains the small GDKVM preset on the synthetic apical echo data set (generated on first use under
   ``bundle/data/synthetic``) with ``python -m monai.bundle run``;
2. evaluates the best model on the held-out synthetic test patients (Dice/IoU/HD/HD95/ASD per case and summary),
   then on the hard split: the same patients imaged so that part of the LV border is hidden for a stretch of frames
   (Dice read on those occluded frames alone, too);
3. segments the real apical four-chamber cine that ships with pydicom and a held-out synthetic cine, writing label
   NIfTIs, per-cine JSON/CSV reports (ED/ES, LV volume curve, EF) and contour overlays;
4. prints where everything is.

Run with ``make demo`` (sets up ``.venv`` first) or ``.venv/bin/python demo.py``. Rerunning resumes or skips
finished steps: training resumes from its last checkpoint, and a finished training is not repeated, unless the
synthetic data changed since (a new generator version rewrites them): then the old checkpoints are removed and the
model is trained afresh.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
BUNDLE = REPO / "bundle"
TRAIN = "['bundle/configs/train.json','bundle/configs/small_cpu.json']"
EVALUATE = "['bundle/configs/train.json','bundle/configs/small_cpu.json','bundle/configs/evaluate.json']"
INFER = "bundle/configs/inference.json"  # the checkpoint says how it was trained: no preset needed
SAMPLES = BUNDLE / "data" / "samples"
EVAL_DIR = BUNDLE / "eval" / "demo"
EVAL_HARD_DIR = BUNDLE / "eval" / "demo_hard"
HARD_DATA = BUNDLE / "data" / "synthetic_hard"
INFER_DIR = BUNDLE / "eval" / "demo_inference"


def run_step(title: str, args: list[str]) -> float:
    """Run one bundle command in the repository root, streaming its output; stops the demo if it fails."""
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=REPO, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: step '{title}' failed with exit code {done.returncode}")
    elapsed = time.time() - start
    print(f"=== {title}: done in {elapsed / 60:.1f} min", flush=True)
    return elapsed


def prepare_samples() -> list[Path]:
    """The cines to segment: pydicom's real apical 4-chamber echo and one held-out synthetic cine."""
    from pydicom import examples

    SAMPLES.mkdir(parents=True, exist_ok=True)
    real = SAMPLES / "pydicom_apical4ch_ybr_color.dcm"
    shutil.copyfile(examples.get_path("ybr_color"), real)
    test_ids = (BUNDLE / "data" / "synthetic" / "database_split" / "subgroup_testing.txt").read_text().split()
    synthetic = BUNDLE / "data" / "synthetic" / "database_nifti" / test_ids[0]
    source = synthetic / f"{test_ids[0]}_4CH_half_sequence.nii.gz"
    copy = SAMPLES / source.name
    shutil.copyfile(source, copy)
    return [real, copy]


def prepare_training(bundle: Path = BUNDLE) -> str:
    """Make sure the synthetic data are current; drop training checkpoints made on other data. Returns the stamp.

    The training folder ``models/training`` records the data stamp it was trained on (:func:`record_training_data`);
    checkpoints without one, or with another, are removed so that the training step starts afresh instead of
    resuming (or skipping) a model trained on other data.
    """
    from monai.bundle import ConfigParser

    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    # The training config's own `dataset_root` item: ensure_synthetic_data with the arguments training will use.
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "small_cpu.json")])
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("imports")
    data_dir = Path(parser.get_parsed_content("dataset_root"))
    stamp = (data_dir / "synthetic_generator.json").read_text()
    checkpoints = bundle / "models" / "training"
    used = checkpoints / "synthetic_generator.json"
    if checkpoints.is_dir() and (not used.is_file() or used.read_text() != stamp):
        print(f"demo: the synthetic data changed since the last training; removing {checkpoints}", flush=True)
        shutil.rmtree(checkpoints)
    return stamp


def record_training_data(stamp: str, bundle: Path = BUNDLE) -> None:
    """Note in ``models/training`` which synthetic data (stamp) the finished training used."""
    checkpoints = bundle / "models" / "training"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / "synthetic_generator.json").write_text(stamp)


def split_line(summary: dict) -> str:
    """One line of an evaluation summary: LV Dice/IoU/HD95/ASD on all frames, and Dice on occluded frames."""
    lv = summary["structures"]["lv"]
    line = (
        f"{summary['n_cases']} cines, LV Dice {lv['all']['dice']['mean']:.3f}, IoU {lv['all']['iou']['mean']:.3f}, "
        f"HD95 {lv['all']['hd95']['mean']:.2f} mm, ASD {lv['all']['asd']['mean']:.2f} mm"
    )
    hidden = lv.get("occluded", {}).get("dice", {})
    if hidden.get("n"):
        line += f"; on the {hidden['n']} frames with part of the border hidden: Dice {hidden['mean']:.3f}"
    return line


def main() -> None:
    timings = {}
    start = time.time()
    print("\n=== 0/3 synthetic data (generated on first use) and training checkpoints", flush=True)
    stamp = prepare_training()
    timings["data"] = time.time() - start
    timings["train"] = run_step("1/3 train the small GDKVM preset on synthetic echo (CPU)", ["--config_file", TRAIN])
    record_training_data(stamp)
    timings["evaluate"] = run_step(
        "2/3 evaluate on the held-out synthetic test patients",
        ["--config_file", EVALUATE, "--output_dir", str(EVAL_DIR)],
    )
    timings["evaluate"] += run_step(
        "2/3 (hard split) the same test patients with part of the LV border hidden for a stretch of frames",
        ["--config_file", EVALUATE, "--output_dir", str(EVAL_HARD_DIR)]
        + ["--dataset_dir", str(HARD_DATA), "--synthetic_hard", "True"],
    )
    samples = prepare_samples()
    timings["inference"] = run_step(
        "3/3 segment the real pydicom apical 4-chamber cine and a held-out synthetic cine",
        ["--config_file", INFER, "--dataset_dir", str(SAMPLES), "--output_dir", str(INFER_DIR), "--overwrite", "True"],
    )

    print("\n================ GDKVM demo results ================")
    print(f"model (plain state dict):   {BUNDLE / 'models' / 'model.pt'}")
    for name, folder in (("held-out synthetic test", EVAL_DIR), ("hard split (same patients)", EVAL_HARD_DIR)):
        print(f"{name + ':':<28}{split_line(json.loads((folder / 'metrics_summary.json').read_text()))}")
        print(f"  metrics (per frame, summary): {folder / 'metrics_per_case.csv'}, {folder / 'metrics_summary.json'}")
    for sample in samples:
        stem = sample.name.split(".")[0]
        report = json.loads((INFER_DIR / f"{stem}_seg.json").read_text())
        ef = report.get("ef_percent")
        ef_text = f"{ef:.0f} %" if isinstance(ef, int | float) else f"n/a ({report.get('reason')})"
        quality = report.get("quality") or {}
        verdict = quality.get("verdict", "n/a") + (
            f" ({'; '.join(quality['reasons'])})" if quality.get("reasons") else ""
        )
        accepted = f"{report.get('beats_accepted')} of {len(report.get('beats') or [])} beat(s) accepted"
        print(f"\n{sample.name}: {report['frames']} frames, ED/ES {report['ed_es_pairs']} ({accepted}), EF {ef_text}")
        print(f"  verdict: {verdict}")
        for suffix in ("_seg.nii.gz", "_seg.json", "_lv_curve.csv", "_lv_curve.png", "_overlay.png", "_overlay.gif"):
            path = INFER_DIR / f"{stem}{suffix}"
            if path.exists():
                print(f"  {path}")
    total = sum(timings.values())
    print(f"\nwall time: {total / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in timings.items())})")
    print("Research use only; not for diagnostic use.")


if __name__ == "__main__":
    main()
