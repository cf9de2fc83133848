"""DynaBERT: a BERT that runs at several widths and depths (Hou et al., "DynaBERT: Dynamic BERT with Adaptive
Width and Depth", NeurIPS 2020).

One set of weights serves every sub-network: at width m_w each layer keeps its first round(H·m_w) heads
and the same share of FFN neurons; at depth m_d the layers floor(i/m_d) run (the official rule;
``--depth-rule last`` mirrors it so that the last layer always runs). Network
rewiring puts the important heads and neurons first, so the first ones are the ones worth keeping; two
distillation stages (width, then width × depth) teach every sub-network to imitate the full one.

- Training (:mod:`.objective`): rewiring (:mod:`nimblebert.core.slicing`), DynaBERT_W, DynaBERT,
  optional final fine-tuning. The saved ``model.safetensors`` is the rewired, trained model at full size:
  plain ``from_pretrained`` loads the full-width, full-depth network.
- Inference (:mod:`.policy`): knobs ``--width`` and ``--depth`` (each in (0, 1]); the core runs the
  sliced weights as really smaller matrix products.
- Export (:mod:`.materialize`): ``nimblebert export DIR --width W --depth D --format hf`` writes that
  sub-network as a plain transformers folder.

DynaBERT adds no modules: nothing is stored besides the transformers model and the options.
"""

from __future__ import annotations

import dataclasses

from ...distill.teacher import SnapshotTeacher, Teacher
from ...errors import UserError
from ...model import NimbleModel
from ..registry import Knob, Method, register_method
from .config import DynaBertConfig
from .materialize import RECORD_KEYS, materialize
from .objective import (
    SubNetworkObjective,
    config_of,
    evaluate_grid,
    hidden_targets,
    stages,
)
from .policy import contribute, plan_of, train_settings

__all__ = [
    "DYNABERT", "DynaBertConfig", "SnapshotTeacher", "SubNetworkObjective", "Teacher", "attach", "evaluate_grid",
    "contribute", "hidden_targets", "materialize", "plan_of", "stages",
]


def attach(model: NimbleModel) -> None:
    """Validate the options against the model; DynaBERT adds no modules. An export's record (which heads the
    weights really hold) stays with the options: dropping it made a FastBERT trained on an exported w0.5 folder
    run all 12 heads, the 6 zeroed ones included."""
    cfg = config_of(model)
    record = {k: v for k, v in model.method_config.items() if k in RECORD_KEYS}
    model.method_config = {**dataclasses.asdict(cfg), **record}
    if model.num_labels < 2:
        raise UserError("DynaBERT needs a classification task with at least 2 labels (it distils the teacher's "
                        "distribution over the labels)")


DYNABERT = register_method(
    Method(
        name="dynabert",
        config_cls=DynaBertConfig,
        attach=attach,
        stages=stages,
        contribute=contribute,
        knobs=(
            Knob("width", 1.0, "DynaBERT: fraction of attention heads and FFN neurons kept per layer, in (0, 1]; "
                               "1 = full width", low=0.0, high=1.0, sweep=(1.0, 0.75, 0.5, 0.25), full=1.0),
            Knob("depth", 1.0, "DynaBERT: fraction of layers kept, in (0, 1] (the layers of the model's "
                               "--depth-rule; official: floor(i/depth)); "
                               "1 = all layers", low=0.0, high=1.0, sweep=(1.0, 0.75, 0.5), full=1.0),
        ),
        static=False,
        continues=True,
        train_settings=train_settings,
        materialize=materialize,
        help="DynaBERT (Hou et al. 2020): one model at several widths and depths, distilled from a fine-tuned "
             "teacher; --width and --depth pick the sub-network; export writes it as a plain transformers model",
    )
)
