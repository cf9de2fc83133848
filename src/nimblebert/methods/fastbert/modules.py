"""FastBERT's branch classifiers, the "student classifiers" (Liu et al., ACL 2020, "Model architecture";
their cost in Table 1).

One branch sits after every Transformer layer but the last. The paper's branch (``AttentionBranch``)
reads **all** the layer's tokens: project to 128 with tanh, 2-head self-attention with the padding
mask, pool the first token, dense 128→128 with tanh, then the labels. The lighter ``PooledBranch``
("mlp" / "linear") reads the masked mean of the tokens instead, which our pilot on MiniLM found far
better than reading [CLS] alone (METHODS.md §1, "Observed on our own data").

Each branch also states its analytic FLOPs (a multiply-add = 2 FLOPs, matrix products only, as in
:mod:`nimblebert.core.flops`), counted for what it really computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...core.tokens import attention_mask4d
from .config import FastBertConfig

FROM_MASK: Any = object()  # "make the 4-d attention mask from ``mask``" (the default of the branches' ``mask4d``)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: hidden (b, t, w), mask (b, t) -> (b, w)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (b, t, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class AttentionBranch(nn.Module):
    """The paper's branch classifier (official ``Classifier`` in ``run_fastbert.py``).

    x = tanh(W₀h) over all tokens; UER multi-head self-attention on x with the padding mask (no residual,
    no LayerNorm); pool; tanh(W₁·); W₂ → logits. With first-token pooling only the first token's query
    is needed: the pooled vector is mathematically the same as running the attention over every query
    and keeping position 0, at a cost linear (not quadratic) in the length.
    """

    def __init__(self, hidden: int, width: int, heads: int, labels: int, pooling: str = "first",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.labels, self.pooling, self.dropout = labels, pooling, dropout
        self.proj = nn.Linear(hidden, width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)  # the K and V projections as one product
        self.attn_out = nn.Linear(width, width)
        self.dense = nn.Linear(width, width)
        self.out = nn.Linear(width, labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, mask4d: Any = FROM_MASK) -> torch.Tensor:
        """hidden (b, t, d), mask (b, t) -> logits (b, C).

        ``mask4d``: boolean (b, 1, 1, t), True = may attend, or None when no row has padding — the core's
        cached ``LoopState.attn_mask``; left out, it is made from ``mask``.
        """
        if mask4d is FROM_MASK:
            mask4d = attention_mask4d(mask)
        b, t, _ = hidden.shape
        x = torch.tanh(self.proj(hidden))  # (b, t, w)
        kv = self.key_value(x).view(b, t, 2, self.heads, self.head_dim)  # (b, t, 2, h, dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (b, h, t, dh) each
        q = self.query(x[:, :1] if self.pooling == "first" else x) * self.head_dim**-0.5  # (b, tq, w), tq = 1 or t
        q = q.view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (b, h, tq, dh)
        # Explicit products rather than scaled_dot_product_attention: with one query they are as fast, and
        # torch's flop counter sees them (the FLOPs test checks our formula against it).
        scores = torch.matmul(q, k.transpose(-1, -2))  # (b, h, tq, t), already scaled through q
        if mask4d is not None:  # UER adds −10000 at padding; min-float is the same after softmax
            scores = scores.masked_fill(~mask4d, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:  # skipped at inference: one Python-level op fewer per layer
            probs = F.dropout(probs, self.dropout, True)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, -1, self.width)  # (b, tq, w)
        ctx = self.attn_out(ctx)
        pooled = ctx[:, 0] if self.pooling == "first" else masked_mean(ctx, mask)  # (b, w)
        return self.out(torch.tanh(self.dense(pooled)))  # (b, C)

    def flops(self, tokens: torch.Tensor, hidden: int) -> torch.Tensor:
        """FLOPs on ``tokens`` (b,) real tokens each: W₀ 2tdw, K/V 4tw², Q 2·tq·w², scores and context
        4·tq·t·w, attention output 2·tq·w², dense 2w², labels 2wC (tq = 1 with first-token pooling)."""
        t = tokens.double()
        w = self.width
        tq = torch.ones_like(t) if self.pooling == "first" else t
        return (2 * t * hidden * w + 4 * t * w * w + 4 * tq * w * w + 4 * tq * t * w
                + 2 * w * w + 2 * w * self.labels)


class PooledBranch(nn.Module):
    """A lighter branch: masked mean of the layer's tokens, then dense + tanh (``mlp``) or nothing
    (``linear``), then the labels. Not in the paper; offered because it is nearly free."""

    def __init__(self, hidden: int, width: int, labels: int, kind: str = "mlp") -> None:
        super().__init__()
        self.kind, self.labels = kind, labels
        self.dense = nn.Linear(hidden, width) if kind == "mlp" else None
        self.out = nn.Linear(width if kind == "mlp" else hidden, labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, mask4d: Any = FROM_MASK) -> torch.Tensor:
        """hidden (b, t, d), mask (b, t) -> logits (b, C). ``mask4d`` is unused (same call as the paper's)."""
        pooled = masked_mean(hidden, mask)  # (b, d)
        if self.dense is not None:
            pooled = torch.tanh(self.dense(pooled))  # (b, w)
        return self.out(pooled)

    def flops(self, tokens: torch.Tensor, hidden: int) -> torch.Tensor:
        """Matrix products only (the mean is element-wise): 2dw + 2wC, or 2dC for ``linear``."""
        per = 2 * self.out.in_features * self.labels
        if self.dense is not None:
            per += 2 * hidden * self.dense.out_features
        return torch.full_like(tokens, per, dtype=torch.float64)


def build_branches(hidden: int, num_layers: int, labels: int, cfg: FastBertConfig) -> nn.ModuleList:
    """Branches after layers 1 .. L-1 (the classifier after layer L is the model's own head: the teacher)."""

    def one() -> nn.Module:
        if cfg.branch == "attention":
            return AttentionBranch(hidden, cfg.branch_hidden, cfg.branch_heads, labels, cfg.pooling,
                                   cfg.branch_dropout)
        return PooledBranch(hidden, cfg.branch_hidden, labels, cfg.branch)

    return nn.ModuleList(one() for _ in range(max(0, num_layers - 1)))


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """FastBERT's uncertainty ("Adaptive inference"): H(p) / log C with p = softmax(logits). (b, C) -> (b,)

    Clamped to [0, 1] so that rounding never keeps a row from leaving at speed 1.
    """
    p = torch.softmax(logits.float(), dim=-1)
    return (torch.special.entr(p).sum(dim=-1) / math.log(logits.size(-1))).clamp(0.0, 1.0)
