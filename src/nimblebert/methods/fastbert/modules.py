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
        if self.pooling == "first" and not self.training and not torch.is_grad_enabled():
            return self._folded_forward(hidden, mask4d)
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

    # ---- inference with first-token pooling: the same function, folded into fewer and smaller products --------
    #
    # With one query (token 0) the attention is linear in x = tanh(W₀h) around one softmax, so the products on
    # either side of it fold into matrices made once from the weights (per head h, scale s = dh^-1/2):
    #   scores_h,j = s·(W_Q,h x₀ + b_Q,h)ᵀ(W_K,h x_j + b_K,h) = u_hᵀ x_j + const_h,  u_h = s·W_K,hᵀ(W_Q,h x₀ + b_Q,h)
    #     (the constant is the same for every j and cancels in the softmax): u = A x₀ + a, A (h·w, w);
    #   ctx_h = Σ_j p_h,j (W_V,h x_j + b_V,h) = W_V,h x̄_h + b_V,h,  x̄_h = Σ_j p_h,j x_j;
    #   dense(attn_out(ctx)) = W_D(W_O ctx + b_O) + b_D = M x̄ + m, M (w, h·w) (no non-linearity in between).
    # K and V are then never computed for every token (4·t·w² FLOPs), and a call at batch 1 runs 11 operations
    # instead of about 20: the branch after a layer should cost far less than the layer.

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, a, M, m) above, made from the current weights; remade when any of them changed (training, loading
        a state dict: both bump the tensors' version counters)."""
        tensors = (self.query.weight, self.query.bias, self.key_value.weight, self.key_value.bias,
                   self.attn_out.weight, self.attn_out.bias, self.dense.weight, self.dense.bias)
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        cached = getattr(self, "_fold_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.inference_mode(False), torch.no_grad():
            h, dh, w = self.heads, self.head_dim, self.width
            wq, bq, wkv, bkv, wo, bo, wd, bd = (t.detach().double() for t in tensors)
            wk, wv, bv = wkv[:w].view(h, dh, w), wkv[w:].view(h, dh, w), bkv[w:]
            s = dh**-0.5
            big_a = s * torch.einsum("hdk,hdi->hki", wk, wq.view(h, dh, w)).reshape(h * w, w)  # (h·w, w)
            small_a = s * torch.einsum("hdk,hd->hk", wk, bq.view(h, dh)).reshape(h * w)  # (h·w,)
            # ctx (w,) = blockdiag(W_V,h) x̄ + b_V; then W_D W_O ctx: M = W_D W_O blockdiag(W_V,h)
            wdo = wd @ wo  # (w, w)
            big_m = torch.einsum("ohd,hdk->ohk", wdo.view(w, h, dh), wv).reshape(w, h * w)
            small_m = wdo @ bv + wd @ bo + bd  # (w,)
            dtype = self.query.weight.dtype
            folded = tuple(t.to(dtype).contiguous() for t in (big_a, small_a, big_m, small_m))
        object.__setattr__(self, "_fold_cache", (key, folded))  # derived, not a buffer: kept out of state_dict
        return folded  # type: ignore[return-value]

    def _folded_forward(self, hidden: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
        big_a, small_a, big_m, small_m = self._folded()
        b = hidden.size(0)
        x = torch.tanh(self.proj(hidden))  # (b, t, w)
        u = F.linear(x[:, 0], big_a, small_a).view(b, self.heads, self.width)  # (b, h, w)
        scores = torch.bmm(u, x.transpose(1, 2))  # (b, h, t), scaled through A
        if mask4d is not None:  # (b, 1, 1, t) -> (b, 1, t)
            scores = scores.masked_fill(~mask4d[:, 0], torch.finfo(scores.dtype).min)
        mean = torch.bmm(torch.softmax(scores, dim=-1), x)  # (b, h, w): x̄ per head
        return self.out(torch.tanh(F.linear(mean.view(b, -1), big_m, small_m)))  # (b, C)

    def flops(self, tokens: torch.Tensor, hidden: int) -> torch.Tensor:
        """FLOPs of an inference call on ``tokens`` (b,) real tokens each.

        First-token pooling (folded, see above): W₀ 2tdw, A 2·h·w², scores and x̄ 4·h·t·w, M 2·h·w², labels 2wC.
        Mean pooling: W₀ 2tdw, K/V 4tw², Q 2tw², scores and context 4t²w, attention output 2tw², dense 2w²,
        labels 2wC."""
        t = tokens.double()
        w, h = self.width, self.heads
        if self.pooling == "first":
            return 2 * t * hidden * w + 4 * h * w * w + 4 * h * t * w + 2 * w * self.labels
        return (2 * t * hidden * w + 4 * t * w * w + 4 * t * w * w + 4 * t * t * w
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
