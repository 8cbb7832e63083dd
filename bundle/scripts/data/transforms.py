"""MONAI dictionary transforms for echo cines ``[C, H, W, T]`` (time last), usable from JSON configs as
``scripts.data.transforms.<Name>``.

Every geometric transform works frame by frame in 2D with **one** random draw for the whole clip, so time is never
mixed with space; labels are resampled with nearest neighbour so they stay integer and move with the image.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

__all__ = [
    "RandContrastCined",
    "RandGammaCined",
    "RandRotateCined",
    "RandClipd",
    "RandScaleCined",
    "ResizeCined",
    "SampleClipd",
    "aspect_padding",
    "clip_frame_indices",
]


def clip_frame_indices(
    ed: int, es: int, num_frames: int, n_total: int | None = None, mode: str = "linear"
) -> np.ndarray:
    """Frame numbers of a clip of ``num_frames`` from ED to ES, both ends included.

    ``mode="linear"``: ``rint(linspace(ed, es, num_frames))``; when ES comes before ED in the file the clip runs
    backwards in time (as CAMUS clips with ED > ES are reversed). ``mode="forward"``: always forward in time from ED,
    wrapping past the last frame to reach an earlier ES (needs ``n_total``). Repeats occur when the span has fewer
    than ``num_frames`` frames.

    Returns:
        ``[num_frames]`` int64.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode == "linear" or es >= ed:
        return np.rint(np.linspace(ed, es, num_frames)).astype(np.int64)
    if mode != "forward":
        raise ValueError(f"mode must be 'linear' or 'forward', got {mode!r}")
    if n_total is None:
        raise ValueError("mode='forward' needs n_total")
    return np.rint(np.linspace(ed, es + n_total, num_frames)).astype(np.int64) % n_total


def _rewrap(value: Any, tensor: torch.Tensor, affine: torch.Tensor | None = None) -> Any:
    """Put ``tensor`` back in ``value``'s type, keeping a MetaTensor's metadata (optionally with a new affine)."""
    if isinstance(value, MetaTensor):
        out = MetaTensor(tensor, meta=dict(value.meta), applied_operations=list(value.applied_operations))
        out.affine = value.affine.clone() if affine is None else affine
        return out
    if isinstance(value, np.ndarray):
        return tensor.numpy()
    return tensor


def _plain(value: Any) -> torch.Tensor:
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def _index_time(d: dict[Hashable, Any], keys: Any, idx: np.ndarray, n_total: int) -> None:
    """Index the last axis of ``keys`` and the time axis of ``label_frames``, ``occluded``, ``frame_indices``."""
    t_idx = torch.as_tensor(idx)
    for key in keys:
        d[key] = _rewrap(d[key], _plain(d[key])[..., t_idx])
    if "label_frames" in d:
        d["label_frames"] = np.asarray(d["label_frames"], dtype=bool)[idx]
    if "occluded" in d:
        d["occluded"] = np.asarray(d["occluded"], dtype=np.int8)[idx]
    d["frame_indices"] = np.asarray(d.get("frame_indices", np.arange(n_total)))[idx]


class SampleClipd(MapTransform):
    """Take ``num_frames`` frames from ``d["ed_index"]`` to ``d["es_index"]`` (see ``clip_frame_indices``).

    Indexes the last axis of each key (``[C, H, W, T]`` -> ``[C, H, W, num_frames]``), of ``label_frames``
    (``[T]`` bool; for EchoNet only the first and last sampled frames are annotated) and of ``occluded``, maps
    ``frame_indices`` to the file's frame numbers, and sets ``ed_index = 0``, ``es_index = num_frames - 1``.
    ``mode="whole"`` keeps the cine as it is (every frame at its own frame rate: what inference sees).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_frames: int = 10,
        mode: str = "linear",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("linear", "forward", "whole"):
            raise ValueError(f"mode must be 'linear', 'forward' or 'whole', got {mode!r}")
        self.num_frames, self.mode = num_frames, mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mode == "whole":
            return d
        first = next(iter(self.key_iterator(d)))
        n_total = d[first].shape[-1]
        idx = clip_frame_indices(int(d["ed_index"]), int(d["es_index"]), self.num_frames, n_total, self.mode)
        if idx.min() < 0 or idx.max() >= n_total:
            raise ValueError(f"{d.get('image')}: ED/ES {d['ed_index']}/{d['es_index']} outside {n_total} frames")
        _index_time(d, list(self.key_iterator(d)), idx, n_total)
        d["ed_index"], d["es_index"] = 0, self.num_frames - 1
        return d


class RandClipd(RandomizableTransform, MapTransform):
    """Random clips of a cine ``[C, H, W, T]`` at its own frame step, and time reversal (training augmentations).

    ``consecutive=True``: ``num_frames`` consecutive frames from a random start (a cine shorter than that is played
    forwards and backwards in turn, from a random point, so every clip of a batch has ``num_frames``), so the network
    trains on what inference sees: the real frame-to-frame motion, contraction and filling, not a clip resampled from
    ED to ES. Then, with probability ``reverse_prob``, the clip is played backwards. ED/ES positions follow (their
    first position in the clip, ``-1`` when the clip does not hold them); ``label_frames``, ``occluded`` and
    ``frame_indices`` are indexed the same way. ``consecutive=False, reverse_prob=0`` passes the clip through.
    ``bounce=True`` draws every clip from the cine played forwards and backwards in turn (so a half sequence ED -> ES
    gives clips that contract, turn at ES or ED and fill again, as a whole cycle does, and its first and last frames
    are drawn as often as the others).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_frames: int = 10,
        consecutive: bool = True,
        reverse_prob: float = 0.0,
        bounce: bool = False,
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"reverse_prob must be in [0, 1], got {reverse_prob}")
        self.num_frames, self.consecutive, self.reverse_prob = num_frames, bool(consecutive), float(reverse_prob)
        self.bounce = bool(bounce)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        n_total = d[first].shape[-1]
        idx = np.arange(n_total, dtype=np.int64)
        if self.consecutive and n_total >= self.num_frames and not self.bounce:
            start = int(self.R.randint(0, n_total - self.num_frames + 1))
            idx = idx[start : start + self.num_frames]
        elif self.consecutive:  # shorter than the clip: played on backwards from its end (and so on), as a loop would
            bounce = np.concatenate([idx, idx[-2:0:-1]]) if n_total > 1 else idx
            start = int(self.R.randint(0, len(bounce)))
            idx = np.resize(np.roll(bounce, -start), self.num_frames)
        if self.reverse_prob > 0 and self.R.rand() < self.reverse_prob:
            idx = idx[::-1].copy()
        if len(idx) == n_total and (n_total < 2 or idx[0] == 0):
            return d
        _index_time(d, list(self.key_iterator(d)), idx, n_total)
        for key in ("ed_index", "es_index"):
            if key in d:
                where = np.flatnonzero(idx == int(d[key]))
                d[key] = int(where[0]) if where.size else -1
        return d


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``[C, H, W, T]`` -> ``[T, C, H, W]`` float."""
    return x.permute(3, 0, 1, 2).float()


def _unframes(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[T, C, H, W]`` -> ``[C, H, W, T]`` in ``like``'s dtype (rounded for integers)."""
    y = y.permute(1, 2, 3, 0)
    return y.round().to(like.dtype) if not like.is_floating_point() else y.to(like.dtype).contiguous()


def aspect_padding(
    height: int, width: int, spacing: Sequence[float] | None, target: Sequence[int]
) -> tuple[int, int, int, int]:
    """Zero rows/columns ``(top, bottom, left, right)`` that give an ``height x width`` frame the target's shape.

    The padded frame's physical extent (rows x row spacing by columns x column spacing, in mm) has the aspect ratio
    ``target[0] : target[1]``, so that resizing it to ``target`` keeps the anatomy's proportions (square pixels of
    equal size in both directions). Unknown spacing (``None``, NaN or not positive) counts as square pixels. Padding
    is split evenly, the odd row/column going to the bottom/right. Used by :class:`ResizeCined` and, to undo it, by
    :func:`scripts.inference.restore_labels`.
    """
    row, col = (float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        row, col = 1.0, 1.0
    ratio = float(target[0]) / float(target[1])
    extent_h, extent_w = height * row, width * col
    if extent_h < extent_w * ratio:
        pad = max(0, int(round(extent_w * ratio / row)) - height)
        return pad // 2, pad - pad // 2, 0, 0
    pad = max(0, int(round(extent_h / ratio / col)) - width)
    return 0, 0, pad // 2, pad - pad // 2


class ResizeCined(MapTransform):
    """Resize every frame of ``[C, H, W, T]`` to ``spatial_size`` and update the spacing.

    ``spacing_new = spacing_old * old_size / new_size`` in ``d["spacing"]`` and in the MetaTensor affine (pixel
    centres kept). Modes per key: ``"bilinear"`` (antialiased when shrinking), ``"area"``, ``"bicubic"`` or
    ``"nearest"`` (labels).

    ``keep_aspect=True`` first pads the frames with zeros (see :func:`aspect_padding`, from ``d["spacing"]``) so that
    their physical aspect ratio is the target's: a 4:3 ultrasound frame becomes a square with dark bands instead of
    being squashed, and the resized pixels are square in mm. The padding is stored in ``d["resize_padding"]``
    (top, bottom, left, right, in input pixels); :func:`scripts.inference.restore_labels` undoes it.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        spatial_size: int | Sequence[int] = 256,
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        keep_aspect: bool = False,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
        self.modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.keep_aspect = keep_aspect

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        scale = None
        padding = (0, 0, 0, 0)
        for key, mode in self.key_iterator(d, self.modes):
            x = _plain(d[key])
            if self.keep_aspect:
                padding = aspect_padding(x.shape[1], x.shape[2], d.get("spacing"), self.size)
                top, bottom, left, right = padding
                x = F.pad(x.permute(3, 0, 1, 2), (left, right, top, bottom)).permute(1, 2, 3, 0)
            H, W = x.shape[1:3]
            scale = (H / self.size[0], W / self.size[1])
            kw: dict[str, Any] = {"antialias": True} if mode in ("bilinear", "bicubic") else {}
            if mode in ("bilinear", "bicubic"):
                kw["align_corners"] = False
            y = F.interpolate(_frames(x), size=self.size, mode="nearest-exact" if mode == "nearest" else mode, **kw)
            if x.is_floating_point() and mode == "bicubic":
                y = y.clamp(0, 1)
            affine = None
            if isinstance(d[key], MetaTensor):
                s = torch.eye(4, dtype=torch.float64)
                s[0, 0], s[1, 1] = scale
                s[0, 3] = (scale[0] - 1) / 2 - padding[0]
                s[1, 3] = (scale[1] - 1) / 2 - padding[2]
                affine = d[key].affine.to(torch.float64) @ s
            d[key] = _rewrap(d[key], _unframes(y, x), affine)
        if scale is not None and "spacing" in d:
            d["spacing"] = np.asarray(d["spacing"], dtype=np.float32) * np.asarray(scale, dtype=np.float32)
        if scale is not None and self.keep_aspect:
            d["resize_padding"] = np.asarray(padding, dtype=np.int64)
        return d


class _RandCine(RandomizableTransform, MapTransform):
    """Base: one draw per call, shared by all frames and keys."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool = True) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def draw(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, x: torch.Tensor, value: float, mode: str) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        value = self.draw()
        for key, mode in self.key_iterator(d, self.modes):
            d[key] = _rewrap(d[key], self.apply(_plain(d[key]), value, mode))
        return d


class RandGammaCined(_RandCine):
    """With probability ``prob``: ``x ** gamma``, gamma ~ U(gamma_range), one gamma per clip (image in [0, 1])."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.5,
        gamma: Sequence[float] = (0.7, 1.5),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.gamma, self.modes = tuple(gamma), ["bilinear"] * len(self.keys)

    def draw(self) -> float:
        return float(self.R.uniform(*self.gamma))

    def apply(self, x: torch.Tensor, value: float, mode: str) -> torch.Tensor:
        return x.clamp(0, 1) ** value


class RandContrastCined(_RandCine):
    """With probability ``prob``: ``(x - mean) * c + mean`` clipped to [0, 1], c ~ U(factor), mean over the clip."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.5,
        factor: Sequence[float] = (0.75, 1.25),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.factor, self.modes = tuple(factor), ["bilinear"] * len(self.keys)

    def draw(self) -> float:
        return float(self.R.uniform(*self.factor))

    def apply(self, x: torch.Tensor, value: float, mode: str) -> torch.Tensor:
        mean = x.mean()
        return ((x - mean) * value + mean).clamp(0, 1)


def _warp(x: torch.Tensor, angle_rad: float, zoom: float, mode: str) -> torch.Tensor:
    """Rotate by ``angle_rad`` and zoom by ``zoom`` (>1 enlarges) about the centre, every frame of ``[C, H, W, T]``.

    Built in pixel units so that non-square frames are not sheared; zero padding outside.
    """
    H, W = x.shape[1:3]
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32) / zoom  # output (x, y) pixels -> input pixels
    to_pix = torch.diag(torch.tensor([W / 2.0, H / 2.0]))
    to_norm = torch.diag(torch.tensor([2.0 / W, 2.0 / H]))
    theta = torch.zeros(1, 2, 3)
    theta[0, :, :2] = to_norm @ rot @ to_pix
    frames = _frames(x)
    grid = F.affine_grid(theta.expand(frames.shape[0], 2, 3), list(frames.shape), align_corners=False)
    y = F.grid_sample(frames, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return _unframes(y, x)


class RandRotateCined(_RandCine):
    """With probability ``prob``: rotate every frame by one angle ~ U(-degrees, degrees) (nearest for labels)."""

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 0.5,
        degrees: float = 10.0,
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.degrees = float(degrees)
        self.modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)

    def draw(self) -> float:
        return math.radians(float(self.R.uniform(-self.degrees, self.degrees)))

    def apply(self, x: torch.Tensor, value: float, mode: str) -> torch.Tensor:
        return _warp(x, value, 1.0, mode)


class RandScaleCined(_RandCine):
    """With probability ``prob``: zoom every frame about its centre by one factor ~ U(scale) (nearest for labels).

    The pixel grid is unchanged (content grows or shrinks), so ``d["spacing"]`` is divided by the factor.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 0.5,
        scale: Sequence[float] = (0.9, 1.1),
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.scale = tuple(scale)
        self.modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)

    def draw(self) -> float:
        return float(self.R.uniform(*self.scale))

    def apply(self, x: torch.Tensor, value: float, mode: str) -> torch.Tensor:
        return _warp(x, 0.0, value, mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(None)
        do, self._do_transform = self._do_transform, True
        if not do:
            return dict(data)
        value = self.draw()
        d = dict(data)
        for key, mode in self.key_iterator(d, self.modes):
            d[key] = _rewrap(d[key], self.apply(_plain(d[key]), value, mode))
        if "spacing" in d:
            d["spacing"] = np.asarray(d["spacing"], dtype=np.float32) / np.float32(value)
        return d
