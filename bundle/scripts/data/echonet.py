"""EchoNet-Dynamic (Stanford AIMI) datalists and loading.

Layout::

    <root>/FileList.csv        FileName (no .avi), EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
    <root>/VolumeTracings.csv  FileName (with .avi), X1, Y1, X2, Y2, Frame   (header exactly so)
    <root>/Videos/<FileName>.avi   112 x 112

Masks follow the official code (echonet/dynamic ``echo.py``): drop the first (long-axis) row of a traced frame, walk
X1/Y1 then X2/Y2 reversed, fill with ``skimage.draw.polygon(rint(y), rint(x), (H, W))``. ED is the traced frame with
the larger mask area, ES the smaller. Only those two frames are annotated (``label_frames``).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from skimage.draw import polygon

from .errors import EchoDataError
from .video_io import load_cine, to_meta_tensor

__all__ = ["LoadEchoNetd", "echonet_datalist", "read_volume_tracings", "trace_to_mask"]

TRACINGS_HEADER = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "Split")
SPLITS = ("TRAIN", "VAL", "TEST")


def trace_to_mask(trace_N4: np.ndarray, shape_HW: tuple[int, int]) -> np.ndarray:
    """Fill one traced frame as the official code does.

    Args:
        trace_N4: ``[N, 4]`` rows ``(X1, Y1, X2, Y2)`` in CSV order; row 0 is the long axis and is dropped.
        shape_HW: ``(H, W)`` of the video.

    Returns:
        ``[H, W]`` uint8 mask in {0, 1}.
    """
    t = np.asarray(trace_N4, dtype=np.float64)
    x = np.concatenate((t[1:, 0], np.flip(t[1:, 2])))
    y = np.concatenate((t[1:, 1], np.flip(t[1:, 3])))
    mask = np.zeros(shape_HW, dtype=np.uint8)
    r, c = polygon(np.rint(y).astype(int), np.rint(x).astype(int), shape_HW)
    mask[r, c] = 1
    return mask


def read_volume_tracings(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """Parse ``VolumeTracings.csv`` -> ``{FileName without .avi: {frame: [N, 4] (X1, Y1, X2, Y2)}}`` (CSV order)."""
    path = Path(path)
    if not path.is_file():
        raise EchoDataError(path, "VolumeTracings.csv not found")
    rows: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != TRACINGS_HEADER:
            raise EchoDataError(path, f"header {header} is not {','.join(TRACINGS_HEADER)}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                name, x1, y1, x2, y2, frame = row
                rows[_stem(name)][int(frame)].append((float(x1), float(y1), float(x2), float(y2)))
            except ValueError as e:
                raise EchoDataError(path, f"line {line_no}: bad row {row} ({e})") from e
    return {k: {fr: np.asarray(v, dtype=np.float32) for fr, v in frames.items()} for k, frames in rows.items()}


def _stem(name: str) -> str:
    name = name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


def echonet_datalist(root: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """List the traced EchoNet-Dynamic videos of one split as MONAI data dicts.

    Args:
        root: folder with ``FileList.csv``, ``VolumeTracings.csv`` and ``Videos/``.
        split: ``"train"``, ``"val"``, ``"test"`` (any case) or ``"all"``.

    Returns:
        One dict per video: ``image`` (AVI path), ``case_id`` (FileName), ``patient`` (= FileName), ``view``
        (``"A4C"``), ``ef``/``edv``/``esv`` (FileList values), ``frame_rate`` (FPS), ``n_frames``, ``split``,
        ``ed``/``es`` (frame numbers in the video), ``trace_ed``/``trace_es`` (``[N, 4]`` float32 chords),
        ``dataset`` (``"echonet"``).

    Raises:
        EchoDataError: FileList row whose video is missing, unreadable CSVs. Videos without (two) traced frames
        are skipped with a ``UserWarning`` naming them.
    """
    root = Path(root)
    file_list = root / "FileList.csv"
    if not file_list.is_file():
        raise EchoDataError(file_list, "FileList.csv not found")
    want = split.upper()
    if want != "ALL" and want not in SPLITS:
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    with file_list.open(newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in FILELIST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise EchoDataError(file_list, f"missing columns {missing_cols}")
        rows = [r for r in reader if want == "ALL" or r["Split"].strip().upper() == want]
    tracings = read_volume_tracings(root / "VolumeTracings.csv")
    items, untraced = [], []
    for r in rows:
        name = _stem(r["FileName"])
        video = root / "Videos" / f"{name}.avi"
        if not video.is_file():
            raise EchoDataError(video, f"video of FileList row {name!r} is missing")
        traced = tracings.get(name, {})
        if len(traced) < 2:
            untraced.append(name)
            continue
        H, W = _int(r.get("FrameHeight"), 112), _int(r.get("FrameWidth"), 112)
        areas = {fr: int(trace_to_mask(t, (H, W)).sum()) for fr, t in traced.items()}
        order = sorted(areas, key=lambda fr: (areas[fr], fr))  # ties: earlier frame first
        es, ed = order[0], order[-1]
        items.append(
            {
                "image": str(video),
                "case_id": name,
                "patient": name,
                "view": "A4C",
                "ef": _num(r.get("EF")),
                "edv": _num(r.get("EDV")),
                "esv": _num(r.get("ESV")),
                "frame_rate": _num(r.get("FPS")),
                "n_frames": _int(r.get("NumberOfFrames"), -1),
                "split": r["Split"].strip().upper(),
                "ed": int(ed),
                "es": int(es),
                "trace_ed": traced[ed],
                "trace_es": traced[es],
                "dataset": "echonet",
            }
        )
    if untraced:
        warnings.warn(f"{root}: skipped {len(untraced)} videos without two traced frames: {untraced}", stacklevel=2)
    return items


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _int(v: Any, default: int) -> int:
    x = _num(v)
    return int(x) if math.isfinite(x) else default


class LoadEchoNetd(MapTransform):
    """Load an ``echonet_datalist`` item into the data contract (whole video, nothing reordered).

    Output keys: ``image`` MetaTensor ``[1, H, W, T]`` float32 [0, 1] (affine diag 1, 1, 1: AVI spacing unknown);
    ``label`` MetaTensor ``[1, H, W, T]`` uint8 {0, 1} with the LV traced at ED and ES; ``label_frames`` ``[T]``
    bool (True at ED and ES only); ``spacing`` float32 ``[2]`` = NaN; ``frame_rate`` (AVI header, else FileList FPS);
    ``ed_index``/``es_index`` (frame numbers in the video; ES may come before ED). ``trace_ed``/``trace_es`` are
    removed so that items collate.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label")) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key = (list(keys) + ["label"])[:2]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = d[self.image_key]
        image, meta = load_cine(path)
        H, W, T = image.shape
        label = np.zeros((H, W, T), dtype=np.uint8)
        flags = np.zeros(T, dtype=bool)
        for key, idx in (("ed", d["ed"]), ("es", d["es"])):
            if not 0 <= idx < T:
                raise EchoDataError(path, f"traced {key.upper()} frame {idx} outside the video of {T} frames")
            label[..., idx] = trace_to_mask(d.pop(f"trace_{key}"), (H, W))
            flags[idx] = True
        if not math.isfinite(meta["frame_rate"]) or meta["frame_rate"] <= 0:
            meta["frame_rate"] = _num(d.get("frame_rate"))
        d[self.image_key] = to_meta_tensor(image, meta)
        d[self.label_key] = to_meta_tensor(torch.as_tensor(label), meta)
        d["label_frames"] = flags
        d["spacing"] = np.asarray(meta["spacing"], dtype=np.float32)
        d["frame_rate"] = meta["frame_rate"]
        d["ed_index"], d["es_index"] = int(d["ed"]), int(d["es"])
        d["frame_indices"] = np.arange(T)
        return d
