"""core/slicing.py on tiny random models: width sizes and plans, the depth rule, FLOPs of sliced widths,
importance (against brute-force head ablation), rewiring (function-preserving), materialising."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from nimblebert.core.encoder import CoreEncoder
from nimblebert.core.flops import sample_flops
from nimblebert.core.plan import FULL, depth_layers
from nimblebert.core.slicing import (
    compute_importance,
    descending,
    encoder_plan,
    materialize,
    materialized_heads,
    rewire,
    sub_network_plan,
    width_sizes,
)
from nimblebert.errors import UserError

HEADS, FFN, HEAD_DIM = 4, 37, 8


def make_batch(rows: int = 16, length: int = 12, seed: int = 1, padded: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        lengths = torch.randint(3, length + 1, (rows,), generator=g)
        lengths[0] = length
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "labels": torch.randint(0, 2, (rows,), generator=g)}


def run(enc: CoreEncoder, batch: dict[str, torch.Tensor], **plan) -> torch.Tensor:
    with torch.no_grad():
        return enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **plan).logits


# ---- widths, depths, plans ------------------------------------------------------------------------------

def test_width_sizes_follow_the_official_rounding() -> None:
    # BERT-base: 3/6/9/12 heads and 768/1536/2304/3072 neurons; MiniLM-L6: 1536 neurons at 12 heads.
    assert [width_sizes(12, 3072, w) for w in (0.25, 0.5, 0.75, 1.0)] == [(3, 768), (6, 1536), (9, 2304), (12, 3072)]
    assert [width_sizes(12, 1536, w)[1] for w in (0.25, 0.5, 0.75)] == [384, 768, 1152]
    # The FFN keeps the heads' share: int(round(H·m_w)/H · F), i.e. round(m_w·F) where that share is whole.
    assert width_sizes(HEADS, FFN, 0.5) == (2, 18)
    assert width_sizes(HEADS, FFN, 0.75) == (3, 27)
    assert width_sizes(12, 3072, 0.3) == (4, 1024)  # between grid points: 4 heads, the same third of the FFN
    assert width_sizes(12, 3072, 0.01) == (1, 256)  # never zero heads
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserError, match="out of range"):
            width_sizes(12, 3072, bad)


def test_depth_rule_is_the_official_one() -> None:
    # Official run_glue.py: kept = floor(i / m_d) for i < round(L·m_d).
    assert depth_layers(12, 0.5) == (0, 2, 4, 6, 8, 10)
    assert depth_layers(12, 0.75) == (0, 1, 2, 4, 5, 6, 8, 9, 10)
    assert depth_layers(6, 0.5) == (0, 2, 4)
    assert depth_layers(6, 0.75) == (0, 1, 2, 4)  # round(4.5) = 4, as Python's round in the official code
    assert depth_layers(4, 0.5) == (0, 2)
    assert depth_layers(12, 1.0) == tuple(range(12))


def test_sub_network_plan() -> None:
    assert sub_network_plan(4, HEADS, FFN, 1.0, 1.0) is FULL
    plan = sub_network_plan(4, HEADS, FFN, 0.5, 0.5)
    assert plan.layers == (0, 2) and plan.heads == (2,) * 4 and plan.ffn == (18,) * 4
    plan = sub_network_plan(4, HEADS, FFN, 1.0, 0.75)
    assert plan.layers == (0, 1, 2) and plan.heads is None and plan.ffn is None


@pytest.mark.parametrize("width,depth", [(1.0, 1.0), (0.75, 1.0), (0.5, 0.5), (0.25, 0.75)])
def test_sliced_widths_run_smaller_products_and_flops_shrink(width: float, depth: float) -> None:
    enc = CoreEncoder(tiny_model(layers=4))
    batch = make_batch(rows=1, length=13, padded=False)
    plan = encoder_plan(enc, width, depth)
    heads, ffn = width_sizes(HEADS, FFN, width)
    # What really ran: torch's flop counter sees the smaller products (not masks) and agrees with ours.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = enc(batch["input_ids"], plan=plan, output_scores=True)
    assert [(s.heads, s.ffn) for s in out.steps] == [(heads, ffn)] * len(depth_layers(4, depth))
    assert float(sample_flops(enc, out)[0]) == counter.get_total_flops()
    full = CoreEncoder(tiny_model(layers=4))
    with torch.no_grad():
        full_flops = float(sample_flops(full, full(batch["input_ids"]))[0])
    t, d = 13, 32
    per_layer = lambda h, f: 8 * t * d * h * HEAD_DIM + 4 * t * t * h * HEAD_DIM + 4 * t * d * f  # noqa: E731
    expected = len(depth_layers(4, depth)) * per_layer(heads, ffn) + 2 * d * d + 2 * d * 2
    assert float(sample_flops(enc, out)[0]) == expected
    assert expected <= full_flops and (expected < full_flops) == ((width, depth) != (1.0, 1.0))


# ---- importance and rewiring ---------------------------------------------------------------------------

def test_head_importance_ranks_like_brute_force_ablation() -> None:
    """The gate gradient is the first-order estimate of the loss change when a head is removed (Michel et al.
    2019). With the heads' contributions scaled down, first order is accurate, and the ranking must equal the
    brute-force one: remove each head alone, measure |ΔL|. In float64, so that |ΔL| (~1e-6) is well resolved."""
    for seed in range(4):
        hf = tiny_model(seed=seed, layers=2).double()
        with torch.no_grad():
            for layer in hf.bert.encoder.layer:
                layer.attention.output.dense.weight.mul_(0.2)
        enc = CoreEncoder(hf)
        batch = make_batch(rows=32, seed=seed)
        importance = compute_importance(enc, [batch], loss_fn=F.cross_entropy).heads  # (L, H)

        def loss(enc: CoreEncoder = enc, batch: dict = batch) -> float:
            return float(F.cross_entropy(run(enc, batch), batch["labels"]))

        base = loss()
        ablation = torch.zeros_like(importance)
        for i, layer in enumerate(hf.bert.encoder.layer):
            w = layer.attention.output.dense.weight
            for h in range(HEADS):
                cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                saved = w[:, cols].clone()
                with torch.no_grad():
                    w[:, cols] = 0
                ablation[i, h] = abs(loss() - base)
                with torch.no_grad():
                    w[:, cols] = saved
        assert torch.equal(descending(importance), descending(ablation)), (seed, importance, ablation)


def test_dead_heads_and_neurons_get_zero_importance_and_go_last() -> None:
    hf = tiny_model(layers=2)
    layer = hf.bert.encoder.layer[0]
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 0:HEAD_DIM] = 0  # head 0 contributes nothing
        layer.intermediate.dense.weight[5] = 0  # neuron 5: no input, no bias, no output
        layer.intermediate.dense.bias[5] = 0
        layer.output.dense.weight[:, 5] = 0
    enc = CoreEncoder(hf)
    imp = compute_importance(enc, [make_batch(seed=s) for s in range(3)])
    assert imp.examples == 48
    assert imp.heads[0, 0] == 0 and (imp.heads[0, 1:] > 0).all()
    assert imp.neurons[0, 5] == 0 and (imp.neurons[0].count_nonzero() == FFN - 1)
    head_order, neuron_order = rewire(enc, imp)
    assert head_order[0, -1] == 0 and neuron_order[0, -1] == 5
    # After rewiring the dead head sits last: its output columns are the zero ones.
    assert layer.attention.output.dense.weight[:, -HEAD_DIM:].abs().sum() == 0
    assert layer.output.dense.weight[:, -1].abs().sum() == 0


def test_rewiring_keeps_the_function_and_sorts_the_scores() -> None:
    hf = tiny_model(layers=3)
    enc = CoreEncoder(hf)
    batches = [make_batch(seed=s) for s in range(3)]
    reference = AutoModelForSequenceClassification.from_config(hf.config).eval()
    reference.load_state_dict(hf.state_dict())  # an untouched copy
    before = compute_importance(enc, batches)
    rewire(enc, before)
    probe = make_batch(seed=7)
    with torch.no_grad():
        ref = reference(**{k: v for k, v in probe.items() if k != "labels"}).logits
    torch.testing.assert_close(run(enc, probe), ref, atol=1e-5, rtol=0)  # the full model is unchanged
    assert not torch.equal(hf.bert.encoder.layer[0].intermediate.dense.weight,
                           reference.bert.encoder.layer[0].intermediate.dense.weight)  # but the weights moved
    after = compute_importance(enc, batches)
    # Rewiring permutes the scores: the same multiset, now non-increasing along each layer.
    torch.testing.assert_close(after.heads, before.heads.sort(dim=1, descending=True).values, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(after.neurons, before.neurons.sort(dim=1, descending=True).values, rtol=1e-4,
                               atol=1e-9)
    assert (after.heads[:, :-1] >= after.heads[:, 1:] * (1 - 1e-4)).all()
    # The parameters' requires_grad flags and the train/eval mode are left as they were.
    assert all(p.requires_grad for p in hf.parameters()) and not hf.training


def test_importance_leaves_no_gradients_behind() -> None:
    hf = tiny_model(layers=2)
    compute_importance(CoreEncoder(hf), [make_batch()])
    assert all(p.grad is None for p in hf.parameters())


# ---- materialising ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width,depth", [(0.5, 0.5), (0.75, 1.0), (0.25, 0.75), (1.0, 0.5)])
def test_materialized_model_equals_the_sliced_core(tmp_path, width: float, depth: float) -> None:
    hf = tiny_model(layers=4)
    enc = CoreEncoder(hf)
    heads, ffn = width_sizes(HEADS, FFN, width)
    layers = depth_layers(4, depth)
    small = materialize(hf, layers, heads, ffn)
    assert hf.config.num_hidden_layers == 4 and hf.bert.encoder.layer[0].intermediate.dense.out_features == FFN
    small.save_pretrained(tmp_path / "small")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "small").eval()
    assert loaded.config.num_hidden_layers == len(layers) and loaded.config.intermediate_size == ffn
    assert loaded.bert.encoder.layer[0].intermediate.dense.weight.shape == (ffn, 32)
    assert loaded.bert.encoder.layer[0].output.dense.weight.shape == (32, ffn)
    assert materialized_heads(loaded) == [heads] * len(layers)
    batch = make_batch(seed=3)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, run(enc, batch, plan=encoder_plan(enc, width, depth)),
                                   atol=1e-5, rtol=0)


def test_materialize_rejects_impossible_sub_networks() -> None:
    hf = tiny_model(layers=2)
    with pytest.raises(UserError, match="at least one layer"):
        materialize(hf, [], 2, 10)
    with pytest.raises(UserError, match="does not exist"):
        materialize(hf, [0, 5], 2, 10)
    with pytest.raises(UserError, match="cannot keep"):
        materialize(hf, [0], 9, 10)
    with pytest.raises(UserError, match="one intermediate_size"):
        materialize(hf, [0, 1], 2, [10, 12])


@pytest.mark.parametrize("family", ["roberta", "electra"])
def test_rewire_and_materialize_other_families(tmp_path, family: str) -> None:
    """Only the family map is used: RoBERTa and ELECTRA rewire and materialise the same way."""
    from transformers import (
        ElectraConfig,
        ElectraForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    if family == "roberta":
        hf = RobertaForSequenceClassification(RobertaConfig(**sizes, pad_token_id=1, type_vocab_size=1)).eval()
    else:
        hf = ElectraForSequenceClassification(ElectraConfig(**sizes, embedding_size=32)).eval()
    enc = CoreEncoder(hf)
    batch = make_batch(seed=2)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["input_ids"] = batch["input_ids"].clamp(min=5) * batch["attention_mask"] + (1 - batch["attention_mask"])
    before = run(enc, batch)
    rewire(enc, compute_importance(enc, [batch]))
    torch.testing.assert_close(run(enc, batch), before, atol=1e-5, rtol=0)
    small = materialize(hf, depth_layers(4, 0.5), 2, 18)
    small.save_pretrained(tmp_path / family)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / family).eval()
    assert loaded.config.num_hidden_layers == 2 and loaded.config.intermediate_size == 18
    with torch.no_grad():
        ref = run(enc, batch, plan=encoder_plan(enc, 0.5, 0.5))
        torch.testing.assert_close(loaded(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, ref,
                                   atol=1e-5, rtol=0)
