"""GDKVMSoftmaxMemory (softmax space-time memory bank): shapes, streaming, read-out vs a plain loop, state growth."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_network import assert_one_step_trains_every_parameter, assert_streaming_equals_forward

from scripts.gdkvm import GDKVM, GDKVMSoftmaxMemory
from scripts.gdkvm.softmax_memory import SoftmaxMemoryState, softmax_readout

torch.set_num_threads(2)


def small_net(**kwargs) -> GDKVMSoftmaxMemory:
    torch.manual_seed(0)
    return GDKVMSoftmaxMemory(size="small", **kwargs).eval()


def state_numel(state) -> int:
    return sum(t.numel() for t in state)


@pytest.mark.parametrize("frames", [1, 5])
@pytest.mark.parametrize("classes", [2, 4])
def test_forward_shapes(frames: int, classes: int) -> None:
    net = small_net(out_channels=classes)
    with torch.no_grad():
        logits = net(torch.rand(2, 1, 36, 52, frames))
    assert logits.shape == (2, classes, 36, 52, frames)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("memory_every", [1, 2])
def test_streaming_equals_forward(memory_every: int) -> None:
    net = small_net(out_channels=4, memory_every=memory_every)
    state = assert_streaming_equals_forward(net, torch.rand(2, 1, 40, 56, 5))
    assert isinstance(state, SoftmaxMemoryState)
    assert net.stored_frames(state, 40, 56) == (5 if memory_every == 1 else 3)  # frames 0, 2, 4


def reference_readout(mem_key, mem_value, query, scale: float):
    """Eq. 1 token by token: mem_key [B, Ck, L], mem_value [B, N, Cv, L], query [B, Ck, Q] -> [B, N, Cv, Q]."""
    b_size, ck, length = mem_key.shape
    n_obj, cv = mem_value.shape[1:3]
    out = torch.zeros(b_size, n_obj, cv, query.shape[-1], dtype=mem_key.dtype)
    for b in range(b_size):
        for q in range(query.shape[-1]):
            logits = [scale * sum(float(mem_key[b, c, i] * query[b, c, q]) for c in range(ck)) for i in range(length)]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            total = sum(exps)
            for n in range(n_obj):
                for v in range(cv):
                    out[b, n, v, q] = sum(exps[i] / total * float(mem_value[b, n, v, i]) for i in range(length))
    return out


def test_readout_matches_plain_loop() -> None:
    torch.manual_seed(1)
    mem_key = F.normalize(torch.randn(2, 3, 7, dtype=torch.float64), dim=1)
    mem_value = torch.randn(2, 2, 4, 7, dtype=torch.float64)
    query = F.normalize(torch.randn(2, 3, 5, dtype=torch.float64), dim=1)
    for scale in (0.5, math.sqrt(3.0), 30.0):
        expected = reference_readout(mem_key, mem_value, query, scale)
        torch.testing.assert_close(softmax_readout(mem_key, mem_value, query, scale), expected, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="empty"):
        softmax_readout(mem_key[..., :0], mem_value[..., :0], query, 1.0)


def test_network_readout_is_attention_over_all_stored_frames() -> None:
    """After 3 frames the bank holds every frame's keys/values; the read-out is Eq. 1 with tau = sqrt(Ck) at init."""
    net = small_net(out_channels=2)
    assert float(net.memory.scale.detach()) == pytest.approx(math.sqrt(net.key_dim))
    frames = [torch.rand(1, 1, 32, 32) for _ in range(3)]
    with torch.no_grad():
        state = None
        keys, values = [], []
        for frame in frames:
            key = net.encode_key(frame)
            prev = state.prev_prob if state is not None else torch.zeros(1, 1, 32, 32)
            keys.append(key["key"].flatten(2))
            values.append(net.encode_value(frame, prev, key["f16"]).flatten(-2))
            _, state = net.step(frame, state)
        torch.testing.assert_close(state.keys, torch.cat(keys, dim=-1))
        torch.testing.assert_close(state.values, torch.cat(values, dim=-1))
        readout = net.memory(state.keys, state.values, keys[-1])
    weights_LQ = torch.softmax(math.sqrt(net.key_dim) * state.keys[0].T @ keys[-1][0], dim=0)
    torch.testing.assert_close(readout[0, 0], state.values[0, 0] @ weights_LQ, atol=1e-5, rtol=1e-5)


def test_state_grows_linearly_unlike_gdkvm() -> None:
    net = small_net(out_channels=4)
    linear = GDKVM(size="small", out_channels=4).eval()
    frame = torch.rand(1, 1, 32, 48)  # 2 x 3 tokens per frame
    soft_sizes, linear_sizes = [], []
    with torch.no_grad():
        soft_state = linear_state = None
        for _ in range(6):
            _, soft_state = net.step(torch.rand_like(frame), soft_state)
            _, linear_state = linear.step(torch.rand_like(frame), linear_state)
            soft_sizes.append(state_numel(soft_state))
            linear_sizes.append(state_numel(linear_state))
    per_frame = 6 * (net.key_dim + 3 * net.value_dim)
    assert [b - a for a, b in zip(soft_sizes, soft_sizes[1:])] == [per_frame] * 5
    assert len(set(linear_sizes)) == 1
    assert soft_state.keys.shape == (1, net.key_dim, 36) and soft_state.values.shape == (1, 3, net.value_dim, 36)


def test_max_memory_frames_bounds_the_bank_fifo() -> None:
    net = small_net(out_channels=2, max_memory_frames=3)
    unbounded = small_net(out_channels=2)
    video = torch.rand(1, 1, 32, 32, 6)
    with torch.no_grad():
        state = full_state = None
        for t in range(6):
            _, state = net.step(video[..., t], state)
            _, full_state = unbounded.step(video[..., t], full_state)
            assert net.stored_frames(state, 32, 32) == min(t + 1, 3)
        # identical until the bound bites, then the bank holds exactly the last 3 frames' tokens
        torch.testing.assert_close(net(video[..., :3]), unbounded(video[..., :3]))
    assert state.keys.shape[-1] == 3 * 4
    with torch.no_grad():
        last_three = torch.cat([net.encode_key(video[..., t])["key"].flatten(2) for t in range(3, 6)], dim=-1)
    torch.testing.assert_close(state.keys, last_three, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="update_rule"):
        GDKVMSoftmaxMemory(size="small", update_rule="gated_delta")
    with pytest.raises(ValueError, match="max_memory_frames"):
        GDKVMSoftmaxMemory(size="small", max_memory_frames=0)
    with pytest.raises(ValueError, match="memory_every"):
        GDKVMSoftmaxMemory(size="small", memory_every=0)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W, T\]"):
        small_net()(torch.rand(1, 3, 32, 32, 2))
    assert GDKVMSoftmaxMemory(size="small", update_rule="softmax").update_rule == "softmax"


def test_one_optimiser_step_changes_every_parameter() -> None:
    net = small_net(out_channels=4)
    assert not any(name.startswith("memory.gates") for name, _ in net.named_parameters())
    assert_one_step_trains_every_parameter(net)
