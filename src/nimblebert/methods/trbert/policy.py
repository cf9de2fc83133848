"""TR-BERT's inference (Ye et al., NAACL 2021; official ``modeling_autobert.py``, METHODS.md §4 "Inference").

A token is kept at a cut when its keep probability is ≥ ``keep_threshold`` (official 0.5), forced tokens
always. Deviation, on purpose: **every row keeps its own tokens in a batch too**. The official batched
evaluation makes every row keep the batch's largest count (top-k by p), so a row's prediction depended on its
batch-mates; here each row keeps exactly its own set and rows are padded to the batch's largest kept count
with masked positions, so batched logits equal per-row logits (tests check it). Padding is masked as keys,
so it changes nothing, and the core runs every per-token product on the kept tokens alone (it packs padded
batches, :func:`~nimblebert.core.tokens.pack_index`): only the attention itself sees the padded layout.

``keep_threshold = 0`` is the plain full model: no policy runs (exactly the transformers model's logits).
``drop_mode`` "random" / "first" are baselines at the policy's own kept counts per row and cut (taken from a
policy pass over the same batch first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...core.encoder import EncoderOutput
from ...errors import UserError
from .modules import CutHook, forced_tokens

if TYPE_CHECKING:
    from ...model import NimbleModel

DROP_MODES = ("policy", "random", "first")


def special_ids(model: NimbleModel) -> list[int]:
    """[CLS] and [SEP] (or the family's equivalents: <s>, </s>) of the model's tokenizer."""
    tok = model.tokenizer
    return sorted({i for i in (tok.cls_token_id, tok.sep_token_id) if i is not None})


def cuts_of(model: NimbleModel) -> list[int]:
    return [int(c) for c in model.method_config["cuts"]]


def infer(model: NimbleModel, batch: dict[str, torch.Tensor], keep_threshold: float = 0.5,
          drop_mode: str = "policy", seed: int = 0) -> EncoderOutput:
    """One inference pass. ``extras["tokens_kept"]`` (B, cuts): tokens each row kept at each cut;
    ``extras["extra_flops"]`` (B,): the policies' FLOPs (counted in ``flops_per_sample``)."""
    if drop_mode not in DROP_MODES:
        raise UserError(f"--drop-mode {drop_mode!r} is unknown; choose from {', '.join(DROP_MODES)}")
    ids, mask, types = batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
    if mask is None:
        mask = torch.ones_like(ids)
    cuts = cuts_of(model)
    if keep_threshold <= 0:  # "off": the full model, no policy computed
        out = model.encoder(ids, mask, types)
        out.extras["tokens_kept"] = mask.sum(dim=1, keepdim=True).expand(-1, len(cuts)).clone()
        return out
    forced = forced_tokens(batch, special_ids(model), bool(model.method_config.get("keep_first_segment")))
    counts = None
    if drop_mode != "policy":
        # The baselines keep exactly what the policy keeps per row and cut: its own pass first (not timed as
        # part of a baseline's tokens; baselines are for accuracy at equal FLOPs, not for speed).
        counts = infer(model, batch, keep_threshold, "policy").extras["tokens_selected"]
    generator = torch.Generator().manual_seed(seed) if drop_mode == "random" else None
    hook = CutHook(model.extras["policies"], cuts, forced, threshold=keep_threshold, drop_mode=drop_mode,
                   generator=generator, counts=counts)
    out = model.encoder(ids, mask, types, hooks=[hook])
    out.extras["tokens_kept"] = hook.kept
    out.extras["tokens_selected"] = hook.selected
    out.extras["extra_flops"] = hook.flops
    return out
