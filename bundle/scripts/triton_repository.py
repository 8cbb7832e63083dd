"""An NVIDIA Triton model repository for GDKVM's streaming step, with the recurrent state kept by the server.

One command writes ``<out>/<name>/1/model.onnx`` (the ONNX step of :func:`scripts.export.export_onnx_step`:
``frame [1, 1, H, W]`` + state -> ``logits [1, K, H, W]`` + next state) and ``<out>/<name>/config.pbtxt`` for the
``onnxruntime`` backend with ``max_batch_size: 0`` and ``sequence_batching`` *implicit state*: one ``state`` entry
for ``memory -> next_memory`` (``[1, N, Cv, Ck]``) and one for ``prev_prob -> next_prev_prob`` (``[1, N, Hp, Wp]``),
each starting from zeros (``initial_state { zero_data: true }``) on a request with ``sequence_start``. A client
therefore sends only frames, each with its stream's ``sequence_id`` (``tools/triton_serving/client.py``); the
server feeds each state output back as the next request's state input. The state tensors are not listed among the
model's ``input``/``output`` (Triton's docs: listing an output state is for debugging only). Each model instance
serves one sequence at a time (``max_batch_size: 0``); ``--instances N`` serves N streams at once.

The config's ``parameters`` carry the preprocessing the model was trained with (``spatial_size``, ``keep_aspect``,
``labels``), which the client reads back from the server (``get_model_config``).

Command line (from the bundle folder, or with ``PYTHONPATH=bundle``)::

    python -m scripts.triton_repository --ckpt models/model.pt --out triton_models --height 128 --width 128

``--height``/``--width`` default to the checkpoint's ``spatial_size``; ``--kind KIND_CPU`` for a CPU server.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from scripts.checkpoint import trained_settings
from scripts.export import DEFAULT_OPSET, ONNX_INPUTS, ONNX_OUTPUTS, export_onnx_step, load_network

DEFAULT_NAME = "gdkvm_echo"
STATE = (("memory", "next_memory"), ("prev_prob", "next_prev_prob"))
IDLE_MICROSECONDS = 60_000_000
# ONNX TensorProto element type -> Triton data type (the ones a GDKVM step uses).
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64", 6: "TYPE_INT32", 9: "TYPE_BOOL"}


def onnx_signature(path: str | Path) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """The ONNX model's ``{"inputs": {name: (triton type, dims)}, "outputs": {...}}`` (fixed dims only)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> dict[str, tuple[str, list[int]]]:
        found = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            if tensor.elem_type not in TRITON_TYPES:
                raise ValueError(f"{path}: {value.name} has ONNX element type {tensor.elem_type}, not mapped to Triton")
            found[value.name] = (TRITON_TYPES[tensor.elem_type], dims)
        return found

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def triton_config(
    name: str,
    onnx_path: str | Path,
    instances: int = 1,
    kind: str = "KIND_GPU",
    parameters: dict[str, Any] | None = None,
    max_sequence_idle_microseconds: int = IDLE_MICROSECONDS,
) -> str:
    """``config.pbtxt`` text for the ONNX step at ``onnx_path`` (its names, types and shapes, read from the file).

    Args:
        name: the model's name in the repository.
        onnx_path: the exported step (inputs ``frame``, ``memory``, ``prev_prob``; outputs ``logits``,
            ``next_memory``, ``next_prev_prob``).
        instances: model instances (each serves one stream at a time).
        kind: ``KIND_GPU`` or ``KIND_CPU``.
        parameters: string parameters stored in the config (the client reads ``spatial_size``, ``keep_aspect``).
        max_sequence_idle_microseconds: a stream idle this long is ended by the server and its state dropped.
    """
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise ValueError(f"kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    signature = onnx_signature(onnx_path)
    inputs, outputs = signature["inputs"], signature["outputs"]
    if sorted(inputs) != sorted(ONNX_INPUTS) or sorted(outputs) != sorted(ONNX_OUTPUTS):
        raise ValueError(f"{onnx_path}: inputs {sorted(inputs)} / outputs {sorted(outputs)} are not a GDKVM step's")
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', "max_batch_size: 0"]
    frame_type, frame_dims = inputs["frame"]
    logits_type, logits_dims = outputs["logits"]
    lines += ["input [", f'  {{ name: "frame" data_type: {frame_type} dims: {_dims(frame_dims)} }}', "]"]
    lines += ["output [", f'  {{ name: "logits" data_type: {logits_type} dims: {_dims(logits_dims)} }}', "]"]
    lines += ["sequence_batching {", f"  max_sequence_idle_microseconds: {int(max_sequence_idle_microseconds)}"]
    lines.append("  state [")
    entries = []
    for input_name, output_name in STATE:
        data_type, dims = inputs[input_name]
        if outputs[output_name] != (data_type, dims):
            raise ValueError(f"{onnx_path}: {output_name} {outputs[output_name]} differs from {input_name}")
        entries.append(
            "\n".join(
                [
                    "    {",
                    f'      input_name: "{input_name}"',
                    f'      output_name: "{output_name}"',
                    f"      data_type: {data_type}",
                    f"      dims: {_dims(dims)}",
                    "      initial_state {",
                    f"        data_type: {data_type}",
                    f"        dims: {_dims(dims)}",
                    "        zero_data: true",
                    f'        name: "empty {input_name}"',
                    "      }",
                    "    }",
                ]
            )
        )
    lines += [",\n".join(entries), "  ]", "}"]
    lines += ["instance_group [", f"  {{ count: {int(instances)} kind: {kind} }}", "]"]
    if parameters:
        params = [f'  {{ key: "{k}" value: {{ string_value: "{str(v).lower() if isinstance(v, bool) else v}" }} }}'
                  for k, v in parameters.items()]  # fmt: skip
        lines += ["parameters [", ",\n".join(params), "]"]
    return "\n".join(lines) + "\n"


def write_repository(
    net: Any,
    out: str | Path,
    height: int,
    width: int,
    name: str = DEFAULT_NAME,
    instances: int = 1,
    kind: str = "KIND_GPU",
    parameters: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write ``<out>/<name>/1/model.onnx`` and ``<out>/<name>/config.pbtxt`` (all or nothing).

    Args:
        net: a GDKVM (exported in eval mode, batch 1, frames of ``height x width``).
        out: the model repository folder (created; other models in it are left alone).
        name, instances, kind, parameters: see :func:`triton_config`.
        overwrite: replace an existing ``<out>/<name>``; otherwise FileExistsError.

    Returns:
        The model's folder ``<out>/<name>``.
    """
    out = Path(out)
    target = out / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass --overwrite True to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        onnx_path = export_onnx_step(net, staging / "1" / "model.onnx", height, width, batch=1, opset=opset)
        config = triton_config(name, onnx_path, instances=instances, kind=kind, parameters=parameters)
        (staging / "config.pbtxt").write_text(config)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(
    ckpt: str = "models/model.pt",
    out: str = "triton_models",
    height: int | None = None,
    width: int | None = None,
    name: str = DEFAULT_NAME,
    instances: int = 1,
    kind: str = "KIND_GPU",
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    **network: Any,
) -> None:
    """``python -m scripts.triton_repository``: the repository for the network ``ckpt`` describes (see module).

    ``network``: ``--size small --out_channels 2`` etc., needed only for a checkpoint saved before bundle 0.3.0
    (as ``python -m scripts.export``).
    """
    settings = trained_settings(ckpt, defaults={"spatial_size": 256, "keep_aspect": True, "labels": "lv"})
    size = settings["spatial_size"]
    size = size if isinstance(size, (list, tuple)) else (size, size)
    height = int(height or size[0])
    width = int(width or size[1])
    parameters = {"spatial_size": f"{height},{width}", "keep_aspect": bool(settings["keep_aspect"])}
    parameters["labels"] = settings["labels"]
    net = load_network(ckpt, **network)
    folder = write_repository(net, out, height, width, name, instances, kind, parameters, opset, overwrite)
    print(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'} ({height} x {width} frames)")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
