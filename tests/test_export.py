"""Export: TorchScript by scripting keeps T dynamic (also through monai's ckpt_export); the ONNX streaming step
matches PyTorch under ONNX Runtime over a stream of frames."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle.scripts import ckpt_export
from monai.data import load_net_with_metadata

from scripts.export import (
    GDKVMStreamStep,
    OnnxStream,
    export_onnx_step,
    export_torchscript,
    load_network,
    read_torchscript_description,
    torchscript_command,
)
from scripts.gdkvm import GDKVM

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"

torch.set_num_threads(2)


def small_net(**kwargs) -> GDKVM:
    """A small net whose gates depend on the state (beta_proj starts at zero, so it is perturbed here)."""
    torch.manual_seed(0)
    net = GDKVM(size="small", **kwargs)
    if net.memory.gates is not None:
        torch.nn.init.normal_(net.memory.gates.beta_proj.weight, std=0.5)
        torch.nn.init.normal_(net.memory.gates.alpha_proj.weight, std=0.5)
    return net.eval()


def script(net: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13: "torch.jit.script is deprecated"
        return torch.jit.script(net)


def test_scripted_keeps_frames_dynamic_and_saves(tmp_path) -> None:
    net = small_net(out_channels=4)
    scripted = script(net)  # no example input: nothing about T (or H, W) is fixed
    with torch.no_grad():
        for batch, frames, (height, width) in ((1, 7, (36, 44)), (2, 1, (20, 28)), (1, 3, (32, 32))):
            video = torch.rand(batch, 1, height, width, frames)
            expected = net(video)
            got = scripted(video)
            assert got.shape == (batch, 4, height, width, frames)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    path = export_torchscript(net, tmp_path / "model.ts")
    loaded = torch.jit.load(str(path))
    video = torch.rand(1, 1, 36, 44, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), net(video), atol=1e-5, rtol=0)
    assert not net.training and not list(tmp_path.glob(".*"))
    assert read_torchscript_description(path) is None  # no description given, none stored


def test_torchscript_command_stores_what_the_checkpoint_was_trained_with(tmp_path, capsys) -> None:
    """``python -m scripts.export torchscript`` keeps the checkpoint's description (a scripted network drops its
    ``_extra_state``) beside ckpt_export's metadata.json and inference.json; bad files are refused by name."""
    from scripts.checkpoint import read_description

    torch.manual_seed(0)
    trained_with = {"labels": "lv", "spatial_size": 64, "keep_aspect": True}
    trained = GDKVM(size="small", out_channels=2, trained_with=trained_with)
    ckpt = tmp_path / "model.pt"
    torch.save(trained.state_dict(), ckpt)
    out = Path(torchscript_command(str(ckpt), str(tmp_path / "out" / "model.ts")))
    description = read_torchscript_description(out)
    assert description == json.loads(json.dumps(read_description(ckpt))) and description["trained_with"] == trained_with
    extra = {"metadata.json": "", "inference.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert (
        json.loads(extra["metadata.json"])["version"]
        == json.loads((BUNDLE / "configs/metadata.json").read_text())["version"]
    )
    assert "inferer" in json.loads(extra["inference.json"])
    video = torch.rand(1, 1, 32, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), trained.eval()(video), atol=1e-5, rtol=0)
    # the MONAI Deploy app serves this file on its own, as trained (its model-folder check imports no Deploy code)
    sys.path.insert(0, str(BUNDLE.parent / "tools" / "monai_deploy"))
    try:
        from model_folder import served_model

        served = served_model(out)
    finally:
        sys.path.remove(str(BUNDLE.parent / "tools" / "monai_deploy"))
    assert served.path == out and served.settings["spatial_size"] == 64 and served.settings["labels"] == "lv"
    # a checkpoint without a description (saved before bundle 0.3.0): written without one, and said
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in trained.state_dict().items() if not k.endswith("_extra_state")}, old)
    assert read_torchscript_description(torchscript_command(str(old), str(tmp_path / "old.ts"), size="small")) is None
    assert "does not say what it was trained with" in capsys.readouterr().out
    (tmp_path / "text.ts").write_text("not a model")
    with pytest.raises(ValueError, match=r"text\.ts: not a TorchScript file"):
        read_torchscript_description(tmp_path / "text.ts")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"update_rule": "additive", "kpff": False},
        {"update_rule": "delta"},
        {"update_rule": "delta_beta", "refine_blocks": 1},  # the decoder's TransformerEncoder
        {"update_rule": "decay_alpha"},
    ],
)
def test_every_rule_scripts(kwargs: dict) -> None:
    net = small_net(out_channels=2, **kwargs)
    video = torch.rand(1, 1, 32, 32, 2)
    with torch.no_grad():
        torch.testing.assert_close(script(net)(video), net(video), atol=1e-5, rtol=0)


def test_scripted_rejects_bad_input_like_eager() -> None:
    scripted = script(small_net(out_channels=2))
    with pytest.raises(Exception, match=r"\[B, 1, H, W, T\], got \(1, 3, 32, 32, 2\)"):
        scripted(torch.rand(1, 3, 32, 32, 2))


def test_monai_ckpt_export_without_example_keeps_frames_dynamic(tmp_path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    meta = {"version": "0.0.1", "name": "export probe", "network_data_format": {}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = {"network_def": {"_target_": "scripts.gdkvm.GDKVM", "size": "small", "out_channels": 2}}
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(config))
    net = small_net(out_channels=2)
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "models" / "model.ts"),
            ckpt_file=str(tmp_path / "models" / "model.pt"),
            meta_file=str(tmp_path / "configs" / "metadata.json"),
            config_file=str(tmp_path / "configs" / "inference.json"),
        )
    loaded = torch.jit.load(str(tmp_path / "models" / "model.ts"))
    video = torch.rand(1, 1, 36, 44, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), net(video), atol=1e-5, rtol=0)
    _, saved_meta, extra = load_net_with_metadata(
        str(tmp_path / "models" / "model.ts"), more_extra_files=["inference.json"]
    )
    assert saved_meta["version"] == "0.0.1"
    assert json.loads(extra["inference.json"]) == config


def test_onnx_step_matches_pytorch_over_a_stream(tmp_path) -> None:
    net = small_net(out_channels=3)
    height, width, frames = 36, 44, 12  # padded to 48 x 48 inside
    path = export_onnx_step(net, tmp_path / "step.onnx", height, width, batch=2)
    stream = OnnxStream(path)
    assert stream.frame_shape == (2, 1, height, width)
    video = torch.rand(2, 1, height, width, frames)
    with torch.no_grad():
        expected = net(video).numpy()
    got = stream.run(video.numpy())
    assert got.shape == expected.shape == (2, 3, height, width, frames)
    assert np.abs(got - expected).max() < 1e-4
    # the step warm-starts a stream's first frame (an ONNX If on an empty state), as the network does
    net.warm_start = False
    with torch.no_grad():
        assert np.abs(got[..., 0] - net(video).numpy()[..., 0]).max() > 1e-3
    net.warm_start = True
    # frame by frame after a reset gives the same stream; the carried state matches PyTorch's
    stream.reset()
    step = GDKVMStreamStep(net).eval()
    state = net.init_state(2, height, width)
    memory, prev_prob = state.memory, state.prev_prob
    for t in range(4):
        logits = stream.step(video[..., t].numpy())
        with torch.no_grad():
            _, memory, prev_prob = step(video[..., t], memory, prev_prob)
        assert np.abs(logits - expected[..., t]).max() < 1e-4
        assert np.abs(stream.memory - memory.numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="step.onnx.*this export takes"):
        stream.step(np.zeros((2, 1, height + 1, width), dtype=np.float32))


def test_onnx_command_line_helpers(tmp_path) -> None:
    import onnx

    torch.save(small_net(out_channels=2).state_dict(), tmp_path / "model.pt")
    net = load_network(tmp_path / "model.pt", size="small", out_channels=2)
    assert not net.training
    path = export_onnx_step(net, tmp_path / "sub" / "step.onnx", 32, 32)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == {"height": "32", "width": "32", "batch": "1", "out_channels": "2"}
    # the decoder's transformer layers (size "base" has 8) export and run too
    net = small_net(out_channels=2, refine_blocks=1)
    video = torch.rand(1, 1, 32, 32, 2)
    got = OnnxStream(export_onnx_step(net, tmp_path / "refine.onnx", 32, 32)).run(video.numpy())
    with torch.no_grad():
        assert np.abs(got - net(video).numpy()).max() < 1e-4
    assert torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_network(tmp_path / "nope.pt")


def test_exports_build_the_network_the_checkpoint_describes(tmp_path) -> None:
    from scripts.gdkvm import GDKVMSoftmaxMemory
    from scripts.gdkvm.description import CheckpointMismatchError

    ablation = small_net(out_channels=4, update_rule="delta", kpff=False)
    torch.save(ablation.state_dict(), tmp_path / "model.pt")
    video = torch.rand(1, 1, 32, 32, 2)
    for net in (
        load_network(tmp_path / "model.pt"),  # no keywords: the checkpoint says what it is
        load_network(tmp_path / "model.pt", config_file=str(BUNDLE / "configs" / "inference.json")),
    ):
        assert (net.out_channels, net.update_rule, net.kpff) == (4, "delta", False)
        with torch.no_grad():
            torch.testing.assert_close(net(video), ablation.eval()(video))
    with pytest.raises(CheckpointMismatchError, match="kpff: checkpoint False, this network True"):
        load_network(tmp_path / "model.pt", kpff=True)
    torch.save(GDKVMSoftmaxMemory(size="small").state_dict(), tmp_path / "softmax.pt")
    assert isinstance(load_network(tmp_path / "softmax.pt"), GDKVMSoftmaxMemory)
