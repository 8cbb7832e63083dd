"""Real-time streaming of GDKVM's per-frame step: a captured-graph engine, many streams in one step, an Inferer.

- :class:`StreamingEngine` steps ``B`` frames ``[B, 1, H, W]`` at a time with the recurrent state (memory
  ``[B, N, Cv, Ck]``, previous mask ``[B, N, Hp, Wp]``) in preallocated buffers at fixed addresses. On CUDA it
  captures one step in a ``torch.cuda.CUDAGraph`` (warm-up on a side stream, as PyTorch documents) and each frame
  is ``copy_`` into the static input buffer, ``replay()``, and a clone of the output: one launch per frame instead of
  hundreds. ``backend="compile"`` runs the step through ``torch.compile(mode="reduce-overhead")`` instead (Inductor
  kernels, replayed as CUDA graphs on a GPU; compiled C++ kernels on the CPU). Where neither is possible (capture on
  the CPU, a failed capture or compilation) it runs the same step eagerly and says so in one log line.
  ``precision`` (``float32``, ``bfloat16``, ``float16``) runs the step under ``torch.autocast``; the state buffers
  stay float32 and the logits are returned as float32.
- :class:`StreamBatch` keeps ``capacity`` independent live streams in one engine: a stream joins (its slot's state
  is reset) or leaves at any frame, and each call steps all slots at once; a stream's output does not depend on the
  other slots (each batch row is computed independently: BatchNorm in eval mode, per-sample attention).
- :class:`StreamingInferer` (a MONAI ``Inferer``) runs a clip ``[B, 1, H, W, T]`` frame by frame through an engine;
  ``inference.json`` uses it with ``stream_engine`` (default: on when CUDA is available), ``stream_backend`` and
  ``stream_precision``. Disabled, it is ``network(inputs)``, exactly as MONAI's ``SimpleInferer``.

The engine's float32 step is ``GDKVM._step_padded`` itself, so on the eager path its logits equal ``GDKVM.forward``'s
exactly (``tests/test_streaming.py``); the captured graph replays the same kernels (``bench/gpu_streaming.sh``
measures the agreement on a GPU). The network's warm start (``GDKVM(warm_start=True)``: a stream's first frame
segmented once, its mask then that frame's previous mask) is done by the engine, outside the captured or compiled
step, for the rows it has reset since their last step: the same calls as ``forward`` makes, so the same logits.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from scripts.gdkvm import GDKVM, GDKVMState
from scripts.gdkvm.network import _padded_size

__all__ = ["BACKENDS", "PRECISIONS", "StreamBatch", "StreamingEngine", "StreamingInferer"]

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# auto: a CUDA graph on a CUDA device, eager elsewhere; cuda_graph: capture one step; compile: torch.compile's
# reduce-overhead mode (CUDA graphs of Inductor kernels on a GPU); eager: the plain step
BACKENDS = ("auto", "cuda_graph", "compile", "eager")
# Dynamo compiles the step once per distinct (batch, frame size, precision) in a process and, past its
# recompile_limit (8 by default), silently runs the step uncompiled; engines raise the limit to this while compiling
# and fall back to eager, saying so, when it is reached
COMPILED_ENGINES_LIMIT = 64


def _precision_dtype(precision: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` (or ``torch.bfloat16``) -> ``torch.bfloat16``; ValueError naming the choices otherwise."""
    if isinstance(precision, torch.dtype) and precision in PRECISIONS.values():
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return PRECISIONS[precision]
    raise ValueError(f"stream precision must be one of {sorted(PRECISIONS)}, got {precision!r}")


def supports_engine(net: torch.nn.Module) -> bool:
    """True for a network with GDKVM's fixed-size state (not the softmax-memory model, not a TorchScript module)."""
    if not isinstance(net, GDKVM):
        return False
    try:
        return isinstance(net.init_state(1, 16, 16), GDKVMState)
    except Exception:  # noqa: BLE001 - any network that cannot make a state is not steppable here
        return False


class StreamingEngine:
    """Steps ``batch_size`` streams of ``height x width`` frames with preallocated state and, on CUDA, a CUDA graph.

    Args:
        net: a GDKVM in eval mode; its parameters are read live (a captured graph reads them at their addresses, so
            ``load_state_dict`` into the same network is seen; do not move the network to another device after).
        batch_size: streams stepped together (rows of every frame).
        height, width: frame size; frames are zero-padded inside to multiples of 16, as ``GDKVM.step`` does.
        precision: ``float32``, ``bfloat16`` or ``float16`` (``torch.autocast``; state and logits stay float32).
        backend: one of :data:`BACKENDS`. ``auto`` captures a CUDA graph when the network is on a CUDA device and runs
            eagerly elsewhere; ``cuda_graph`` captures one (eager, with the reason logged, where it cannot);
            ``compile`` compiles the step with ``torch.compile(mode="reduce-overhead", dynamic=False)`` (eager, with
            the reason logged, where compilation fails); ``eager`` never captures nor compiles.
        warmup: steps before capture (on a side stream: cuDNN/cuBLAS set-up) or while compiling (Inductor records its
            CUDA graph on the third call); the state is reset after them.

    Attributes:
        backend: what was asked; mode: what runs: ``"cuda_graph"``, ``"compile"`` or ``"eager"``.
        memory: state buffer ``[B, N, Cv, Ck]`` (float32); prev_prob: state buffer ``[B, N, Hp, Wp]`` (float32).

    Example::

        engine = StreamingEngine(net.cuda().eval(), batch_size=1, height=256, width=256, precision="bfloat16")
        for frame_B1HW in frames:              # [1, 1, 256, 256] float in [0, 1]
            logits_BKHW = engine.step(frame_B1HW)
        engine.reset()                          # next cine
    """

    def __init__(
        self,
        net: GDKVM,
        batch_size: int,
        height: int,
        width: int,
        precision: str | torch.dtype = "float32",
        backend: str = "auto",
        warmup: int = 3,
    ) -> None:
        if not supports_engine(net):
            raise TypeError(f"StreamingEngine needs a GDKVM with a fixed-size state, got {type(net).__name__}")
        if min(batch_size, height, width) < 1:
            raise ValueError(f"engine size must be positive, got batch {batch_size}, {height} x {width}")
        self.net = net
        self.batch_size, self.height, self.width = int(batch_size), int(height), int(width)
        self.dtype = _precision_dtype(precision)
        self.precision = str(self.dtype).replace("torch.", "")
        parameter = next(net.parameters())
        self.device = parameter.device
        hp, wp = _padded_size(self.height, self.width)
        # rows whose stream starts at the next step (reset since their last step): warm-started by the engine
        self.fresh_rows: set[int] = set(range(self.batch_size))
        with self._context():
            state = net.init_state(self.batch_size, self.height, self.width, self.device, torch.float32)
            self.memory: torch.Tensor = state.memory.clone()
            self.prev_prob: torch.Tensor = state.prev_prob.clone()
            self.frame = torch.zeros(self.batch_size, 1, hp, wp, device=self.device, dtype=torch.float32)
        if backend not in BACKENDS:
            raise ValueError(f"stream backend must be one of {list(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self._compiled: Any = None
        self.mode = "eager"
        self.fallback_reason = ""
        if backend == "eager":
            self.fallback_reason = "asked for eager"
        elif backend == "compile":
            self._compile(max(3, int(warmup)))
        elif self.device.type != "cuda":
            self.fallback_reason = f"CUDA graphs need a CUDA device, the network is on {self.device}"
        else:
            try:
                self._capture(max(1, int(warmup)))
                self.mode = "cuda_graph"
            except Exception as e:  # noqa: BLE001 - an operation that cannot be captured: run eagerly, say why
                self.graph, self._graph_logits = None, None
                self.fallback_reason = f"CUDA graph capture failed ({type(e).__name__}: {' '.join(str(e).split())})"
                self.reset()
        what = {
            "eager": f"eager per-frame step ({self.fallback_reason})",
            "cuda_graph": f"CUDA graph per frame on {self.device}",
            "compile": f"torch.compile(mode='reduce-overhead') step on {self.device}",
        }[self.mode]
        logger.info(
            "streaming engine: %s; %d x %dx%d, %s", what, self.batch_size, self.height, self.width, self.precision
        )

    # ------------------------------------------------------------------------------------------------ public
    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Empty state (zero memory, empty previous mask) for all streams, or only for ``rows`` (batch indices)."""
        self.fresh_rows.update(range(self.batch_size) if rows is None else (int(row) for row in rows))
        with self._context():
            if rows is None:
                self.memory.zero_()
                self.prev_prob.zero_()
                return
            index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
            self.memory.index_fill_(0, index, 0.0)
            self.prev_prob.index_fill_(0, index, 0.0)

    def step(self, frame_B1HW: torch.Tensor) -> torch.Tensor:
        """Segment the next frame of every stream.

        Args:
            frame_B1HW: ``[B, 1, H, W]`` float in [0, 1] (any device; copied into the static input buffer).

        Returns:
            logits ``[B, K, H, W]``, float32, a new tensor on the engine's device (it survives the next step). On the
            eager path it is made in ``torch.inference_mode`` (read it freely; clone it to change it in place).
        """
        expected = (self.batch_size, 1, self.height, self.width)
        if tuple(frame_B1HW.shape) != expected:
            raise ValueError(f"StreamingEngine: frame of shape {tuple(frame_B1HW.shape)}, this engine takes {expected}")
        if self.graph is not None:
            with self._context():
                self.frame[..., : self.height, : self.width].copy_(frame_B1HW)
                self._warm_start()
                self.graph.replay()
                assert self._graph_logits is not None
                return self._graph_logits.clone()
        if self._compiled is not None:
            with self._context():
                self.frame[..., : self.height, : self.width].copy_(frame_B1HW)
                self._warm_start()
                return self._compiled_step()
        # eager: in inference mode (less per-operation bookkeeping than no_grad: ~2 % of a small CPU step); the
        # buffers stay normal tensors, and the logits are a new (inference) tensor that needs no clone
        with torch.inference_mode():
            self.frame[..., : self.height, : self.width].copy_(frame_B1HW)
            self._warm_start()
            return self._step_buffers()

    def run(self, video_B1HWT: torch.Tensor) -> torch.Tensor:
        """Segment whole clips ``[B, 1, H, W, T]`` from an empty state; returns logits ``[B, K, H, W, T]`` (float32)."""
        if video_B1HWT.ndim != 5:
            raise ValueError(f"StreamingEngine.run expects [B, 1, H, W, T], got {tuple(video_B1HWT.shape)}")
        self.reset()
        return torch.stack([self.step(video_B1HWT[..., t]) for t in range(video_B1HWT.shape[-1])], dim=-1)

    def state(self) -> GDKVMState:
        """A copy of the current state (``memory [B, N, Cv, Ck]``, ``prev_prob [B, N, Hp, Wp]``, float32)."""
        return GDKVMState(self.memory.clone(), self.prev_prob.clone())

    # ------------------------------------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        """No autograd, and normal (not inference-mode) tensors even when called inside ``torch.inference_mode``."""
        with torch.inference_mode(False), torch.no_grad():
            yield

    def _step_buffers(self) -> torch.Tensor:
        """One step from the buffers into the buffers; returns the logits ``[B, K, H, W]`` (float32)."""
        logits, memory, prob = self._step(self.frame, self.memory, self.prev_prob)
        self.memory.copy_(memory)
        self.prev_prob.copy_(prob)
        return logits

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The step's precision: ``torch.autocast`` to it, or off (an enclosing autocast, MONAI's amp, switched off)."""
        if self.dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)
        if torch.is_autocast_enabled(self.device.type):
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _step(
        self, frame_B1HW: torch.Tensor, memory_BNVK: torch.Tensor, prev_prob_BNHW: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step as a function of its inputs (what ``torch.compile`` compiles): padded frame and state ->
        ``(logits [B, K, H, W] float32, memory [B, N, Cv, Ck], prob [B, N, Hp, Wp])`` in the engine's precision.
        Without the warm start (:meth:`_warm_start` does it before)."""
        with self._autocast():
            logits, memory, prob = self.net._step_padded(
                frame_B1HW, memory_BNVK, prev_prob_BNHW, allow_warm_start=False
            )
        return logits[..., : self.height, : self.width].float(), memory, prob

    def _warm_start(self) -> None:
        """The network's warm start for the rows reset since their last step (the frame is in ``self.frame``): their
        previous mask becomes the frame's mask segmented from the empty state (``GDKVM.warm_previous_mask``), eagerly,
        before the step. Every row counts as stepped afterwards."""
        rows, self.fresh_rows = sorted(self.fresh_rows), set()
        net = self.net
        if not rows or not getattr(net, "warm_start", False) or net.training:
            return
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        frame = self.frame.index_select(0, index)  # only the starting rows: a join costs them, not the whole batch
        with self._autocast():
            key_out = net.encode_key(frame)
            fresh_B = torch.ones(len(rows), dtype=torch.bool, device=self.device)
            warm = net.warm_previous_mask(frame, key_out, fresh_B, self.prev_prob.index_select(0, index))
        self.prev_prob.index_copy_(0, index, warm.to(self.prev_prob.dtype))

    def _compiled_step(self) -> torch.Tensor:
        """One step of the compiled function from the buffers into the buffers; returns new logits ``[B, K, H, W]``.

        The outputs of a reduce-overhead function live in its CUDA graph's memory pool and are overwritten by its next
        call: the state is copied into the engine's buffers and the logits cloned before that (on CUDA only: on the
        CPU each call returns new tensors)."""
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        logits, memory, prob = self._compiled(self.frame, self.memory, self.prev_prob)
        self.memory.copy_(memory)
        self.prev_prob.copy_(prob)
        return logits.clone() if on_cuda else logits

    def _compile(self, warmup: int) -> None:
        """Compile the step and run ``warmup`` steps (compiling, then recording); eager, saying why, if that fails."""
        limits = {"recompile_limit": COMPILED_ENGINES_LIMIT, "fail_on_recompile_limit_hit": True}
        try:
            self._compiled = torch.compile(self._step, mode="reduce-overhead", dynamic=False)
            with self._context(), torch._dynamo.config.patch(**limits):
                for _ in range(warmup):
                    self._compiled_step()
            self.mode = "compile"
        except Exception as e:  # noqa: BLE001 - no C++ compiler, an unsupported operation: run eagerly, say why
            self._compiled = None
            self.fallback_reason = f"torch.compile failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        self.reset()

    def _capture(self, warmup: int) -> None:
        """Warm up on a side stream, capture one step in a CUDA graph, then reset the state the warm-up changed."""
        with self._context(), torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._step_buffers()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._step_buffers()
            torch.cuda.synchronize(self.device)
        self.graph, self._graph_logits = graph, logits
        self.reset()


class StreamBatch:
    """Up to ``capacity`` independent live streams stepped together in one :class:`StreamingEngine`.

    A stream joins at any frame (it gets a free slot whose state is reset) and leaves at any frame (its slot is
    freed). :meth:`step` takes the next frame of some or all joined streams, runs one batched step of every slot,
    and returns each given stream's logits; a joined stream without a frame in this call keeps its state (its
    rows are restored after the step), and free slots get black frames whose outputs are dropped.

    Args:
        net, precision, backend: as :class:`StreamingEngine`.
        capacity: number of slots (the engine's batch size).
        height, width: frame size of every stream.

    Example::

        streams = StreamBatch(net, capacity=32, height=256, width=256)
        streams.join("probe-3")
        out = streams.step({"probe-3": frame_1HW})      # {"probe-3": logits [K, H, W]}
        streams.leave("probe-3")
    """

    def __init__(
        self,
        net: GDKVM,
        capacity: int,
        height: int,
        width: int,
        precision: str | torch.dtype = "float32",
        backend: str = "auto",
    ) -> None:
        self.engine = StreamingEngine(net, capacity, height, width, precision=precision, backend=backend)
        self.capacity = int(capacity)
        self.slots: dict[Hashable, int] = {}

    @property
    def active(self) -> list[Hashable]:
        """The joined streams, in slot order."""
        return sorted(self.slots, key=self.slots.__getitem__)

    def join(self, stream_id: Hashable) -> int:
        """Start a stream in a free slot with an empty state; returns the slot. ValueError if joined or full."""
        if stream_id in self.slots:
            raise ValueError(f"stream {stream_id!r} has already joined (slot {self.slots[stream_id]})")
        free = sorted(set(range(self.capacity)) - set(self.slots.values()))
        if not free:
            raise ValueError(f"all {self.capacity} slots are in use; a stream must leave first")
        self.slots[stream_id] = free[0]
        self.engine.reset([free[0]])
        return free[0]

    def leave(self, stream_id: Hashable) -> None:
        """End a stream and free its slot (KeyError if it has not joined)."""
        if stream_id not in self.slots:
            raise KeyError(f"stream {stream_id!r} has not joined")
        del self.slots[stream_id]

    def step(self, frames: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Segment the next frame of each stream in ``frames``.

        Args:
            frames: ``{stream id: frame}``, a frame ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` float in [0, 1];
                every id must have joined.

        Returns:
            ``{stream id: logits [K, H, W]}`` (float32) for the streams in ``frames``.
        """
        unknown = [s for s in frames if s not in self.slots]
        if unknown:
            raise KeyError(f"streams {unknown!r} have not joined (join them first)")
        engine = self.engine
        shape = (engine.height, engine.width)
        batch = torch.zeros(engine.batch_size, 1, *shape, device=engine.device)
        for stream_id, frame in frames.items():
            if tuple(frame.shape[-2:]) != shape or frame.numel() != shape[0] * shape[1]:
                raise ValueError(f"stream {stream_id!r}: frame of shape {tuple(frame.shape)}, expected {shape}")
            batch[self.slots[stream_id], 0] = frame.reshape(shape)
        waiting = [slot for s, slot in self.slots.items() if s not in frames]
        waiting_fresh = engine.fresh_rows.intersection(waiting)  # joined, not yet stepped: they start later
        kept = None
        if waiting:
            index = torch.as_tensor(waiting, device=engine.device)
            kept = (index, engine.memory.index_select(0, index), engine.prev_prob.index_select(0, index))
        logits = engine.step(batch)
        if kept is not None:
            with engine._context():
                engine.memory.index_copy_(0, kept[0], kept[1])
                engine.prev_prob.index_copy_(0, kept[0], kept[2])
        engine.fresh_rows.update(waiting_fresh)
        return {stream_id: logits[self.slots[stream_id]] for stream_id in frames}


class StreamingInferer(Inferer):
    """A MONAI ``Inferer`` that runs a clip ``[B, 1, H, W, T]`` frame by frame through a :class:`StreamingEngine`.

    Engines are cached per (network, batch, H, W) (at most ``cache_size``, least recently used dropped), so a
    folder of cines of one size captures one graph. Disabled (``enabled=False``), or for a network without GDKVM's
    fixed-size state, it returns ``network(inputs)`` as ``SimpleInferer`` does (said once in the log).

    Args:
        enabled: use the engine (``inference.json``: ``stream_engine``, default ``torch.cuda.is_available()``).
        precision: ``float32``, ``bfloat16`` or ``float16`` (``stream_precision``).
        backend: as :class:`StreamingEngine` (``stream_backend``; ``auto``: a CUDA graph on CUDA devices).
        cache_size: engines kept.

    Returns (``__call__``): logits ``[B, K, H, W, T]`` (float32 from the engine).
    """

    def __init__(
        self,
        enabled: bool = True,
        precision: str = "float32",
        backend: str = "auto",
        cache_size: int = 2,
    ) -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.precision = str(_precision_dtype(precision)).replace("torch.", "")
        if backend not in BACKENDS:
            raise ValueError(f"stream backend must be one of {list(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.cache_size = max(1, int(cache_size))
        self.engines: OrderedDict[tuple, StreamingEngine] = OrderedDict()
        self._said_unsupported = False

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``inputs [B, 1, H, W, T]`` -> logits ``[B, K, H, W, T]``.

        With ``corrections_HWT`` and ``corrected_frames`` (a user's corrections, see :mod:`scripts.corrections`) the
        cine is segmented by :func:`scripts.corrections.segment_with_corrections` (eager, whatever the backend).
        """
        if "corrections_HWT" in kwargs:
            from scripts.corrections import segment_with_corrections

            video = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
            return segment_with_corrections(network, video, kwargs["corrections_HWT"], kwargs["corrected_frames"])
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        if not supports_engine(network):
            if not self._said_unsupported:
                logger.info("streaming engine: %s has no fixed-size state; whole-clip forward", type(network).__name__)
                self._said_unsupported = True
            return network(inputs, *args, **kwargs)
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"StreamingInferer expects [B, 1, H, W, T], got {tuple(inputs.shape)}")
        key = (id(network), int(inputs.shape[0]), int(inputs.shape[2]), int(inputs.shape[3]))
        engine = self.engines.get(key)
        if engine is None or engine.net is not network or engine.device != next(network.parameters()).device:
            engine = StreamingEngine(network, key[1], key[2], key[3], precision=self.precision, backend=self.backend)
            self.engines[key] = engine
            while len(self.engines) > self.cache_size:
                self.engines.popitem(last=False)
        self.engines.move_to_end(key)
        video = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs  # MetaTensor -> plain tensor
        return engine.run(video.to(engine.device, torch.float32))
