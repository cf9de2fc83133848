"""Dropping and gathering tokens between layers, with mask bookkeeping.

Used by token-reduction methods (TR-BERT, Ye et al. 2021): tokens that a policy drops really leave the
tensors, so later layers run on shorter sequences. Position information needs no bookkeeping after the
embedding layer in absolute-position models: it is already inside the hidden states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def attention_mask4d(mask: torch.Tensor) -> torch.Tensor | None:
    """(b, t) mask, 1 = real token -> boolean (b, 1, 1, t), True = may attend; None when nothing is padding.

    Boolean rather than additive: it is what transformers hands to SDPA, and CPU SDPA is faster with it.
    """
    return None if bool(mask.all()) else mask[:, None, None, :].bool()


# torch's CPU attention kernel (SDPA's flash path, torch 2.13) is fast when the keys' length is a multiple of 16 and
# slow on the tail otherwise: measured at 1 thread on an Intel Xeon (AMX), batch 32 x 12 heads x 32 dims, 22 keys
# took 1148 us (float32) / 1561 us (bfloat16) and the same 22 queries against 32 keys, the last 10 masked, 770 / 874;
# 10 keys 852 / 1197 against 16 keys 335 / 645; 57 keys 4487 / 4579 against 64 keys 2758 / 2689 (batch 1: 36 / 65
# against 29 / 38 us at 22 keys). Padding keys and values to the next multiple, masked, costs two small copies.
KEY_MULTIPLE = 16


def key_mask4d(mask: torch.Tensor, multiple: int | None = None) -> torch.Tensor | None:
    """(b, t) mask, 1 = real token -> boolean (b, 1, 1, t') over keys padded to ``t'``, the next multiple of
    ``multiple`` (default :data:`KEY_MULTIPLE`): True = may attend, False at padding and at the added positions.
    None when ``t`` is already a multiple and nothing is padding (then no mask is needed at all)."""
    multiple = KEY_MULTIPLE if multiple is None else multiple
    b, t = mask.shape
    padded = -(-t // multiple) * multiple
    if padded == t:
        return attention_mask4d(mask)
    keys = mask.new_zeros(b, padded, dtype=torch.bool)
    keys[:, :t] = mask.bool()
    return keys[:, None, None, :]


# Below this share of padded positions, running a layer on the real tokens alone saves too little to be worth the
# gathers and scatters around it (on MiniLM-L6, 1 CPU thread, they cost about 1 % of a layer; at 3 % padding
# packing was already 7-13 % faster, at 22 % padding 13-17 %, at 35-40 % about 45 %: noisy, shared machine).
PACK_MIN_PADDING = 0.05


def pack_index(mask: torch.Tensor) -> torch.Tensor | None:
    """(b, t) mask -> (N,) flat positions of the N real tokens in ``hidden.reshape(b * t, d)``, or None when
    too little of the batch is padding (see :data:`PACK_MIN_PADDING`) to run the layers on real tokens only.

    Padding costs as much as a real token in every matrix product of a layer; rows of different lengths
    (bucketing leaves some) and rows that kept different numbers of tokens (TR-BERT) pad a batch. With the
    index, the core runs the projections and the FFN on the (N, d) real tokens alone, and pads only around
    the attention itself. Used in training and off the CPU; inference on the CPU runs on a :class:`RowLayout`.
    """
    real = mask.bool().reshape(-1)
    padded = real.numel() - int(real.sum())
    if padded < PACK_MIN_PADDING * real.numel():
        return None
    return real.nonzero().squeeze(1)


def unpack(rows: torch.Tensor, index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """(N, n) values of the real tokens -> (batch, length, n), zeros at padding (the inverse of gathering
    ``index`` from a (batch·length, n) tensor; differentiable)."""
    out = rows.new_zeros(batch * length, rows.size(-1)).index_copy(0, index, rows)
    return out.view(batch, length, rows.size(-1))


@dataclass
class RowLayout:
    """Where a layer's per-token rows live at inference on the CPU (batches of more than one row, and batch 1 too
    where the products are bfloat16 or run at oneDNN's row counts: oneDNN compiles a primitive per row count, see
    :func:`~nimblebert.runtime.onednn.row_bucket`; int8 buckets only from its oneDNN threshold; the others R = N).

    The layer gathers the N real tokens of a (b, t) batch into R ≥ N product rows once (:attr:`gather`: the real
    tokens' flat positions, then the first one repeated: the extra rows are copies of a real token, computed and
    never read), runs every product, residual sum and LayerNorm on those R rows, and gathers back only where the
    (b, t) layout is needed: Q, K, V for attention (at ``keys`` ≥ t positions per row) and the layer output.
    Padding and added key positions receive a copy of the first real token: finite values that nothing reads
    (attention masks them, as it masks the values the plain path computes at padding). Gathering back (one
    ``index_select``) is 2-4x faster than zero-filling and scattering (``index_copy``): measured at 1 thread on an
    Intel Xeon, 700 of 1024 positions, bfloat16 x 1152: 144 against 434 us. Without the layout each product padded
    its own input to R rows, and the bfloat16 attention padded K and V: six copies per layer instead of three.
    Made once per mask change (:attr:`~nimblebert.core.encoder.LoopState.layout`), not per layer.
    """

    gather: torch.Tensor | None  # (R,) flat positions in (b * t) that the product rows read; None: all, in order
    real: int  # N: the first N product rows are the real tokens, in (b, t) order
    batch: int
    length: int  # t
    keys: int  # t' ≥ t: the key length attention runs at
    key_src: torch.Tensor | None  # (b * t',) the product row each attention position reads; None: a view will do
    out_src: torch.Tensor | None  # (b * t,) the product row each output position reads; None: a view will do
    key_mask: torch.Tensor | None  # (b, 1, 1, t') boolean, True = may attend; None when every key is real

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """(b * t, n) values at every position -> (R, n) product rows."""
        return values if self.gather is None else values.index_select(0, self.gather)

    def to_keys(self, values: torch.Tensor) -> torch.Tensor:
        """(R, n) product rows -> (b, t', n) in the attention layout."""
        n = values.size(-1)
        if self.key_src is None:
            return values[: self.real].view(self.batch, self.keys, n)
        return values.index_select(0, self.key_src).view(self.batch, self.keys, n)

    def to_batch(self, values: torch.Tensor) -> torch.Tensor:
        """(R, n) product rows -> (b, t, n)."""
        n = values.size(-1)
        if self.out_src is None:
            return values[: self.real].view(self.batch, self.length, n)
        return values.index_select(0, self.out_src).view(self.batch, self.length, n)


def row_layout(mask: torch.Tensor, bucket: Callable[[int], int], key_multiple: int | None = None) -> RowLayout:
    """The :class:`RowLayout` of a (b, t) mask (1 = real token) for products that run at ``bucket(N)`` rows, with
    keys padded to a multiple of ``key_multiple`` (see :data:`KEY_MULTIPLE`; None: keys stay at t)."""
    b, t = mask.shape
    real = mask.bool().reshape(-1)
    dense = bool(real.all())
    pos = torch.arange(b * t, device=mask.device) if dense else real.nonzero().squeeze(1)
    n = pos.numel()
    rows = bucket(n)
    gather = None if dense and rows == n else pos if rows == n else torch.cat([pos, pos[:1].expand(rows - n)])
    keys = t if key_multiple is None else -(-t // key_multiple) * key_multiple

    def sources(width: int) -> torch.Tensor:  # for each of b * width positions, the product row it reads
        src = torch.zeros(b * width, dtype=torch.long, device=mask.device)
        src[(pos // t) * width + pos % t] = torch.arange(n, device=mask.device)
        return src

    out_src = None if dense else sources(t)
    key_src = out_src if keys == t else sources(keys)
    key_mask = attention_mask4d(mask) if keys == t else key_mask4d(mask, key_multiple)
    return RowLayout(gather, n, b, t, keys, key_src, out_src, key_mask)


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
