"""int8 matrix products under the core: dynamic quantization on the CPU (fbgemm with VNNI; oneDNN with AMX).

Every ``nn.Linear`` of the Transformer layers (Q/K/V, attention output, FFN; see
:func:`nimblebert.runtime.apply_runtime` for what stays float32 and why) is replaced in place by an
:class:`Int8Linear`: its weight is quantized once,
symmetric per output channel, to int8; its input is quantized per call (per tensor, from its own range),
and the product runs in int8 with int32 accumulation (``torch.ops.quantized.linear_dynamic``, the same
kernel as ``torch.ao.quantization.quantize_dynamic``; Jacob et al. 2018 describe the arithmetic). Nothing
else changes: the core calls the modules as before, so early exits, token cuts and packed padding work as in
float32.

Why this kernel (measured on the CPU of our machines, AMD EPYC with AVX-512 VNNI, 1 thread): fbgemm's dynamic
int8 Linear ran MiniLM's matrix shapes 2.5-4× faster than float32 (20 and 800 tokens), in one call per
Linear; end to end on the mr teacher the core in int8 is 2.97× (batch 1) and 2.64× (batch 32) faster than plain
transformers at the same accuracy (``benchmarks/int8_mr.py``, docs/sections/int8_mr.md). torchao's replacement
API (``Int8DynamicActivationInt8WeightConfig``, torchao 0.18, eager) was 0.71× / 1.57×; a hand-written dynamic
quantization around ``torch._int_mm`` (oneDNN int8, not deprecated) lost its fast product to the element-wise
ops around it. onnxruntime's int8 of the whole teacher graph is faster still (4.14× / 3.23×: fused attention and
no Python between kernels) but fixes every knob; run as one graph per layer with the exits between the calls (the
``ort-int8`` runtime, :mod:`.segments`) it keeps FastBERT's speed live and was faster than this runtime at every speed
measured (benchmarks/ort_segments_mr.py), but it cannot run a live width or token cut, which this runtime can.
torch 2.13 marks quantized tensors as deprecated (the
``torch.quantize_per_channel`` warning, silenced here): the project pins torch 2.13, and the one place that
makes them is :func:`_quantize_weight`.

Two kernels, chosen per call (:class:`Int8Product`): on CPUs with AMX-INT8 (Intel Xeon 4th generation and later),
oneDNN's int8 product (torch's ``onednn`` quantized engine, the same arithmetic) is much faster than fbgemm's once
a product has more than a hundred rows (see :data:`ONEDNN_MIN_ROWS`); a sentence's rows stay on fbgemm.

Dynamic width (DynaBERT): the core slices a Linear's output rows (heads of Q/K/V, FFN neurons of the first
FFN matrix) or input columns (attention output, second FFN matrix). :meth:`Int8Linear.narrow` packs the int8
rows/columns of each width once, on first use, and keeps them: every width stays live under int8, at the
price of one packed copy per width used (a few hundred kB per matrix).

The float32 weights stay in the module (``weight``/``bias``, so ``state_dict`` and ``save`` are unchanged):
the int8 weights are derived from them at load time, never stored. An int8 model is for inference only.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .onednn import on_bucket_rows, row_bucket, stack_rows  # importing it sets oneDNN's primitive cache size

# A Linear is worth quantizing when both of its sides are at least this wide: below it (classifiers with a
# handful of outputs, TR-BERT's 32-wide policies) the per-call input quantization costs more than the int8
# product saves, and the logits that decide exits keep their float32 precision.
MIN_FEATURES = 64

# oneDNN's int8 product against fbgemm's (torch's "onednn" and "x86" quantized engines; per-output-channel int8
# weights, dynamic per-tensor int8 input, full range), measured at 1 thread on an Intel Xeon with AMX-INT8
# (2026-12-06, one process, interleaved), MiniLM's shapes (K x N; us per call), one product repeated (its weight
# stays in cache):
#   16 rows: 384x1536 33 vs 41, 1536x384 39 vs 45, but 384x384 28 vs 22 (oneDNN's fixed cost per call);
#   64 rows: 384x1536 60 vs 138, 1536x384 84 vs 133;  256 rows: 384x1152 177 vs 414;
#   768 rows: 384x1536 646 vs 2439, 1536x384 861 vs 1730, 384x384 264 vs 481.
# In a model, where every product reads its weight from beyond L2, the crossing comes later: the mr teacher, batches
# of sorted sentences, ms per sentence fbgemm / oneDNN: ~55 rows 2.24 / 2.48, ~110 rows 1.79 / 1.79, ~220 rows
# 1.61 / 1.32, ~440 rows 1.58 / 1.12, batch 32 (~700 rows) 1.67 / 1.22; single sentences of 32-64 tokens 3.67 / 4.16.
# One model, thresholds 32 / 64 / 128 / never: batch 32 ms per sentence, teacher 1.12 / 1.13 / 1.08 / 1.61, dynabert
# -> fastbert at speed 0.8 0.49 / 0.49 / 0.48 / 0.58; batch 1 p50 the same except 32 (dynabert -> fastbert 1.16
# against 0.95-0.97).
# Outputs equal up to one rounding step of the input quantization. From ONEDNN_MIN_ROWS rows on, where the CPU has
# AMX-INT8, products run on oneDNN, their rows padded to the oneDNN runtimes' buckets (oneDNN compiles a primitive
# per row count: 1.2 ms for the first call at a new count of 200-800 rows, 0.5 ms after); below it, and on CPUs
# without AMX, on fbgemm. Without AMX oneDNN gains nothing: on an AMD EPYC (Zen 4: AVX-512 VNNI, no AMX; 2026-12-06,
# 1 thread, 12 weights in turn so that each is read from beyond L2 as in a model), fbgemm / oneDNN us per call at
# 16 / 128 / 768 rows: 384x1152 58/65, 336/336, 1871/1810; 384x384 27/37, 145/154, 677/675; 384x1536 78/85,
# 456/452, 2778/2383; 1536x384 69/83, 421/465, 2521/2552; the mr teacher at batch 32 (its 640 longest test
# sentences) 3.79 / 3.46-3.76 ms per sentence. NIMBLEBERT_INT8_ONEDNN=0 / 1 forces either way.
ONEDNN_MIN_ROWS = 128
# fbgemm's engine under its torch name ("x86" dispatches dynamic int8 Linears to fbgemm)
FBGEMM = "x86"

# 7-bit activations (fbgemm's ``reduce_range``) avoid int16 overflow in AVX2's multiply-add; with VNNI's int32
# dot products there is no overflow, so the full 8 bits are kept (more precise, same speed here).
REDUCE_RANGE = False


def _quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 quantization of a (out, in) float weight (a quantized tensor)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(w.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.13's deprecation notice for quantized tensors (see module doc)
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)


def _slice(q: torch.Tensor, rows: int | None, cols: int | None) -> torch.Tensor:
    """The first ``rows`` output channels / ``cols`` input features of a per-channel quantized weight."""
    ints = q.int_repr()
    scales, zeros = q.q_per_channel_scales(), q.q_per_channel_zero_points()
    if rows is not None:
        ints, scales, zeros = ints[:rows], scales[:rows], zeros[:rows]
    if cols is not None:
        ints = ints[:, :cols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(ints.contiguous(), scales, zeros, 0)


@functools.cache
def onednn_int8() -> bool:
    """Whether int8 products of :data:`ONEDNN_MIN_ROWS` rows or more run on oneDNN: on CPUs with AMX-INT8, where
    torch has its ``onednn`` quantized engine (``NIMBLEBERT_INT8_ONEDNN=0`` / ``1`` decides instead)."""
    forced = os.environ.get("NIMBLEBERT_INT8_ONEDNN")
    if "onednn" not in torch.backends.quantized.supported_engines:
        return False
    if forced in ("0", "1"):
        return forced == "1"
    from ..bench.latency import cpu_info

    return "amx_int8" in cpu_info()["isa"]


def int8_rows(rows: int) -> int:
    """The row count an int8 product of ``rows`` rows runs at (the core's row layout reads it on batches: at batch 1,
    with nothing to gather, the layout cost 5 % on mr and a long sentence's products pad their own rows)."""
    return rows if rows < ONEDNN_MIN_ROWS else row_bucket(rows)


# torch's quantized engine is one setting for the whole process: packing switches it for a moment, and packs for a
# new DynaBERT width are made on first use, during inference, possibly in several threads at once
_ENGINE_LOCK = threading.Lock()


def _prepack(q: torch.Tensor, bias: torch.Tensor | None, engine: str) -> object:
    """``q`` (quantized weight) and ``bias`` packed for ``engine``'s int8 product (the packed weight keeps its
    kernel: the engine in force when it is called does not matter)."""
    with _ENGINE_LOCK:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            return torch.ops.quantized.linear_prepack(q, bias)
        finally:
            torch.backends.quantized.engine = previous


class Int8Product:
    """``x ↦ x Wᵀ + b`` in int8 for one quantized weight: fbgemm's packed copy, and oneDNN's where it is faster
    (:func:`onednn_int8`: products of :data:`ONEDNN_MIN_ROWS` rows or more, at bucket row counts)."""

    __slots__ = ("fbgemm", "onednn")

    def __init__(self, q: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.fbgemm = _prepack(q, bias, FBGEMM)
        self.onednn = _prepack(q, bias, "onednn") if onednn_int8() else None

    def __reduce__(self) -> tuple:
        # torch copies (deepcopy, pickle) a packed weight by repacking it under the engine in force, which would
        # leave fbgemm's pack where oneDNN's was: copy the weight and bias, and pack both again
        return (Int8Product, tuple(torch.ops.quantized.linear_unpack(self.fbgemm)))

    def __deepcopy__(self, memo: dict) -> Int8Product:
        return Int8Product(*torch.ops.quantized.linear_unpack(self.fbgemm))  # already fresh tensors: no deep copy

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.onednn, REDUCE_RANGE)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn is None or x.numel() < ONEDNN_MIN_ROWS * x.size(-1):
            return torch.ops.quantized.linear_dynamic(x, self.fbgemm, REDUCE_RANGE)
        return on_bucket_rows(self._onednn, x)


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose product runs in int8 (dynamic quantization; see the module docstring).

    It *is* an ``nn.Linear`` (same ``weight``/``bias`` parameters, same ``state_dict`` keys), so code that
    reads the float32 weights keeps working; only :meth:`forward` and :meth:`narrow` run int8.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device="meta")
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.qweight = _quantize_weight(self.weight)
        self._packed: dict[tuple[int | None, int | None], Int8Product] = {}
        self._full = self._pack(None, None)
        if self._full.onednn is not None:  # the core's row layout then gives batches' products oneDNN's row counts
            self.batch_row_bucket = int8_rows

    def _pack(self, rows: int | None, cols: int | None) -> Int8Product:
        key = (rows, cols)
        packed = self._packed.get(key)
        if packed is None:
            q = self.qweight if key == (None, None) else _slice(self.qweight, rows, cols)
            bias = self.bias.detach().float() if self.bias is not None else None
            if bias is not None and rows is not None:
                bias = bias[:rows].contiguous()
            packed = self._packed[key] = Int8Product(q, bias)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._full(x)

    def narrow(self, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        """``x`` times the first ``rows`` output channels of the weight (with their biases), or the first
        ``cols`` input features (with the whole bias): the core's sliced widths, in int8."""
        return self._pack(rows, cols)(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", int8"


def _linears(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                yield parent, name, child


def replace_linears_(module: nn.Module, make: Callable[[nn.Linear], nn.Linear], runtime: str,
                     min_features: int | None = None) -> int:
    """Replace, in place, every plain ``nn.Linear`` inside ``module`` whose input and output are both at least
    ``min_features`` (default :data:`MIN_FEATURES`) wide by ``make(linear)``: the one loop of the CPU runtimes that
    swap Linears (int8 here, ``fp32-onednn`` in :mod:`.onednn`). Returns how many were replaced."""
    min_features = MIN_FEATURES if min_features is None else min_features
    count = 0
    for parent, name, linear in list(_linears(module)):
        if linear.weight.device.type != "cpu":
            raise UserError(f"the {runtime} runtime runs on the CPU; load the model on the CPU or use --runtime fp32")
        if min(linear.in_features, linear.out_features) >= min_features:
            setattr(parent, name, make(linear))
            count += 1
    return count


def quantize_(module: nn.Module, min_features: int | None = None) -> int:
    """Replace, in place, every plain ``nn.Linear`` inside ``module`` whose input and output are both at least
    ``min_features`` (default :data:`MIN_FEATURES`) wide by an :class:`Int8Linear`. Returns how many were
    replaced."""
    if FBGEMM not in torch.backends.quantized.supported_engines:
        raise UserError(f"the int8 runtime needs torch's x86 quantized engine (this build has "
                        f"{torch.backends.quantized.supported_engines}); run with --runtime fp32")
    return replace_linears_(module, Int8Linear, "int8", min_features)


class FusedInt8:
    """Several Linears reading the same input as one int8 product: their weights stacked by rows, packed once.

    The core's attention calls it for Q, K and V (``p.query.fused_qkv``) and splits the output: one input
    quantization and one kernel call instead of three. At a DynaBERT width the core asks :meth:`width` for the first
    ``rows`` channels of each of the three, stacked and packed once per width (as the fp32-onednn runtime's
    :class:`~nimblebert.runtime.onednn.FusedPacked` does), so a live width keeps the fused call. Not an
    ``nn.Module`` on purpose: it is derived from the Linears' float32 weights at load time and must not appear in
    ``state_dict``.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.linears = linears
        self._widths: dict[int, Int8Product] = {}
        self._full = self.width(linears[0].out_features)

    def width(self, rows: int) -> Int8Product:
        """The fused product of the first ``rows`` output channels of each Linear (with their biases)."""
        product = self._widths.get(rows)
        if product is None:
            # per-output-channel scales: each kept row quantizes as it did in the full weight, so a narrow fused
            # product equals the three narrow ones (Int8Linear.narrow), whose input quantization is the same
            weight, bias = stack_rows(self.linears, rows)
            product = self._widths[rows] = Int8Product(_quantize_weight(weight),
                                                       None if bias is None else bias.float())
        return product

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._full(x)


def fuse_qkv_(parts: list, kind: type[nn.Linear] = Int8Linear, make: Callable[[list[nn.Linear]], Any] = FusedInt8
              ) -> int:
    """Give every layer whose Q, K and V are ``kind`` Linears of one shape a fused Q·K·V product ``make([q, k,
    v])`` (:class:`FusedInt8`; the fp32-onednn runtime's :class:`~nimblebert.runtime.onednn.FusedPacked`), as
    ``query.fused_qkv``; what ``make`` returns also answers ``width(rows)`` (the core asks it at narrower widths).
    Returns how many layers got one. ``parts``: the core's
    :class:`~nimblebert.core.families.LayerParts`."""
    count = 0
    for p in parts:
        trio = [p.query, p.key, p.value]
        if all(isinstance(m, kind) for m in trio) and len({(m.in_features, m.out_features) for m in trio}) == 1:
            # int8: per-output-channel scales, so each row keeps the scale it had alone and the fused product
            # equals the three separate ones (up to the shared input quantization, which was the same input).
            object.__setattr__(p.query, "fused_qkv", make(trio))
            count += 1
    return count
