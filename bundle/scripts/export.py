"""Export GDKVM for deployment: TorchScript of the whole clip model, ONNX of one streaming step.

TorchScript (``export_torchscript``, or ``python -m monai.bundle ckpt_export``) *scripts* the network, so the frame
loop stays a loop and the saved model takes clips of any length T. Tracing would unroll the loop to the example's T.
``python -m scripts.export torchscript`` also stores what ``ckpt_export`` stores (``extra/metadata.json``,
``extra/inference.json``) and the checkpoint's description (``extra/gdkvm_description.json``: network, classes,
input size, aspect handling; :mod:`scripts.gdkvm.description`), which a scripted network otherwise loses (it drops
the state dict's ``_extra_state``): :func:`read_torchscript_description` reads it back, so whoever serves the file
(the MONAI Deploy app) knows what it was trained with.

ONNX (``export_onnx_step``) holds one step of the recurrence: ``(frame [B, 1, H, W], memory [B, N, Cv, Ck],
prev_prob [B, N, Hp, Wp]) -> (logits [B, K, H, W], memory, prev_prob)`` for frames of the export size H x W
(``Hp, Wp`` are H, W rounded up to multiples of 16). :class:`OnnxStream` runs a cine through it frame by frame with
ONNX Runtime; the state that it carries has the same size at every frame.

Command line (from the bundle folder, or with ``PYTHONPATH=bundle``)::

    python -m scripts.export onnx --ckpt models/model.pt --out models/model_step.onnx --height 112 --width 112
    python -m scripts.export torchscript --ckpt models/model.pt --out models/model.ts

The network is the one the checkpoint says it was trained as (:mod:`scripts.checkpoint`); ``--config_file
configs/inference.json`` builds it through the bundle config instead, and ``--size small --out_channels 2`` etc.
are needed only for a checkpoint saved before bundle 0.3.0.
"""

from __future__ import annotations

import json
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import build_network, read_description
from .gdkvm import GDKVM, GDKVMState
from .gdkvm.description import plain

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION_FILE = "gdkvm_description.json"  # extra file of a TorchScript export, beside metadata.json/inference.json
ONNX_INPUTS = ("frame", "memory", "prev_prob")
ONNX_OUTPUTS = ("logits", "next_memory", "next_prev_prob")
DEFAULT_OPSET = 18


class GDKVMStreamStep(nn.Module):
    """One streaming step of a GDKVM with the state as plain tensors (the form that ONNX export needs).

    Shapes: ``frame [B, 1, H, W]``, ``memory [B, N, Cv, Ck]``, ``prev_prob [B, N, Hp, Wp]`` ->
    ``(logits [B, K, H, W], memory [B, N, Cv, Ck], prev_prob [B, N, Hp, Wp])``; start a stream with zeros
    (:meth:`GDKVM.init_state`).
    """

    def __init__(self, net: GDKVM) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, frame_B1HW: torch.Tensor, memory_BNVK: torch.Tensor, prev_prob_BNHW: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, state = self.net.step(frame_B1HW, GDKVMState(memory_BNVK, prev_prob_BNHW))
        return logits, state.memory, state.prev_prob


def _partial_path(path: Path) -> Path:
    """The file beside ``path`` that is written first and renamed onto ``path`` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.part")


def bundle_extra_files(
    config_file: str | Path = BUNDLE_ROOT / "configs" / "inference.json",
    metadata_file: str | Path = BUNDLE_ROOT / "configs" / "metadata.json",
) -> dict[str, str]:
    """``{"metadata.json": ..., "inference.json": ...}``: the bundle files that ``ckpt_export`` stores in a TorchScript
    archive (the JSON as it stands, re-serialised), and that MONAI Deploy's bundle inference operator reads."""
    return {
        "metadata.json": json.dumps(json.loads(Path(metadata_file).read_text())),
        "inference.json": json.dumps(json.loads(Path(config_file).read_text())),
    }


def save_scripted(
    scripted: torch.jit.ScriptModule,
    path: str | Path,
    description: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Save ``scripted`` to ``path`` (written whole or not at all) with ``extra_files`` (``{name: text}``) and, given,
    the network's ``description`` as ``extra/gdkvm_description.json``; the archive's top folder is named after the
    file, as ``torch.jit.save`` names it when writing ``path`` directly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra_files or {})
    if description is not None:
        extra[DESCRIPTION_FILE] = json.dumps(plain(dict(description)), sort_keys=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        part = Path(tmp) / path.name
        torch.jit.save(scripted, str(part), _extra_files=extra)
        part.replace(path)
    return path


def export_torchscript(
    net: GDKVM,
    path: str | Path,
    description: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Script (not trace) ``net`` and save it; the saved model takes ``[B, 1, H, W, T]`` clips of any H, W and T.

    Args:
        net: a GDKVM (any size, update rule, ``kpff``); it is scripted in eval mode and its mode is restored.
        path: the ``.ts`` file to write (written completely or not at all).
        description: what the network was trained with (:func:`scripts.checkpoint.read_description` of its
            checkpoint), stored as ``extra/gdkvm_description.json``; None stores none.
        extra_files: more ``{name: text}`` extra files (:func:`bundle_extra_files`).

    Returns:
        The path written. Load it with ``torch.jit.load(path)``; ``model(video [B, 1, H, W, T]) -> [B, K, H, W, T]``.
    """
    was_training = net.training
    net.eval()
    try:
        return save_scripted(torch.jit.script(net), path, description, extra_files)
    finally:
        net.train(was_training)


def read_torchscript_extra(path: str | Path, name: str) -> bytes | None:
    """The extra file ``name`` of a TorchScript archive (``<top folder>/extra/<name>``), or None when it has none.

    The top folder is whatever name the file was saved under (``torch.jit.save`` names it after the file), so a
    renamed ``model.ts`` is read as well.

    Raises:
        ValueError: ``path`` is not a TorchScript archive (not a zip file).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [m for m in archive.namelist() if m.endswith(f"/extra/{name}")]
            return archive.read(names[0]) if names else None
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a TorchScript file (not a zip archive)") from None


def read_torchscript_description(path: str | Path) -> dict[str, Any] | None:
    """The description stored by :func:`export_torchscript` in a TorchScript file, or None when it has none.

    Raises:
        ValueError: ``path`` is not a TorchScript archive (not a zip file), or its description is not JSON.
    """
    text = read_torchscript_extra(path, DESCRIPTION_FILE)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: extra/{DESCRIPTION_FILE} is not JSON ({e})") from None


def export_onnx_step(
    net: GDKVM, path: str | Path, height: int, width: int, batch: int = 1, opset: int = DEFAULT_OPSET
) -> Path:
    """Export one streaming step (:class:`GDKVMStreamStep`) to ONNX for frames of ``height x width``.

    The sizes are fixed in the graph: feed frames of exactly this size (resize or pad them first). The state
    inputs and outputs are named ``memory``/``next_memory`` and ``prev_prob``/``next_prev_prob``; the first frame
    of a stream gets zeros. Uses torch's ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``):
    the older TorchScript-based one (``dynamo=False``) writes a graph for the decoder's transformer layers (size
    ``base``) that ONNX Runtime rejects.

    Args:
        net: a GDKVM; exported in eval mode on its own device, its mode is restored.
        path: the ``.onnx`` file to write (written completely or not at all).
        height, width: frame size of the stream.
        batch: number of streams run side by side.
        opset: ONNX opset version.

    Returns:
        The path written. Its metadata records ``height``, ``width``, ``batch`` and ``out_channels``.
    """
    import onnx

    if min(height, width, batch) < 1:
        raise ValueError(f"export size must be positive, got height={height}, width={width}, batch={batch}")
    path = Path(path)
    was_training = net.training
    step = GDKVMStreamStep(net).eval()
    parameter = next(net.parameters())
    state = net.init_state(batch, height, width, parameter.device, parameter.dtype)
    if not isinstance(state, GDKVMState):
        kind = f"{type(net).__name__} has a {type(state).__name__}"
        raise TypeError(f"export_onnx_step needs GDKVM's fixed-size state (GDKVMState); {kind}")
    frame = torch.rand(batch, 1, height, width, device=parameter.device, dtype=parameter.dtype)
    partial = _partial_path(path)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # Export the transformer layers as plain attention, not the fused aten::_transformer_encoder_layer_fwd.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            torch.onnx.export(
                step,
                (frame, state.memory, state.prev_prob),
                str(partial),
                input_names=list(ONNX_INPUTS),
                output_names=list(ONNX_OUTPUTS),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(str(partial))
        meta = {"height": height, "width": width, "batch": batch, "out_channels": net.out_channels}
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        onnx.save(model, str(partial))
        partial.replace(path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        partial.unlink(missing_ok=True)
        net.train(was_training)
    return path


class OnnxStream:
    """Runs cine loops through an exported step (:func:`export_onnx_step`) with ONNX Runtime, frame by frame.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).

    Example::

        stream = OnnxStream("model_step.onnx")
        logits_BKHWT = stream.run(video_B1HWT)      # a whole clip, or frame by frame:
        stream.reset()
        for frame_B1HW in frames:
            logits_BKHW = stream.step(frame_B1HW)
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        providers = list(providers or ["CPUExecutionProvider"])
        self.session = onnxruntime.InferenceSession(str(self.path), providers=providers)
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if set(shapes) != set(ONNX_INPUTS):
            raise ValueError(f"{self.path}: inputs {sorted(shapes)} are not those of a GDKVM step {list(ONNX_INPUTS)}")
        self.frame_shape = tuple(int(s) for s in shapes["frame"])
        self.memory_shape = tuple(int(s) for s in shapes["memory"])
        self.prev_prob_shape = tuple(int(s) for s in shapes["prev_prob"])
        self.reset()

    def reset(self) -> None:
        """Start a new stream: empty memory and empty previous mask."""
        self.memory = np.zeros(self.memory_shape, dtype=np.float32)
        self.prev_prob = np.zeros(self.prev_prob_shape, dtype=np.float32)

    def step(self, frame_B1HW: np.ndarray) -> np.ndarray:
        """Segment the next frame ``[B, 1, H, W]`` (float in [0, 1], export size); returns logits ``[B, K, H, W]``."""
        frame = np.ascontiguousarray(frame_B1HW, dtype=np.float32)
        if frame.shape != self.frame_shape:
            raise ValueError(f"{self.path}: frame of shape {frame.shape}, this export takes {self.frame_shape}")
        logits, self.memory, self.prev_prob = self.session.run(
            list(ONNX_OUTPUTS), {"frame": frame, "memory": self.memory, "prev_prob": self.prev_prob}
        )
        return logits

    def run(self, video_B1HWT: np.ndarray) -> np.ndarray:
        """Segment a whole clip ``[B, 1, H, W, T]`` from an empty state; returns logits ``[B, K, H, W, T]``."""
        video = np.asarray(video_B1HWT)
        if video.ndim != 5:
            raise ValueError(f"{self.path}: expected a clip [B, 1, H, W, T], got shape {video.shape}")
        self.reset()
        return np.stack([self.step(video[..., t]) for t in range(video.shape[-1])], axis=-1)


def load_network(
    ckpt: str | Path | None = None,
    config_file: str | Sequence[str] | None = None,
    net_id: str = "network_def",
    size: str | None = None,
    out_channels: int | None = None,
    update_rule: str | None = None,
    kpff: bool | None = None,
    key_in_ckpt: str | None = None,
) -> GDKVM:
    """Build the network that ``ckpt`` was trained as and load its weights.

    Args:
        ckpt: a plain state dict (``torch.save(net.state_dict())``), or a dict holding one under ``key_in_ckpt``;
            None keeps the initial weights of the network the keywords (or ``config_file``) describe.
        config_file: bundle config(s) defining ``net_id``; their ``checkpoint`` is set to ``ckpt``, so a bundle's
            ``inference.json`` builds the network the checkpoint describes.
        size, out_channels, update_rule, kpff: default to what the checkpoint says it was trained with (see
            :mod:`scripts.checkpoint`); given, they must agree with it. Without a checkpoint: small, 2, gated_delta,
            True.

    Returns:
        The network in eval mode, on the CPU.
    """
    keywords = {"size": size, "out_channels": out_channels, "update_rule": update_rule, "kpff": kpff}
    if ckpt is not None and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    if config_file is None and ckpt is not None and not key_in_ckpt:
        return build_network(ckpt, **keywords)
    if config_file is not None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(config_file)
        if ckpt is not None:
            parser["checkpoint"] = str(Path(ckpt).resolve())
        net = parser.get_parsed_content(net_id)
    else:
        defaults = {"size": "small", "out_channels": 2, "update_rule": "gated_delta", "kpff": True}
        net = GDKVM(**{k: v if v is not None else defaults[k] for k, v in keywords.items()})
    if ckpt is not None:
        path = Path(ckpt)
        weights = torch.load(path, map_location="cpu", weights_only=True)
        if key_in_ckpt:
            if key_in_ckpt not in weights:
                raise KeyError(f"{path}: no key {key_in_ckpt!r} (keys: {sorted(weights)[:10]})")
            weights = weights[key_in_ckpt]
        net.load_state_dict(weights)
    return net.eval()


def onnx_command(
    ckpt: str,
    out: str,
    height: int,
    width: int,
    config_file: str | None = None,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    **network: object,
) -> str:
    """``python -m scripts.export onnx``: the streaming step as ONNX (see :func:`export_onnx_step`)."""
    net = load_network(ckpt, config_file, **network)
    return str(export_onnx_step(net, out, height, width, batch=batch, opset=opset))


def torchscript_command(ckpt: str, out: str, config_file: str | None = None, **network: object) -> str:
    """``python -m scripts.export torchscript``: the scripted clip model (see :func:`export_torchscript`) with the
    bundle's ``metadata.json`` and ``inference.json`` (``config_file`` when given) and the checkpoint's description
    as extra files. A checkpoint saved before bundle 0.3.0 has no description: the file is written without one
    (served only beside that ``model.pt``), and a line says so."""
    net = load_network(ckpt, config_file, **network)
    description = read_description(ckpt) if ckpt is not None else None
    if description is None:
        print(f"{ckpt}: the checkpoint does not say what it was trained with; {out} carries no description")
    config = config_file if config_file is not None else BUNDLE_ROOT / "configs" / "inference.json"
    return str(export_torchscript(net, out, description, bundle_extra_files(config)))


if __name__ == "__main__":
    import fire

    fire.Fire({"onnx": onnx_command, "torchscript": torchscript_command})
