"""Pure loss functions shared by the methods (METHODS.md §0.3).

Each says which paper and which normalisation it follows; the normalisations differ between the
official codes on purpose (TinyBERT averages its soft cross-entropy over classes too, DynaBERT sums
over classes, FastBERT uses batch-mean KL), and the differences are kept where they matter for fidelity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, reduction: str = "sum"
) -> torch.Tensor:
    """−Σ_c softmax(z_T/t)_c · log_softmax(z_S/t)_c, averaged over the batch.

    ``reduction="sum"`` sums over classes (DynaBERT's official code; the usual definition);
    ``reduction="mean"`` averages over classes as well (TinyBERT's official ``.mean()``: 1/C times the
    former — a harmless scale under Adam, kept for fidelity); ``reduction="none"`` gives the per-row
    sums (B,) (TR-BERT's rewards are per rollout).
    """
    target = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    per_class = -target * F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    if reduction == "mean":
        return per_class.mean()
    if reduction == "sum":
        return per_class.sum(dim=-1).mean()
    if reduction == "none":
        return per_class.sum(dim=-1)
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_T ‖ p_S) with ``reduction='batchmean'`` (FastBERT's official code, T = 1)."""
    return F.kl_div(F.log_softmax(student_logits, dim=-1), F.softmax(teacher_logits.detach(), dim=-1),
                    reduction="batchmean")


def hidden_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], project: torch.nn.Module | None = None
) -> torch.Tensor:
    """Σ over pairs of MSE(project(H_S), H_T), each averaged over all elements, padding included
    (TinyBERT's and DynaBERT's official codes do not mask). When the core packs a padded batch (≥ 5 % padding,
    :func:`~nimblebert.core.tokens.pack_index`) its layer outputs are 0 at padding in student and teacher alike,
    so there padding adds nothing but its share of the mean."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        total = total + F.mse_loss(project(s) if project is not None else s, t.detach())
    return total


def attention_mse(student_scores: Sequence[torch.Tensor], teacher_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """TinyBERT's attention loss (Jiao et al. 2020, eq. 3): Σ over mapped layers of the MSE between the
    pre-softmax scores QKᵀ/√d_h + mask, with masked entries (≤ −100) set to 0 in both, averaged over
    batch × heads × L × L."""
    total = student_scores[0].new_zeros(())
    for s, t in zip(student_scores, teacher_scores, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"attention maps differ in shape: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        s = torch.where(s <= -100, torch.zeros_like(s), s)
        t = torch.where(t <= -100, torch.zeros_like(t), t.detach())
        total = total + F.mse_loss(s, t)
    return total
