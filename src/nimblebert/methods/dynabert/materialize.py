"""One DynaBERT sub-network as a static, plain transformers model (``nimblebert export DIR --width W --depth D``).

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


def materialize(model: NimbleModel, width: float = 1.0, depth: float = 1.0) -> NimbleModel:
    """The sub-network of ``model`` at (``width``, ``depth``) as a static (``finetune``) NimbleModel.

    Its ``method_config`` records where it came from (method, width, depth, the source layers, heads and
    FFN neurons per layer); plain fine-tuning ignores these entries.
    """
    from ...model import NimbleModel
    from ..registry import get_method

    enc = model.encoder
    heads, ffn = width_sizes(enc.num_heads, enc.ffn_size, width)
    layers = depth_layers(enc.num_layers, depth, depth_rule_of(model))
    hf = materialize_hf(model.hf, layers, heads, ffn).eval()
    record = {SOURCE_KEY: model.method, "width": width, "depth": depth, "source_layers": list(layers),
              "heads_per_layer": [heads] * len(layers), "ffn_per_layer": [ffn] * len(layers)}
    static = NimbleModel(hf, model.tokenizer, "finetune", record, model.label_names)
    get_method("finetune").attach(static)
    static.source = model.source
    return static.eval()
