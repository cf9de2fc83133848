"""FastBERT's inference: samples leave at the first confident branch (Liu et al., ACL 2020, "Adaptive
inference"), or, as a second policy on the same branches, when the branches' prediction has stayed the
same for ``patience`` layers (PABEE's rule: Zhou et al., "BERT Loses Patience", NeurIPS 2020).

Batched exit is real: a row that leaves is removed from the hidden states and the mask
(:meth:`LoopState.finish`), the padding that only it needed is cut off, and the next layers run on the
smaller tensors. ``speed = 0`` and no patience is the paper's "normal mode": the plain model, no branch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...core.encoder import EncoderOutput, LoopState
from ...errors import UserError
from ..registry import Contribution
from .modules import normalized_entropy

if TYPE_CHECKING:
    from ...model import NimbleModel


class ExitHook:
    """Called by the core after every layer; runs that layer's branch on the live rows and lets the
    rows that are done leave with the branch's logits.

    A row is done when its normalized entropy is ≤ ``speed`` (the official script keeps rows whose
    uncertainty is > speed), or, when ``patience`` > 0, when its branch prediction is the same as at
    the previous ``patience`` layers (PABEE's counter: +1 when the argmax repeats, reset otherwise,
    exit when it reaches ``patience``). Both given: a row leaves when either rule fires. After the last
    layer no branch runs: the remaining rows get the model's own head, the teacher.
    """

    def __init__(self, branches: nn.ModuleList, speed: float, patience: int) -> None:
        self.branches = list(branches)  # a list: indexing a ModuleList costs more than a branch's smallest op
        self.speed = speed
        self.patience = patience
        self.previous: torch.Tensor | None = None  # (B,) last branch prediction per original row
        self.count: torch.Tensor | None = None  # (B,) PABEE patience counter per original row

    def __call__(self, state: LoopState) -> None:
        if state.layer >= len(self.branches):  # after the last layer: the teacher head answers
            return
        logits = self.branches[state.layer](state.hidden, state.mask, state.attn_mask)  # (b, C)
        done = None
        if self.speed > 0:
            done = normalized_entropy(logits) <= self.speed
        if self.patience > 0:
            pred = logits.argmax(dim=-1)  # (b,)
            if self.previous is None:
                batch = state.logits.size(0)
                self.previous = torch.full((batch,), -1, dtype=torch.long, device=pred.device)
                self.count = torch.zeros(batch, dtype=torch.long, device=pred.device)
            rows = state.rows
            count = torch.where(pred == self.previous[rows], self.count[rows] + 1, 0)  # type: ignore[index]
            self.count[rows] = count  # type: ignore[index]
            self.previous[rows] = pred
            patient = count >= self.patience
            done = patient if done is None else done | patient
        if done is None:
            return
        live, width = state.rows.numel(), state.hidden.size(1)
        state.finish(done, logits)
        if 0 < state.rows.numel() < live and width > 1:
            # Padding is on the right: once the longest rows have left, the columns that only they
            # filled are padding for everyone and can go too (fewer FLOPs, same results).
            longest = int(state.lengths.max())
            if longest < width:
                state.keep_tokens(state.mask.bool())


def branch_flops(model: NimbleModel, out: EncoderOutput) -> torch.Tensor:
    """Per-sample FLOPs (B,) of the branches that ran: one per layer step, except after the last layer.

    Computed from the steps the core recorded (rows and real lengths entering each layer), so it stays
    exact whatever else changes the batch.
    """
    branches = model.extras["branches"]
    hidden = model.hf.config.hidden_size
    total = torch.zeros(out.logits.size(0), dtype=torch.float64, device=out.logits.device)
    for step in out.steps:
        if step.layer < len(branches):
            total.index_add_(0, step.rows, branches[step.layer].flops(step.lengths, hidden).to(total.device))
    return total


def contribute(model: NimbleModel, batch: dict[str, torch.Tensor], knobs: dict) -> Contribution:
    """FastBERT's part of one inference pass at ``speed`` ∈ [0, 1] (and/or ``patience`` ≥ 1, PABEE's rule): the
    exit hook, and the branches' FLOPs afterwards. ``layers_run`` of the pass is then each sample's exit layer.
    ``speed = 0`` and no patience contributes nothing: exactly the model below (normal mode, no branch computed).
    """
    speed, patience = float(knobs.get("speed", 0.0)), int(knobs.get("patience", 0))
    if speed <= 0 and patience <= 0:
        return Contribution()
    hook = ExitHook(model.extras["branches"], speed, patience)
    return Contribution(hooks=[hook], after=[lambda out: out.add_flops(lambda: branch_flops(model, out))])


def check_together(model: NimbleModel, knobs: dict) -> None:
    """Exits are distilled at full depth (see :func:`~.objective.parent_settings`): a smaller depth below them
    would hand each branch the states of other layers than those it learnt from."""
    exits = float(knobs.get("speed", 0.0)) > 0 or int(knobs.get("patience", 0)) > 0
    if exits and float(knobs.get("depth", 1.0)) < 1.0:
        raise UserError("--depth below 1 together with early exits: the exits were distilled at full depth; use "
                        "--speed (exits) or --depth (fewer layers), not both")
