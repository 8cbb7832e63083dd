"""Linear key-value memory (LKVA) and its update rules (paper section 3.2-3.3, Table 4).

The state of one object is a matrix ``S`` in R^{Cv x Ck}. A frame contributes its key tokens
``K_t`` in R^{Ck x HW} and value tokens ``V_t`` in R^{Cv x HW}; both are scaled by ``1/sqrt(HW)`` so that
``V_t K_t^T`` is the *mean* outer product over the frame's tokens and ``K_t K_t^T`` (with unit-norm keys) has
eigenvalues in [0, 1]. Without this scaling the erase term of the delta rule is not a contraction: the official
code sums over all HW tokens, so ``K K^T`` has eigenvalues up to HW (see docs/network.md).

Update rules, with ``*`` the element-wise product and alpha_t, beta_t in R^{Cv x Ck} projected from S_{t-1}:

=============  ==========================================================================  ====================
rule           recurrence                                                                   paper
=============  ==========================================================================  ====================
additive       S_t = S_{t-1} + V_t K_t^T                                                    Eq. 3, "Baseline"
delta          S_t = S_{t-1} - (S_{t-1} K_t) K_t^T + V_t K_t^T                              "Sanity check"
delta_beta     S_t = S_{t-1} - beta_t * (S_{t-1} K_t K_t^T) + beta_t * (V_t K_t^T)          Eq. 4, "w/o alpha"
decay_alpha    S_t = alpha_t * S_{t-1} + V_t K_t^T                                          "w/o beta"
gated_delta    S_t = alpha_t * (S_{t-1} - beta_t * (S_{t-1} K_t K_t^T)) + beta_t * (V_t K_t^T)   Eq. 5, GDR
=============  ==========================================================================  ====================

Gates (per head; head h owns the value rows ``h*Cv/H ... (h+1)*Cv/H - 1``; each key column c gets its own gate):
``beta_t = sigmoid(W_b S_{t-1}^T + b_b)`` in (0, 1) and ``alpha_t = exp(g_t)`` with
``g_t = -exp(A_log) * softplus(W_a S_{t-1}^T + dt_bias)`` <= 0, so alpha_t is in (0, 1] (the Gated DeltaNet/Mamba2
parameterisation). The official code multiplies the state by the raw negative ``g_t`` instead of ``exp(g_t)``, which
flips the state's sign every frame; we follow the paper's Eq. 5 and the re-release's fix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

UPDATE_RULES = ("additive", "delta", "delta_beta", "decay_alpha", "gated_delta")


def tokens_from_map(feature_BCHW: torch.Tensor) -> torch.Tensor:
    """Flatten a feature map into a token matrix scaled by 1/sqrt(HW).

    Args:
        feature_BCHW: ``[..., C, h, w]`` feature map.

    Returns:
        ``[..., C, h*w]`` tokens divided by ``sqrt(h*w)``.
    """
    hw = feature_BCHW.shape[-1] * feature_BCHW.shape[-2]
    return feature_BCHW.flatten(-2) / math.sqrt(hw)


def apply_update_rule(
    rule: str,
    state_BNVK: torch.Tensor,
    key_BKL: torch.Tensor,
    value_BNVL: torch.Tensor,
    alpha_BNVK: torch.Tensor | None,
    beta_BNVK: torch.Tensor | None,
) -> torch.Tensor:
    """One step of a memory update rule (batched form; see the module docstring for the equations).

    Args:
        rule: one of :data:`UPDATE_RULES`.
        state_BNVK: previous state S_{t-1}, ``[B, N, Cv, Ck]`` (N objects).
        key_BKL: scaled key tokens K_t of the frame, ``[B, Ck, L]`` (shared by all objects).
        value_BNVL: scaled value tokens V_t, ``[B, N, Cv, L]``.
        alpha_BNVK: decay alpha_t in (0, 1], ``[B, N, Cv, Ck]`` (rules ``decay_alpha`` and ``gated_delta``).
        beta_BNVK: writing strength beta_t in (0, 1), ``[B, N, Cv, Ck]`` (rules ``delta_beta`` and ``gated_delta``).

    Returns:
        The new state S_t, ``[B, N, Cv, Ck]``.
    """
    write_BNVK = torch.einsum("bnvl,bkl->bnvk", value_BNVL, key_BKL)
    if rule == "additive":
        return state_BNVK + write_BNVK
    if rule == "decay_alpha":
        if alpha_BNVK is None:
            raise ValueError("update rule 'decay_alpha' needs alpha")
        return alpha_BNVK * state_BNVK + write_BNVK
    key_gram_BKK = torch.einsum("bkl,bjl->bkj", key_BKL, key_BKL)
    recalled_BNVK = torch.einsum("bnvk,bkj->bnvj", state_BNVK, key_gram_BKK)
    if rule == "delta":
        return state_BNVK - recalled_BNVK + write_BNVK
    if rule == "delta_beta":
        if beta_BNVK is None:
            raise ValueError("update rule 'delta_beta' needs beta")
        return state_BNVK - beta_BNVK * recalled_BNVK + beta_BNVK * write_BNVK
    if rule == "gated_delta":
        if alpha_BNVK is None or beta_BNVK is None:
            raise ValueError("update rule 'gated_delta' needs alpha and beta")
        return alpha_BNVK * (state_BNVK - beta_BNVK * recalled_BNVK) + beta_BNVK * write_BNVK
    # The names are spelled out because TorchScript cannot read the UPDATE_RULES global.
    raise ValueError(
        "unknown update rule '" + rule + "'; expected one of ('additive', 'delta', 'delta_beta', 'decay_alpha', "
        "'gated_delta')"
    )


def read_memory(state_BNVK: torch.Tensor, query_BKL: torch.Tensor) -> torch.Tensor:
    """Read-out O = S q for every query token (paper Eq. 3, second line).

    Args:
        state_BNVK: ``[B, N, Cv, Ck]``.
        query_BKL: unit-norm query keys (not scaled), ``[B, Ck, L]``.

    Returns:
        ``[B, N, Cv, L]`` read-out values.
    """
    return torch.einsum("bnvk,bkl->bnvl", state_BNVK, query_BKL)


class StateGates(nn.Module):
    """Projects the decay alpha_t and the writing strength beta_t from the previous state S_{t-1}, per head.

    Each key column ``S[:, c]`` (a Cv-vector) goes through a linear map to one value per head; the head's value is
    shared by the Cv/H value rows that the head owns.
    """

    def __init__(self, value_dim: int, num_heads: int) -> None:
        super().__init__()
        if value_dim % num_heads:
            raise ValueError(f"value_dim {value_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.beta_proj = nn.Linear(value_dim, num_heads)
        self.alpha_proj = nn.Linear(value_dim, num_heads)
        # Mamba2 / Gated DeltaNet initialisation: A ~ U(1, 16), dt ~ logU(1e-3, 0.1), dt_bias = softplus^-1(dt).
        a_init = torch.empty(num_heads).uniform_(1.0, 16.0)
        self.A_log = nn.Parameter(torch.log(a_init))
        dt = torch.exp(torch.empty(num_heads).uniform_(math.log(1e-3), math.log(0.1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        nn.init.zeros_(self.beta_proj.weight)
        nn.init.zeros_(self.beta_proj.bias)

    def forward(self, state_BNVK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates from the previous state.

        Args:
            state_BNVK: S_{t-1}, ``[B, N, Cv, Ck]``.

        Returns:
            ``(alpha, beta)``, each ``[B, N, Cv, Ck]``; alpha in (0, 1], beta in (0, 1).
        """
        columns_BNKV = state_BNVK.transpose(-1, -2)
        beta_BNKH = torch.sigmoid(self.beta_proj(columns_BNKV))
        log_decay_BNKH = -torch.exp(self.A_log) * F.softplus(self.alpha_proj(columns_BNKV) + self.dt_bias)
        alpha_BNKH = torch.exp(log_decay_BNKH)
        rows_per_head = state_BNVK.shape[-2] // self.num_heads
        alpha = alpha_BNKH.transpose(-1, -2).repeat_interleave(rows_per_head, dim=-2)
        beta = beta_BNKH.transpose(-1, -2).repeat_interleave(rows_per_head, dim=-2)
        return alpha, beta


class LinearKeyValueMemory(nn.Module):
    """The LKVA state update of one frame with a configurable rule (see module docstring)."""

    def __init__(self, value_dim: int, num_heads: int, update_rule: str = "gated_delta") -> None:
        super().__init__()
        if update_rule not in UPDATE_RULES:
            raise ValueError(f"unknown update_rule {update_rule!r}; expected one of {UPDATE_RULES}")
        self.update_rule = update_rule
        self.gates = (
            StateGates(value_dim, num_heads) if update_rule in ("delta_beta", "decay_alpha", "gated_delta") else None
        )

    def forward(
        self, state_BNVK: torch.Tensor, key_BKL: torch.Tensor, value_BNVL: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Write one frame into the state.

        Args:
            state_BNVK: S_{t-1}, ``[B, N, Cv, Ck]``.
            key_BKL: scaled key tokens, ``[B, Ck, L]``.
            value_BNVL: scaled value tokens, ``[B, N, Cv, L]``.

        Returns:
            ``(S_t, gates)`` where gates holds ``alpha``/``beta`` (``[B, N, Cv, Ck]``) when the rule uses them.
        """
        gates: dict[str, torch.Tensor] = {}
        alpha: torch.Tensor | None = None
        beta: torch.Tensor | None = None
        if self.gates is not None:
            alpha, beta = self.gates(state_BNVK)
            gates = {"alpha": alpha, "beta": beta}
        new_state = apply_update_rule(self.update_rule, state_BNVK, key_BKL, value_BNVL, alpha, beta)
        return new_state, gates
