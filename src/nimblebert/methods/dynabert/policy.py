"""DynaBERT's inference: the sub-network at width ``m_w`` and depth ``m_d`` (Hou et al., NeurIPS 2020,
§3; official ``eval_glue.py``).

The core keeps the first round(H·m_w) heads and the matching share of FFN neurons in every layer as
really smaller matrix products (sliced weight views, not masks), and runs only the layers of the
model's depth rule (the official one unless trained with ``--depth-rule last``). Width 1 and depth 1
is the plain model, exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...core.plan import Plan
from ...core.slicing import encoder_plan
from ..registry import Contribution
from .objective import depth_rule_of

if TYPE_CHECKING:
    from ...model import NimbleModel


def plan_of(model: NimbleModel, width: float = 1.0, depth: float = 1.0) -> Plan:
    """The core Plan of the sub-network at (``width``, ``depth``), with the depth rule the model was trained
    with."""
    return encoder_plan(model.encoder, width, depth, depth_rule_of(model))


def contribute(model: NimbleModel, batch: dict[str, torch.Tensor], knobs: dict) -> Contribution:
    """DynaBERT's part of one inference pass: the Plan of the sub-network at (``width``, ``depth``) ∈ (0, 1]²
    (width 1 and depth 1: none, the plain model). ``layers_run`` is then the number of layers the sub-network
    has; the FLOPs the core records are those of the sliced widths."""
    plan = plan_of(model, float(knobs.get("width", 1.0)), float(knobs.get("depth", 1.0)))
    return Contribution(plan=plan)


def train_settings(model: NimbleModel) -> list[dict]:
    """What a component stacked on DynaBERT (exits) is trained at: every width this model was trained at, at full
    depth (exits distilled on each sub-network's own states and predictions, so they hold at every width)."""
    widths = model.method_config.get("widths") or [1.0]
    return [{"width": float(w)} for w in sorted({float(w) for w in widths}, reverse=True)]
