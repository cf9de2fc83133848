"""Dropping and gathering tokens between layers, with mask bookkeeping.

Used by token-reduction methods (TR-BERT, Ye et al. 2021): tokens that a policy drops really leave the
tensors, so later layers run on shorter sequences. Position information needs no bookkeeping after the
embedding layer in absolute-position models: it is already inside the hidden states.
"""

from __future__ import annotations

import torch


def attention_mask4d(mask: torch.Tensor) -> torch.Tensor | None:
    """(b, t) mask, 1 = real token -> boolean (b, 1, 1, t), True = may attend; None when nothing is padding.

    Boolean rather than additive: it is what transformers hands to SDPA, and CPU SDPA is faster with it.
    """
    return None if bool(mask.all()) else mask[:, None, None, :].bool()


def keep_index(keep: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a per-token keep decision into a gather index and the new mask.

    Args:
        keep: (b, t) bool, which tokens to keep. Position 0 ([CLS]) is always kept.
        mask: (b, t) attention mask of the current tokens (1 real, 0 padding); padding is never kept.

    Returns:
        index: (b, k) long, positions to gather, kept tokens first in their original order, padded
            with position 0 where a row keeps fewer than ``k`` (the batch's largest kept count).
        new_mask: (b, k) long mask of the gathered tokens.
    """
    keep = keep.bool() & mask.bool()
    keep[:, 0] = True
    counts = keep.sum(dim=1)  # (b,)
    k = int(counts.max())
    # A stable sort of "not kept" puts kept positions first and keeps their order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :k]  # (b, k)
    new_mask = (torch.arange(k, device=keep.device)[None, :] < counts[:, None]).long()  # (b, k)
    index = torch.where(new_mask.bool(), order, torch.zeros_like(order))
    return index, new_mask


def gather_tokens(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden (b, t, d), index (b, k) -> (b, k, d)."""
    return torch.gather(hidden, 1, index[:, :, None].expand(-1, -1, hidden.size(-1)))
