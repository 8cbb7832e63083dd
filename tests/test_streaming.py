"""Streaming engine, many streams in one step and the streaming Inferer, on the CPU (eager fallback).

The CUDA-graph path is checked on a GPU by ``bench/gpu_streaming.sh`` (agreement with eager per precision)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fixtures_echo import phantom, save_nifti_hwt

from scripts.gdkvm import GDKVM, GDKVMSoftmaxMemory
from scripts.streaming import StreamBatch, StreamingEngine, StreamingInferer

torch.set_num_threads(2)


def small_net(**kwargs) -> GDKVM:
    """A small net whose gates depend on the state (beta_proj starts at zero, so it is perturbed here)."""
    torch.manual_seed(0)
    net = GDKVM(size="small", **kwargs)
    torch.nn.init.normal_(net.memory.gates.beta_proj.weight, std=0.5)
    torch.nn.init.normal_(net.memory.gates.alpha_proj.weight, std=0.5)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> GDKVM:
    return small_net(out_channels=3)


def test_eager_engine_equals_forward_exactly_and_says_so_once(net, caplog) -> None:
    video = torch.rand(2, 1, 36, 44, 5)  # 36 x 44 is padded inside to 48 x 48
    with caplog.at_level(logging.INFO, logger="scripts.streaming"):
        engine = StreamingEngine(net, batch_size=2, height=36, width=44)
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.streaming"]
    assert len(lines) == 1 and "eager" in lines[0] and "CUDA graphs need a CUDA device" in lines[0], lines
    assert engine.mode == "eager" and engine.graph is None
    with torch.no_grad():
        expected = net(video)
    got = engine.run(video)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 36, 44, 5)
    assert torch.equal(got, expected)
    # frame by frame, inside inference_mode, after a reset: the same again; the state has a fixed size
    engine.reset()
    with torch.inference_mode():
        frames = [engine.step(video[..., t]) for t in range(5)]
    assert torch.equal(torch.stack(frames, dim=-1), expected)
    state = engine.state()
    assert state.memory.shape == (2, 2, net.value_dim, net.key_dim) and state.prev_prob.shape == (2, 2, 48, 48)


def test_engine_refuses_what_it_cannot_step(net) -> None:
    engine = StreamingEngine(net, batch_size=1, height=32, width=32, backend="eager")
    with pytest.raises(ValueError, match=r"frame of shape \(1, 1, 32, 48\), this engine takes \(1, 1, 32, 32\)"):
        engine.step(torch.rand(1, 1, 32, 48))
    with pytest.raises(ValueError, match="stream precision must be one of"):
        StreamingEngine(net, 1, 32, 32, precision="int8")
    with pytest.raises(TypeError, match="fixed-size state"):
        StreamingEngine(GDKVMSoftmaxMemory(size="small").eval(), 1, 32, 32)
    with pytest.raises(ValueError, match="stream backend must be one of"):
        StreamingEngine(net, 1, 32, 32, backend="tensorrt")
    with pytest.raises(ValueError, match="stream backend must be one of"):
        StreamingInferer(backend="graph")


def test_compiled_engine_matches_forward_on_cpu(net, caplog) -> None:
    """backend="compile" is torch.compile(mode="reduce-overhead") of the step (Inductor's C++ kernels on the CPU;
    about a minute of compilation on 2 cores): its logits match GDKVM.forward over a clip, frame by frame, after a
    reset."""
    video = torch.rand(2, 1, 36, 44, 4)  # padded inside to 48 x 48
    with caplog.at_level(logging.INFO, logger="scripts.streaming"):
        engine = StreamingEngine(net, batch_size=2, height=36, width=44, backend="compile")
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.streaming"]
    assert engine.mode == "compile", engine.fallback_reason
    assert len(lines) == 1 and "torch.compile(mode='reduce-overhead') step on cpu" in lines[0], lines
    with torch.no_grad():
        expected = net(video)
    assert not engine.memory.any() and not engine.prev_prob.any()  # the warm-up's state was reset
    got = engine.run(video)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    engine.reset([1])  # one stream restarts: row 1 from empty, row 0 goes on
    with torch.inference_mode():
        step = engine.step(video[..., 0])
    torch.testing.assert_close(step[1], expected[1, ..., 0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(step[0], expected[0, ..., 0], atol=1e-3)  # row 0 kept its 4 frames of memory


def test_compiled_engines_past_dynamos_limit_say_they_run_eager(net, caplog, monkeypatch) -> None:
    """Dynamo compiles the step once per frame size; past its recompile limit it would run the step uncompiled while
    the engine said "compile". Engines of a size already compiled reuse it; a new size past the limit runs eagerly and
    says so. (Dynamo's eager backend stands in for Inductor: the same tracing and guards, no C++ compile.)"""
    import torch._dynamo

    import scripts.streaming as streaming

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, **kw: real_compile(function, backend="eager", dynamic=False))
    monkeypatch.setattr(streaming, "COMPILED_ENGINES_LIMIT", 2)
    torch._dynamo.reset()
    try:
        first, second = (StreamingEngine(net, 1, 16 * k, 16, backend="compile") for k in (1, 2))
        again = StreamingEngine(net, 1, 16, 16, backend="compile")  # the first size: no new compilation
        assert (first.mode, second.mode, again.mode) == ("compile", "compile", "compile")
        with caplog.at_level(logging.INFO, logger="scripts.streaming"):
            third = StreamingEngine(net, 1, 48, 16, backend="compile")
        assert third.mode == "eager" and "recompile" in third.fallback_reason.lower(), third.fallback_reason
        assert any("eager per-frame step (torch.compile failed" in r.getMessage() for r in caplog.records)
        video = torch.rand(1, 1, 48, 16, 3)
        with torch.no_grad():
            assert torch.equal(third.run(video), net(video))
    finally:
        torch._dynamo.reset()


def test_engine_runs_eager_and_says_why_when_compilation_fails(net, caplog, monkeypatch) -> None:
    def broken_compile(function, **kwargs):
        def compiled(*args):
            raise RuntimeError("InductorError: no working C++ compiler\nfound")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    video = torch.rand(1, 1, 32, 32, 3)
    with caplog.at_level(logging.INFO, logger="scripts.streaming"):
        engine = StreamingEngine(net, batch_size=1, height=32, width=32, backend="compile")
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.streaming"]
    assert engine.mode == "eager" and len(lines) == 1, lines
    reason = "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found)"
    assert f"eager per-frame step ({reason})" in lines[0] and engine.fallback_reason == reason
    with torch.no_grad():
        assert torch.equal(engine.run(video), net(video))


def test_reduced_precision_runs_under_autocast_with_float32_state(net) -> None:
    video = torch.rand(1, 1, 32, 32, 3)
    engine = StreamingEngine(net, batch_size=1, height=32, width=32, precision="bfloat16")
    got = engine.run(video)
    assert engine.precision == "bfloat16" and got.dtype == torch.float32 and torch.isfinite(got).all()
    assert engine.memory.dtype == torch.float32 and engine.prev_prob.dtype == torch.float32
    with torch.no_grad():
        expected = net(video)
    agree = (got.argmax(1) == expected.argmax(1)).float().mean()
    assert agree > 0.9, float(agree)  # random weights: most pixels are far from a decision boundary


def test_many_streams_join_and_leave_at_any_frame_without_changing_the_others(net) -> None:
    """Each stream's logits equal those of running it alone, whatever the others do in the other slots."""
    torch.manual_seed(1)
    joins = {0: ["a"], 1: ["b"], 3: ["c"], 5: ["d"]}  # d joins in the slot that b left at the same frame
    leaves = {5: ["b"], 8: ["c", "d"]}
    skipped = {(4, "c")}  # a probe that dropped a frame: c keeps its state and goes on at frame 5
    frames_of = {"a": 9, "b": 4, "c": 4, "d": 3}
    videos = {s: torch.rand(1, 1, 32, 32, n) for s, n in frames_of.items()}
    streams = StreamBatch(net, capacity=3, height=32, width=32)
    got: dict[str, list[torch.Tensor]] = {s: [] for s in frames_of}
    for t in range(9):
        for s in leaves.get(t, []):
            streams.leave(s)
        for s in joins.get(t, []):
            streams.join(s)
        frames = {s: videos[s][0, :, :, :, len(got[s])] for s in streams.active if (t, s) not in skipped}
        for s, logits in streams.step(frames).items():
            assert logits.shape == (3, 32, 32)
            got[s].append(logits)
        if t == 5:
            assert streams.slots["d"] == 1  # b's slot, whose state was reset on joining
    for s, n in frames_of.items():
        with torch.no_grad():
            alone = net(videos[s])
        assert len(got[s]) == n, s
        torch.testing.assert_close(torch.stack(got[s], dim=-1), alone[0], atol=1e-5, rtol=0, msg=s)


def test_stream_batch_refuses_unknown_streams_and_full_slots(net) -> None:
    streams = StreamBatch(net, capacity=1, height=32, width=32)
    streams.join("x")
    with pytest.raises(ValueError, match="all 1 slots are in use"):
        streams.join("y")
    with pytest.raises(ValueError, match="already joined"):
        streams.join("x")
    with pytest.raises(KeyError, match="have not joined"):
        streams.step({"y": torch.rand(32, 32)})
    with pytest.raises(ValueError, match="expected \\(32, 32\\)"):
        streams.step({"x": torch.rand(1, 16, 16)})


def test_inferer_matches_simple_inferer_on_cpu_and_falls_back_for_other_networks(net, caplog) -> None:
    video = torch.rand(1, 1, 36, 44, 4)
    with torch.no_grad():
        expected = net(video)
        assert torch.equal(StreamingInferer(enabled=False)(video, net), expected)
        inferer = StreamingInferer(enabled=True)
        assert torch.equal(inferer(video, net), expected)
        assert torch.equal(inferer(video, net), expected)  # the cached engine starts each clip empty
        assert len(inferer.engines) == 1
        softmax = GDKVMSoftmaxMemory(size="small").eval()
        with caplog.at_level(logging.INFO, logger="scripts.streaming"):
            torch.testing.assert_close(inferer(video, softmax), softmax(video))
    assert any("no fixed-size state" in r.getMessage() for r in caplog.records)


def test_inference_json_uses_the_engine_without_changing_cpu_results(tmp_path) -> None:
    """inference.json's inferer is the streaming one; switched on with --stream_engine True the CPU labels are the
    same as with it off, voxel for voxel."""
    import nibabel as nib
    from monai.bundle import ConfigWorkflow

    from scripts.streaming import StreamingInferer as Loaded  # the class the config names

    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    torch.save(GDKVM(size="small", out_channels=2).state_dict(), models / "model.pt")
    data = tmp_path / "cines"
    data.mkdir()
    save_nifti_hwt(phantom(40, 36, 4, seed=3)[0], data / "cine.nii.gz")
    labels = {}
    for engine in (False, True):
        out = tmp_path / f"out_{engine}"
        workflow = ConfigWorkflow(
            config_file="bundle/configs/inference.json",
            workflow_type="infer",
            bundle_root="bundle",
            dataset_dir=str(data),
            output_dir=str(out),
            ckpt_dir=str(models),
            network_size="small",
            spatial_size=48,
            write_overlays=False,
            write_clinical_report=False,
            stream_engine=engine,
        )
        workflow.initialize()
        inferer = workflow.parser.get_parsed_content("inferer")
        assert isinstance(inferer, Loaded) and inferer.enabled is engine and inferer.backend == "auto"
        workflow.run()
        workflow.finalize()
        labels[engine] = np.asarray(nib.load(out / "cine_seg.nii.gz").dataobj)
    assert labels[True].shape[-1] == 4 and np.array_equal(labels[True], labels[False])
