"""Intra-modal fusion (docs/method.md, section 2: Eq. 1-7): n feature vectors of dim d -> one vector.

Every module takes features [B, n, d] and a mask [B, n] (True = a real item, False = padding)
and returns (pooled [B, d_out], weights [B, n]); weights are the normalised pooling weights,
exactly zero on padding, summing to 1 over the real items (all zero for a clip with none).
"""

from __future__ import annotations

import torch
from torch import nn

from raylib.models import POOLINGS

EPS = 1e-12


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i w_i v_i / sum_i w_i, with w [B, n] already zero on padding."""
    norm = weights / weights.sum(dim=1, keepdim=True).clamp_min(EPS)
    return torch.einsum("bn,bnd->bd", norm, values), norm


class SelfAttention(nn.Module):
    """alpha_i = sigmoid(f_i . w0); f_s = sum alpha_i f_i / sum alpha_i.   (Eq. 1-2)"""

    def __init__(self, dim: int):
        super().__init__()
        self.w0 = nn.Linear(dim, 1, bias=False)
        self.out_dim = dim

    def scores(self, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w0(f)).squeeze(-1) * mask

    def forward(self, f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _weighted_mean(f, self.scores(f, mask))


class RelationAttention(nn.Module):
    """beta_i = sigmoid([f_i : f_s] . w1); f_r = sum a_i b_i [f_i : f_s] / sum a_i b_i.   (Eq. 3-4)"""

    def __init__(self, dim: int):
        super().__init__()
        self.self_attention = SelfAttention(dim)
        self.w1 = nn.Linear(2 * dim, 1, bias=False)
        self.out_dim = 2 * dim

    def forward(self, f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.self_attention.scores(f, mask)
        f_s, _ = _weighted_mean(f, alpha)
        pairs = torch.cat([f, f_s.unsqueeze(1).expand_as(f)], dim=-1)  # [f_i : f_s]
        beta = torch.sigmoid(self.w1(pairs)).squeeze(-1)
        return _weighted_mean(pairs, alpha * beta)


class TransformerAttention(nn.Module):
    """f'_i = W2 f_i + b; gamma_i = exp(u . tanh(f'_i)); f_t = sum g_i f_i / sum g_i.   (Eq. 5-7)

    The normalised exp is computed as a masked softmax, which is the same quantity, stably.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.W2 = nn.Linear(dim, hidden)
        self.u = nn.Linear(hidden, 1, bias=False)
        self.out_dim = dim

    def forward(self, f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.u(torch.tanh(self.W2(f))).squeeze(-1).masked_fill(~mask, float("-inf"))
        has_items = mask.any(dim=1, keepdim=True)
        gamma = torch.softmax(logits.masked_fill(~has_items, 0.0), dim=1) * mask
        return torch.einsum("bn,bnd->bd", gamma, f), gamma


class MeanPooling(nn.Module):
    """Plain average of the real items: the no-attention baseline (not part of the paper's grid)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _weighted_mean(f, mask.to(f.dtype))


def build_attention(name: str, dim: int, hidden: int) -> nn.Module:
    """One of ATTENTIONS (or "mean", the baseline) by name, for features of dimension dim; hidden is
    the transformer attention's m (ModelConfig.attention_hidden), unused by the others."""
    if name == "mean":
        return MeanPooling(dim)
    if name == "self":
        return SelfAttention(dim)
    if name == "relation":
        return RelationAttention(dim)
    if name == "transformer":
        return TransformerAttention(dim, hidden)
    raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(POOLINGS)}")
