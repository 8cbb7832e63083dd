"""How far a model trained on synthetic echo carries to real echo: segment the real apical four-chamber cines.

Inputs (no labels exist for them, so this is a qualitative and a cardiac-period check):

- ``pydicom.examples.ybr_color``: 30 frames (1 s) of a real apical 4-chamber cine that ships inside pydicom;
- ``color3d_jpeg_baseline.dcm`` from the ``pydicom-data`` package (120 frames, 4 s), if installed
  (``pip install -r requirements-bench.txt``).

For each cine: segment with the trained model (``bundle/models/model.pt`` and the small CPU preset by default), keep
the largest LV component per frame, and compare the cardiac period implied by the LV area curve (autocorrelation
peak) with the period visible in the images themselves, measured without the model: the autocorrelation of the
frame-to-frame image similarity (``corr(frame_t, frame_{t+lag})`` averaged over t; its first peak after lag 0 is the
period of the picture's motion). Writes overlays and curves into ``docs/images/``, a table into
``docs/benchmarks_real_echo.md`` and JSON into ``results/bench_real_echo.json``.

Usage: ``.venv/bin/python bench/real_echo.py [--ckpt bundle/models/model.pt] [--size small] [--spatial_size 128]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))


def real_cines() -> list[tuple[str, Path]]:
    """The real echo cines available offline: (name, path)."""
    from pydicom import examples

    cines = [("pydicom_ybr_color_30f", Path(examples.get_path("ybr_color")))]
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("color3d_jpeg_baseline.dcm")
        if path:
            cines.append(("pydicom_data_color3d_120f", Path(path)))
    except Exception as error:  # noqa: BLE001 - the optional package is missing or lacks the file
        print(f"pydicom-data's 120-frame cine not available ({error}); install requirements-bench.txt for it")
    return cines


def image_period_frames(image_HWT: np.ndarray, min_lag: int = 5) -> tuple[int | None, np.ndarray]:
    """Period of the picture's motion in frames, from the images alone.

    ``s(lag)`` = mean over t of the Pearson correlation between frame t and frame t + lag (pixels inside the
    sector, i.e. not constantly dark); the first local maximum of ``s`` after ``min_lag`` is the period.
    Returns ``(period or None, s [T // 2])``.
    """
    frames = image_HWT.reshape(-1, image_HWT.shape[-1]).T.astype(np.float64)  # [T, P]
    active = frames.std(axis=0) > 1e-3
    frames = frames[:, active]
    frames = (frames - frames.mean(axis=1, keepdims=True)) / (frames.std(axis=1, keepdims=True) + 1e-9)
    max_lag = frames.shape[0] // 2
    similarity = np.array(
        [
            np.mean(np.sum(frames[: len(frames) - lag] * frames[lag:], axis=1) / frames.shape[1])
            for lag in range(max_lag)
        ]
    )
    for lag in range(max(min_lag, 1), max_lag - 1):
        if similarity[lag] >= similarity[lag - 1] and similarity[lag] > similarity[lag + 1]:
            return lag, similarity
    return None, similarity


def segment(
    net: torch.nn.Module, image_HWT: np.ndarray, spacing: tuple[float, float], spatial_size: int, keep_aspect: bool
) -> np.ndarray:
    """Labels ``[H, W, T]`` of a cine ``[H, W, T]`` in [0, 1], segmented at ``spatial_size`` and put back.

    Same geometry as the bundle's inference: ``ResizeCined`` (padding to the physical aspect with ``keep_aspect``)
    in, ``restore_labels`` out.
    """
    from scripts.data import ResizeCined
    from scripts.inference import restore_labels

    resize = ResizeCined(keys="image", spatial_size=spatial_size, mode="bilinear", keep_aspect=keep_aspect)
    video = resize({"image": torch.as_tensor(image_HWT, dtype=torch.float32)[None], "spacing": np.asarray(spacing)})
    with torch.inference_mode():
        logits = net(video["image"][None])  # [1, K, h, w, T]
    labels = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    return restore_labels(labels, image_HWT.shape[0], image_HWT.shape[1], spacing, keep_aspect)


def main() -> None:
    from scripts import clinical
    from scripts.clinical.evaluation import largest_component
    from scripts.data.video_io import load_cine
    from scripts.gdkvm import GDKVM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=REPO_ROOT / "bundle" / "models" / "model.pt")
    parser.add_argument("--size", default="small")
    parser.add_argument("--spatial_size", type=int, default=128)
    parser.add_argument(
        "--squash", action="store_true", help="resize frames straight to the square input (keep_aspect off)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_real_echo.json")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs")
    args = parser.parse_args()
    if not args.ckpt.is_file():
        sys.exit(f"{args.ckpt}: no trained model; run `make demo` (or the bundle's train.json) first")

    torch.set_num_threads(2)
    net = GDKVM(size=args.size, out_channels=2).eval()
    net.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True))
    images_dir = args.docs / "images"
    rows = []
    start = time.time()
    for name, path in real_cines():
        image, meta = load_cine(path)
        labels = segment(net, image, meta["spacing"], args.spatial_size, keep_aspect=not args.squash)
        for t in range(labels.shape[-1]):
            lv = labels[..., t] == 1
            labels[..., t][lv & ~largest_component(lv)] = 0
        spacing = meta["spacing"]
        area_mm2 = np.array([(labels[..., t] == 1).sum() * spacing[0] * spacing[1] for t in range(labels.shape[-1])])
        frame_rate = float(meta["frame_rate"])
        mask_period = clinical.estimate_period(area_mm2) if area_mm2.std() > 0 else None
        picture_period, similarity = image_period_frames(image)
        report = clinical.cine_report(labels, spacing, frame_rate=frame_rate)
        clinical.save_overlay(
            image, labels, images_dir, f"real_echo_{name}", ed_es_pairs=[(b["ed"], b["es"]) for b in report["beats"]]
        )
        (images_dir / f"real_echo_{name}_overlay.gif").unlink(missing_ok=True)  # keep the docs light: PNG only
        plot_curves(area_mm2, similarity, frame_rate, images_dir / f"real_echo_{name}_curves.png", name)
        row = {
            "cine": name,
            "frames": int(image.shape[-1]),
            "frame_rate": frame_rate,
            "size_hw": [int(image.shape[0]), int(image.shape[1])],
            "spacing_mm": [float(s) for s in spacing],
            "frames_with_lv": int((area_mm2 > 0).sum()),
            "lv_area_mm2_min_max": [float(area_mm2.min()), float(area_mm2.max())],
            "period_from_lv_area_s": mask_period / frame_rate if mask_period else None,
            "period_from_images_s": picture_period / frame_rate if picture_period else None,
            "ed_es_pairs": [[b["ed"], b["es"]] for b in report["beats"]],
            "ef_percent": report["ef_percent"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    elapsed = time.time() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ckpt": str(args.ckpt), "rows": rows, "seconds": elapsed}, indent=2))
    write_docs(rows, args, elapsed)


def plot_curves(area_mm2: np.ndarray, similarity: np.ndarray, frame_rate: float, path: Path, title: str) -> None:
    """LV area over time and the image self-similarity against lag (both in seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].plot(np.arange(len(area_mm2)) / frame_rate, area_mm2 / 100.0, "r.-")
    axes[0].set(xlabel="time (s)", ylabel="LV area (cm²)", title=f"{title}: predicted LV area")
    axes[1].plot(np.arange(len(similarity)) / frame_rate, similarity, "k.-")
    axes[1].set(xlabel="lag (s)", ylabel="mean frame correlation", title="image self-similarity (no model)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(rows: list[dict], args: argparse.Namespace, elapsed: float) -> None:
    lines = [
        "# Real echo: the synthetic-trained model on real apical four-chamber cines (`bench/real_echo.py`)",
        "",
        "Produced by `bench/real_echo.py`; rerun it to regenerate this page, the pictures and",
        "`results/bench_real_echo.json`. No labels exist for these cines: this shows the predicted contours, the LV",
        "area over time, and whether the cardiac period implied by the masks matches the period visible in the",
        "images (measured without the model from the images' self-similarity against lag).",
        "",
        f"Command: `.venv/bin/python bench/real_echo.py --ckpt {args.ckpt.relative_to(REPO_ROOT)} --size {args.size}"
        f" --spatial_size {args.spatial_size}{' --squash' if args.squash else ''}` ({elapsed:.0f} s on CPU).",
        "",
        "Frames go through the bundle's inference geometry: "
        + (
            "resized straight to the square network input (`--squash`, 4:3 frames are squashed)."
            if args.squash
            else "padded to a square physical extent, then resized (`keep_aspect`), and the labels mapped back."
        ),
        "",
        "| cine | frames | fps | frames with an LV | LV area min-max (cm²) | period from LV area (s) "
        "| period from images (s) | EF from masks (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        area = r["lv_area_mm2_min_max"]
        lines.append(
            f"| {r['cine']} | {r['frames']} | {r['frame_rate']:.1f} | {r['frames_with_lv']} "
            f"| {area[0] / 100:.1f}-{area[1] / 100:.1f} | {_fmt(r['period_from_lv_area_s'])} "
            f"| {_fmt(r['period_from_images_s'])} | {_fmt(r['ef_percent'], 0)} |"
        )
    lines.append("")
    for r in rows:
        lines += [
            f"![{r['cine']} overlay](images/real_echo_{r['cine']}_overlay.png)",
            "",
            f"![{r['cine']} curves](images/real_echo_{r['cine']}_curves.png)",
            "",
        ]
    (args.docs / "benchmarks_real_echo.md").write_text("\n".join(lines))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
