"""int8 matrix products under the core: dynamic quantization on the CPU (fbgemm, VNNI where the CPU has it).

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

Dynamic width (DynaBERT): the core slices a Linear's output rows (heads of Q/K/V, FFN neurons of the first
FFN matrix) or input columns (attention output, second FFN matrix). :meth:`Int8Linear.narrow` packs the int8
rows/columns of each width once, on first use, and keeps them: every width stays live under int8, at the
price of one packed copy per width used (a few hundred kB per matrix).

The float32 weights stay in the module (``weight``/``bias``, so ``state_dict`` and ``save`` are unchanged):
the int8 weights are derived from them at load time, never stored. An int8 model is for inference only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import UserError

# A Linear is worth quantizing when both of its sides are at least this wide: below it (classifiers with a
# handful of outputs, TR-BERT's 32-wide policies) the per-call input quantization costs more than the int8
# product saves, and the logits that decide exits keep their float32 precision.
MIN_FEATURES = 64

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
        self._packed: dict[tuple[int | None, int | None], object] = {}
        self._full = self._pack(None, None)

    def _pack(self, rows: int | None, cols: int | None) -> object:
        key = (rows, cols)
        packed = self._packed.get(key)
        if packed is None:
            q = self.qweight if key == (None, None) else _slice(self.qweight, rows, cols)
            bias = self.bias.detach().float() if self.bias is not None else None
            if bias is not None and rows is not None:
                bias = bias[:rows].contiguous()
            packed = self._packed[key] = torch.ops.quantized.linear_prepack(q, bias)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._full, REDUCE_RANGE)

    def narrow(self, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        """``x`` times the first ``rows`` output channels of the weight (with their biases), or the first
        ``cols`` input features (with the whole bias): the core's sliced widths, in int8."""
        return torch.ops.quantized.linear_dynamic(x, self._pack(rows, cols), REDUCE_RANGE)

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
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        raise UserError(f"the int8 runtime needs torch's x86 quantized engine (this build has "
                        f"{torch.backends.quantized.supported_engines}); run with --runtime fp32")
    return replace_linears_(module, Int8Linear, "int8", min_features)


class FusedInt8:
    """Several Linears reading the same input as one int8 product: their weights stacked by rows, packed once.

    The core's attention calls it for Q, K and V at full width (``p.query.fused_qkv``) and splits the output:
    one input quantization and one kernel call instead of three. Not an ``nn.Module`` on purpose: it is
    derived from the Linears' float32 weights at load time and must not appear in ``state_dict``.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        weight = torch.cat([m.weight.detach().float() for m in linears])
        biases = [m.bias for m in linears]
        bias = torch.cat([b.detach().float() for b in biases]) if all(b is not None for b in biases) else None
        self.packed = torch.ops.quantized.linear_prepack(_quantize_weight(weight), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, REDUCE_RANGE)


def fuse_qkv_(parts: list, kind: type[nn.Linear] = Int8Linear, make: Callable[[list[nn.Linear]], Any] = FusedInt8
              ) -> int:
    """Give every layer whose Q, K and V are ``kind`` Linears of one shape a fused Q·K·V product ``make([q, k,
    v])`` (:class:`FusedInt8`; the fp32-onednn runtime's :class:`~nimblebert.runtime.onednn.FusedPacked`), as
    ``query.fused_qkv``. Returns how many layers got one. ``parts``: the core's
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
