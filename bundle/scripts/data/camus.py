"""CAMUS (CREATIS) datalists and loading: the 2023 NIfTI release and the older .mhd/.raw release.

NIfTI release::

    <root>/database_nifti/patientNNNN/patientNNNN_{2CH,4CH}_half_sequence.nii.gz (+ _half_sequence_gt.nii.gz)
    <root>/database_nifti/patientNNNN/Info_{2CH,4CH}.cfg        ED, ES (1-based), NbFrame, EF, FrameRate, ...
    <root>/database_split/subgroup_{training,validation,testing}.txt   official 400/50/50 split

Older release (ITK)::

    <root>/{training,testing}/patientNNNN/patientNNNN_{2CH,4CH}_{sequence,half_sequence}.mhd
    <root>/{training,testing}/patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}_gt.mhd, Info_{2CH,4CH}.cfg (LVef, ...)

Every loaded clip runs ED -> ES: the frames between ED and ES (inclusive) are taken and reversed when ED > ES.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai.transforms import MapTransform

from .errors import EchoDataError, check_cine, check_label
from .video_io import load_volume, to_meta_tensor, to_unit_range

__all__ = ["LoadCamusd", "camus_datalist", "find_camus_release", "read_info_cfg", "read_split"]

VIEWS = ("2CH", "4CH")
SPLITS = ("training", "validation", "testing")
_PATIENT = re.compile(r"^patient\d{4}$")


def read_info_cfg(path: str | Path, n_frames: int | None = None) -> dict[str, Any]:
    """Parse a CAMUS ``Info_<view>.cfg`` (``Key: value`` lines, YAML).

    Returns the raw keys plus ``ed``/``es`` as 0-based ints. Raises :class:`EchoDataError` when the file is missing
    or unreadable, ED or ES is missing or not an integer, or (with ``n_frames`` or NbFrame) outside the sequence.
    """
    try:
        info = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise EchoDataError(path, "Info cfg not found") from e
    except Exception as e:
        raise EchoDataError(path, f"unreadable Info cfg ({type(e).__name__}: {e})") from e
    if not isinstance(info, dict):
        raise EchoDataError(path, "Info cfg is not a list of 'Key: value' lines")
    for key in ("ED", "ES"):
        if key not in info:
            raise EchoDataError(path, f"Info cfg has no {key}")
        if not isinstance(info[key], int) or isinstance(info[key], bool):
            raise EchoDataError(path, f"Info cfg {key} = {info[key]!r} is not an integer frame number")
    n = n_frames if n_frames is not None else info.get("NbFrame")
    for key in ("ED", "ES"):
        if info[key] < 1 or (isinstance(n, int) and info[key] > n):
            raise EchoDataError(path, f"Info cfg {key} = {info[key]} is outside the sequence of {n} frames (1-based)")
    out = dict(info)
    out["ed"], out["es"] = info["ED"] - 1, info["ES"] - 1
    return out


def read_split(root: str | Path, split: str) -> list[str]:
    """Patient ids of ``<root>/database_split/subgroup_<split>.txt`` (one per line)."""
    path = Path(root) / "database_split" / f"subgroup_{split}.txt"
    if not path.is_file():
        raise EchoDataError(path, f"split file not found (split {split!r})")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [i for i in ids if not _PATIENT.match(i)]
    if bad:
        raise EchoDataError(path, f"not patient ids: {bad[:5]}")
    return ids


def find_camus_release(root: str | Path) -> str:
    """``"nifti"`` when ``<root>/database_nifti`` exists, ``"mhd"`` when ``training/`` or ``testing/`` does."""
    root = Path(root)
    if (root / "database_nifti").is_dir():
        return "nifti"
    if (root / "training").is_dir() or (root / "testing").is_dir():
        return "mhd"
    raise EchoDataError(root, "not a CAMUS folder (no database_nifti/, training/ or testing/)")


def _patient_dirs(root: Path, release: str) -> dict[str, Path]:
    parents = [root / "database_nifti"] if release == "nifti" else [root / "training", root / "testing"]
    return {
        p.name: p for parent in parents if parent.is_dir() for p in sorted(parent.iterdir()) if _PATIENT.match(p.name)
    }


def _first(folder: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def camus_datalist(
    root: str | Path,
    split: str | Sequence[str] = "training",
    views: Sequence[str] = VIEWS,
    release: str = "auto",
) -> list[dict[str, Any]]:
    """List CAMUS patient-views as MONAI data dicts.

    Args:
        root: the CAMUS folder (``CAMUS_public`` for the NIfTI release, the folder holding ``training/`` for .mhd).
        split: ``"training"``, ``"validation"``, ``"testing"`` (official lists in ``database_split/``), ``"all"``,
            or a list of patient ids. The .mhd release without ``database_split/`` maps training/testing to its
            ``training/`` and ``testing/`` folders.
        views: any of ``"2CH"``, ``"4CH"``.
        release: ``"nifti"``, ``"mhd"`` or ``"auto"``.

    Returns:
        One dict per patient-view: ``image`` (path), ``label`` (whole-sequence ground truth path or ""),
        ``label_ed``/``label_es`` (single-frame ground truth paths or ""), ``info`` (cfg path), ``patient``,
        ``view``, ``case_id`` (``patientNNNN_2CH``), ``ed``/``es`` (0-based in the file), ``n_frames``, ``ef`` (%),
        ``frame_rate`` (Hz or NaN), ``image_quality``, ``dataset`` (``"camus"``), ``truth`` (the synthetic
        generator's ``{case_id}_phantom.json`` when there is one, else ""; it holds the per-frame occlusion flags).
    """
    root = Path(root)
    if not root.is_dir():
        raise EchoDataError(root, "CAMUS folder not found")
    release = find_camus_release(root) if release == "auto" else release
    if release not in ("nifti", "mhd"):
        raise ValueError(f"release must be 'nifti', 'mhd' or 'auto', got {release!r}")
    bad_views = [v for v in views if v not in VIEWS]
    if bad_views:
        raise ValueError(f"views must be among {VIEWS}, got {bad_views}")
    dirs = _patient_dirs(root, release)
    if isinstance(split, str):
        if split == "all":
            ids = sorted(dirs)
        elif split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, 'all' or a list of patient ids, got {split!r}")
        elif (root / "database_split").is_dir() or release == "nifti":
            ids = read_split(root, split)
        elif split == "validation":
            raise EchoDataError(root, "the .mhd release has no validation folder; add database_split/")
        else:
            ids = sorted(p for p, d in dirs.items() if d.parent.name == split)
    else:
        ids = list(split)
    ext = ".nii.gz" if release == "nifti" else ".mhd"
    items = []
    for pid in ids:
        folder = dirs.get(pid)
        if folder is None:
            raise EchoDataError(root, f"patient {pid} of split {split!r} has no folder")
        for view in views:
            stem = f"{pid}_{view}"
            image = _first(folder, [f"{stem}_half_sequence{ext}", f"{stem}_sequence{ext}"])
            if image is None:
                raise EchoDataError(folder / f"{stem}_half_sequence{ext}", "sequence file not found")
            label = _first(folder, [image.name.replace(ext, f"_gt{ext}")])
            info_path = folder / f"Info_{view}.cfg"
            info = read_info_cfg(info_path)
            ef = info.get("EF", info.get("LVef"))
            items.append(
                {
                    "image": str(image),
                    "label": str(label) if label else "",
                    "label_ed": str(p) if (p := _first(folder, [f"{stem}_ED_gt{ext}"])) else "",
                    "label_es": str(p) if (p := _first(folder, [f"{stem}_ES_gt{ext}"])) else "",
                    "info": str(info_path),
                    "patient": pid,
                    "view": view,
                    "case_id": stem,
                    "ed": info["ed"],
                    "es": info["es"],
                    "n_frames": int(info.get("NbFrame", -1)),
                    "ef": _float(ef),
                    "frame_rate": _float(info.get("FrameRate")),
                    "image_quality": str(info.get("ImageQuality", "")),
                    "dataset": "camus",
                    "truth": str(p) if (p := _first(folder, [f"{stem}_phantom.json"])) else "",
                }
            )
    return items


def occlusion_flags(truth_path: str | Path | None, n_frames: int) -> np.ndarray:
    """``[n_frames]`` int8 occlusion flags of a sequence (1 occluded, 0 visible, -1 unknown) from its truth file.

    The synthetic generator's ``*_phantom.json`` lists ``occluded`` (0/1) per stored frame; data without it (real
    CAMUS, older synthetic data) give -1 everywhere. A truth file whose list does not match the sequence is an error.
    """
    unknown = np.full(n_frames, -1, dtype=np.int8)
    if not truth_path:
        return unknown
    try:
        flags = json.loads(Path(truth_path).read_text()).get("occluded")
    except (OSError, ValueError) as err:
        raise EchoDataError(truth_path, f"unreadable truth file ({err})") from err
    if flags is None:
        return unknown
    if len(flags) != n_frames:
        raise EchoDataError(truth_path, f"'occluded' lists {len(flags)} frames for a sequence of {n_frames}")
    return np.asarray(flags, dtype=np.int8)


def _label_frame(path: str, shape_HW: tuple[int, int]) -> np.ndarray:
    data, _, _ = load_volume(path)
    data = data.reshape(data.shape[:2]) if data.ndim == 3 and data.shape[2] == 1 else data
    return check_label(np.asarray(data), path, image_shape=shape_HW)


class LoadCamusd(MapTransform):
    """Load a ``camus_datalist`` item into the data contract, clip ordered ED -> ES.

    Output keys: ``image`` MetaTensor ``[1, H, W, T]`` float32 [0, 1] (affine diag row mm, col mm, 1);
    ``label`` MetaTensor ``[1, H, W, T]`` uint8 (0 bg, 1 LV, 2 myocardium, 3 LA, or {0, 1} with ``labels="lv"``);
    ``label_frames`` ``[T]`` bool (all True for a half sequence with ground truth, only ED/ES when just the
    ``_ED_gt``/``_ES_gt`` files exist); ``spacing`` float32 ``[2]`` mm; ``frame_rate``; ``ed_index`` = 0;
    ``es_index`` = T - 1; ``frame_indices`` ``[T]`` (frame numbers in the file); ``occluded`` ``[T]`` int8: 1 where
    part of the LV border is not visible, 0 where it is, -1 unknown (from the synthetic generator's truth file,
    ``truth``; real data have no such flag). Other keys pass through. T = |ES - ED| + 1.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), labels: str = "all") -> None:
        super().__init__(keys, allow_missing_keys=True)
        if labels not in ("all", "lv"):
            raise ValueError(f"labels must be 'all' or 'lv', got {labels!r}")
        self.labels = labels
        self.image_key, self.label_key = (list(keys) + ["label"])[:2]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = d[self.image_key]
        raw, (row, col, _), fmt = load_volume(path)
        check_cine(raw, path)
        H, W, n = raw.shape
        info = read_info_cfg(d["info"], n_frames=n) if d.get("info") else {"ed": d["ed"], "es": d["es"]}
        ed, es = int(info["ed"]), int(info["es"])
        if not (0 <= ed < n and 0 <= es < n):
            raise EchoDataError(path, f"ED {ed} / ES {es} (0-based) outside the sequence of {n} frames")
        step = 1 if es >= ed else -1
        frames = np.arange(ed, es + step, step)
        label = np.zeros((H, W, n), dtype=np.uint8)
        annotated = np.zeros(n, dtype=bool)
        if d.get("label"):
            lab, _, _ = load_volume(d["label"])
            label = check_label(np.asarray(lab), d["label"], image_shape=raw.shape)
            annotated[:] = True
        else:
            for key, idx in (("label_ed", ed), ("label_es", es)):
                if d.get(key):
                    label[..., idx] = _label_frame(d[key], (H, W))
                    annotated[idx] = True
        if self.labels == "lv":
            label = (label == 1).astype(np.uint8)
        meta = {
            "filename_or_obj": str(path),
            "format": fmt,
            "spacing": (row, col),
            "spacing_known": True,
            "frame_rate": _float(d.get("frame_rate")),
            "original_shape": raw.shape,
            "crop": None,
        }
        d[self.image_key] = to_meta_tensor(to_unit_range(raw[..., frames]), meta)
        d[self.label_key] = to_meta_tensor(
            torch.as_tensor(label[..., frames]), {**meta, "filename_or_obj": str(d.get("label") or "")}
        )
        d["label_frames"] = annotated[frames]
        d["spacing"] = np.asarray((row, col), dtype=np.float32)
        d["frame_rate"] = meta["frame_rate"]
        d["ed_index"], d["es_index"] = 0, len(frames) - 1
        d["frame_indices"] = frames
        d["occluded"] = occlusion_flags(d.get("truth"), n)[frames]
        return d
