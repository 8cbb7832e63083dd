"""``make demo`` never resumes or skips a training that was made on other synthetic data."""

import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import demo  # noqa: E402


def _small_bundle(tmp_path: Path) -> Path:
    """A bundle folder whose configs ask for 2 synthetic patients of 32 x 32 (the real ones ask for 50 of 256)."""
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.json", "small_cpu.json"):
        shutil.copyfile(REPO_ROOT / "bundle" / "configs" / name, bundle / "configs" / name)
    small = json.loads((bundle / "configs" / "small_cpu.json").read_text())
    small.update(synthetic_patients=2, synthetic_size=32)
    (bundle / "configs" / "small_cpu.json").write_text(json.dumps(small))
    return bundle


def test_checkpoints_from_other_data_are_removed_and_current_ones_kept(tmp_path):
    bundle = _small_bundle(tmp_path)
    checkpoints = bundle / "models" / "training"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint_epoch=10.pt").write_bytes(b"trained on older synthetic data (no stamp)")

    stamp = demo.prepare_training(bundle)
    assert json.loads(stamp)["n_patients"] == 2 and json.loads(stamp)["size"] == 32
    assert not checkpoints.exists()  # unstamped checkpoints: removed, the training starts afresh

    checkpoints.mkdir()
    (checkpoints / "checkpoint_epoch=10.pt").write_bytes(b"trained on the current data")
    demo.record_training_data(stamp, bundle)
    assert demo.prepare_training(bundle) == stamp
    assert (checkpoints / "checkpoint_epoch=10.pt").is_file()  # same data: resumed/skipped as before

    stamped = json.loads(stamp)
    (checkpoints / "synthetic_generator.json").write_text(json.dumps({**stamped, "generator_version": "0ld0ld0ld0ld"}))
    demo.prepare_training(bundle)
    assert not checkpoints.exists()  # trained on another generator version: removed
