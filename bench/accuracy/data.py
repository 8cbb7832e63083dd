"""The synthetic splits (generated once, cached as uint8) and the augmented training batches of a seed."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import LV, SPLIT_GENERATOR_ARGS, SPLITS, Budget, SplitConfig


def worker_init() -> None:
    torch.set_num_threads(1)


def clip_flags(flags_T: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-frame flags of the generated sequence (``[n_total]``) at the clip's sampled frames: ``[len(idx)]`` bool."""
    return np.asarray(flags_T, dtype=bool)[np.asarray(idx, dtype=np.int64)]


def generate_clip(job: tuple[int, str, int, int, int, int, bool, int]) -> dict[str, Any]:
    """One clip: ``image``/``label`` ``[H, W, T]`` uint8 (label LV 0/1), ``occluded`` ``[T]`` bool (frames where part
    of the LV border is not visible), ``ef`` (%), ``spacing`` (row, col) mm.

    ``hard``: the generator's guaranteed occluded stretch; when the ED..ES sampling keeps none of its frames, the clip
    is generated again from ``[seed, attempt]`` (``attempts`` in all at most); ``attempt`` says which one was kept.
    """
    from scripts.data.transforms import ResizeCined, clip_frame_indices
    from scripts.synthetic import generate_sequence

    seed, view, n_total, clip_frames, gen_size, size, hard, attempts = job
    for attempt in range(max(1, attempts)):
        seq = generate_sequence(
            seed if attempt == 0 else [seed, attempt],
            view=view,
            size=gen_size,
            n_frames=n_total,
            mode="systole",
            failures=None,
            hard=hard,
        )
        idx = clip_frame_indices(int(seq["ed"]), int(seq["es"]), clip_frames)
        occluded = clip_flags(seq["occluded"], idx)
        if not hard or occluded.any():
            break
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(seq["image"][None][..., idx])),
        "label": torch.from_numpy(np.ascontiguousarray((seq["label"][None][..., idx] == LV).astype(np.uint8))),
        "spacing": np.asarray(seq["spacing_mm"], dtype=np.float32),
    }
    if size != gen_size:
        sample = ResizeCined(spatial_size=size)(sample)
    image = np.rint(sample["image"][0].numpy().clip(0, 1) * 255).astype(np.uint8)
    return {
        "image": image,
        "label": sample["label"][0].numpy().astype(np.uint8),
        "occluded": occluded,
        "n_occluded_total": int(np.count_nonzero(seq["occluded"])),
        "failures": json.dumps(seq.get("failures"), sort_keys=True, default=str),
        "attempt": attempt,
        "ef": float(seq["ef"]),
        "spacing": np.asarray(sample["spacing"], dtype=np.float32),
        "view": view,
        "seed": seed,
        "n_total": n_total,
    }


def generate_data(split: SplitConfig, workers: int) -> dict[str, np.ndarray]:
    """Generate the splits of ``SPLITS`` (a process pool over clips), each as ``SPLIT_GENERATOR_ARGS`` says.

    Returns:
        ``{split}_image``/``{split}_label`` ``[N, H, W, T]`` uint8, ``{split}_occluded`` ``[N, T]`` bool,
        ``{split}_ef`` ``[N]`` (phantom EF, %), ``{split}_spacing`` ``[N, 2]`` mm, ``{split}_view``,
        ``{split}_seed``, ``{split}_n_total``, ``{split}_n_occluded_total`` (occluded frames before sampling),
        ``{split}_attempt`` ``[N]``, ``{split}_failures`` ``[N]`` (JSON of the generator's ``failures``), ``key``,
        ``config`` (JSON).
    """
    jobs, owners = [], []
    for s, name in enumerate(SPLITS):
        rng = np.random.default_rng(split.seed_base[s])
        hard = SPLIT_GENERATOR_ARGS[name]["hard"]
        for i in range(split.count(name)):
            n_total = int(rng.integers(split.min_frames, split.max_frames + 1))
            view = split.views[i % len(split.views)]
            args = (split.seed_base[s] + i, view, n_total, split.clip_frames, split.gen_size, split.size)
            jobs.append((*args, hard, split.hard_attempts))
            owners.append(name)
    start = time.perf_counter()
    with mp.get_context("fork").Pool(max(1, min(workers, len(jobs))), initializer=worker_init) as pool:
        clips = pool.map(generate_clip, jobs, chunksize=1)
    out: dict[str, np.ndarray] = {
        "key": np.asarray(split.key()),
        "config": np.asarray(json.dumps(dataclasses.asdict(split))),
    }
    for name in SPLITS:
        mine = [c for c, o in zip(clips, owners) if o == name]
        out[f"{name}_image"] = np.stack([c["image"] for c in mine])
        out[f"{name}_label"] = np.stack([c["label"] for c in mine])
        out[f"{name}_occluded"] = np.stack([c["occluded"] for c in mine])
        out[f"{name}_ef"] = np.asarray([c["ef"] for c in mine], dtype=np.float64)
        out[f"{name}_spacing"] = np.stack([c["spacing"] for c in mine])
        out[f"{name}_view"] = np.asarray([c["view"] for c in mine])
        for field in ("seed", "n_total", "n_occluded_total", "attempt"):
            out[f"{name}_{field}"] = np.asarray([c[field] for c in mine], dtype=np.int64)
        out[f"{name}_failures"] = np.asarray([c["failures"] for c in mine])
    print(f"generated {len(jobs)} clips in {time.perf_counter() - start:.1f} s with {workers} processes", flush=True)
    return out


def occlusion_stats(data: dict[str, np.ndarray], splits: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per split: clips, clips with >= 1 occluded frame after sampling, occluded frames (sampled and before), and the
    clips that needed a regeneration to keep an occluded frame."""
    out = {}
    for name in splits:
        flags = data[f"{name}_occluded"]
        out[name] = {
            "n_clips": int(flags.shape[0]),
            "n_frames": int(flags.size),
            "n_clips_occluded": int(flags.any(axis=1).sum()),
            "n_frames_occluded": int(flags.sum()),
            "n_frames_occluded_before_sampling": int(data[f"{name}_n_occluded_total"].sum()),
            "n_frames_before_sampling": int(data[f"{name}_n_total"].sum()),
            "n_regenerated": int((data[f"{name}_attempt"] > 0).sum()),
        }
    return out


def load_or_generate(path: Path, split: SplitConfig, workers: int, regenerate: bool) -> dict[str, np.ndarray]:
    """The cached split at ``path`` if it matches ``split`` (and the generator), else generate and save it."""
    key = split.key()
    if path.is_file() and not regenerate:
        with np.load(path) as stored:
            data = {k: stored[k] for k in stored.files}
        if str(data.get("key")) != key:
            raise SystemExit(
                f"{path}: made with other split parameters or another generator (key {data.get('key')}, this run "
                f"needs {key}); pass --regenerate to overwrite it, or another --data path"
            )
        print(f"data: {path} (key {key})", flush=True)
        return data
    data = generate_data(split, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez_compressed(tmp, **data)
        os.replace(tmp, path)
        path.chmod(0o644)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"data: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, key {key})", flush=True)
    return data


# The data split, for the forked pool workers (set before the pool is created, inherited by fork): augmentation
# reads the training clips, evaluation the test labels, occlusion flags, spacings and EFs.
SHARED: dict[str, np.ndarray] = {}


def augmented_batch(job: tuple[int, int, int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``iteration`` of seed ``seed``: clip indices and augmentation draws depend only on (seed, iteration).

    Returns:
        image ``[B, H, W, T]`` uint8 (augmented, re-quantised) and label ``[B, H, W, T]`` uint8.
    """
    from monai.transforms import Compose

    from scripts.data.transforms import RandContrastCined, RandGammaCined, RandRotateCined, RandScaleCined

    seed, iteration, batch, prob = job
    rng = np.random.default_rng([seed, iteration])
    augment = Compose(
        [RandGammaCined(prob=prob), RandScaleCined(prob=prob), RandRotateCined(prob=prob), RandContrastCined(prob=prob)]
    )
    images, labels = [], []
    for index in rng.integers(0, len(SHARED["train_image"]), batch):
        augment.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        sample = {
            "image": torch.from_numpy(SHARED["train_image"][index][None]).float() / 255.0,
            "label": torch.from_numpy(SHARED["train_label"][index][None]),
        }
        sample = augment(sample)
        images.append(np.rint(sample["image"][0].numpy().clip(0, 1) * 255).astype(np.uint8))
        labels.append(sample["label"][0].numpy().astype(np.uint8))
    return np.stack(images), np.stack(labels)


def draw_batches(pool: Any, seed: int, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """All training batches of one seed: image and label ``[iterations, B, H, W, T]`` uint8."""
    jobs = [(seed, it, budget.batch, budget.augment_prob) for it in range(budget.iterations)]
    results = pool.map(augmented_batch, jobs, chunksize=max(1, len(jobs) // 64))
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])
