"""A searched network as a plain transformers model, where its architecture allows it.

Only a BERT-shaped chain qualifies: every block at the teacher's hidden size (the embeddings and the head are the
teacher's, and a transformers BERT has one hidden size throughout) and ops alternating MHA, FFN — then each
(MHA, FFN) pair is exactly a ``BertLayer`` (post-LN, same LayerNorm epsilon, exact GELU). With the default sizes
(at most 2/3 of the teacher's) no searched network is BERT-shaped: the hidden transfer from the embeddings has no
transformers equivalent (a Linear after the embeddings' LayerNorm cannot be folded into a smaller LayerNorm), nor do
convolutions, so such networks stay nimblebert folders, run by the core — and export to ONNX through the core
(``export --format onnx [--int8]`` traces the core's forward pass, :class:`nimblebert.export.onnx.CoreGraph`).
"""

from __future__ import annotations

import copy

import torch

from ...core.families import family_of
from ...errors import UserError
from ...model import NimbleModel
from .objective import space_of
from .space import is_bert_shaped, parse_arch


def to_plain(model: NimbleModel) -> NimbleModel:
    """A ``finetune``-method NimbleModel whose transformers model is the searched network (same logits)."""
    space = space_of(model)
    arch = parse_arch(model.method_config["arch"], space)
    if model.method_config.get("role") != "net" or not is_bert_shaped(arch, space):
        raise UserError(
            f"{model.method_config.get('arch')} is not BERT-shaped (every block at the teacher's size "
            f"{space.teacher_hidden}, ops alternating mha, ffn): it has no plain transformers form, so it stays a "
            "nimblebert folder that evaluate, predict and bench run, and `nimblebert export --format onnx [--int8]` "
            "exports")
    chain = model.extras["chain"]
    layers = len(chain) // 2
    config = copy.deepcopy(model.hf.config)
    config.num_hidden_layers = layers
    config.num_attention_heads = chain["c0"].spec.width
    config.intermediate_size = chain["c1"].spec.width
    config.hidden_act = "gelu"
    config.nimblebert = None
    hf = type(model.hf)(config).eval()
    state = dict(model.hf.state_dict())
    d = space.teacher_hidden
    prefix = f"{family_of(model.hf).backbone}.encoder.layer"
    for i in range(layers):
        mha, ffn = chain[f"c{2 * i}"], chain[f"c{2 * i + 1}"]
        p = f"{prefix}.{i}"
        # The fused QKV product is [Q; K; V] stacked along the output rows.
        for name, w, b in zip(("query", "key", "value"), mha.qkv.weight.split(d), mha.qkv.bias.split(d), strict=True):
            state[f"{p}.attention.self.{name}.weight"] = w
            state[f"{p}.attention.self.{name}.bias"] = b
        state[f"{p}.attention.output.dense.weight"] = mha.out.weight
        state[f"{p}.attention.output.dense.bias"] = mha.out.bias
        state[f"{p}.attention.output.LayerNorm.weight"] = mha.norm.weight
        state[f"{p}.attention.output.LayerNorm.bias"] = mha.norm.bias
        state[f"{p}.intermediate.dense.weight"] = ffn.inner.weight
        state[f"{p}.intermediate.dense.bias"] = ffn.inner.bias
        state[f"{p}.output.dense.weight"] = ffn.outer.weight
        state[f"{p}.output.dense.bias"] = ffn.outer.bias
        state[f"{p}.output.LayerNorm.weight"] = ffn.norm.weight
        state[f"{p}.output.LayerNorm.bias"] = ffn.norm.bias
    with torch.no_grad():
        hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return NimbleModel(hf, model.tokenizer, "finetune", {}, model.label_names)
