"""GDKVM network: shapes, streaming, causality, update rules against plain loops, gates, training, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scripts.gdkvm import GDKVM, UPDATE_RULES, LinearKeyValueMemory, StateGates, apply_update_rule

torch.set_num_threads(2)


def small_net(**kwargs) -> GDKVM:
    torch.manual_seed(0)
    return GDKVM(size="small", **kwargs).eval()


@pytest.mark.parametrize("frames", [1, 2, 10, 37])
@pytest.mark.parametrize("classes", [2, 4])
def test_forward_shapes_odd_sizes(frames: int, classes: int) -> None:
    net = small_net(out_channels=classes)
    video = torch.rand(2, 1, 100, 124, frames)
    with torch.no_grad():
        logits = net(video)
    assert logits.shape == (2, classes, 100, 124, frames)
    assert torch.isfinite(logits).all()


def test_base_size_matches_paper_scale() -> None:
    net = GDKVM(size="base", out_channels=2)
    params = sum(p.numel() for p in net.parameters())
    assert 30e6 <= params <= 40e6, f"base has {params / 1e6:.2f}M parameters; the paper reports 35.2M"
    assert net.config["key_backbone"] == "resnet50" and net.config["value_backbone"] == "resnet18"
    assert (net.key_dim, net.value_dim) == (64, 256)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 48, 40, 2)).shape == (1, 2, 48, 40, 2)


def assert_streaming_equals_forward(net: torch.nn.Module, video_B1HWT: torch.Tensor):
    """``step`` frame by frame from ``init_state`` gives ``forward``'s logits (1e-5); returns the last state."""
    b, _, height, width, frames = video_B1HWT.shape
    with torch.no_grad():
        batch_logits = net(video_B1HWT)
        state = net.init_state(b, height, width)
        stream = []
        for t in range(frames):
            logits, state = net.step(video_B1HWT[..., t], state)
            stream.append(logits)
    torch.testing.assert_close(torch.stack(stream, dim=-1), batch_logits, atol=1e-5, rtol=1e-5)
    return state


@pytest.mark.parametrize("classes", [2, 4])
def test_streaming_equals_forward(classes: int) -> None:
    assert_streaming_equals_forward(small_net(out_channels=classes), torch.rand(2, 1, 70, 90, 6))


def test_causal_no_future_or_ground_truth() -> None:
    """Frame t's output depends only on frames 0..t (no label is an input, the first mask is empty)."""
    net = small_net(out_channels=2)
    video = torch.rand(1, 1, 64, 64, 5)
    with torch.no_grad():
        full = net(video)
        prefix = net(video[..., :3])
        changed = video.clone()
        changed[..., 3:] = torch.rand_like(changed[..., 3:])
        other_future = net(changed)
    torch.testing.assert_close(prefix, full[..., :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_future[..., :3], full[..., :3], atol=1e-5, rtol=1e-5)
    state = net.init_state(1, 64, 64)
    assert torch.count_nonzero(state.prev_prob) == 0 and torch.count_nonzero(state.memory) == 0


def test_state_size_constant_over_frames() -> None:
    net = small_net(out_channels=4)
    frame = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        _, state = net.step(frame)
        sizes_after_one = [t.shape for t in state]
        for _ in range(99):
            _, state = net.step(torch.rand_like(frame), state)
    assert [t.shape for t in state] == sizes_after_one
    assert all(torch.isfinite(t).all() for t in state)


@pytest.mark.parametrize("kpff", [True, False])
@pytest.mark.parametrize("rule", UPDATE_RULES)
def test_every_rule_and_kpff_switch_builds_runs(rule: str, kpff: bool) -> None:
    net = small_net(out_channels=2, update_rule=rule, kpff=kpff)
    with torch.no_grad():
        logits = net(torch.rand(1, 1, 32, 32, 3))
    assert logits.shape == (1, 2, 32, 32, 3) and torch.isfinite(logits).all()
    assert (net.key_projection.fusion is not None) == kpff


def test_config_instantiation_contract() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "scripts.gdkvm.GDKVM",
                "size": "small",
                "out_channels": 4,
                "update_rule": "gated_delta",
                "kpff": True,
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, GDKVM) and net.out_channels == 4 and net.update_rule == "gated_delta"
    assert GDKVM().size == "base"


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="update_rule"):
        GDKVM(size="small", update_rule="softmax")
    with pytest.raises(ValueError, match="size"):
        GDKVM(size="huge")
    with pytest.raises(ValueError, match=r"\[B, 1, H, W, T\]"):
        small_net()(torch.rand(1, 3, 32, 32, 2))


# ---------------------------------------------------------------- update rules against plain loops
def reference_update(rule: str, S, K, V, alpha, beta):
    """Eq. 3-5 element by element for one object: S [Cv, Ck], K [Ck, L], V [Cv, L], alpha/beta [Cv, Ck]."""
    cv, ck = S.shape
    new = torch.zeros_like(S)
    for v in range(cv):
        for c in range(ck):
            write = sum(V[v, i] * K[c, i] for i in range(K.shape[1]))
            recalled = sum(S[v, j] * sum(K[j, i] * K[c, i] for i in range(K.shape[1])) for j in range(ck))
            if rule == "additive":
                new[v, c] = S[v, c] + write
            elif rule == "delta":
                new[v, c] = S[v, c] - recalled + write
            elif rule == "delta_beta":
                new[v, c] = S[v, c] - beta[v, c] * recalled + beta[v, c] * write
            elif rule == "decay_alpha":
                new[v, c] = alpha[v, c] * S[v, c] + write
            else:
                new[v, c] = alpha[v, c] * (S[v, c] - beta[v, c] * recalled) + beta[v, c] * write
    return new


def reference_gates(gates: StateGates, S):
    """alpha = exp(-exp(A_log_h) softplus(w_a,h . S[:, c] + b_a,h + dt_h)); beta = sigmoid(w_b,h . S[:, c] + b_b,h).

    Head h owns value rows v with v // (Cv / H) == h.
    """
    cv, ck = S.shape
    heads = gates.num_heads
    alpha = torch.zeros(cv, ck, dtype=S.dtype)
    beta = torch.zeros(cv, ck, dtype=S.dtype)
    for v in range(cv):
        h = v // (cv // heads)
        for c in range(ck):
            a_in = float(gates.alpha_proj.weight[h] @ S[:, c] + gates.alpha_proj.bias[h] + gates.dt_bias[h])
            b_in = float(gates.beta_proj.weight[h] @ S[:, c] + gates.beta_proj.bias[h])
            alpha[v, c] = math.exp(-math.exp(float(gates.A_log[h])) * math.log1p(math.exp(a_in)))
            beta[v, c] = 1.0 / (1.0 + math.exp(-b_in))
    return alpha, beta


@pytest.mark.parametrize("rule", UPDATE_RULES)
def test_update_rule_matches_plain_loop_over_frames(rule: str) -> None:
    torch.manual_seed(1)
    batch, objects, cv, ck, tokens, frames, heads = 2, 2, 4, 3, 5, 4, 2
    memory = LinearKeyValueMemory(cv, heads, rule).double()
    if memory.gates is not None:
        torch.nn.init.normal_(memory.gates.beta_proj.weight)
        torch.nn.init.normal_(memory.gates.alpha_proj.weight)
    keys = F.normalize(torch.randn(frames, batch, ck, tokens, dtype=torch.float64), dim=2) / math.sqrt(tokens)
    values = torch.randn(frames, batch, objects, cv, tokens, dtype=torch.float64) / math.sqrt(tokens)
    state = torch.zeros(batch, objects, cv, ck, dtype=torch.float64)
    reference = [[torch.zeros(cv, ck, dtype=torch.float64) for _ in range(objects)] for _ in range(batch)]
    with torch.no_grad():
        for t in range(frames):
            state, gates = memory(state, keys[t], values[t])
            for b in range(batch):
                for n in range(objects):
                    S = reference[b][n]
                    alpha = beta = None
                    if memory.gates is not None:
                        alpha, beta = reference_gates(memory.gates, S)
                        torch.testing.assert_close(gates["alpha"][b, n], alpha)
                        torch.testing.assert_close(gates["beta"][b, n], beta)
                    reference[b][n] = reference_update(rule, S, keys[t, b], values[t, b, n], alpha, beta)
            expected = torch.stack([torch.stack(row) for row in reference])
            torch.testing.assert_close(state, expected, atol=1e-10, rtol=1e-10)


def test_update_rule_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown update rule"):
        apply_update_rule("softmax", torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 3), torch.zeros(1, 1, 2, 3), None, None)


def test_gates_stay_in_range() -> None:
    torch.manual_seed(2)
    gates = StateGates(value_dim=16, num_heads=4)
    torch.nn.init.normal_(gates.alpha_proj.weight, std=3.0)
    torch.nn.init.normal_(gates.beta_proj.weight, std=3.0)
    for scale in (0.0, 1.0, 10.0, 1e3):
        state = torch.randn(3, 2, 16, 8) * scale
        alpha, beta = gates(state)
        assert alpha.shape == beta.shape == state.shape
        assert (alpha >= 0).all() and (alpha <= 1).all(), "decay alpha must be exp(g) in (0, 1]"
        assert (beta >= 0).all() and (beta <= 1).all()
    alpha, beta = StateGates(value_dim=16, num_heads=4)(torch.randn(3, 2, 16, 8))  # default init, moderate state
    assert (alpha > 0).all() and (beta > 0).all() and (beta < 1).all()


def test_gates_in_range_inside_network_run() -> None:
    net = small_net(out_channels=4)
    state = None
    with torch.no_grad():
        for _ in range(8):
            _, state = net.step(torch.rand(1, 1, 48, 48), state)
            gates = net.memory_gates(state)
            assert (gates["alpha"] > 0).all() and (gates["alpha"] <= 1).all()
            assert (gates["beta"] > 0).all() and (gates["beta"] < 1).all()


def assert_one_step_trains_every_parameter(net: torch.nn.Module) -> None:
    """One Adam step on a 4-class cross-entropy over a random clip changes every parameter (none is dead)."""
    net.train()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = F.cross_entropy(net(torch.rand(2, 1, 32, 32, 3)), torch.randint(0, 4, (2, 32, 32, 3)))
    loss.backward()
    optimiser.step()
    unchanged = [name for name, p in net.named_parameters() if torch.equal(p.detach(), before[name])]
    assert unchanged == []


@pytest.mark.parametrize("kpff", [True, False])
def test_one_optimiser_step_changes_every_parameter(kpff: bool) -> None:
    assert_one_step_trains_every_parameter(small_net(out_channels=4, kpff=kpff))


# ---------------------------------------------------------------- pretrained encoder weights from a local file
def test_load_torchvision_layout_weights(tmp_path) -> None:
    from scripts.gdkvm.encoders import build_resnet_trunk

    rgb_resnet = build_resnet_trunk("resnet18", in_channels=3)
    state = rgb_resnet.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # torchvision checkpoints carry the classifier; it is ignored
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    net = GDKVM(size="small", backbone_width=1.0, key_encoder_weights=str(path), value_encoder_weights=str(path))
    torch.testing.assert_close(net.key_encoder.conv1.weight[:, 0], state["conv1.weight"].sum(dim=1))
    torch.testing.assert_close(net.key_encoder.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    torch.testing.assert_close(net.value_encoder.conv1.weight[:, 0], state["conv1.weight"].sum(dim=1))
    assert torch.count_nonzero(net.value_encoder.conv1.weight[:, 1:]) == 0


def test_bad_weights_file_names_the_file(tmp_path) -> None:
    bad = tmp_path / "not_weights.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not_weights.pth"):
        GDKVM(size="small", backbone_width=1.0, key_encoder_weights=str(bad))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        GDKVM(size="small", backbone_width=1.0, key_encoder_weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "half_width.pth")
    with pytest.raises(ValueError, match="conv1.weight"):
        GDKVM(size="small", key_encoder_weights=str(tmp_path / "half_width.pth"))
