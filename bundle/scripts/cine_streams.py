"""Many whole cines per step: scheduling an archive's cines into the many-stream stepper.

:class:`CineStreams` keeps up to ``capacity`` cines in the slots of a :class:`scripts.streaming.StreamBatch` (one per
frame size) and steps them together, one frame of each per step: a cine joins a free slot when it is added (its
slot's state is reset), and leaves when its last frame has been stepped, whatever the other cines' lengths; its
logits are then returned whole. This is what keeps a GPU busy on an archive: every step segments up to ``capacity``
frames in one batched call (one CUDA graph replay) instead of one.

Each cine's logits are those of stepping it alone (``StreamBatch`` computes each row independently; on the CPU the
labels are identical to ``GDKVM.forward`` one cine at a time, ``tests/test_cine_streams.py``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from scripts.streaming import StreamBatch, supports_engine

__all__ = ["CineStreams", "FinishedCine"]


@dataclass
class FinishedCine:
    """A cine whose every frame has been stepped: ``logits`` ``[K, H, W, T]`` (float32, on the engine's device)."""

    key: Hashable
    logits: torch.Tensor
    payload: Any = None


@dataclass
class _Active:
    key: Hashable
    video_1HWT: torch.Tensor  # noqa: N815 - the shape suffix
    payload: Any
    size: tuple[int, int]
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.logits) == self.video_1HWT.shape[-1]


class CineStreams:
    """Steps up to ``capacity`` whole cines together (see the module).

    Args:
        net: a GDKVM in eval mode (:func:`scripts.streaming.supports_engine`).
        capacity: cines stepped together (slots of each ``StreamBatch``).
        precision, backend: as :class:`scripts.streaming.StreamingEngine`.

    Use :meth:`add` for each cine (it steps the cines already there until a slot is free, and returns those that
    finished), then :meth:`drain` for the rest. ``pending`` is the number of cines not yet returned.
    """

    def __init__(self, net: Any, capacity: int, precision: str = "float32", backend: str = "auto") -> None:
        if not supports_engine(net):
            raise TypeError(f"CineStreams needs a GDKVM with a fixed-size state, got {type(net).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.net, self.capacity, self.precision, self.backend = net, int(capacity), precision, backend
        self.batches: dict[tuple[int, int], StreamBatch] = {}
        self.active: dict[Hashable, _Active] = {}

    @property
    def pending(self) -> int:
        return len(self.active)

    def add(self, key: Hashable, video_1HWT: torch.Tensor, payload: Any = None) -> list[FinishedCine]:
        """Start the cine ``video_1HWT`` (``[1, H, W, T]`` float in [0, 1]) under ``key``; returns the cines that
        finished while a slot was being freed for it (oldest first)."""
        if video_1HWT.ndim != 4 or video_1HWT.shape[0] != 1 or video_1HWT.shape[-1] < 1:
            raise ValueError(f"CineStreams takes [1, H, W, T] cines with T >= 1, got {tuple(video_1HWT.shape)}")
        if key in self.active:
            raise ValueError(f"cine {key!r} is already being stepped")
        size = (int(video_1HWT.shape[1]), int(video_1HWT.shape[2]))
        batch = self.batches.get(size)
        if batch is None:
            batch = StreamBatch(self.net, self.capacity, *size, precision=self.precision, backend=self.backend)
            self.batches[size] = batch
        finished = []
        while len(batch.slots) >= self.capacity:
            finished += self.step(size)
        device = batch.engine.device
        self.active[key] = _Active(key, video_1HWT.to(device, torch.float32), payload, size)
        batch.join(key)
        return finished

    def step(self, size: tuple[int, int] | None = None) -> list[FinishedCine]:
        """One frame of every active cine of frame size ``size`` (default: the size with the most active cines);
        returns the cines whose last frame this was, in the order they were added."""
        if not self.active:
            return []
        if size is None:
            sizes = [a.size for a in self.active.values()]
            size = max(set(sizes), key=sizes.count)
        batch = self.batches[size]
        stepping = [a for a in self.active.values() if a.size == size]
        logits = batch.step({a.key: a.video_1HWT[..., len(a.logits)] for a in stepping})
        finished = []
        for cine in stepping:
            cine.logits.append(logits[cine.key])
            if cine.done:
                batch.leave(cine.key)
                del self.active[cine.key]
                finished.append(FinishedCine(cine.key, torch.stack(cine.logits, dim=-1), cine.payload))
        return finished

    def drain(self) -> list[FinishedCine]:
        """Step until every cine has finished; returns them."""
        finished = []
        while self.active:
            finished += self.step()
        return finished

    def abandon(self) -> list[Hashable]:
        """Drop every active cine (after a failed step: their states are unknown); returns their keys."""
        keys = list(self.active)
        for cine in self.active.values():
            self.batches[cine.size].leave(cine.key)
        self.active.clear()
        return keys
