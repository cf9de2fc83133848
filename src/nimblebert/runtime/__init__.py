"""Kernels under the runner: the precision a loaded model's matrix products run in.

``fp32`` (default) runs the modules as they are; ``fp32-onednn`` runs the same float32 products through oneDNN
on weights packed once (:mod:`.onednn`: faster at the small row counts of batch 1 and early exits);
``bf16-onednn`` the same packed products in bfloat16 (:class:`.onednn.BF16Linear`: several times faster on CPUs
with AMX, refused on CPUs without bfloat16 instructions); ``int8``
quantizes the large Linears in place at load time (:mod:`.int8`); ``ort-int8`` runs the model as onnxruntime int8
graphs, one per layer, with FastBERT's exits decided between them (:mod:`.segments`; exits and DynaBERT's
structure live, one set of graphs per width; no token cuts). A runtime never changes what is saved: a folder keeps
its float32 weights, and its config's ``nimblebert`` section may name the runtime to load it with (``nimblebert
export DIR --format nimble --int8``, ``--format ort-int8``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..model import NimbleModel

# glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_heap() -> bool:
    """Make glibc keep freed activation buffers in its heap instead of handing them back to the OS; True when set.

    glibc serves blocks above its mmap threshold (128 kB at start) with fresh pages from the OS and trims the top of
    its heap past the trim threshold, so a batch's activations (32 sentences x 22 tokens x 384 float32 are 1 MB) are
    page-faulted in again on every call. Fixed thresholds (32 MB, glibc's largest; trim at 64 MB) keep them.
    Measured on the mr teacher at batch 32, 1 thread, Intel Xeon (AMX), whole processes alternated: bf16-onednn
    1.12-1.15x faster, fp32 1.05-1.09x (plain transformers in such a process: about 1.09x). The ``nimblebert``
    command calls it at start; a Python program may too. Linux with glibc only (elsewhere: False, nothing changes);
    ``NIMBLEBERT_KEEP_HEAP=0`` leaves the allocator alone (memory a run freed then stays with the process).
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("NIMBLEBERT_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


RUNTIMES = ("fp32", "fp32-onednn", "bf16-onednn", "int8", "ort-int8")
DEFAULT = "fp32"


def check_runtime(name: str | None) -> str:
    """``name`` validated (None -> the default)."""
    name = name or DEFAULT
    if name not in RUNTIMES:
        raise UserError(f"runtime {name!r} is unknown; choose from {', '.join(RUNTIMES)}")
    return name


def apply_runtime(model: NimbleModel, name: str | None) -> NimbleModel:
    """Put ``model`` (loaded in float32, in eval mode) on runtime ``name``, in place; returns it.

    int8 quantizes the Linears of the Transformer layers (Q/K/V, attention output, FFN), where the FLOPs are
    (fp32-onednn and bf16-onednn pack the same ones), and each packs each layer's Q, K and V as one product. The
    rest stays float32 under int8 on purpose: the pooler, the classifier and the methods' modules (FastBERT
    branches, TR-BERT policies) multiply one token or a few narrow columns, where int8's per-call input
    quantization costs more than it saves (measured on the mr teacher at batch 1: a FastBERT branch in int8 cost
    more than in float32), and their logits decide the exits. The oneDNN runtimes, with no per-call cost, also
    pack the methods' Linears that reach the size threshold (FastBERT's branch projections), float32 out.
    Every knob stays live: exits and token cuts run as in float32, narrow widths get their own packed weights.
    """
    name = check_runtime(name)
    if model.runtime != "fp32" and name != model.runtime:
        raise UserError(f"this model already runs on {model.runtime} in memory; load it again with runtime fp32")
    if name == "ort-int8" and model.runtime != "ort-int8":
        from ..export.onnx import require_onnx
        from .segments import attach

        require_onnx()
        attach(model)
    if name in ("fp32-onednn", "bf16-onednn", "int8") and model.runtime != name:
        from ..core.families import get_path

        family = model.encoder.family
        layers = get_path(getattr(model.hf, family.backbone), family.layers)  # where the FLOPs are
        from .int8 import fuse_qkv_

        if name.endswith("-onednn"):
            from .onednn import BF16FloatLinear, BF16Linear, FusedPacked, PackedLinear, fuse_ffn_gelu_, pack_

            kind = BF16Linear if name == "bf16-onednn" else PackedLinear
            pack_(layers, kind=kind)
            fuse_qkv_(model.encoder.parts, kind, FusedPacked)
            fuse_ffn_gelu_(model.encoder.parts)
            # the methods' wide Linears too (FastBERT's branch projections run over every token after every
            # layer), with float32 outputs: what follows them stays float32
            pack_(model.extras, kind=BF16FloatLinear if name == "bf16-onednn" else PackedLinear)
        else:
            from .int8 import quantize_

            quantize_(layers)
            fuse_qkv_(model.encoder.parts)
    model.runtime = name
    return model
