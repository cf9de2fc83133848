"""SSA's heads and forward pass (official ``modeling.py``: ``BertTokenAug``, ``BertSeqAttention``).

- Token head (SSA-Reg): an MLM-style transform (dense d→d, GELU, LayerNorm) then a linear layer to 2
  classes per token (0 = unimportant, 1 = important), one head shared by all positions (``share_weight=1``,
  the official setting for every single-sentence task) or one decoder per position (``share_weight=0``).
- Importance-weighted pooling (SSA-Trans): a_t = softmax(token logits_t)[1]; special tokens, padding and
  tokens with a_t < ``attention_threshold`` are left out; the weights are a softmax over the remaining
  positions **of a_t itself** (the probabilities, not logits, as the official code), c = Σ_t w_t H_t over the
  last layer; the output is λ·pooled[CLS] + (1−λ)·c into a new linear classifier without dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.encoder import EncoderOutput
from ...model import NimbleModel
from ..registry import Contribution
from .config import SsaConfig


class TokenHead(nn.Module):
    """Per-token importance logits (b, t, 2).

    ``positions=None`` shares one d→2 decoder across positions (``share_weight=1``); ``positions=P`` gives
    position t its own decoder (``share_weight=0``, official ``BertTokenAug`` with max_seq_length copies; here P =
    the model's position embeddings, so any ``--max-length`` fits).
    """

    def __init__(self, hidden: int, eps: float = 1e-12, positions: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        if positions is None:
            self.decoder = nn.Linear(hidden, 2)
        else:
            # the same initialisation as nn.Linear, once per position
            decoders = [nn.Linear(hidden, 2) for _ in range(positions)]
            self.weight = nn.Parameter(torch.stack([d.weight.data for d in decoders]))  # (P, 2, d)
            self.bias = nn.Parameter(torch.stack([d.bias.data for d in decoders]))  # (P, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (b, t, d)
        if hasattr(self, "decoder"):
            return self.decoder(h)
        t = h.size(1)
        return torch.einsum("btd,tkd->btk", h, self.weight[:t]) + self.bias[:t]  # (b, t, 2)


def special_mask(model: NimbleModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, t) True where a token is real text: not padding and not one of the tokenizer's special tokens.

    The official evaluation builds the same −1 positions from the input structure ([CLS], [SEP], padding),
    never from gold importance labels.
    """
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)), device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def importance_pooling(hidden: torch.Tensor, token_logits: torch.Tensor, text: torch.Tensor,
                       threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """c = Σ_t w_t H_t with w = softmax over the kept positions of a_t (official ``BertSeqAttention``).

    Args:
        hidden: (b, t, d) last-layer states. token_logits: (b, t, 2). text: (b, t) True at real text tokens.
    Returns: the pooled vectors (b, d) and the weights (b, t).

    A row where no text token reaches the threshold falls back to all its text tokens (the official code
    would spread the weight over every position, padding included); a row with no text token at all gets
    c = 0, so its output is λ·pooled[CLS]. The caller's mask is never written to (the official code edits
    the attention mask in place).
    """
    importance = token_logits.float().softmax(dim=-1)[..., 1]  # (b, t)
    keep = text & (importance >= threshold)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, text)
    scores = importance.masked_fill(~keep, float("-inf"))
    weights = torch.nan_to_num(scores.softmax(dim=1), nan=0.0)  # all -inf rows (no text) give zeros
    return torch.einsum("bt,btd->bd", weights.to(hidden.dtype), hidden), weights


def pooled_cls(model: NimbleModel, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own pooled [CLS] (BERT's pooler: dense + tanh); the [CLS] state for families without one."""
    backbone = getattr(model.hf, model.encoder.family.backbone)
    pooler = getattr(backbone, "pooler", None)
    return pooler(hidden) if pooler is not None else hidden[:, 0]


def forward(model: NimbleModel, batch: dict[str, torch.Tensor]) -> tuple[EncoderOutput, torch.Tensor]:
    """Logits of the SSA model and its token logits (b, t, 2) (training and probing)."""
    out = model.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), classify=False)
    out.logits, token_logits = heads(model, SsaConfig(**model.method_config), batch, out)
    return out, token_logits


def heads(model: NimbleModel, cfg: SsaConfig, batch: dict[str, torch.Tensor], out: EncoderOutput
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The token head and the prediction on the last hidden states of a pass run with ``classify=False``: the
    hybrid's importance pooling mixed with the pooled [CLS], or (SSA-Reg) the model's own head. Adds their FLOPs
    to the pass's. Returns the logits (b, C) and the token logits (b, t, 2)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = out.extras["last_hidden"]
    token_logits = model.extras["token_head"](hidden)
    text = special_mask(model, ids, mask)
    d = hidden.size(-1)
    n_tokens = mask.sum(dim=1).double().cpu()
    extra = 2.0 * (d * d + 2 * d) * n_tokens  # the token head on every real token
    if cfg.variant == "hybrid":
        pooled, _ = importance_pooling(hidden, token_logits, text, cfg.attention_threshold)
        mixed = cfg.cls_weight * pooled_cls(model, hidden) + (1.0 - cfg.cls_weight) * pooled
        logits = model.extras["classifier"](mixed)
        extra += 2.0 * d * n_tokens + 2.0 * d * d + 2.0 * d * model.num_labels  # pooling, pooler, classifier
    else:
        logits = model.encoder.classify(hidden)
        extra += 2.0 * d * d + 2.0 * d * model.num_labels
    out.add_flops(extra)
    return logits, token_logits


def contribute(model: NimbleModel, batch: dict[str, torch.Tensor], knobs: dict) -> Contribution:
    """SSA's part of one inference pass (no knobs: SSA changes accuracy, not speed). SSA-Reg predicts with the
    model's own head, so it adds nothing (the token head only matters in training); the hybrid replaces the head
    with its importance pooling."""
    if model.method_config.get("variant") == "reg":
        return Contribution()
    cfg = SsaConfig(**model.method_config)
    return Contribution(head=lambda out: heads(model, cfg, batch, out)[0])
