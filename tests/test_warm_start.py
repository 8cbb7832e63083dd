"""The warm start (``GDKVM(warm_start=True)``, in eval mode): a stream's first frame is segmented once from the empty
state and that mask becomes the first frame's previous mask; the same in every door that steps the network."""

from __future__ import annotations

import copy

import torch

from scripts.gdkvm import GDKVM, GDKVMState
from scripts.gdkvm.network import fresh_rows
from scripts.streaming import StreamBatch, StreamingEngine

torch.set_num_threads(2)


def nets(**kwargs) -> tuple[GDKVM, GDKVM]:
    """The same weights with the warm start (default) and without it (the paper's first frame), in eval mode."""
    torch.manual_seed(0)
    warm = GDKVM(size="small", **kwargs).eval()
    cold = copy.deepcopy(warm)
    cold.warm_start = False
    return warm, cold


def reference_loop(cold: GDKVM, video_B1HWT: torch.Tensor) -> torch.Tensor:
    """The warm start spelled out with the plain network: step frame 0 from the empty state, start again from an
    empty memory with that frame's mask as the previous mask, then step every frame as usual. ``[B, K, H, W, T]``."""
    b, _, height, width, frames = video_B1HWT.shape
    with torch.no_grad():
        _, first = cold.step(video_B1HWT[..., 0])
        state = GDKVMState(torch.zeros_like(first.memory), first.prev_prob)
        outputs = []
        for t in range(frames):
            logits, state = cold.step(video_B1HWT[..., t], state)
            outputs.append(logits)
    return torch.stack(outputs, dim=-1)


def test_warm_start_is_the_first_frame_segmented_again_with_its_own_mask() -> None:
    warm, cold = nets(out_channels=3)
    video = torch.rand(2, 1, 40, 52, 5)  # padded to 48 x 64 inside
    with torch.no_grad():
        got = warm(video)
        paper = cold(video)
    torch.testing.assert_close(got, reference_loop(cold, video), atol=1e-5, rtol=1e-5)
    assert (got[..., 0] - paper[..., 0]).abs().max() > 1e-3  # the first frame changes ...
    # ... and, through the state, the frames after it; streaming the same frames gives the same logits
    state, stream = None, []
    with torch.no_grad():
        for t in range(video.shape[-1]):
            logits, state = warm.step(video[..., t], state)
            stream.append(logits)
    torch.testing.assert_close(torch.stack(stream, dim=-1), got, atol=1e-5, rtol=1e-5)


def test_training_mode_keeps_the_papers_first_frame() -> None:
    warm, cold = nets()
    video = torch.rand(1, 1, 32, 32, 3)
    warm.train(), cold.train()
    torch.testing.assert_close(warm(video), cold(video), atol=0, rtol=0)


def test_only_empty_rows_are_warm_started_and_a_given_mask_is_kept() -> None:
    warm, cold = nets()
    frames = torch.rand(2, 1, 32, 32)
    given = (torch.rand(1, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        state = warm.init_state(2, 32, 32)
        # row 1: an annotator's mask for this frame's previous mask (a correction before the cine's first frame)
        state = GDKVMState(
            state.memory, torch.cat([state.prev_prob[:1], warm.give_mask(warm.init_state(1, 32, 32), given).prev_prob])
        )
        assert fresh_rows(state.memory, state.prev_prob).tolist() == [True, False]
        both, _ = warm.step(frames, state)
        alone_fresh, _ = warm.step(frames[:1])
        alone_given, _ = cold.step(frames[1:], cold.give_mask(cold.init_state(1, 32, 32), given))
    torch.testing.assert_close(both[:1], alone_fresh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], alone_given, atol=1e-5, rtol=1e-5)


def test_engine_and_stream_batch_warm_start_each_stream_at_its_own_first_frame() -> None:
    warm, cold = nets()
    video = torch.rand(1, 1, 32, 32, 6)
    with torch.no_grad():
        expected = warm(video)
        paper = cold(video)
    engine = StreamingEngine(warm, 1, 32, 32, backend="eager")
    torch.testing.assert_close(engine.run(video), expected, atol=1e-5, rtol=1e-5)
    engine.reset()  # a new cine in the same engine starts warm again
    torch.testing.assert_close(engine.step(video[..., 0]), expected[..., 0], atol=1e-5, rtol=1e-5)
    cold_engine = StreamingEngine(cold, 1, 32, 32, backend="eager")
    torch.testing.assert_close(cold_engine.run(video), paper, atol=1e-5, rtol=1e-5)
    # streams joining at frames 0 and 2 of a 3-slot batch; "b" joins early but gets its first frame late
    streams = StreamBatch(warm, capacity=3, height=32, width=32, backend="eager")
    streams.join("a"), streams.join("b")
    out: dict[str, list[torch.Tensor]] = {"a": [], "b": [], "c": []}
    for t in range(6):
        if t == 2:
            streams.join("c")
        frames = {"a": video[0, 0, ..., t]}
        if t >= 3:
            frames["b"] = video[0, 0, ..., t - 3]
        if t >= 2:
            frames["c"] = video[0, 0, ..., t - 2]
        for name, logits in streams.step(frames).items():
            out[name].append(logits)
    for name, first in (("a", 0), ("b", 3), ("c", 2)):
        got = torch.stack(out[name], dim=-1)
        torch.testing.assert_close(got, expected[0, ..., : 6 - first], atol=1e-5, rtol=1e-5)


def test_torchscript_warm_starts_as_eager() -> None:
    warm, cold = nets()
    video = torch.rand(1, 1, 32, 32, 3)
    scripted = torch.jit.script(warm)
    with torch.no_grad():
        torch.testing.assert_close(scripted(video), warm(video), atol=1e-5, rtol=1e-5)
        assert (scripted(video)[..., 0] - cold(video)[..., 0]).abs().max() > 1e-3
        torch.testing.assert_close(torch.jit.script(cold)(video), cold(video), atol=1e-5, rtol=1e-5)
