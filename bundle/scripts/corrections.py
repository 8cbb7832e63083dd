"""Corrections that carry through a cine: a frame whose mask a user drew becomes the previous mask from there on.

Given a cine and masks drawn on some frames (``corrected_frames``), :func:`segment_with_corrections`

1. steps the cine forward from its first frame; after each corrected frame, the drawn mask (not the network's
   prediction) is the next frame's previous-mask input (:meth:`scripts.gdkvm.GDKVM.forward`'s ``given_masks``), so a
   correction carries forward until the next one;
2. steps the cine backwards in time (reversed) the same way, so each correction also carries to the frames before it;
3. blends the two passes' probabilities per frame (:func:`forward_weights`): after the last correction the forward
   pass alone, before the first the backward pass alone, between two corrections each pass weighted by how close
   its correction is (the bidirectional propagation of interactive video segmentation tools);
4. returns the corrected frames exactly as drawn.

Without corrections it is plain inference (``forward`` of the whole cine). The bundle's inference
(``inference.json --corrections LABEL_FILE --corrected_frames "[...]"``) and MONAI Label's ``/infer`` with a label
call it; nothing else does this.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform


def object_masks(labels_HWT: torch.Tensor, num_objects: int) -> torch.Tensor:
    """One-hot masks of the objects 1..N of a label map: ``[..., H, W, T]`` int -> ``[..., N, H, W, T]`` float."""
    objects = torch.arange(1, num_objects + 1, device=labels_HWT.device).view(-1, 1, 1, 1)
    return (labels_HWT.unsqueeze(-4) == objects).float()


def check_corrections(
    corrections_HWT: torch.Tensor, corrected_frames: Sequence[int], video_shape: Sequence[int], num_classes: int
) -> list[int]:
    """The corrected frames, sorted and unique; ValueError naming the problem when they do not fit the cine.

    Args:
        corrections_HWT: the drawn labels ``[H, W, T]`` (0 background, 1..K-1 the classes) on the cine's grid.
        corrected_frames: 0-based frame numbers whose drawn mask is the truth.
        video_shape: the cine's ``[B, 1, H, W, T]`` shape.
        num_classes: K, the model's classes including background.
    """
    h, w, t = int(video_shape[2]), int(video_shape[3]), int(video_shape[4])
    if tuple(corrections_HWT.shape) != (h, w, t):
        raise ValueError(f"corrections are {tuple(corrections_HWT.shape)} (H, W, T), the cine is {(h, w, t)}")
    frames = sorted({int(f) for f in corrected_frames})
    outside = [f for f in frames if not 0 <= f < t]
    if outside:
        raise ValueError(f"corrected frames {outside} are outside the cine's {t} frames (0-based)")
    values = torch.unique(corrections_HWT).tolist()
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"correction labels {bad} are not classes of this model (0..{num_classes - 1})")
    return frames


def segment_with_corrections(
    net: torch.nn.Module,
    video_B1HWT: torch.Tensor,
    corrections_HWT: torch.Tensor | None = None,
    corrected_frames: Sequence[int] = (),
) -> torch.Tensor:
    """Logits of a cine of one stream with a user's corrections carried through it (see the module docstring).

    Args:
        net: a :class:`scripts.gdkvm.GDKVM`.
        video_B1HWT: ``[1, 1, H, W, T]`` float in [0, 1] at the network's input size.
        corrections_HWT: drawn labels ``[H, W, T]`` (int; only the corrected frames are read), or None.
        corrected_frames: 0-based frames of ``corrections_HWT`` to use.

    Returns:
        ``[1, K, H, W, T]`` logits (log-probabilities where two passes are blended); on a corrected frame, logits of
        the drawn labels (a large margin, so that argmax gives the drawn mask exactly).
    """
    if video_B1HWT.ndim != 5 or video_B1HWT.shape[0] != 1:
        raise ValueError(f"segment_with_corrections takes one cine [1, 1, H, W, T], got {tuple(video_B1HWT.shape)}")
    if corrections_HWT is None or not len(corrected_frames):
        return net(video_B1HWT)
    num_classes = int(net.out_channels)
    frames = check_corrections(corrections_HWT, corrected_frames, video_B1HWT.shape, num_classes)
    corrections_HWT = corrections_HWT.to(video_B1HWT.device).long()
    masks_1NHWT = object_masks(corrections_HWT, num_classes - 1).unsqueeze(0).to(video_B1HWT.dtype)
    t_total = video_B1HWT.shape[-1]
    flags_1T = torch.zeros(1, t_total, dtype=torch.bool, device=video_B1HWT.device)
    flags_1T[0, frames] = True
    forward = torch.softmax(net(video_B1HWT, masks_1NHWT, flags_1T), dim=1)
    backward = torch.softmax(net(video_B1HWT.flip(-1), masks_1NHWT.flip(-1), flags_1T.flip(-1)), dim=1).flip(-1)
    weight_forward = torch.as_tensor(forward_weights(frames, t_total), dtype=forward.dtype, device=forward.device)
    prob = forward * weight_forward + backward * (1.0 - weight_forward)
    logits = torch.log(prob.clamp_min(1e-7))
    drawn = torch.nn.functional.one_hot(corrections_HWT[..., frames], num_classes).permute(3, 0, 1, 2)
    logits[0, ..., frames] = (drawn.to(logits.dtype) * 2.0 - 1.0) * 20.0
    return logits


def forward_weights(corrected_frames: Sequence[int], num_frames: int) -> np.ndarray:
    """Weight ``[T]`` of the forward pass per frame; the backward pass (the cine reversed) gets ``1 - weight``.

    After the last correction: 1 (forward only); before the first: 0 (backward only); between corrections ``a < t < b``:
    ``(b - t) / (b - a)``, so each side counts the more the closer its correction is.
    """
    weights = np.zeros(num_frames, dtype=np.float64)
    ordered = sorted(corrected_frames)
    for t in range(num_frames):
        before = [c for c in ordered if c <= t]
        after = [c for c in ordered if c >= t]
        if not after:
            weights[t] = 1.0
        elif before and after:
            a, b = before[-1], after[0]
            weights[t] = 1.0 if a == b else (b - t) / (b - a)
    return weights


class LoadCorrectionsd(MapTransform):
    """Load a user's corrected label of a cine for :func:`segment_with_corrections` (inference preprocessing).

    Place it after ``LoadCined`` and before ``ResizeCined`` (give the resize ``keys=["image", "corrections"]`` and
    ``mode=["bilinear", "nearest"]``, so the corrections get the image's geometry). The label file is
    ``d[key]`` (a path; MONAI Label's ``label_in`` arrives as ``d["label"]``, so ``monailabel_infer.json`` sets
    ``key="label"``) or else ``corrections``, laid out as the bundle's own
    ``<stem>_seg.nii.gz`` (:func:`scripts.geometry.labels_from_nifti_like_input`). ``corrected_frames`` (0-based) are
    the frames whose drawn mask is the truth (a request's own ``d["corrected_frames"]``, e.g. MONAI Label's
    ``params``, wins); empty: every frame where the label has an LV. Sets ``d["corrections"]`` (uint8
    ``[1, h, w, T]`` on the segmented region, resized with the image), ``d["corrections_file"]`` (the path, for the
    report), ``d["corrected_frames"]`` (int64 ``[F]``) and ``d["corrections_drawn"]`` (uint8
    ``[h, w, F]``: those frames as drawn, at the segmented region's resolution; :func:`put_drawn_frames` writes them
    into the restored labels); without a label file it removes ``key`` and sets nothing.

    Raises:
        EchoDataError: naming the label file, when it does not lie on the cine, has no LV on any frame (and no
            frames were named), names frames outside the cine, or holds a label that is not a class of the model
            (``num_classes``, e.g. myocardium 2 sent to an LV-only model); naming the cine, when frames are named
            without a label.
    """

    def __init__(
        self,
        corrections: str | None = "",
        corrected_frames: Sequence[int] | None = None,
        image_key: str = "image",
        key: str = "corrections",
        lv_label: int = 1,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(key, allow_missing_keys=True)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.corrections = str(corrections or "")
        self.corrected_frames = [int(f) for f in corrected_frames or []]
        self.image_key, self.key, self.lv_label = image_key, key, int(lv_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from scripts.data.errors import EchoDataError
        from scripts.geometry import labels_from_nifti_like_input

        d = dict(data)
        path = d.pop(self.key, None) or self.corrections
        named = d.pop("corrected_frames", None)
        if not path or not isinstance(path, (str, Path)):
            if named is not None or self.corrected_frames:
                source = getattr(d.get(self.image_key), "meta", {}).get("filename_or_obj", "?")
                raise EchoDataError(source, "corrected_frames given without a corrected label (corrections / label_in)")
            return d
        path = str(path)
        meta = dict(d[self.image_key].meta)
        labels = labels_from_nifti_like_input(path, meta["filename_or_obj"], meta)
        frames = _frame_list(named, path) if named is not None else self.corrected_frames
        frames = frames or np.flatnonzero((labels == self.lv_label).any(axis=(0, 1))).tolist()
        if not frames:
            raise EchoDataError(path, "no frame has an LV: nothing to carry (draw the LV, or name corrected_frames)")
        outside = [f for f in frames if not 0 <= f < labels.shape[-1]]
        if outside:
            raise EchoDataError(path, f"corrected frames {outside} are outside the cine's {labels.shape[-1]} frames")
        frames = sorted(set(frames))
        if self.num_classes is not None:
            classes = np.unique(labels[..., frames]).tolist()
            foreign = [int(c) for c in classes if not 0 <= c < self.num_classes]
            if foreign:
                raise EchoDataError(
                    path,
                    f"labels {foreign} are not classes of this model (0..{self.num_classes - 1})",
                )
        d["corrections"] = torch.as_tensor(labels)[None]
        d["corrections_file"] = path
        d["corrected_frames"] = np.asarray(frames, dtype=np.int64)
        d["corrections_drawn"] = np.ascontiguousarray(labels[..., frames])
        return d


def _frame_list(value: Any, path: str) -> list[int]:
    """A request's ``corrected_frames`` (a list of 0-based ints, or its JSON text) as a list; EchoDataError if not."""
    import json

    from scripts.data.errors import EchoDataError

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise EchoDataError(path, f"corrected_frames {value!r} is not a list of frame numbers") from e
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise EchoDataError(path, f"corrected_frames {value!r} is not a list of 0-based frame numbers")
    return [int(v) for v in values]


def put_drawn_frames(labels_HWT: np.ndarray, data: Mapping[Hashable, Any]) -> np.ndarray:
    """Write a user's corrected frames, as drawn, into labels ``[h, w, T]`` restored onto the segmented region.

    ``data`` is the item :class:`LoadCorrectionsd` filled (``corrected_frames``, ``corrections_drawn``); without
    corrections the labels are returned unchanged.
    """
    if data.get("corrections_drawn") is None:
        return labels_HWT
    frames = [int(f) for f in np.asarray(data["corrected_frames"]).reshape(-1)]
    labels_HWT[..., frames] = np.asarray(data["corrections_drawn"]).astype(labels_HWT.dtype)
    return labels_HWT
