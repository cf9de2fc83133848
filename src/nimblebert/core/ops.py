"""Heterogeneous layers for the core loop: MHA, FFN, separable convolution, identity, linear transfer.

NAS-BERT (Xu et al., KDD 2021, §3.1) splits a Transformer layer into its two halves and adds convolutions:
each "layer" of its chain is one op — multi-head attention, a feed-forward network, a separable
convolution (kernel 3, 5 or 7) or the identity — at one of several hidden sizes, with linear "hidden
transfer" projections where the size changes. Every op here is post-LayerNorm with a residual, as BERT's
sub-layers are, so a chain of ``mha, ffn, mha, ffn, ...`` at a uniform size is a BERT encoder.

The core runs a chain when the :class:`~nimblebert.core.plan.Plan` names ops (``Plan.ops``, keys into
``CoreEncoder.op_modules``): :func:`run_ops` is the loop, each op is a step of the same
:class:`~nimblebert.core.encoder.LoopState`, hooks run after it, and FLOPs come from :func:`op_flops` (checked
against ``torch.utils.flop_counter`` in ``tests/methods/test_nasbert.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .encoder import Hook, LoopState, Step

OP_KINDS = ("mha", "ffn", "conv", "linear")


@dataclass(frozen=True)
class OpSpec:
    """What one op is, enough to count its FLOPs and parameters and to build it.

    ``kind``: "mha" (``width`` = heads), "ffn" (``width`` = inner size), "conv" (``width`` = kernel),
    "linear" (a hidden transfer: ``hidden`` in, ``width`` out). ``hidden`` is the op's input size.
    """

    kind: str
    hidden: int
    width: int

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}; known: {OP_KINDS}")

    @property
    def out(self) -> int:
        return self.width if self.kind == "linear" else self.hidden


def op_flops(spec: OpSpec, tokens: torch.Tensor | int):
    """Matrix-multiply FLOPs (2 per multiply-add, as :mod:`nimblebert.core.flops`) of ``spec`` on ``tokens``.

    MHA: QKV 3·2·t·d², scores and context 2·2·t²·d, output 2·t·d². FFN: 2·2·t·d·f. Separable convolution:
    two sub-layers of depthwise 2·t·d·k plus pointwise 2·t·d². Transfer: 2·t·d_in·d_out.
    """
    t, d, w = tokens, spec.hidden, spec.width
    if spec.kind == "mha":
        return 8 * t * d * d + 4 * t * t * d
    if spec.kind == "ffn":
        return 4 * t * d * w
    if spec.kind == "conv":
        return 2 * (2 * t * d * w + 2 * t * d * d)
    return 2 * t * d * w


def op_params(spec: OpSpec) -> int:
    """Parameters of the op built by :func:`build_op` (weights, biases, LayerNorms)."""
    d, w = spec.hidden, spec.width
    if spec.kind == "mha":
        return 4 * d * d + 4 * d + 2 * d
    if spec.kind == "ffn":
        return 2 * d * w + w + d + 2 * d
    if spec.kind == "conv":
        return 2 * (d * w + d + d * d + d + 2 * d)
    return d * w + w


class MHAOp(nn.Module):
    """Post-LN multi-head self-attention sub-layer: LN(x + Wo·Attn(x)) (BERT's attention half)."""

    #: False runs attention as explicit matrix products (tests: the flop counter does not see CPU SDPA).
    fused = True

    def __init__(self, spec: OpSpec, dropout: float = 0.1) -> None:
        super().__init__()
        if spec.hidden % spec.width:
            raise ValueError(f"hidden {spec.hidden} is not divisible by {spec.width} heads")
        self.spec = spec
        self.qkv = nn.Linear(spec.hidden, 3 * spec.hidden)  # one product for Q, K, V: fewer ops at batch 1
        self.out = nn.Linear(spec.hidden, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.spec.width
        q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 × (b, h, t, dh)
        p = self.dropout if self.training else 0.0
        if self.fused:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d, dropout_p=p)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (d // h) ** -0.5  # (b, h, t, t)
            if mask4d is not None:
                scores = scores.masked_fill(~mask4d, torch.finfo(scores.dtype).min)
            ctx = torch.matmul(F.dropout(scores.softmax(-1), p, self.training), v)
        ctx = ctx.transpose(1, 2).reshape(b, t, d)  # (b, t, d)
        return self.norm(x + F.dropout(self.out(ctx), self.dropout, self.training))


class FFNOp(nn.Module):
    """Post-LN feed-forward sub-layer: LN(x + W2·GELU(W1·x)) (BERT's FFN half)."""

    def __init__(self, spec: OpSpec, dropout: float = 0.1) -> None:
        super().__init__()
        self.spec = spec
        self.inner = nn.Linear(spec.hidden, spec.width)
        self.outer = nn.Linear(spec.width, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
        y = self.outer(F.gelu(self.inner(x)))
        return self.norm(x + F.dropout(y, self.dropout, self.training))


class SepConvOp(nn.Module):
    """Separable convolution layer: two sub-layers, each depthwise Conv1d(k, groups=d, same padding), pointwise
    1×1 (a Linear), GELU, dropout, residual, post-LN — the layout of ML.NET's NAS-BERT port
    (``EncConvLayer``/``ConvSeparable``). Padding positions are zeroed before each convolution, so a padded
    row gives its real tokens the same output as the row alone (the kernel never reads padding)."""

    def __init__(self, spec: OpSpec, dropout: float = 0.1) -> None:
        super().__init__()
        d, k = spec.hidden, spec.width
        if k % 2 == 0:
            raise ValueError(f"kernel {k} must be odd (same-length output)")
        self.spec = spec
        self.depthwise = nn.ModuleList([nn.Conv1d(d, d, k, padding=k // 2, groups=d) for _ in range(2)])
        self.pointwise = nn.ModuleList([nn.Linear(d, d) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(d, eps=1e-12) for _ in range(2)])
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
        keep = None if mask4d is None else mask[:, :, None].to(x.dtype)  # (b, t, 1); None: no padding
        for conv, point, norm in zip(self.depthwise, self.pointwise, self.norms, strict=True):
            z = x if keep is None else x * keep
            z = conv(z.transpose(1, 2)).transpose(1, 2)  # (b, d, t) for Conv1d, back to (b, t, d)
            z = F.gelu(point(z))
            x = norm(x + F.dropout(z, self.dropout, self.training))
        return x


class TransferOp(nn.Module):
    """Hidden transfer: a Linear from one hidden size to another (NAS-BERT's block input/output projections)."""

    def __init__(self, spec: OpSpec, dropout: float = 0.1) -> None:
        super().__init__()
        self.spec = spec
        self.proj = nn.Linear(spec.hidden, spec.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
        return self.proj(x)


_BUILDERS = {"mha": MHAOp, "ffn": FFNOp, "conv": SepConvOp, "linear": TransferOp}


def build_op(spec: OpSpec, dropout: float = 0.1) -> nn.Module:
    """The module of ``spec``; every op module has ``.spec`` and ``forward(x, mask, mask4d) -> x``."""
    return _BUILDERS[spec.kind](spec, dropout)


def run_ops(table: nn.ModuleDict, keys: Sequence[str], state: LoopState, hooks: Sequence[Hook],
            hiddens: list[torch.Tensor] | None, steps: list[Step]) -> None:
    """The core loop for a chain of ops: each op is one step of ``state`` (its ``Step.op`` says what ran, for
    FLOPs); hooks run after each, as after a BERT layer. Padded rows run padded (no packing: the
    convolutions need the (b, t) layout)."""
    from .encoder import Step

    for i, key in enumerate(keys):
        op = table[key]
        steps.append(Step(i, state.rows, state.lengths, 0, 0, op=op.spec))
        state.hidden = op(state.hidden, state.mask, state.attn_mask)
        state.step += 1
        state.layer = i
        if hiddens is not None:
            hiddens.append(state.hidden)
        for hook in hooks:
            hook(state)
        if state.empty:
            break
