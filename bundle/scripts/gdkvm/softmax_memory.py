"""GDKVM with a softmax space-time memory bank instead of the linear state (paper Eq. 1, as in STM/XMem/Cutie).

The comparison row for "softmax matching vs linear key-value association" (paper section 3.2): the same key
encoder, KPFF, value encoder and decoder as :class:`~scripts.gdkvm.network.GDKVM`, but the fixed-size LKVA state
``S_t`` ``[B, N, Cv, Ck]`` is replaced by a bank of every stored frame's key and value tokens, read by attention:

``O_t[:, q] = sum_i softmax_i(tau * k_i . q) V_i``, over all stored tokens ``i`` of all stored frames (Eq. 1),

where the keys are the unit-norm keys of GDKVM and ``tau = exp(log_scale)`` is a learned inverse temperature,
initialised to ``sqrt(Ck)``: this is STM's ``k . q / sqrt(Ck)`` for keys whose channels have unit variance (norm
``sqrt(Ck)``), written for unit-norm keys. Values are the value encoder's maps, not scaled (the softmax weights sum
to one, so the read-out is a convex combination of stored values).

Per frame t (``step``): key ``k_t`` and value ``V_t`` from (frame t, previous mask) exactly as GDKVM; ``(k_t, V_t)``
is appended to the bank every ``memory_every`` frames (default every frame) and the oldest frames are dropped
beyond ``max_memory_frames`` (default None: unbounded, as STM); the read-out attends from ``k_t`` to the bank plus
the current frame (the current frame is always readable, as XMem's working memory, so a frame that is not stored is
still read against itself); then decode as GDKVM. With the defaults this is exactly "append, then read".

The state (:class:`SoftmaxMemoryState`) grows by ``h*w`` tokens per stored frame, so memory is O(t) and the
read-out O(t) per frame (O(t^2) over a video), unlike GDKVM's constant state. The bank is a concatenated tensor;
when training with backpropagation through a clip every ``torch.cat`` is kept by autograd, which is fine for the
short clips used in training.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from .network import GDKVM, STRIDE, _check_frame, _check_video, _pad_frame, _padded_size


class SoftmaxMemoryState(NamedTuple):
    """Streaming state of :class:`GDKVMSoftmaxMemory`; its size grows with the number of stored frames.

    Attributes:
        keys: key bank, unit-norm key tokens of the stored frames, ``[B, Ck, L_total]`` (``L_total = frames * h*w``).
        values: value bank, ``[B, N, Cv, L_total]``.
        prev_prob: the previous frame's object probabilities at padded input size, ``[B, N, Hp, Wp]``.
        frame_index: how many frames this stream has seen, a 0-d int64 tensor (decides which frames are stored).
    """

    keys: torch.Tensor
    values: torch.Tensor
    prev_prob: torch.Tensor
    frame_index: torch.Tensor


def softmax_readout(
    memory_key_BKL: torch.Tensor, memory_value_BNVL: torch.Tensor, query_BKQ: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Softmax attention read-out (paper Eq. 1): each query token takes the softmax-weighted mean of the values.

    ``out[b, n, :, q] = sum_l softmax_l(scale * memory_key[b, :, l] . query[b, :, q]) * memory_value[b, n, :, l]``;
    the softmax runs over all L memory tokens and the weights are shared by the N objects.

    Args:
        memory_key_BKL: memory keys, ``[B, Ck, L]`` (L >= 1).
        memory_value_BNVL: memory values, ``[B, N, Cv, L]``.
        query_BKQ: query keys, ``[B, Ck, Q]``.
        scale: inverse temperature, a float or a 0-d tensor.

    Returns:
        ``[B, N, Cv, Q]`` read-out values.
    """
    if memory_key_BKL.shape[-1] == 0:
        raise ValueError("softmax_readout: the memory is empty (L = 0); nothing to attend to")
    affinity_BLQ = torch.einsum("bkl,bkq->blq", memory_key_BKL, query_BKQ) * scale
    weights_BLQ = torch.softmax(affinity_BLQ, dim=1)
    return torch.einsum("bnvl,blq->bnvq", memory_value_BNVL, weights_BLQ)


class SoftmaxMemoryReadout(nn.Module):
    """Holds the learned inverse temperature ``tau = exp(log_scale)`` (init ``sqrt(Ck)``) and reads the bank.

    Shapes: ``memory_key [B, Ck, L]``, ``memory_value [B, N, Cv, L]``, ``query [B, Ck, Q] -> [B, N, Cv, Q]``.
    """

    def __init__(self, key_dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(0.5 * math.log(key_dim)))

    @property
    def scale(self) -> torch.Tensor:
        """The inverse temperature tau, a 0-d tensor."""
        return self.log_scale.exp()

    def forward(
        self, memory_key_BKL: torch.Tensor, memory_value_BNVL: torch.Tensor, query_BKQ: torch.Tensor
    ) -> torch.Tensor:
        return softmax_readout(memory_key_BKL, memory_value_BNVL, query_BKQ, self.scale)


class GDKVMSoftmaxMemory(GDKVM):
    """GDKVM's encoders and decoder with a softmax space-time memory bank (STM/XMem/Cutie) instead of LKVA.

    Args:
        *args, **kwargs: every other argument of :class:`~scripts.gdkvm.network.GDKVM` (``size``,
            ``out_channels``, ``kpff``, widths, ImageNet weight files, ...), passed on unchanged.
        update_rule: there is no linear state, so no update rule: only None (default) or ``"softmax"`` are
            accepted; anything else raises ValueError. ``self.update_rule`` is ``"softmax"``.
        max_memory_frames: keep at most this many stored frames (FIFO, oldest dropped); None (default) keeps all,
            as STM does.
        memory_every: store every this many frames (frame 0 is always stored); 1 (default) stores every frame.
    """

    def __init__(
        self,
        *args: Any,
        update_rule: str | None = None,
        max_memory_frames: int | None = None,
        memory_every: int = 1,
        **kwargs: Any,
    ) -> None:
        if update_rule not in (None, "softmax"):
            raise ValueError(
                f"GDKVMSoftmaxMemory has no linear state, so update_rule does not apply (got {update_rule!r}); "
                "leave it out or pass 'softmax'"
            )
        if max_memory_frames is not None and (isinstance(max_memory_frames, bool) or int(max_memory_frames) < 1):
            raise ValueError(f"max_memory_frames must be None or an int >= 1, got {max_memory_frames!r}")
        if isinstance(memory_every, bool) or int(memory_every) < 1:
            raise ValueError(f"memory_every must be an int >= 1, got {memory_every!r}")
        # "additive" builds the parent's LKVA module without gate parameters; it is replaced below.
        super().__init__(*args, update_rule="additive", **kwargs)
        self.update_rule = "softmax"
        self.max_memory_frames = None if max_memory_frames is None else int(max_memory_frames)
        self.memory_every = int(memory_every)
        self.memory = SoftmaxMemoryReadout(self.key_dim)

    # ------------------------------------------------------------------ streaming API
    def init_state(
        self, batch_size: int, height: int, width: int, device: torch.device | str | None = None, dtype=None
    ) -> SoftmaxMemoryState:
        """An empty state for a stream of ``[batch_size, 1, height, width]`` frames: empty banks (L = 0), empty mask."""
        device = device if device is not None else next(self.parameters()).device
        dtype = dtype if dtype is not None else next(self.parameters()).dtype
        hp, wp = _padded_size(height, width)
        keys = torch.zeros(batch_size, self.key_dim, 0, device=device, dtype=dtype)
        values = torch.zeros(batch_size, self.num_objects, self.value_dim, 0, device=device, dtype=dtype)
        prev_prob = torch.zeros(batch_size, self.num_objects, hp, wp, device=device, dtype=dtype)
        frame_index = torch.zeros((), dtype=torch.int64, device=device)
        return SoftmaxMemoryState(keys, values, prev_prob, frame_index)

    def step(
        self, frame_B1HW: torch.Tensor, state: SoftmaxMemoryState | None = None
    ) -> tuple[torch.Tensor, SoftmaxMemoryState]:
        """Segment one frame of a stream.

        Args:
            frame_B1HW: ``[B, 1, H, W]`` float in [0, 1].
            state: the state returned by the previous call, or None (or :meth:`init_state`) for the first frame.

        Returns:
            ``(logits [B, K, H, W], new state)``; the new state's banks hold ``h*w`` more tokens if this frame was
            stored.
        """
        _check_frame(frame_B1HW)
        height, width = frame_B1HW.shape[-2:]
        if state is None:
            state = self.init_state(frame_B1HW.shape[0], height, width, frame_B1HW.device, frame_B1HW.dtype)
        logits, state = self._step_state(_pad_frame(frame_B1HW), state)
        return logits[..., :height, :width], state

    def forward(self, video_B1HWT: torch.Tensor) -> torch.Tensor:
        """Segment a cine loop frame by frame (``step`` in a loop).

        Args:
            video_B1HWT: ``[B, 1, H, W, T]`` float in [0, 1], any H, W and T >= 1.

        Returns:
            logits ``[B, K, H, W, T]``.
        """
        _check_video(video_B1HWT, "GDKVMSoftmaxMemory")
        height, width = video_B1HWT.shape[2], video_B1HWT.shape[3]
        state = self.init_state(video_B1HWT.shape[0], height, width, video_B1HWT.device, video_B1HWT.dtype)
        outputs = []
        for t in range(video_B1HWT.shape[-1]):
            logits, state = self._step_state(_pad_frame(video_B1HWT[..., t]), state)
            outputs.append(logits[..., :height, :width])
        return torch.stack(outputs, dim=-1)

    def memory_gates(self, state: SoftmaxMemoryState) -> dict[str, torch.Tensor]:
        """No alpha/beta gates: the softmax memory has no linear state. Always ``{}``."""
        return {}

    def stored_frames(self, state: SoftmaxMemoryState, height: int, width: int) -> int:
        """How many frames the bank of ``state`` holds, for frames of ``height`` x ``width`` (unpadded)."""
        hp, wp = _padded_size(height, width)
        return state.keys.shape[-1] // ((hp // STRIDE) * (wp // STRIDE))

    # ------------------------------------------------------------------ internals
    def _step_padded(self, *args, **kwargs) -> None:
        """The parent's LKVA step; not available here (the state is a bank, not a matrix)."""
        raise NotImplementedError("GDKVMSoftmaxMemory has no LKVA state; use step/forward (or _step_state)")

    def _step_state(
        self, frame_B1HW: torch.Tensor, state: SoftmaxMemoryState
    ) -> tuple[torch.Tensor, SoftmaxMemoryState]:
        """One frame whose H, W are multiples of 16. Returns ``(logits [B, K, H, W], new state)``."""
        b, n = state.prev_prob.shape[:2]
        key_out = self.encode_key(frame_B1HW)
        key = key_out["key"]
        h, w = key.shape[-2:]
        key_BKL = key.flatten(2)
        value_BNVL = self.encode_value(frame_B1HW, state.prev_prob, key_out["f16"]).flatten(-2)

        store = self.memory_every == 1 or int(state.frame_index) % self.memory_every == 0
        if store:
            keys = torch.cat([state.keys, key_BKL], dim=-1)
            values = torch.cat([state.values, value_BNVL], dim=-1)
            if self.max_memory_frames is not None and keys.shape[-1] > self.max_memory_frames * h * w:
                keep = self.max_memory_frames * h * w
                keys, values = keys[..., -keep:], values[..., -keep:]
            read_keys, read_values = keys, values
        else:
            keys, values = state.keys, state.values
            read_keys = torch.cat([keys, key_BKL], dim=-1)
            read_values = torch.cat([values, value_BNVL], dim=-1)
        readout = self.memory(read_keys, read_values, key_BKL).unflatten(-1, (h, w)).flatten(0, 1)
        logits, prob = self.decode(readout, key_out, b, n, frame_B1HW.shape[-2], frame_B1HW.shape[-1])
        return logits, SoftmaxMemoryState(keys, values, prob, state.frame_index + 1)
