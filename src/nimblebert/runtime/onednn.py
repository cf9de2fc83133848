"""float32 matrix products through oneDNN with weights packed once (the ``fp32-onednn`` runtime).

torch's default CPU ``F.linear`` calls MKL's sgemm with the weight as stored; at the small row counts that batch 1
and early exits produce (a sentence's 20 tokens, the few rows left after an exit) it runs far below the CPU's
peak. oneDNN's inner-product with the weight reordered once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the path torch's inductor takes when it freezes a CPU model) does
not re-pack the weight per call. Measured at 1 thread on our machines' AMD EPYC (AVX-512), MiniLM's shapes
(384x384, 384x1536, 1536x384): MKL 56-59 GFLOP/s at 8 rows, 83-88 at 32, 96-101 from 128; packed oneDNN 59-89,
93-107 and 106-113 (a weight packed without a batch hint serves every row count); on the mr teacher through the
core, 1.47x faster at batch 1 and 1.08x at batch 32, logits within 4e-6 of MKL's. oneDNN unpacked was no faster than
MKL. The arithmetic is float32 either way (only the summation order differs), so accuracy is the fp32 runtime's.
CPUs differ: on an Intel Xeon with AMX (2026-12-06) MKL is as fast at small row counts, and the teacher ran 1.03x
plain transformers at batch 1 on this runtime against 1.08x on fp32 (efficiency report); there bf16-onednn
(:class:`BF16Linear`) is the fast one. ``bench`` measures them side by side.

Every ``nn.Linear`` of the Transformer layers is replaced in place by a :class:`PackedLinear` (the same modules the
int8 runtime replaces), and so are the methods' Linears at least as wide (FastBERT's branch projections, which
run over every token after every layer; unlike int8, packing costs them nothing per call). Dynamic
width packs each sliced width once, on first use (:meth:`PackedLinear.narrow`), so every knob stays live. The float32
weights stay in the module: ``state_dict`` and ``save`` are unchanged. Inference only (no gradients flow through
the packed weight).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

# oneDNN makes (JIT-compiles) a primitive for every new input shape: measured at 1 thread on an Intel Xeon (AMX),
# 1.1-1.5 ms per new row count for a 384x384 product (float32 or bfloat16), against 0.1 ms to run it. Packed tokens
# and early exits give a new row count on nearly every call, so (1) rows are padded with zeros up to a bucket
# (:func:`row_bucket`): a few dozen shapes per product instead of one per token count, and (2) oneDNN's primitive
# cache (1024 entries by default; each shape takes more than one) is raised, unless the user set it: a model's
# products x buckets x widths fit. It must be set before oneDNN's first primitive in the process.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


def row_bucket(rows: int) -> int:
    """The row count a product runs at: ``rows`` rounded up to a multiple of 8 (up to 64 rows), of 32 (up to 512),
    then of 128. Extra rows cost little where they are many (at most 1/16 more from 64 rows on) and nothing
    measurable where they are few (a sentence's 20 tokens: the product is bound by reading the weight)."""
    step = 8 if rows <= 64 else 32 if rows <= 512 else 128
    return -(-rows // step) * step


def _product(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, gelu: str | None = None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x ↦ x Wᵀ + b`` through oneDNN, ``weight`` packed once in ``dtype``; the input is cast to ``dtype`` (a
    no-op when it already is) and the output stays in it (see :class:`BF16Linear` for why bfloat16 outputs are
    not cast back). ``gelu`` ("none" = erf, "tanh"): GELU applied to the output inside the same oneDNN call."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), None)
    bias = None if bias is None else bias.detach().to(dtype).contiguous()
    op, algorithm = ("none", "") if gelu is None else ("gelu", gelu)

    def product(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, op, [], algorithm)

    return lambda x: on_bucket_rows(product, x.to(dtype))


def on_bucket_rows(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``product(x)`` run at :func:`row_bucket` rows: ``x`` (..., n) padded with zero rows when its row count is not
    a bucket, their outputs dropped (the core's row layout already hands the products bucket counts)."""
    rows = x.numel() // x.size(-1)
    padded = row_bucket(rows)
    if padded == rows:
        return product(x)
    out = product(F.pad(x.reshape(rows, x.size(-1)), (0, 0, 0, padded - rows)))[:rows]
    return out.view(*x.shape[:-1], out.size(-1))


def gelu_kind(act: Callable[[torch.Tensor], torch.Tensor]) -> str | None:
    """Which GELU ``act`` computes, as oneDNN names it ("none" = the erf form, "tanh" = the tanh approximation),
    found by running it on a probe; None when it is neither (then it is not fused)."""
    z = torch.linspace(-6, 6, 97)
    with torch.inference_mode():
        out = act(z)
        refs = {"none": torch.nn.functional.gelu(z), "tanh": torch.nn.functional.gelu(z, approximate="tanh")}
        for kind, ref in refs.items():
            if isinstance(out, torch.Tensor) and out.shape == z.shape and torch.allclose(out, ref, atol=1e-6):
                return kind
    return None


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 product runs through oneDNN on a weight packed once (see the module doc).

    It *is* an ``nn.Linear`` (same ``weight``/``bias`` parameters and ``state_dict`` keys); only :meth:`forward`
    and :meth:`narrow` run the packed product.
    """

    compute_dtype = torch.float32  # what the products multiply in (BF16Linear: bfloat16)
    # The row counts its products are compiled for: the core runs a layer's products at these counts itself
    # (gathering the real tokens once, :class:`~nimblebert.core.tokens.RowLayout`), so they need no padding here.
    row_bucket = staticmethod(row_bucket)
    fused_act: str | None = None  # a GELU the product applies itself (:meth:`fuse_gelu`); the core then skips it

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._packed: dict[tuple[int | None, int | None], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._full = self._slice(None, None)

    def _slice(self, rows: int | None, cols: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (rows, cols)
        run = self._packed.get(key)
        if run is None:
            w = self.weight.detach()
            bias = None if self.bias is None else self.bias.detach()
            if rows is not None:
                w, bias = w[:rows], (None if bias is None else bias[:rows])
            if cols is not None:
                w = w[:, :cols]
            run = self._packed[key] = _product(w, bias, self.compute_dtype, self.fused_act)
        return run

    def fuse_gelu(self, kind: str) -> None:
        """Apply GELU (``kind`` as :func:`gelu_kind` names it) inside every product of this Linear from now on;
        the core's FFN then skips its own activation (it reads :attr:`fused_act`)."""
        self.fused_act = kind
        self._packed.clear()
        self._full = self._slice(None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._full(x)

    def narrow(self, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        """``x`` times the first ``rows`` output channels (with their biases) or the first ``cols`` input
        features (with the whole bias): the core's sliced widths, each packed once."""
        return self._slice(rows, cols)(x.contiguous())

    def extra_repr(self) -> str:
        return super().extra_repr() + ", oneDNN packed"


class BF16Linear(PackedLinear):
    """A :class:`PackedLinear` that multiplies in bfloat16 (the ``bf16-onednn`` runtime): weight packed once in
    bfloat16, input cast to bfloat16, float32 accumulation inside oneDNN, output left in bfloat16.

    Why: on CPUs with AMX (Intel Xeon 4th generation and later) oneDNN runs bfloat16 products on the tile
    units. Measured at 1 thread on an Intel Xeon with AMX-BF16 (2026-12-06), MiniLM's shapes: packed bfloat16
    1470-1780 GFLOP/s at 640 rows (batch 32 x 20 tokens) against 190-210 for float32 (MKL or packed oneDNN) and
    380-550 for fbgemm's dynamic int8; 240-650 against 100-140 at 20 rows (batch 1). Where the CPU has only
    AVX-512 BF16, or neither, this runtime is slower or refused; ``bench`` measures it next to the others.

    The output stays bfloat16 on purpose: the core adds it to the float32 residual (type promotion makes that
    sum float32, so LayerNorm and everything after it run in float32 as before), feeds it to the activation
    between the two FFN products (the second product then reads it without a cast) or to attention (Q, K, V
    and the attention output in bfloat16: SDPA accumulates in float32). Casting each output back would cost a
    pass over every activation for no accuracy the residual sum does not already keep. bfloat16 keeps 8 bits of
    mantissa (relative error up to 0.4%, like int8 per channel): accuracy is measured per model, never assumed.
    On the mr teacher (MiniLM-L6), efficiency report of 2026-12-06 on that Xeon (1 thread): test accuracy 0.8100
    (float32 0.8087), 2.08x plain transformers at batch 1 and 3.06x at batch 32, where onnxruntime int8 of the
    teacher ran 3.30x / 1.81x (``python benchmarks/report.py --threads 1``, docs/efficiency_mr.json).
    """

    compute_dtype = torch.bfloat16

    def extra_repr(self) -> str:
        return super().extra_repr().replace("oneDNN packed", "oneDNN packed bfloat16")


class BF16FloatLinear(BF16Linear):
    """A :class:`BF16Linear` whose output is cast back to float32: for the methods' modules under bf16-onednn
    (FastBERT's branch projection, over every token after every layer), whose arithmetic after the product
    (tanh, the folded attention weights, the exit logits) stays float32. The product is most of a branch's
    cost: on the mr FastBERT at batch 32 (1 thread, Intel Xeon with AMX) the branches' float32 projections took
    2.2 of the 29.8 ms a batch took in bf16-onednn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).float()

    def narrow(self, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        return super().narrow(x, rows, cols).float()


def stack_rows(linears: list[nn.Linear], rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``rows`` output channels of each Linear's weight, stacked by rows (detached), and their biases
    likewise (None unless every Linear has one): the weight of a fused product such as Q·K·V at a width."""
    weight = torch.cat([m.weight.detach()[:rows] for m in linears])
    biases = [m.bias for m in linears]
    bias = torch.cat([b.detach()[:rows] for b in biases]) if all(b is not None for b in biases) else None
    return weight, bias


class FusedPacked:
    """Q, K and V as one packed product (in the Linears' ``compute_dtype``): their weights stacked by rows, one
    oneDNN call instead of three.

    The core's attention calls it as ``p.query.fused_qkv`` (as it calls the int8 runtime's
    :class:`~nimblebert.runtime.int8.FusedInt8`) and splits the output into Q, K and V. At a DynaBERT width
    the core asks :meth:`width` for the first ``rows`` channels of each of the three, stacked and packed once per
    width, so narrow sub-networks save the two calls too (at width 0.25 a layer's products are small enough that
    per-call costs are a large part of its time). Not an ``nn.Module`` on purpose: derived from the Linears'
    weights at load time, it must not appear in ``state_dict``.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.linears = linears
        self._widths: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._full = self.width(linears[0].out_features)

    def width(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fused product of the first ``rows`` output channels of Q, K and V (with their biases)."""
        run = self._widths.get(rows)
        if run is None:
            run = self._widths[rows] = _product(*stack_rows(self.linears, rows), self.linears[0].compute_dtype)
        return run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._full(x)


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 products on this CPU (AVX-512 and up; natively with AVX-512 BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fuse_ffn_gelu_(parts: list) -> int:
    """Fuse each layer's FFN activation into its first FFN product where the activation is a GELU and that product
    is a :class:`PackedLinear`: one pass over the (tokens x FFN) activations less per layer. Measured on the mr
    teacher at 1 thread on an Intel Xeon (AMX), fused against separate, same process: bfloat16 1.16-1.32x faster at
    batch 32 (22 and 30 tokens), 1.03x at batch 1; float32 1.10-1.15x and 1.01x, with logits bit-identical (the
    same float32 GELU, applied in the product's epilogue). Returns how many layers were fused. ``parts``: the
    core's :class:`~nimblebert.core.families.LayerParts`."""
    count = 0
    for p in parts:
        if isinstance(p.ffn_in, PackedLinear) and p.ffn_in.fused_act is None:
            kind = gelu_kind(p.ffn_act)
            if kind is not None:
                p.ffn_in.fuse_gelu(kind)
                count += 1
    return count


def pack_(module: nn.Module, min_features: int | None = None, kind: type[PackedLinear] = PackedLinear) -> int:
    """Replace, in place, every plain ``nn.Linear`` inside ``module`` whose sides are both at least
    ``min_features`` (default: the int8 runtime's :data:`~nimblebert.runtime.int8.MIN_FEATURES`) wide by a
    ``kind`` (:class:`PackedLinear`; :class:`BF16Linear` or :class:`BF16FloatLinear` for bf16-onednn). Returns how
    many were replaced."""
    from .int8 import replace_linears_  # not at the top: int8 imports this module (row buckets)

    runtime = "bf16-onednn" if kind.compute_dtype == torch.bfloat16 else "fp32-onednn"
    if not torch.backends.mkldnn.is_available():
        raise UserError(f"the {runtime} runtime needs a torch build with oneDNN (mkldnn); run with --runtime fp32")
    if kind.compute_dtype == torch.bfloat16 and not bf16_supported():
        raise UserError("the bf16-onednn runtime needs oneDNN's bfloat16 products, which this CPU lacks (they need "
                        "AVX-512; they are fast with AMX); run with --runtime fp32-onednn or int8")
    return replace_linears_(module, kind, runtime, min_features)
