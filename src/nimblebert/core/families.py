"""Model families as data: where each part of a Hugging Face sequence classifier lives.

This is one of the two places that know transformers' internals (the other is the head call in
:func:`classify`). Adding a family means adding one :class:`Family` row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class Family:
    """Attribute paths inside ``AutoModelForSequenceClassification`` of one model family."""

    name: str
    backbone: str  # attribute holding the base model ("bert", "roberta", ...)
    layers: str = "encoder.layer"
    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attn_out: str = "attention.output.dense"
    attn_norm: str = "attention.output.LayerNorm"
    ffn_in: str = "intermediate.dense"
    ffn_act: str = "intermediate.intermediate_act_fn"
    ffn_out: str = "output.dense"
    ffn_norm: str = "output.LayerNorm"
    # "pooler": BERT's pooler(dense+tanh on [CLS]) -> dropout -> classifier.
    # "head": the family's own classification head applied to the whole sequence output.
    head: str = "pooler"


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", backbone="bert"),
    "roberta": Family("roberta", backbone="roberta", head="head"),
    "xlm-roberta": Family("xlm-roberta", backbone="roberta", head="head"),
    "electra": Family("electra", backbone="electra", head="head"),
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face sequence-classification model."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def get_path(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class LayerParts:
    """The modules of one Transformer layer, found through a :class:`Family`."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_act: object
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    dropout_p: float
    attn_dropout_p: float


def layer_parts(model: nn.Module, family: Family) -> list[LayerParts]:
    backbone = getattr(model, family.backbone)
    cfg = model.config
    return [
        LayerParts(
            query=get_path(layer, family.query),
            key=get_path(layer, family.key),
            value=get_path(layer, family.value),
            attn_out=get_path(layer, family.attn_out),
            attn_norm=get_path(layer, family.attn_norm),
            ffn_in=get_path(layer, family.ffn_in),
            ffn_act=get_path(layer, family.ffn_act),
            ffn_out=get_path(layer, family.ffn_out),
            ffn_norm=get_path(layer, family.ffn_norm),
            dropout_p=cfg.hidden_dropout_prob,
            attn_dropout_p=cfg.attention_probs_dropout_prob,
        )
        for layer in get_path(backbone, family.layers)
    ]


def embed(model: nn.Module, family: Family, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None):
    """The family's own embedding module (word + position + type, LayerNorm, dropout).

    At inference a BERT embedding is computed here from the module's own tables, in the order transformers adds
    them ((word + type) + position, then LayerNorm; dropout is the identity): at batch 1 ``BertEmbeddings.forward``
    spends more time building position and type ids (slices, expands, a gather) than looking up the three tables.
    """
    emb = getattr(model, family.backbone).embeddings
    absolute = getattr(model.config, "position_embedding_type", "absolute") == "absolute"
    if family.name == "bert" and absolute and not emb.training and input_ids.dim() == 2:
        x = emb.word_embeddings(input_ids)  # (b, t, d)
        if token_type_ids is None:  # every token is of type 0, as transformers' buffer says
            x = x + emb.token_type_embeddings.weight[0]
        else:
            x = x + emb.token_type_embeddings(token_type_ids)
        x = x + emb.position_embeddings.weight[: input_ids.size(1)]  # absolute positions 0 .. t-1
        return emb.LayerNorm(x)
    return emb(input_ids=input_ids, token_type_ids=token_type_ids)


def classify(model: nn.Module, family: Family, sequence_output: torch.Tensor) -> torch.Tensor:
    """Logits from the last hidden states with the model's own head, as transformers computes them."""
    if family.head == "pooler":
        pooled = getattr(model, family.backbone).pooler(sequence_output)
        return model.classifier(model.dropout(pooled))
    return model.classifier(sequence_output)
