"""Triton model repository: the config parses with tritonclient's model-config protobuf and names exactly the ONNX
step's inputs, outputs, types and shapes; ONNX Runtime, fed each state output as the next state input (what the
server's implicit state does), reproduces PyTorch streaming; the client streams a cine as one sequence and writes
what inference.json writes. No Triton server runs here: a fake client object answers with ONNX Runtime."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt

pytest.importorskip("tritonclient.grpc")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402

from scripts.gdkvm import GDKVM  # noqa: E402
from scripts.triton_repository import main as write_repository_command  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
torch.set_num_threads(2)


def _client_module():
    spec = importlib.util.spec_from_file_location("triton_client", REPO_ROOT / "tools" / "triton_serving" / "client.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["triton_client"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    """A self-describing small checkpoint (trained at 32 x 32) and the repository the command writes from it."""
    root = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    trained_with = {"labels": "lv", "spatial_size": SIZE, "keep_aspect": True}
    net = GDKVM(size="small", out_channels=2, trained_with=trained_with)
    torch.nn.init.normal_(net.memory.gates.beta_proj.weight, std=0.5)
    torch.nn.init.normal_(net.memory.gates.alpha_proj.weight, std=0.5)
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    write_repository_command(ckpt=str(root / "models" / "model.pt"), out=str(root / "triton_models"))
    folder = root / "triton_models" / "gdkvm_echo"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {"root": root, "folder": folder, "config": config, "net": net.eval()}


def test_command_writes_the_layout_and_refuses_to_overwrite(repo) -> None:
    folder = repo["folder"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert folder.stat().st_mode & 0o755 == 0o755  # readable by a server running as another user
    with pytest.raises(FileExistsError, match="exists"):
        write_repository_command(ckpt=str(repo["root"] / "models" / "model.pt"), out=str(folder.parent))


def test_config_parses_and_names_exactly_the_onnx_models_tensors(repo) -> None:
    import onnx

    config = repo["config"]
    assert (config.name, config.backend, config.max_batch_size) == ("gdkvm_echo", "onnxruntime", 0)
    model = onnx.load(str(repo["folder"] / "1" / "model.onnx"))
    onnx_types = {1: model_config_pb2.TYPE_FP32}

    def described(values) -> dict:
        return {
            v.name: (onnx_types[v.type.tensor_type.elem_type], [d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values
        }

    onnx_inputs, onnx_outputs = described(model.graph.input), described(model.graph.output)
    states = config.sequence_batching.state
    config_inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
    config_inputs.update({s.input_name: (s.data_type, list(s.dims)) for s in states})
    config_outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    config_outputs.update({s.output_name: (s.data_type, list(s.dims)) for s in states})
    assert config_inputs == onnx_inputs and config_outputs == onnx_outputs
    assert onnx_inputs["frame"][1] == [1, 1, SIZE, SIZE] and onnx_outputs["logits"][1] == [1, 2, SIZE, SIZE]
    net = repo["net"]
    assert onnx_inputs["memory"][1] == [1, 1, net.value_dim, net.key_dim] and onnx_inputs["prev_prob"][1] == [
        1,
        1,
        32,
        32,
    ]
    assert [(s.input_name, s.output_name) for s in states] == [
        ("memory", "next_memory"),
        ("prev_prob", "next_prev_prob"),
    ]
    for state in states:  # zero initial state of the state's own type and shape
        assert len(state.initial_state) == 1, state
        initial = state.initial_state[0]
        assert initial.zero_data and initial.data_type == state.data_type and list(initial.dims) == list(state.dims)
    assert config.parameters["keep_aspect"].string_value == "true"
    assert config.parameters["spatial_size"].string_value == f"{SIZE},{SIZE}"
    assert (
        config.instance_group[0].count == 1
        and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    )


def test_onnx_runtime_state_loop_reproduces_pytorch_streaming(repo) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(repo["folder"] / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    config = repo["config"]
    state = {s.input_name: np.zeros(list(s.initial_state[0].dims), np.float32) for s in config.sequence_batching.state}
    video = torch.rand(1, 1, SIZE, SIZE, 12)
    outputs = ["logits"] + [s.output_name for s in config.sequence_batching.state]
    got = []
    for t in range(video.shape[-1]):
        results = dict(zip(outputs, session.run(outputs, {"frame": video[..., t].numpy(), **state})))
        state = {s.input_name: results[s.output_name] for s in config.sequence_batching.state}
        got.append(results["logits"])
    with torch.no_grad():
        expected = repo["net"](video).numpy()
    difference = float(np.abs(np.stack(got, axis=-1) - expected).max())
    print(f"ONNX Runtime state loop vs PyTorch streaming over 12 frames: max abs difference {difference:.2e}")
    assert difference < 1e-4


class FakeTriton:
    """The two calls of ``tritonclient.grpc.InferenceServerClient`` the client makes, answered as Triton's sequence
    batcher with implicit state does (per the server docs): zero state on ``sequence_start``, each state output
    fed back as the next state input of the same sequence, the state dropped on ``sequence_end``."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime

        self.config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        self.session = onnxruntime.InferenceSession(
            str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.states: dict[int, dict[str, np.ndarray]] = {}
        self.requests: list[tuple[int, bool, bool, tuple]] = []

    def get_model_config(self, model: str) -> service_pb2.ModelConfigResponse:
        assert model == self.config.name
        return service_pb2.ModelConfigResponse(config=self.config)

    def infer(self, model, inputs, outputs=None, sequence_id=0, sequence_start=False, sequence_end=False, **kwargs):
        assert model == self.config.name and sequence_id != 0
        states = self.config.sequence_batching.state
        if sequence_start:
            self.states[sequence_id] = {
                s.input_name: np.zeros(list(s.initial_state[0].dims), np.float32) for s in states
            }
        elif sequence_id not in self.states:
            raise RuntimeError(f"inference request for sequence {sequence_id} must specify the START flag")
        feeds = {}
        for tensor in inputs:
            assert tensor.datatype() == "FP32"
            feeds[tensor.name()] = np.frombuffer(tensor._get_content(), np.float32).reshape(tensor.shape())
        self.requests.append((sequence_id, sequence_start, sequence_end, feeds["frame"].shape))
        names = [o.name() for o in outputs] + [s.output_name for s in states]
        results = dict(zip(names, self.session.run(names, {**feeds, **self.states[sequence_id]})))
        self.states[sequence_id] = {s.input_name: results[s.output_name] for s in states}
        if sequence_end:
            del self.states[sequence_id]
        requested = {o.name(): results[o.name()] for o in outputs}
        return type("Result", (), {"as_numpy": lambda self, name: requested[name]})()


def test_client_streams_each_cine_as_a_sequence_and_writes_what_inference_json_writes(repo, tmp_path) -> None:
    import nibabel as nib
    from monai.bundle import ConfigWorkflow

    data = tmp_path / "cines"
    data.mkdir()
    save_nifti_hwt(phantom(40, 36, 5, seed=3)[0], data / "a.nii.gz")
    save_nifti_hwt(phantom(36, 44, 4, seed=4)[0], data / "b.nii.gz")
    server = FakeTriton(repo["folder"])
    client = _client_module()
    options = {"write_overlays": False, "write_clinical_report": True}
    client.segment_files(server, "gdkvm_echo", [data / "a.nii.gz", data / "b.nii.gz"], tmp_path / "triton", **options)
    flags = [(r[0], r[1], r[2]) for r in server.requests]
    assert flags == [(1, True, False), (1, False, False), (1, False, False), (1, False, False), (1, False, True),
                     (2, True, False), (2, False, False), (2, False, False), (2, False, True)]  # fmt: skip
    assert {r[3] for r in server.requests} == {(1, 1, SIZE, SIZE)} and not server.states

    workflow = ConfigWorkflow(
        config_file="bundle/configs/inference.json",
        workflow_type="infer",
        bundle_root="bundle",
        dataset_dir=str(data),
        output_dir=str(tmp_path / "bundle"),
        ckpt_dir=str(repo["root"] / "models"),
        write_overlays=False,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    for stem in ("a", "b"):
        written = {p.name.replace(stem, "", 1) for p in (tmp_path / "triton").glob(f"{stem}_*")}
        expected = {p.name.replace(stem, "", 1) for p in (tmp_path / "bundle").glob(f"{stem}_*")}
        assert written == expected and "_seg.nii.gz" in written, (written, expected)
        ours = nib.load(tmp_path / "triton" / f"{stem}_seg.nii.gz")
        theirs = nib.load(tmp_path / "bundle" / f"{stem}_seg.nii.gz")
        assert ours.shape == theirs.shape and np.allclose(ours.affine, theirs.affine)
        agree = np.mean(np.asarray(ours.dataobj) == np.asarray(theirs.dataobj))
        print(f"Triton client vs inference.json, {stem}_seg.nii.gz: {agree:.6f} of the voxels equal")
        assert agree > 0.999, f"{stem}: {agree:.5f} of the voxels agree"  # ONNX Runtime vs PyTorch: ~1e-6 apart
