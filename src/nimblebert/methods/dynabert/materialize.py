"""One DynaBERT sub-network as real smaller weights (``nimblebert export DIR --width W --depth D``).

The official code slices at run time only (``eval_glue.py`` sets ``width_mult`` / ``depth_mult`` on the
modules); a deployable model needs the sub-network materialised. Here: the kept layers only (renumbered),
the first FFN neurons as physically smaller Linear modules (``intermediate_size`` updated), and the dropped
heads zeroed — transformers 5 can no longer load a BERT with fewer heads of the same size (see
:mod:`nimblebert.core.slicing`). The result computes exactly what the dynamic model computes at that
setting and loads with plain ``AutoModelForSequenceClassification.from_pretrained``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.plan import depth_layers
from ...core.slicing import materialize as materialize_hf
from ...core.slicing import width_sizes
from .objective import depth_rule_of

if TYPE_CHECKING:
    from ...model import NimbleModel

SOURCE_KEY = "materialized_from"
# What an export records in the DynaBERT component's options (beside its training options): the core reads
# ``heads_per_layer`` to run only the kept heads, so every later save of the stack must carry them
# (methods trained on top of an exported folder included).
RECORD_KEYS = (SOURCE_KEY, "width", "depth", "source_layers", "heads_per_layer", "ffn_per_layer")


def materialize(model: NimbleModel, width: float = 1.0, depth: float = 1.0) -> NimbleModel:
    """``model`` with its DynaBERT component fixed at (``width``, ``depth``): the sub-network as real smaller
    weights, which plain ``from_pretrained`` loads. Components stacked on it (exits) stay live, with their modules:
    they were trained at every width. A smaller depth under such components is refused (they were trained at full
    depth, on the layers' own indices).

    The DynaBERT component records the export (``fixed``: the knobs; in its options: the source layers, heads and
    FFN neurons per layer), so ``nimblebert info`` shows it and the core runs only the kept heads (transformers
    stores the dropped ones as zeros).
    """
    from ...errors import UserError
    from ...model import Component, NimbleModel

    index = max(i for i, c in enumerate(model.stack) if c.method == "dynabert")
    above = [c.method for c in model.stack[index + 1:] if not c.spec.static]
    if depth < 1 and above:
        raise UserError(f"--depth {depth:g}: the {'+'.join(above)} component(s) on this DynaBERT model were trained at "
                        "full depth; export --depth 1 (any --width), or export from the DynaBERT folder below them")
    enc = model.encoder
    heads, ffn = width_sizes(enc.num_heads, enc.ffn_size, width)
    with model.focus(index):
        layers = depth_layers(enc.num_layers, depth, depth_rule_of(model))
    hf = materialize_hf(model.hf, layers, heads, ffn).eval()
    record = {SOURCE_KEY: "dynabert", "width": width, "depth": depth, "source_layers": list(layers),
              "heads_per_layer": [heads] * len(layers), "ffn_per_layer": [ffn] * len(layers)}
    source = model.stack[index]
    stack = list(model.stack)
    stack[index] = Component("dynabert", {**source.config, **record}, source.source,
                             fixed={"width": width, "depth": depth}, teacher_stack=source.teacher_stack)
    static = NimbleModel(hf, model.tokenizer, label_names=model.label_names, stack=stack)
    static.extras = model.extras
    static.source = model.source
    return static.eval()
