"""GDKVM: recurrent echo video segmentation with a gated-delta linear key-value memory (paper section 3).

Per frame t (``step``):

1. key encoder (ResNet to stride 16) on the grey frame -> f4, f8, f16;
2. key projection + KPFF -> unit-norm key ``k_t`` ``[B, Ck, h, w]`` and pixel feature ``[B, Cp, h, w]``;
3. value encoder (ResNet-18) on ``[frame, previous mask of object n, previous mask of the other objects]``, fused
   with the key encoder's f16 feature (as the official code's mask encoder) -> value ``V_t`` ``[B, N, Cv, h, w]``;
   at t = 0 the previous mask is empty, so no ground truth ever enters the network (with ``warm_start``, in eval
   mode, a stream's first frame is segmented once from the empty state and that mask is its previous mask);
4. memory write ``S_t = update(S_{t-1}, K_t, V_t)`` with the configured rule (memory.py, Eq. 3-5);
5. read-out ``O_t = S_t k_t`` per pixel, decoded with skips from f8 and f4 into one logit map per object;
6. the objects' probabilities are aggregated into K class logits (background + N = K - 1 objects).

``forward(video [B, 1, H, W, T]) -> [B, K, H, W, T]`` is ``step`` in a loop. Frames of any H, W are padded to a
multiple of 16 inside and cropped back.

``torch.jit.script(GDKVM(...))`` compiles ``forward`` with T left dynamic (``scripts/export.py``, tested in
``tests/test_export.py``); keep the code that ``forward`` reaches TorchScript-compatible: no nested functions, no
``*shape`` unpacking, no module-level constants read inside functions (pass them as default arguments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .decoder import MaskDecoder, PreviousMaskSkip, ValueFuser
from .description import SelfDescribingModule
from .encoders import build_resnet_trunk, load_imagenet_weights, trunk_channels
from .kpff import KeyProjection
from .memory import UPDATE_RULES, LinearKeyValueMemory, read_memory, tokens_from_map

# Sizes: "base" follows the paper (ResNet-50 key encoder, ResNet-18 value encoder, key 64, value 256).
SIZES: dict[str, dict] = {
    "base": {
        "key_backbone": "resnet50",
        "value_backbone": "resnet18",
        "backbone_width": 1.0,
        "key_dim": 64,
        "value_dim": 256,
        "pixel_dim": 256,
        "num_heads": 8,
        "decoder_dims": (256, 128, 128),
        "refine_blocks": 8,
    },
    "small": {
        "key_backbone": "resnet18",
        "value_backbone": "resnet18",
        "backbone_width": 0.5,
        "key_dim": 32,
        "value_dim": 128,
        "pixel_dim": 128,
        "num_heads": 4,
        "decoder_dims": (128, 64, 32),
        "refine_blocks": 0,
    },
}

# ImageNet mean/std of the RGB channels averaged to grey.
GREY_MEAN = 0.449
GREY_STD = 0.226
STRIDE = 16


class GDKVMState(NamedTuple):
    """Recurrent state carried between frames; its size does not depend on how many frames were seen.

    Attributes:
        memory: the LKVA matrices S, ``[B, N, Cv, Ck]``.
        prev_prob: the previous frame's object probabilities at padded input size, ``[B, N, Hp, Wp]``.
    """

    memory: torch.Tensor
    prev_prob: torch.Tensor


class GDKVM(SelfDescribingModule):
    """GDKVM network.

    Args:
        size: ``"base"`` (paper) or ``"small"`` (CPU-friendly); the defaults of the keywords below.
        out_channels: K classes including background (2: LV only; 4: LV, myocardium, left atrium).
        update_rule: ``additive``, ``delta``, ``delta_beta``, ``decay_alpha`` or ``gated_delta`` (Table 4).
        kpff: use Key-Pixel Feature Fusion (Table 3).
        in_channels: input channels (1, grey).
        key_backbone, value_backbone, backbone_width, key_dim, value_dim, pixel_dim, num_heads, decoder_dims,
        refine_blocks: override the size's values.
        key_encoder_weights, value_encoder_weights: optional local files with torchvision ImageNet ResNet state
            dicts (never downloaded); only for ``backbone_width=1``.
        mask_skip: also give the previous masks straight to the decoder at strides 8 and 4
            (:class:`~.decoder.PreviousMaskSkip`; not in the paper, off by default: see docs/network.md).
        warm_start: in eval mode, a stream's first frame (a state with empty memory and an empty previous mask,
            per batch row) is segmented once from that state, and its mask becomes the previous mask of the frame's
            real step (:meth:`warm_previous_mask`); other frames are untouched. Not in the paper (which segments the
            first frame from the empty mask: ``warm_start=False``); no weights, so any checkpoint takes either. Never
            in training mode, so the paper's training recipe is unchanged.
        trained_with: how the training frames were prepared (the bundle passes ``labels``, ``spatial_size``,
            ``keep_aspect``). Saved with the weights and checked on load, together with the arguments above
            (see :mod:`scripts.gdkvm.description`); None takes it from the checkpoint that is loaded.
    """

    def __init__(
        self,
        size: str = "base",
        out_channels: int = 2,
        update_rule: str = "gated_delta",
        kpff: bool = True,
        in_channels: int = 1,
        key_backbone: str | None = None,
        value_backbone: str | None = None,
        backbone_width: float | None = None,
        key_dim: int | None = None,
        value_dim: int | None = None,
        pixel_dim: int | None = None,
        num_heads: int | None = None,
        decoder_dims: tuple[int, int, int] | list[int] | None = None,
        refine_blocks: int | None = None,
        key_encoder_weights: str | None = None,
        value_encoder_weights: str | None = None,
        trained_with: dict[str, Any] | None = None,
        mask_skip: bool = False,
        warm_start: bool = True,
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
        if out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 (background + objects), got {out_channels}")
        if update_rule not in UPDATE_RULES:
            raise ValueError(f"unknown update_rule {update_rule!r}; expected one of {UPDATE_RULES}")
        if in_channels != 1:
            raise ValueError(f"GDKVM takes grey cine loops (in_channels=1), got in_channels={in_channels}")
        cfg = dict(SIZES[size])
        overrides = {
            "key_backbone": key_backbone,
            "value_backbone": value_backbone,
            "backbone_width": backbone_width,
            "key_dim": key_dim,
            "value_dim": value_dim,
            "pixel_dim": pixel_dim,
            "num_heads": num_heads,
            "decoder_dims": decoder_dims,
            "refine_blocks": refine_blocks,
        }
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        self.size = size
        self.config = cfg
        self.out_channels = out_channels
        self.num_objects = out_channels - 1
        self.update_rule = update_rule
        self.kpff = kpff
        self.warm_start = bool(warm_start)
        self.trained_with = dict(trained_with) if trained_with is not None else None
        self.key_dim = int(cfg["key_dim"])
        self.value_dim = int(cfg["value_dim"])

        self.key_encoder = build_resnet_trunk(cfg["key_backbone"], in_channels=1, width=cfg["backbone_width"])
        # Value encoder input: frame, this object's previous mask, the other objects' previous masks.
        self.value_encoder = build_resnet_trunk(cfg["value_backbone"], in_channels=3, width=cfg["backbone_width"])
        c4, c8, c16 = trunk_channels(self.key_encoder)
        value_c16 = trunk_channels(self.value_encoder)[2]
        self.key_projection = KeyProjection(c16, self.key_dim, cfg["pixel_dim"], kpff=kpff)
        self.value_fuser = ValueFuser(value_c16, c16, self.value_dim)
        self.memory = LinearKeyValueMemory(self.value_dim, cfg["num_heads"], update_rule)
        self.decoder = MaskDecoder(
            self.value_dim, cfg["pixel_dim"], (c8, c4), tuple(cfg["decoder_dims"]), refine_blocks=cfg["refine_blocks"]
        )
        dims = tuple(cfg["decoder_dims"])
        self.mask_skip = PreviousMaskSkip(int(dims[0]), int(dims[1])) if mask_skip else None
        if key_encoder_weights:
            load_imagenet_weights(self.key_encoder, key_encoder_weights)
        if value_encoder_weights:
            load_imagenet_weights(self.value_encoder, value_encoder_weights)

    def network_arguments(self) -> dict[str, Any]:
        """The arguments that determine the state dict's tensors (saved with the weights, checked on load)."""
        arguments: dict[str, Any] = {
            "size": self.size,
            "out_channels": self.out_channels,
            "update_rule": self.update_rule,
            "kpff": self.kpff,
            "architecture": dict(self.config),
        }
        if self.mask_skip is not None:  # only when on, so that checkpoints of the paper's network read as before
            arguments["mask_skip"] = True
        return arguments

    # ------------------------------------------------------------------ streaming API
    def init_state(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GDKVMState:
        """An empty state for a stream of ``[batch_size, 1, height, width]`` frames (empty memory, empty mask).

        Device and dtype default to those of the network's parameters.
        """
        # The first parameter, as next(self.parameters()), spelled so that TorchScript can compile it.
        reference = self.key_encoder.conv1.weight
        if device is None:
            target_device = reference.device
        elif isinstance(device, str):
            target_device = torch.device(device)
        else:
            target_device = device
        target_dtype = reference.dtype if dtype is None else dtype
        hp, wp = _padded_size(height, width)
        memory = torch.zeros(
            batch_size, self.num_objects, self.value_dim, self.key_dim, device=target_device, dtype=target_dtype
        )
        prev_prob = torch.zeros(batch_size, self.num_objects, hp, wp, device=target_device, dtype=target_dtype)
        return GDKVMState(memory, prev_prob)

    def step(self, frame_B1HW: torch.Tensor, state: GDKVMState | None = None) -> tuple[torch.Tensor, GDKVMState]:
        """Segment one frame of a stream.

        Args:
            frame_B1HW: ``[B, 1, H, W]`` float in [0, 1].
            state: the state returned by the previous call, or None (or :meth:`init_state`) for the first frame.

        Returns:
            ``(logits [B, K, H, W], new state)``.
        """
        _check_frame(frame_B1HW)
        height, width = frame_B1HW.shape[-2:]
        if state is None:
            state = self.init_state(frame_B1HW.shape[0], height, width, frame_B1HW.device, frame_B1HW.dtype)
        logits, memory, prev_prob = self._step_padded(_pad_frame(frame_B1HW), state.memory, state.prev_prob)
        return logits[..., :height, :width], GDKVMState(memory, prev_prob)

    def forward(
        self,
        video_B1HWT: torch.Tensor,
        given_masks_BNHWT: torch.Tensor | None = None,
        given_frames_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment a cine loop frame by frame.

        Args:
            video_B1HWT: ``[B, 1, H, W, T]`` float in [0, 1], any H, W and T >= 1.
            given_masks_BNHWT: optional masks of the N objects, ``[B, N, H, W, T]`` float in [0, 1] (one-hot of the
                labels 1..N, or probabilities): a user's correction, or the truth fed on purpose in training.
            given_frames_BT: ``[B, T]`` bool, where ``given_masks_BNHWT`` holds a mask. After such a frame t the
                next frame's previous-mask input is ``given_masks[..., t]`` instead of the network's own prediction
                (the memory write of frame t itself and its logits are unchanged). Both or neither must be given.

        Returns:
            logits ``[B, K, H, W, T]``.
        """
        _check_video(video_B1HWT, "GDKVM")
        height, width = video_B1HWT.shape[2], video_B1HWT.shape[3]
        _check_given(given_masks_BNHWT, given_frames_BT, video_B1HWT, self.num_objects)
        state = self.init_state(video_B1HWT.shape[0], height, width, video_B1HWT.device, video_B1HWT.dtype)
        memory, prev_prob = state.memory, state.prev_prob
        outputs: list[torch.Tensor] = []
        for t in range(video_B1HWT.shape[-1]):
            # only frame 0 can start from the empty state here: no warm-start check on the frames after it
            logits, memory, prev_prob = self._step_padded(
                _pad_frame(video_B1HWT[..., t]), memory, prev_prob, allow_warm_start=t == 0
            )
            outputs.append(logits[..., :height, :width])
            if given_masks_BNHWT is not None and given_frames_BT is not None:
                given_B = given_frames_BT[:, t].to(prev_prob.dtype).view(-1, 1, 1, 1)
                given_BNHW = _pad_frame(given_masks_BNHWT[..., t].to(prev_prob.dtype))
                prev_prob = given_B * given_BNHW + (1.0 - given_B) * prev_prob
        return torch.stack(outputs, dim=-1)

    def give_mask(self, state: GDKVMState, mask_BNHW: torch.Tensor) -> GDKVMState:
        """The state with ``mask_BNHW`` (``[B, N, H, W]`` in [0, 1], unpadded) as the next frame's previous mask.

        The streaming form of ``forward``'s ``given_masks_BNHWT``: a mask an annotator drew on the frame just stepped.
        """
        if mask_BNHW.ndim != 4 or mask_BNHW.shape[1] != self.num_objects:
            raise ValueError(
                f"give_mask expects [B, {self.num_objects}, H, W] object masks, got {_shape_text(mask_BNHW.shape)}"
            )
        padded = _pad_frame(mask_BNHW.to(state.prev_prob.dtype))
        if padded.shape != state.prev_prob.shape:
            raise ValueError(
                f"give_mask: mask {_shape_text(mask_BNHW.shape)} does not fit the stream's previous mask "
                f"{_shape_text(state.prev_prob.shape)} (padded)"
            )
        return GDKVMState(state.memory, padded)

    # ------------------------------------------------------------------ internals
    def encode_key(self, frame_B1HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key path of one padded frame: ``key [B, Ck, h, w]`` (unit norm), ``pixel``, ``f8``, ``f4``."""
        f4, f8, f16 = self.key_encoder(_normalise(frame_B1HW))
        key, pixel = self.key_projection(f16)
        return {"key": key, "pixel": pixel, "f16": f16, "f8": f8, "f4": f4}

    def encode_value(self, frame_B1HW: torch.Tensor, prev_prob_BNHW: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """Value of each object, ``[B, N, Cv, h, w]``, from the frame, the previous masks and the key encoder's f16."""
        b, n = prev_prob_BNHW.shape[0], prev_prob_BNHW.shape[1]
        others = prev_prob_BNHW.sum(dim=1, keepdim=True) - prev_prob_BNHW
        image = _normalise(frame_B1HW).unsqueeze(1).expand(b, n, -1, -1, -1)
        inputs = torch.cat([image, prev_prob_BNHW.unsqueeze(2), others.unsqueeze(2)], dim=2).flatten(0, 1)
        value_feature = self.value_encoder(inputs)[2]
        image_feature = _per_object(f16, b, n)
        value = self.value_fuser(value_feature, image_feature)
        return value.unflatten(0, (b, n))

    def _step_padded(
        self,
        frame_B1HW: torch.Tensor,
        memory_BNVK: torch.Tensor,
        prev_prob_BNHW: torch.Tensor,
        allow_warm_start: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame whose H, W are multiples of 16. Returns ``(logits [B, K, H, W], memory, prob [B, N, H, W])``.

        ``allow_warm_start=False`` skips the warm start (:class:`scripts.streaming.StreamingEngine` does it outside its
        captured step, for the rows it reset).
        """
        key_out = self.encode_key(frame_B1HW)
        if allow_warm_start and self.warm_start and not self.training:
            prev_prob_BNHW = self._warm_started(frame_B1HW, key_out, memory_BNVK, prev_prob_BNHW)
        return self._step_keyed(frame_B1HW, key_out, memory_BNVK, prev_prob_BNHW)

    def _step_keyed(
        self,
        frame_B1HW: torch.Tensor,
        key_out: dict[str, torch.Tensor],
        memory_BNVK: torch.Tensor,
        prev_prob_BNHW: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_step_padded` after the key path (``key_out`` of :meth:`encode_key`), without the warm start."""
        b, n = prev_prob_BNHW.shape[0], prev_prob_BNHW.shape[1]
        key = key_out["key"]
        value = self.encode_value(frame_B1HW, prev_prob_BNHW, key_out["f16"])
        new_memory, _ = self.memory(memory_BNVK, tokens_from_map(key), tokens_from_map(value))
        h, w = key.shape[-2], key.shape[-1]
        readout = read_memory(new_memory, key.flatten(2)).unflatten(-1, (h, w)).flatten(0, 1)
        logits, prob = self.decode(readout, key_out, b, n, frame_B1HW.shape[-2], frame_B1HW.shape[-1], prev_prob_BNHW)
        return logits, new_memory, prob

    def warm_previous_mask(
        self,
        frame_B1HW: torch.Tensor,
        key_out: dict[str, torch.Tensor],
        fresh_B: torch.Tensor,
        prev_prob_BNHW: torch.Tensor,
    ) -> torch.Tensor:
        """The warm start's previous mask: ``prev_prob_BNHW`` with the rows in ``fresh_B`` replaced by the object
        probabilities of the (padded) frame segmented from an empty state.

        Args:
            frame_B1HW: padded frame ``[B, 1, Hp, Wp]``; key_out: its :meth:`encode_key`.
            fresh_B: ``[B]`` bool, the rows whose stream starts at this frame.
            prev_prob_BNHW: ``[B, N, Hp, Wp]``.

        Returns:
            ``[B, N, Hp, Wp]``.
        """
        b, hp, wp = prev_prob_BNHW.shape[0], prev_prob_BNHW.shape[-2], prev_prob_BNHW.shape[-1]
        empty = self.init_state(b, hp, wp, prev_prob_BNHW.device, prev_prob_BNHW.dtype)
        _, _, first_prob = self._step_keyed(frame_B1HW, key_out, empty.memory, empty.prev_prob)
        return torch.where(fresh_B.view(-1, 1, 1, 1), first_prob.to(prev_prob_BNHW.dtype), prev_prob_BNHW)

    def _warm_started(
        self,
        frame_B1HW: torch.Tensor,
        key_out: dict[str, torch.Tensor],
        memory_BNVK: torch.Tensor,
        prev_prob_BNHW: torch.Tensor,
    ) -> torch.Tensor:
        """The previous mask for this step: warm-started on the rows whose state is empty (:func:`fresh_rows`)."""
        fresh_B = fresh_rows(memory_BNVK, prev_prob_BNHW)
        if not torch.jit.is_scripting():  # TorchScript skips this block (it compiles the plain branch below)
            if torch.compiler.is_exporting():
                return self._warm_started_exported(frame_B1HW, key_out, fresh_B, prev_prob_BNHW)
        if bool(fresh_B.any()):
            return self.warm_previous_mask(frame_B1HW, key_out, fresh_B, prev_prob_BNHW)
        return prev_prob_BNHW

    @torch.jit.unused
    def _warm_started_exported(
        self,
        frame_B1HW: torch.Tensor,
        key_out: dict[str, torch.Tensor],
        fresh_B: torch.Tensor,
        prev_prob_BNHW: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`_warm_started` for ``torch.export`` (ONNX): the branch as ``torch.cond`` (an ONNX ``If``), so that
        a served step (Triton's implicit state starts at zeros) warm-starts a sequence's first frame too."""
        names = sorted(key_out)

        def warm(frame: torch.Tensor, fresh: torch.Tensor, prev: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
            return self.warm_previous_mask(frame, dict(zip(names, features)), fresh, prev)

        def keep(frame: torch.Tensor, fresh: torch.Tensor, prev: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
            return prev.clone()

        operands = (frame_B1HW, fresh_B, prev_prob_BNHW, *[key_out[name] for name in names])
        return torch.cond(fresh_B.any(), warm, keep, operands)

    def decode(
        self,
        readout_BNVhw: torch.Tensor,
        key_out: dict[str, torch.Tensor],
        b: int,
        n: int,
        height: int,
        width: int,
        prev_prob_BNHW: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of one padded frame from the memory read-out and the key path's features (``encode_key``).

        Args:
            readout_BNVhw: read-out per object, ``[B*N, Cv, h, w]`` (h, w = height, width / 16).
            key_out: :meth:`encode_key`'s ``pixel``, ``f8`` and ``f4`` of the frame (``[B, ...]``).
            prev_prob_BNHW: the previous masks ``[B, N, height, width]`` (read only with ``mask_skip``).

        Returns:
            ``(logits [B, K, height, width], object probabilities [B, N, height, width])``.
        """
        mask8: torch.Tensor | None = None
        mask4: torch.Tensor | None = None
        if self.mask_skip is not None and prev_prob_BNHW is not None:
            others = prev_prob_BNHW.sum(dim=1, keepdim=True) - prev_prob_BNHW
            prev = torch.stack([prev_prob_BNHW, others.expand_as(prev_prob_BNHW)], dim=2).flatten(0, 1)
            mask8, mask4 = self.mask_skip(prev)
        object_logits = self.decoder(
            readout_BNVhw,
            _per_object(key_out["pixel"], b, n),
            _per_object(key_out["f8"], b, n),
            _per_object(key_out["f4"], b, n),
            mask8,
            mask4,
        )
        object_logits = F.interpolate(object_logits, size=(height, width), mode="bilinear", align_corners=False)
        logits = aggregate_objects(object_logits.view(b, n, height, width))
        return logits, torch.softmax(logits, dim=1)[:, 1:]

    def memory_gates(self, state: GDKVMState) -> dict[str, torch.Tensor]:
        """alpha_t and beta_t that the next write would use (``[B, N, Cv, Ck]`` each); empty for gate-free rules."""
        if self.memory.gates is None:
            return {}
        alpha, beta = self.memory.gates(state.memory)
        return {"alpha": alpha, "beta": beta}

    def load_encoder_weights(self, key_path: str | Path | None = None, value_path: str | Path | None = None) -> None:
        """Load torchvision ImageNet ResNet weights from local files into the key and/or value encoder."""
        if key_path:
            load_imagenet_weights(self.key_encoder, key_path)
        if value_path:
            load_imagenet_weights(self.value_encoder, value_path)


def aggregate_objects(object_logits_BNHW: torch.Tensor) -> torch.Tensor:
    """Soft aggregation of N independent object logits into K = N + 1 class logits (as in STM/XMem/Cutie).

    ``p_bg = prod(1 - p_n)``; class logits are ``logit(clamp(p))`` so that a softmax over classes is a normalised
    distribution. Shapes: ``[B, N, H, W] -> [B, N + 1, H, W]``.
    """
    prob = torch.sigmoid(object_logits_BNHW)
    background = torch.prod(1.0 - prob, dim=1, keepdim=True)
    probs = torch.cat([background, prob], dim=1).clamp(1e-7, 1.0 - 1e-7)
    return torch.log(probs / (1.0 - probs))


def fresh_rows(memory_BNVK: torch.Tensor, prev_prob_BNHW: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the rows whose state is empty (zero memory and zero previous mask), i.e. a stream's first frame.

    A stepped state is never empty (its previous mask is a softmax, > 0 everywhere); a state whose previous mask was
    given (:meth:`GDKVM.give_mask`) is not empty either.
    """
    memory_empty = memory_BNVK.flatten(1).abs().amax(dim=1) == 0
    mask_empty = prev_prob_BNHW.flatten(1).abs().amax(dim=1) == 0
    return memory_empty & mask_empty


def _normalise(frame: torch.Tensor, mean: float = GREY_MEAN, std: float = GREY_STD) -> torch.Tensor:
    """Grey ImageNet normalisation (defaults, not globals, so that TorchScript compiles it)."""
    return (frame - mean) / std


def _per_object(x: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Repeat a per-frame feature for each object: ``[B, ...] -> [B*N, ...]``."""
    return x.unsqueeze(1).expand([b, n] + list(x.shape[1:])).flatten(0, 1)


def _check_frame(frame_B1HW: torch.Tensor) -> None:
    """ValueError unless the frame is ``[B, 1, H, W]``."""
    if frame_B1HW.ndim != 4 or frame_B1HW.shape[1] != 1:
        raise ValueError(f"step expects a frame of shape [B, 1, H, W], got {_shape_text(frame_B1HW.shape)}")


def _check_video(video_B1HWT: torch.Tensor, model: str) -> None:
    """ValueError unless the video is ``[B, 1, H, W, T]`` with T >= 1."""
    if video_B1HWT.ndim != 5 or video_B1HWT.shape[1] != 1:
        raise ValueError(f"{model} expects a video of shape [B, 1, H, W, T], got {_shape_text(video_B1HWT.shape)}")
    if video_B1HWT.shape[-1] < 1:
        raise ValueError(f"{model} needs at least one frame (T >= 1)")


def _check_given(
    given_masks_BNHWT: torch.Tensor | None, given_frames_BT: torch.Tensor | None, video_B1HWT: torch.Tensor, n: int
) -> None:
    """ValueError unless the given masks are ``[B, N, H, W, T]`` and the flags ``[B, T]`` of the video, or both None."""
    if given_masks_BNHWT is None and given_frames_BT is None:
        return
    if given_masks_BNHWT is None or given_frames_BT is None:
        raise ValueError("given_masks_BNHWT and given_frames_BT go together: pass both or neither")
    b, h, w, t = video_B1HWT.shape[0], video_B1HWT.shape[2], video_B1HWT.shape[3], video_B1HWT.shape[4]
    if list(given_masks_BNHWT.shape) != [b, n, h, w, t]:
        raise ValueError(
            "given_masks_BNHWT must be [B, N, H, W, T] = "
            + _shape_text([b, n, h, w, t])
            + ", got "
            + _shape_text(given_masks_BNHWT.shape)
        )
    if list(given_frames_BT.shape) != [b, t]:
        raise ValueError(
            "given_frames_BT must be [B, T] = " + _shape_text([b, t]) + ", got " + _shape_text(given_frames_BT.shape)
        )


def _shape_text(shape: list[int]) -> str:
    """``(1, 3, 32, 32)`` as ``str(tuple(shape))`` writes it, in a form that TorchScript compiles."""
    return "(" + ", ".join([str(size) for size in shape]) + ")"


def _padded_size(height: int, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """H, W rounded up to multiples of the stride (a default argument: TorchScript does not read globals)."""
    return (height + stride - 1) // stride * stride, (width + stride - 1) // stride * stride


def _pad_frame(frame_B1HW: torch.Tensor) -> torch.Tensor:
    """Zero-pad (black, as outside the scan sector) at the bottom/right to multiples of 16."""
    height, width = frame_B1HW.shape[-2], frame_B1HW.shape[-1]
    hp, wp = _padded_size(height, width)
    if hp == height and wp == width:
        return frame_B1HW
    return F.pad(frame_B1HW, (0, wp - width, 0, hp - height))
