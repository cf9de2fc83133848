"""TR-BERT's inference (Ye et al., NAACL 2021; official ``modeling_autobert.py``, METHODS.md §4 "Inference").

A token is kept at a cut when its keep probability is ≥ ``keep_threshold`` (official 0.5), forced tokens
always. ``keep_fraction`` (ours) keeps instead the policy's top share of each row's selectable tokens at each cut:
a threshold can be a cliff on a policy whose probabilities bunch together (all tokens above it, or nearly none),
while a fraction reaches every saving (two cuts at 0.5 leave a quarter of the selectable tokens).

Deviation, on purpose: **every row keeps its own tokens in a batch too**. The official batched
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
from ..registry import Contribution
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


def contribute(model: NimbleModel, batch: dict[str, torch.Tensor], knobs: dict) -> Contribution:
    """TR-BERT's part of one inference pass: a :class:`CutHook` at the cuts (none at ``keep_threshold`` 0, the
    full model). Afterwards ``extras["tokens_kept"]`` (B, cuts): tokens each row kept at each cut,
    ``extras["tokens_selected"]`` (B, cuts): of those, the ones the policy chose (not forced), and the policies'
    FLOPs are added to the pass's.

    ``drop_mode`` "random" / "first" take the policy's own kept counts from a policy pass of the whole stack over
    the same batch first (at the same knobs otherwise: the baselines are for accuracy at equal FLOPs, not speed).
    """
    keep_threshold = float(knobs.get("keep_threshold", 0.5))
    keep_fraction = float(knobs.get("keep_fraction", 0.0))
    drop_mode = str(knobs.get("drop_mode", "policy"))
    if drop_mode not in DROP_MODES:
        raise UserError(f"--drop-mode {drop_mode!r} is unknown; choose from {', '.join(DROP_MODES)}")
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    cuts = cuts_of(model)
    if keep_fraction >= 1 or (keep_threshold <= 0 and keep_fraction <= 0):  # "off": the full model, no policy run

        def full(out: EncoderOutput) -> None:
            out.extras["tokens_kept"] = mask.sum(dim=1, keepdim=True).expand(-1, len(cuts)).clone()

        return Contribution(after=[full])
    forced = forced_tokens(batch, special_ids(model), bool(model.method_config.get("keep_first_segment")))
    counts = None
    if drop_mode != "policy":
        from ...inference import run

        counts = run(model, batch, model.check_knobs({"keep_threshold": keep_threshold, "keep_fraction": keep_fraction})
                     ).extras["tokens_selected"]
    generator = torch.Generator().manual_seed(0) if drop_mode == "random" else None
    hook = CutHook(model.extras["policies"], cuts, forced, threshold=keep_threshold, fraction=keep_fraction,
                   drop_mode=drop_mode, generator=generator, counts=counts)

    def report(out: EncoderOutput) -> None:
        out.extras["tokens_kept"] = hook.kept
        out.extras["tokens_selected"] = hook.selected
        out.add_flops(hook.flops)

    return Contribution(hooks=[hook], after=[report])


def train_settings(model: NimbleModel) -> list[dict]:
    """What a component stacked on TR-BERT (exits) trains at: the default keep threshold, the setting it runs at
    unless the user turns the knob."""
    return [{"keep_threshold": 0.5}]
