"""The shared losses: normalisations as the official codes have them (METHODS.md §0.3)."""

from __future__ import annotations

import math

import torch

from nimblebert.methods.losses import attention_mse, hidden_mse, kl_batchmean, soft_cross_entropy


def test_soft_cross_entropy_normalisations() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    summed = soft_cross_entropy(s, t, reduction="sum")
    expected = -(torch.softmax(t, -1) * torch.log_softmax(s, -1)).sum(-1).mean()
    torch.testing.assert_close(summed, expected)
    torch.testing.assert_close(soft_cross_entropy(s, t, reduction="mean"), expected / 3)  # TinyBERT's 1/C
    hot = soft_cross_entropy(s, t, temperature=2.0)
    assert not math.isclose(float(hot), float(summed))


def test_kl_is_zero_for_equal_and_batchmean() -> None:
    t = torch.randn(5, 2)
    assert float(kl_batchmean(t, t)) < 1e-6
    s = torch.randn(5, 2)
    p = torch.softmax(t, -1)
    expected = (p * (p.log() - torch.log_softmax(s, -1))).sum() / 5
    torch.testing.assert_close(kl_batchmean(s, t), expected)


def test_attention_mse_zeroes_masked_entries() -> None:
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    s2, t2 = s.clone(), t.clone()
    s2[..., 3:] = torch.finfo(s.dtype).min  # masked keys: -inf-like in the student
    t2[..., 3:] = -10000.0  # and BERT's classic -10000 in the teacher
    masked = attention_mse([s2], [t2])
    ref = ((s[..., :3] - t[..., :3]) ** 2).sum() / s.numel()  # zeros in both where masked
    torch.testing.assert_close(masked, ref)


def test_hidden_mse_with_projection() -> None:
    proj = torch.nn.Linear(4, 8)
    s, t = [torch.randn(2, 3, 4)] * 2, [torch.randn(2, 3, 8)] * 2
    loss = hidden_mse(s, t, proj)
    loss.backward()
    assert proj.weight.grad is not None and loss.item() > 0
