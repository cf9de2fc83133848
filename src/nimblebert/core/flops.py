"""Analytic FLOPs of what actually ran, per sample.

Counts matrix-multiply FLOPs (a multiply-add is 2 FLOPs), the convention of
``torch.utils.flop_counter`` and of the papers' FLOPs tables; element-wise work (softmax, LayerNorm,
GELU) and embedding look-ups are left out. Lengths are each sample's real tokens (padding is an
artefact of batching, not of the sample), so a batch of one gives exactly what the flop counter
measures — ``tests/core/test_flops.py`` checks that.
"""

from __future__ import annotations

import torch

from .encoder import CoreEncoder, EncoderOutput
from .ops import op_flops


def layer_flops(tokens: torch.Tensor | int, hidden: int, heads: int, head_dim: int, ffn: int):
    """FLOPs of one Transformer layer on a sequence of ``tokens`` at the given width.

    Q, K, V projections 3·2·t·d·n; scores and context 2·2·t²·n; attention output 2·t·n·d;
    FFN 2·2·t·d·f, with n = heads·head_dim.
    """
    n = heads * head_dim
    t = tokens
    return 8 * t * hidden * n + 4 * t * t * n + 4 * t * hidden * ffn


def head_flops(encoder: CoreEncoder) -> int:
    """FLOPs of the classification head (BERT: pooler d×d, then classifier d×C)."""
    cfg = encoder.model.config
    d = cfg.hidden_size
    return 2 * d * d + 2 * d * encoder.num_labels


def sample_flops(encoder: CoreEncoder, out: EncoderOutput) -> torch.Tensor:
    """Per-sample FLOPs (B,) of an :class:`EncoderOutput`: the layers each sample ran at the width and
    length it ran them, the final head for samples that reached it, and whatever hooks recorded in
    ``out.extras["extra_flops"]`` (branch classifiers, token policies, ...)."""
    batch = out.logits.size(0)
    total = torch.zeros(batch, dtype=torch.float64)
    d = encoder.model.config.hidden_size
    for step in out.steps:
        if step.op is not None:  # a heterogeneous op (NAS-BERT)
            f = op_flops(step.op, step.lengths.double().cpu())
        else:
            f = layer_flops(step.lengths.double().cpu(), d, step.heads, encoder.head_dim, step.ffn)
        total.index_add_(0, step.rows.cpu(), f)
    rows = out.extras.get("head_rows")
    if rows is not None and "last_hidden" not in out.extras:
        total[rows.cpu()] += head_flops(encoder)
    extra = out.extra_flops()
    if extra is not None:
        total += extra.double().cpu()
    return total
