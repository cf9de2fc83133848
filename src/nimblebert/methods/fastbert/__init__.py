"""FastBERT: a self-distilling BERT with adaptive inference time (Liu et al., ACL 2020).

A branch classifier ("student") after every layer but the last, trained in two stages (see
:mod:`.objective`): fine-tune backbone + teacher, then distil the teacher's distribution into every
student with the backbone and teacher frozen. At inference a sample leaves at the first layer whose
branch is confident enough: normalized entropy ≤ ``speed`` (see :mod:`.policy`); ``patience`` offers
PABEE's rule on the same branches.

Deviation from the paper, on purpose: **the teacher is the model's own Hugging Face classification head**
(BERT's pooler + classifier), not a 13th branch with the students' architecture. The saved
``model.safetensors`` therefore is exactly the teacher as a plain transformers model
(``AutoModelForSequenceClassification.from_pretrained`` loads it), a fine-tuned model folder can be
distilled as it is (its classifier becomes the teacher), and ``speed = 0`` runs the plain model with no
branch at all — the paper's "normal mode". The students (``nimblebert.safetensors``) have the paper's
architecture.
"""

from __future__ import annotations

import dataclasses

from ...errors import UserError
from ...model import NimbleModel
from ..registry import EXITS, Knob, Method, register_method
from .config import FastBertConfig
from .modules import AttentionBranch, PooledBranch, build_branches, normalized_entropy
from .objective import config_of, distill_objective, finetune_objective, stages
from .policy import ExitHook, branch_flops, check_together, contribute

__all__ = [
    "FASTBERT", "AttentionBranch", "ExitHook", "FastBertConfig", "PooledBranch", "attach", "branch_flops",
    "build_branches", "contribute", "distill_objective", "finetune_objective", "normalized_entropy", "stages",
]


def attach(model: NimbleModel) -> None:
    """Add the student branches (after layers 1 .. L-1) to ``model.extras["branches"]``."""
    cfg = config_of(model)
    model.method_config = dataclasses.asdict(cfg)
    hf_cfg = model.hf.config
    if model.num_labels < 2:
        raise UserError("FastBERT needs a classification task with at least 2 labels (its exit rule is an "
                        "entropy over the labels)")
    if hf_cfg.num_hidden_layers < 2:
        raise UserError("FastBERT needs a model with at least 2 layers: there is no layer to exit after")
    model.extras["branches"] = build_branches(
        hf_cfg.hidden_size, hf_cfg.num_hidden_layers, model.num_labels, cfg)


FASTBERT = register_method(
    Method(
        name="fastbert",
        config_cls=FastBertConfig,
        attach=attach,
        stages=stages,
        contribute=contribute,
        knobs=(
            Knob("speed", 0.0, "FastBERT: a sample leaves at the first layer whose normalized entropy is "
                               "≤ speed; 0 = the teacher (full model), higher = faster", low=0.0, high=1.0,
                 sweep=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), full=0.0),
            Knob("patience", 0, "FastBERT branches with PABEE's rule: a sample leaves once its prediction "
                                "has stayed the same for this many more layers; 0 = off", low=0, type=int, full=0),
        ),
        static=False,
        role=EXITS,
        trains_at_settings=True,
        hook_order=0,
        check_together=check_together,
        help="FastBERT (Liu et al. 2020): a branch classifier after every layer, self-distilled from the "
             "model's head; --speed picks how early samples leave",
    )
)
