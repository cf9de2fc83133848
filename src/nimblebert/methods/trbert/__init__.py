"""TR-BERT: dynamic token reduction trained with reinforcement learning (Ye et al., NAACL 2021;
official code ``thunlp/TR-BERT``; spec in METHODS.md §4).

After chosen layers (default: after layer 1 and after layer L/2, the official placement) a small policy MLP
gives every remaining token a keep probability; dropped tokens leave the tensors, so the later layers run on
shorter sequences — most useful on long texts, where attention's cost grows with the square of the length.
Training (see :mod:`.objective`): fine-tune (unless the model already is), residual-gradient heuristic scores,
policy-only REINFORCE with imitation guidance, then joint training with distillation from the full model.
Inference (see :mod:`.policy`): keep p ≥ ``keep_threshold`` (0 = the full model).

Like FastBERT's, the saved ``model.safetensors`` is the plain transformers model (``from_pretrained`` gives the
full model: after the joint stage, its weights are the ones the policies were trained with), the policies are
in ``nimblebert.safetensors``.
"""

from __future__ import annotations

import dataclasses

from ...errors import UserError
from ...model import NimbleModel
from ..registry import TOKENS, Knob, Method, register_method
from .config import TrBertConfig, default_cuts, guide_target
from .modules import CutHook, TokenPolicy, build_policies, forced_tokens, selection_nll, top_n_mask
from .objective import RLObjective, config_of, finetune_objective, residual_scores, stages
from .policy import DROP_MODES, contribute, train_settings

__all__ = [
    "DROP_MODES", "TRBERT", "CutHook", "RLObjective", "TokenPolicy", "TrBertConfig", "attach", "build_policies",
    "contribute", "default_cuts", "finetune_objective", "forced_tokens", "guide_target", "residual_scores",
    "selection_nll", "stages", "top_n_mask",
]


def attach(model: NimbleModel) -> None:
    """Add one policy per cut to ``model.extras["policies"]``; the resolved cuts go into the method config."""
    cfg = config_of(model)
    layers = model.hf.config.num_hidden_layers
    cuts = sorted(set(cfg.cuts)) if cfg.cuts else default_cuts(layers)
    if not cuts:
        raise UserError(f"TR-BERT needs a model with at least 2 layers to drop tokens between (it has {layers})")
    if cuts[-1] >= layers:
        raise UserError(f"--cuts {cuts}: a cut must come before the last layer (the model has {layers}); "
                        f"e.g. --cuts {' '.join(map(str, default_cuts(layers)))}")
    cfg.cuts = cuts
    model.method_config = dataclasses.asdict(cfg)
    model.extras["policies"] = build_policies(model.hf.config.hidden_size, cuts, cfg.policy_hidden)


TRBERT = register_method(
    Method(
        name="trbert",
        config_cls=TrBertConfig,
        attach=attach,
        stages=stages,
        contribute=contribute,
        knobs=(
            Knob("keep_threshold", 0.5, "TR-BERT: a token is kept at a cut when its keep probability is ≥ this; "
                                        "0 = off (the full model), higher = fewer tokens", low=0.0, high=1.0,
                 sweep=(0.0, 0.3, 0.4, 0.5, 0.6, 0.7), full=0.0),
            Knob("keep_fraction", 0.0, "TR-BERT: instead of the threshold, keep this share of each row's tokens at "
                                       "each cut, the policy's top-ranked (cuts compound: 0.5 twice leaves a quarter); "
                                       "0 = off (the threshold decides), 1 = the full model", low=0.0, high=1.0,
                 sweep=(1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2), full=0.0),
            Knob("drop_mode", "policy", "TR-BERT: which tokens go at the policy's kept count per row and cut: "
                                        "'policy', 'random' or 'first' (truncation) — the last two are baselines",
                 type=str),
        ),
        static=False,
        role=TOKENS,
        hook_order=1,
        train_settings=train_settings,
        help="TR-BERT (Ye et al. 2021): learned policies drop tokens between layers (RL-trained); "
             "--keep-threshold picks how many stay",
    )
)
