"""Kernels under the runner: the precision a loaded model's matrix products run in.

``fp32`` (default) runs the modules as they are; ``int8`` quantizes the large Linears in place at load time
(:mod:`.int8`). A runtime never changes what is saved: a folder keeps its float32 weights, and its config's
``nimblebert`` section may name the runtime to load it with (``nimblebert export DIR --format nimble --int8``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..model import NimbleModel

RUNTIMES = ("fp32", "int8")
DEFAULT = "fp32"


def check_runtime(name: str | None) -> str:
    """``name`` validated (None -> the default)."""
    name = name or DEFAULT
    if name not in RUNTIMES:
        raise UserError(f"runtime {name!r} is unknown; choose from {', '.join(RUNTIMES)}")
    return name


def apply_runtime(model: NimbleModel, name: str | None) -> NimbleModel:
    """Put ``model`` (loaded in float32, in eval mode) on runtime ``name``, in place; returns it.

    int8 quantizes the transformers model's Linears and those of the method's modules (``model.extras``:
    FastBERT branches, TR-BERT policies), so every component runs in int8 and every knob stays live.
    """
    name = check_runtime(name)
    if model.runtime == "int8" and name != "int8":
        raise UserError("this model was already quantized to int8 in memory; load it again with runtime fp32")
    if name == "int8" and model.runtime != "int8":
        from .int8 import quantize_

        quantize_(model.hf)
        quantize_(model.extras)
    model.runtime = name
    return model
