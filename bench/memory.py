"""What the memory buys: the same weights stepped with their memory and with the state reset before every frame.

For each checkpoint (``--ckpt``, any number; default the model ``make demo`` trains) and each test set, with the
weights unchanged:

- ``memory``: the cine stepped as inference steps it (``GDKVM.forward``);
- ``reset``: every frame segmented as the paper's first frame (empty memory, empty previous mask, no warm start):
  the network without its memory;
- ``reset, warm start`` (warm-start rows only): every frame warm-started (segmented, then again with its own mask
  as the previous mask): no memory of other frames, but the frame's own mask fed back;
- ``truth prev``: the true mask of every frame given as the next frame's previous mask (``forward``'s
  ``given_masks``): how much a network that uses its previous-mask input could gain;
- ``ED+ES given``: the truth drawn on the first and last frame, carried through the cine
  (``scripts.corrections.segment_with_corrections``), as an annotator's two corrections would be.

Each checkpoint is measured as inference runs it, with the warm start (``GDKVM(warm_start=True)``: a cine's first
frame segmented once and then again with its own mask as the previous mask; in ``reset`` that is every frame), and,
with ``--first-frame both`` (default), again with the paper's first frame (``warm_start=False``, rows named
``<name>, cold first frame``): the same weights, the first frame's handling the only difference.

A checkpoint named in ``--memory-off`` (a network trained with every frame a first frame,
``scripts.training.PerFrameInferer``: the same architecture and budget without memory) is measured in ``reset``
only, with the paper's first frame (it never saw a previous mask in training).

LV Dice is reported by frame index: frame 0; frames 1..L-1 (inside the training clip of L frames, ``--clip-frames``);
L..29 (past it); 30..59 and 60+ (long cines only); on frames where part of the LV border is hidden (``occluded``)
and on the others. Test sets: the bundle's synthetic test patients (``clean``: ``bundle/data/synthetic``, whole half
sequences at their own frame rate), the same patients with a hidden-border stretch (``hard``:
``bundle/data/synthetic_hard``), and ``long``: multi-beat synthetic cines (``--long-cines`` of ``--long-frames``
frames, realistic failure modes, every other one with a hidden-border stretch, exact labels on every frame; cached
in ``results/memory_long_cines.npz``).

Also, on the hard split: the previous-mask sensitivity (per frame after the first, the memory state as inference has
it with the previous mask replaced by zeros, ones, uniform noise or the truth of the frame before: mean and max
change of the LV probability, share of pixels whose label changes, Dice change); on the long cines: Dice against the
distance from one corrected frame (the middle one, carried forwards and backwards) next to plain inference; LV-area
drift: predicted LV area of the last 30 frames over the first 30 (long cines: relative to the truth's ratio; the
real 120-frame apical cine of ``pydicom-data`` when installed, else pydicom's 30-frame cine, first and last 10).

Usage (repository root): ``.venv/bin/python bench/memory.py [--ckpt A.pt B.pt] [--names a b] [--docs]``.
Writes ``results/bench_memory.json`` (``--out``) and with ``--docs`` ``docs/benchmarks_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bundle"))

LV = 1
MODES = ("memory", "reset", "truth prev", "ED+ES given")
DISTANCE_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 40))


def buckets(clip_frames: int) -> list[tuple[str, int, int]]:
    """Frame-index buckets ``(name, first, last)``: frame 0, inside the training clip, past it, long-cine ranges."""
    inside_end = clip_frames - 1
    return [
        ("frame 0", 0, 0),
        (f"1-{inside_end}", 1, inside_end),
        (f"{clip_frames}-29", clip_frames, 29),
        ("30-59", 30, 59),
        ("60+", 60, 10**6),
    ]


# ----------------------------------------------------------------------------------------------------------- data
def prepare(image_HWT: np.ndarray, label_HWT: np.ndarray | None, spacing: Any, size: int, keep_aspect: bool) -> dict:
    """A cine resized as the bundle resizes it: ``video [1, 1, h, w, T]`` float, ``label [h, w, T]`` uint8 or None."""
    from scripts.data import ResizeCined

    d = {"image": torch.as_tensor(image_HWT, dtype=torch.float32)[None], "spacing": np.asarray(spacing, np.float32)}
    keys = ["image"]
    if label_HWT is not None:
        d["label"] = torch.as_tensor((np.asarray(label_HWT) == LV).astype(np.uint8))[None]
        keys.append("label")
    out = ResizeCined(keys=keys, spatial_size=size, mode=["bilinear", "nearest"][: len(keys)], keep_aspect=keep_aspect)(
        d
    )
    label = out["label"][0].numpy().astype(np.uint8) if label_HWT is not None else None
    return {"video": out["image"][None].float(), "label": label}


def camus_split(root: Path, size: int, keep_aspect: bool) -> list[dict]:
    """The test patients of a synthetic CAMUS-layout folder, whole half sequences (ED -> ES) at their frame rate."""
    from scripts.data import LoadCamusd, camus_datalist

    cases = []
    for item in camus_datalist(root, "testing"):
        d = LoadCamusd(labels="lv")(item)
        case = prepare(d["image"][0].numpy(), d["label"][0].numpy(), d["spacing"], size, keep_aspect)
        cases.append({**case, "name": item["case_id"], "occluded": np.asarray(d["occluded"]) == 1})
    return cases


def long_cines(count: int, frames: int, cache: Path, size: int, keep_aspect: bool) -> list[dict]:
    """Multi-beat synthetic cines (every frame labelled), generated once at 256 x 256 and cached as uint8."""
    from scripts.synthetic import generate_sequence

    key = f"{count}x{frames}"
    if cache.is_file() and str(np.load(cache)["key"]) == key:
        stored = np.load(cache)
    else:
        images, labels, occluded, spacing = [], [], [], []
        for i in range(count):
            seq = generate_sequence(
                [9020, i], view=("4CH", "2CH")[i % 2], size=256, n_frames=frames, mode="cine", hard=bool(i % 2)
            )
            images.append(np.round(seq["image"] * 255).astype(np.uint8))
            labels.append(seq["label"])
            occluded.append(seq["occluded"])
            spacing.append(seq["spacing_mm"])
            print(f"  long cine {i + 1}/{count}: {frames} frames at {seq['frame_rate']:.0f}/s", flush=True)
        stored = {"key": key, "image": np.stack(images), "label": np.stack(labels)}
        stored.update(occluded=np.stack(occluded), spacing=np.asarray(spacing))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **stored)
    cases = []
    for i in range(len(stored["image"])):
        case = prepare(stored["image"][i] / 255.0, stored["label"][i], stored["spacing"][i], size, keep_aspect)
        cases.append({**case, "name": f"long{i:02d}", "occluded": stored["occluded"][i].astype(bool)})
    return cases


def real_cine(size: int, keep_aspect: bool) -> dict | None:
    """The longest real apical cine available offline (pydicom-data's 120 frames, else pydicom's 30), unlabelled."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from real_echo import real_cines

    from scripts.data.video_io import load_cine

    name, path = real_cines()[-1]
    image, meta = load_cine(path)
    return {**prepare(image, None, meta["spacing"], size, keep_aspect), "name": name}


# ----------------------------------------------------------------------------------------------------- prediction
@torch.inference_mode()
def predict(net: torch.nn.Module, case: dict, mode: str) -> np.ndarray:
    """LV masks ``[h, w, T]`` bool of one cine in one of :data:`MODES`."""
    from scripts.corrections import segment_with_corrections
    from scripts.training import PerFrameInferer

    video = case["video"]
    if mode == "memory":
        logits = net(video)
    elif mode == "reset":  # every frame the paper's first frame: frames folded into the batch
        warm, net.warm_start = net.warm_start, False
        try:
            logits = PerFrameInferer()(video, net)
        finally:
            net.warm_start = warm
    elif mode == "reset, warm start":
        logits = PerFrameInferer()(video, net)
    elif mode == "truth prev":
        masks = torch.as_tensor(case["label"] == LV, dtype=video.dtype)[None, None]
        logits = net(video, masks, torch.ones(1, video.shape[-1], dtype=torch.bool))
    elif mode == "ED+ES given":
        last = video.shape[-1] - 1
        logits = segment_with_corrections(net, video, torch.as_tensor(case["label"]), [0, last])
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return (logits.argmax(dim=1)[0] == LV).numpy()


def dice_per_frame(pred_HWT: np.ndarray, label_HWT: np.ndarray) -> np.ndarray:
    """LV Dice of every frame, ``[T]`` (1 where both are empty)."""
    truth = label_HWT == LV
    inter = (pred_HWT & truth).sum(axis=(0, 1))
    total = pred_HWT.sum(axis=(0, 1)) + truth.sum(axis=(0, 1))
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def summarise(dice: list[np.ndarray], occluded: list[np.ndarray], clip_frames: int, skip_ends: bool) -> dict:
    """Mean Dice per frame bucket and on occluded/visible frames (``skip_ends``: not the given first/last frame)."""
    out: dict[str, Any] = {}
    index = np.concatenate([np.arange(len(d)) for d in dice])
    last = np.concatenate([np.arange(len(d)) == len(d) - 1 for d in dice])
    values, hidden = np.concatenate(dice), np.concatenate(occluded)
    keep = ~((index == 0) | last) if skip_ends else np.ones_like(last)
    out["all"] = _mean(values[keep])
    for name, lo, hi in buckets(clip_frames):
        out[name] = _mean(values[keep & (index >= lo) & (index <= hi)])
    out["occluded"] = _mean(values[keep & hidden])
    out["visible"] = _mean(values[keep & ~hidden])
    return out


def _mean(values: np.ndarray) -> dict[str, float | int]:
    return {"dice": float(values.mean()) if values.size else float("nan"), "n": int(values.size)}


@torch.inference_mode()
def mask_sensitivity(net: torch.nn.Module, cases: list[dict]) -> dict[str, dict[str, float]]:
    """How much the previous-mask input moves a frame: the memory state as inference has it, the mask replaced."""
    generator = torch.Generator().manual_seed(0)
    stats: dict[str, list[list[float]]] = {k: [] for k in ("zeros", "ones", "noise", "truth of frame before")}
    for case in cases:
        video, label = case["video"], torch.as_tensor(case["label"] == LV, dtype=torch.float32)
        state = None
        for t in range(video.shape[-1]):
            frame = video[..., t]
            logits, next_state = net.step(frame, state)
            if state is not None:
                base_prob = torch.softmax(logits, 1)[:, LV]
                base_lv = logits.argmax(1) == LV
                truth = label[..., t] == 1
                shape = (1, 1) + tuple(frame.shape[-2:])
                replacements = {
                    "zeros": torch.zeros(shape),
                    "ones": torch.ones(shape),
                    "noise": torch.rand(shape, generator=generator),
                    "truth of frame before": label[..., t - 1][None, None],
                }
                for name, mask in replacements.items():
                    alt_logits, _ = net.step(frame, net.give_mask(state, mask))
                    change = (torch.softmax(alt_logits, 1)[:, LV] - base_prob).abs()
                    alt_lv = alt_logits.argmax(1) == LV
                    dice_base = _dice(base_lv, truth)
                    stats[name].append(
                        [
                            float(change.mean()),
                            float(change.max()),
                            float((alt_lv != base_lv).float().mean()),
                            _dice(alt_lv, truth) - dice_base,
                        ]
                    )
            state = next_state
    return {
        name: dict(
            zip(("mean_abs_dprob", "max_abs_dprob", "labels_changed", "dice_change"), np.mean(v, axis=0).tolist())
        )
        for name, v in stats.items()
    }


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    total = float(pred.sum() + truth.sum())
    return 2.0 * float((pred & truth).sum()) / total if total else 1.0


def correction_distance(net: torch.nn.Module, cases: list[dict]) -> list[dict[str, Any]]:
    """Dice against the distance from one corrected frame (the middle one of each long cine), and plain inference."""
    from scripts.corrections import segment_with_corrections

    gained: dict[tuple[int, int], list[tuple[float, float]]] = {b: [] for b in DISTANCE_BINS}
    for case in cases:
        t_total = case["video"].shape[-1]
        middle = t_total // 2
        with torch.inference_mode():
            logits = segment_with_corrections(net, case["video"], torch.as_tensor(case["label"]), [middle])
        corrected = dice_per_frame((logits.argmax(1)[0] == LV).numpy(), case["label"])
        plain = case["dice"]["memory"]
        for t in range(t_total):
            distance = abs(t - middle)
            for lo, hi in DISTANCE_BINS:
                if lo <= distance <= hi:
                    gained[(lo, hi)].append((corrected[t], plain[t]))
    rows = []
    for (lo, hi), pairs in gained.items():
        if pairs:
            arr = np.asarray(pairs)
            rows.append(
                {
                    "distance": f"{lo}" if lo == hi else f"{lo}-{hi}",
                    "corrected": float(arr[:, 0].mean()),
                    "plain": float(arr[:, 1].mean()),
                    "n": len(pairs),
                }
            )
    return rows


def end_frame_area(cases: list[dict], modes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Predicted LV area over the truth's on the first and the last frame (mean over cines), per mode.

    On the CAMUS-layout splits these are ED and ES (or ES and ED): a first frame segmented small is an EF read low.
    """
    out = {}
    for mode in modes:
        ratio = {}
        for name, t in (("first", 0), ("last", -1)):
            ratio[name] = float(
                np.mean([c["pred"][mode][..., t].sum() / max((c["label"][..., t] == LV).sum(), 1) for c in cases])
            )
        out[mode] = ratio
    return out


def area_drift(mask_HWT: np.ndarray, window: int) -> float:
    """Mean LV area of the last ``window`` frames over the first ``window``, minus 1 (0: no drift)."""
    area = mask_HWT.sum(axis=(0, 1)).astype(np.float64)
    first = area[:window].mean()
    return float(area[-window:].mean() / first - 1.0) if first > 0 else float("nan")


# ------------------------------------------------------------------------------------------------------------ run
def bench_checkpoint(
    net: torch.nn.Module, sets: dict[str, list[dict]], real: dict | None, clip_frames: int, memory_off: bool = False
) -> dict:
    """Every measurement of one checkpoint (``memory_off``: a network trained per frame, measured in ``reset`` only)."""
    result: dict[str, Any] = {"sets": {}, "memory_off": memory_off}
    if memory_off:
        for set_name, cases in sets.items():
            dice = [dice_per_frame(predict(net, case, "reset"), case["label"]) for case in cases]
            result["sets"][set_name] = {"reset": summarise(dice, [c["occluded"] for c in cases], clip_frames, False)}
        return result
    for set_name, cases in sets.items():
        per_mode = {}
        for mode in MODES + (("reset, warm start",) if getattr(net, "warm_start", False) else ()):
            dice = []
            for case in cases:
                pred = predict(net, case, mode)
                case.setdefault("dice", {})[mode] = dice_per_frame(pred, case["label"])
                case.setdefault("pred", {})[mode] = pred
                dice.append(case["dice"][mode])
            skip = mode == "ED+ES given"
            per_mode[mode] = summarise(dice, [c["occluded"] for c in cases], clip_frames, skip)
            if skip:  # the same frames without the corrections, for comparison
                per_mode["memory, same frames"] = summarise(
                    [c["dice"]["memory"] for c in cases], [c["occluded"] for c in cases], clip_frames, True
                )
        result["sets"][set_name] = per_mode
        result.setdefault("end_frame_area", {})[set_name] = end_frame_area(cases, ("memory", "reset"))
        if set_name == "long":
            window = 30
            result["long_area_drift"] = {
                mode: float(
                    np.mean([area_drift(c["pred"][mode], window) - area_drift(c["label"] == LV, window) for c in cases])
                )
                for mode in ("memory", "reset")
            }
            result["correction_distance"] = correction_distance(net, cases)
        if set_name == "hard":
            result["mask_sensitivity"] = mask_sensitivity(net, cases)
    if real is not None:
        window = 30 if real["video"].shape[-1] >= 90 else 10
        masks = {mode: predict(net, {**real, "label": None}, mode) for mode in ("memory", "reset")}
        result["real_area_drift"] = {"cine": real["name"], "window": window}
        result["real_area_drift"].update({mode: area_drift(m, window) for mode, m in masks.items()})
    return result


def tables(results: dict[str, dict], clip_frames: int) -> str:
    """Markdown tables of a run."""
    lines = []
    names = ["all"] + [b[0] for b in buckets(clip_frames)] + ["occluded", "visible"]
    for ckpt, res in results.items():
        lines.append(f"\n### {ckpt}\n")
        lines.append("| set | mode | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for set_name, per_mode in res["sets"].items():
            for mode, summary in per_mode.items():
                cells = [f"{summary[n]['dice']:.3f}" if summary[n]["n"] else "" for n in names]
                lines.append(f"| {set_name} | {mode} | " + " | ".join(cells) + " |")
        if "mask_sensitivity" in res:
            lines.append("\nPrevious-mask sensitivity (hard split, frames after the first):\n")
            lines.append(
                "| previous mask replaced by | mean abs dP(LV) | max abs dP(LV) | labels changed | Dice change |"
            )
            lines.append("|---|---|---|---|---|")
            for name, s in res["mask_sensitivity"].items():
                lines.append(
                    f"| {name} | {s['mean_abs_dprob']:.4f} | {s['max_abs_dprob']:.3f} | "
                    f"{100 * s['labels_changed']:.2f} % | {s['dice_change']:+.4f} |"
                )
        if "correction_distance" in res:
            lines.append("\nOne corrected frame (the middle one of each long cine), Dice by distance from it:\n")
            lines.append("| distance (frames) | corrected | plain inference | frames |")
            lines.append("|---|---|---|---|")
            for row in res["correction_distance"]:
                lines.append(f"| {row['distance']} | {row['corrected']:.3f} | {row['plain']:.3f} | {row['n']} |")
        if "end_frame_area" in res:
            lines.append("\nLV area over the truth's on the first / last frame of each cine:\n")
            lines.append("| set | memory first | memory last | reset first | reset last |")
            lines.append("|---|---|---|---|---|")
            for set_name, by_mode in res["end_frame_area"].items():
                cells = [f"{by_mode[m][e]:.3f}" for m in ("memory", "reset") for e in ("first", "last")]
                lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
        drift = []
        if "long_area_drift" in res:
            d = res["long_area_drift"]
            drift.append(
                f"long cines (last 30 / first 30 frames, minus the truth's): memory {100 * d['memory']:+.1f} %, "
                f"reset {100 * d['reset']:+.1f} %"
            )
        if "real_area_drift" in res:
            d = res["real_area_drift"]
            drift.append(
                f"{d['cine']} (last {d['window']} / first {d['window']} frames): memory "
                f"{100 * d['memory']:+.1f} %, reset {100 * d['reset']:+.1f} %"
            )
        if drift:
            lines.append("\nLV-area drift: " + "; ".join(drift) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from scripts.checkpoint import build_network, trained_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, nargs="+", default=[REPO_ROOT / "bundle" / "models" / "model.pt"])
    parser.add_argument("--names", nargs="+", help="a name per checkpoint (default: the file names)")
    parser.add_argument("--memory-off", nargs="*", default=[], help="names of checkpoints trained per frame")
    parser.add_argument("--clip-frames", type=int, default=8, help="frames of the training clips (small_cpu: 8)")
    parser.add_argument("--clean", type=Path, default=REPO_ROOT / "bundle" / "data" / "synthetic")
    parser.add_argument("--hard", type=Path, default=REPO_ROOT / "bundle" / "data" / "synthetic_hard")
    parser.add_argument("--long-cines", type=int, default=10)
    parser.add_argument("--long-frames", type=int, default=72)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "results" / "memory_long_cines.npz")
    parser.add_argument(
        "--first-frame", choices=("warm", "cold", "both"), default="both", help="warm start, the paper's, or both"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_memory.json")
    parser.add_argument("--docs", action="store_true", help="also write docs/benchmarks_memory.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names or [p.stem for p in args.ckpt]
    if len(names) != len(args.ckpt):
        sys.exit("--names needs one name per --ckpt")
    for path in args.ckpt:
        if not path.is_file():
            sys.exit(f"{path}: no trained model; run `make demo` first")
    settings = trained_settings(args.ckpt[0])
    size, keep_aspect = int(settings["spatial_size"]), bool(settings["keep_aspect"])
    start = time.time()
    sets = {}
    for set_name, root in (("clean", args.clean), ("hard", args.hard)):
        if (root / "database_split").is_dir():
            sets[set_name] = camus_split(root, size, keep_aspect)
        else:
            print(f"{root}: not there (make demo writes it); the {set_name} split is left out", flush=True)
    if args.long_cines > 0:
        sets["long"] = long_cines(args.long_cines, args.long_frames, args.cache, size, keep_aspect)
    real = real_cine(size, keep_aspect)
    results = {}
    for name, path in zip(names, args.ckpt):
        if trained_settings(path)["spatial_size"] != size:
            sys.exit(f"{path}: trained at another input size than {args.ckpt[0]}; bench them separately")
        memory_off = name in args.memory_off
        variants = [("warm", name), ("cold", f"{name}, cold first frame")]
        if memory_off or args.first_frame != "both":
            variants = [("cold" if memory_off else args.first_frame, name)]
        for first_frame, row_name in variants:
            net = build_network(path)
            net.warm_start = first_frame == "warm"
            for cases in sets.values():
                for case in cases:
                    case.pop("dice", None), case.pop("pred", None)
            print(f"{row_name}: {path}", flush=True)
            results[row_name] = bench_checkpoint(net, sets, real, args.clip_frames, memory_off=memory_off)
            results[row_name]["warm_start"] = net.warm_start
    text = tables(results, args.clip_frames)
    print(text)
    payload = {
        "checkpoints": {n: str(p) for n, p in zip(names, args.ckpt)},
        "clip_frames": args.clip_frames,
        "sets": {k: len(v) for k, v in sets.items()},
        "results": results,
        "seconds": time.time() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    if args.docs:
        page = REPO_ROOT / "docs" / "benchmarks_memory.md"
        header = (
            "# What the memory buys (generated by `bench/memory.py`)\n\n"
            f"Test sets: {', '.join(f'{k} ({len(v)} cines)' for k, v in sets.items())}; LV Dice per frame, "
            f"training clips of {args.clip_frames} frames. Modes and sets: see the module docstring of "
            "`bench/memory.py` and docs/benchmarks.md.\n"
        )
        page.write_text(header + text + "\n")
    print(f"\n{time.time() - start:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
