"""Analytic FLOPs against torch.utils.flop_counter on a tiny model (DESIGN: cross-check)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode

from nimblebert.core.encoder import CoreEncoder
from nimblebert.core.flops import sample_flops
from nimblebert.core.plan import Plan


def _counted(enc: CoreEncoder, ids: torch.Tensor, plan: Plan) -> tuple[int, float]:
    # output_scores runs attention as explicit matmuls: the flop counter does not count the CPU
    # scaled_dot_product_attention kernel, so the fused path would read 4·t²·n short per layer.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = enc(ids, plan=plan, output_scores=True)
    return counter.get_total_flops(), float(sample_flops(enc, out)[0])


@pytest.mark.parametrize(
    "plan",
    [Plan(), Plan(layers=(0, 2)), Plan(heads=(2, 4, 1), ffn=(10, 37, 20))],
    ids=["full", "depth", "width"],
)
def test_analytic_flops_match_counter(plan: Plan) -> None:
    enc = CoreEncoder(tiny_model(layers=3))
    ids = torch.randint(5, 99, (1, 13))
    counted, analytic = _counted(enc, ids, plan)
    assert analytic == counted


def test_padding_is_not_counted_and_rows_are_independent() -> None:
    enc = CoreEncoder(tiny_model(layers=2))
    ids = torch.randint(5, 99, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        per_sample = sample_flops(enc, enc(ids, mask))
        alone = sample_flops(enc, enc(ids[1:, :6]))
    assert per_sample[1] == alone[0]
    assert per_sample[0] > per_sample[1]
