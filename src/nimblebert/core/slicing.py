"""Width slicing as real smaller weights, and importance rewiring (DynaBERT, Hou et al., NeurIPS 2020, §3.1).

Three pieces, each usable on its own:

- **Sub-network plans.** :func:`width_sizes` gives the heads and FFN neurons kept at width multiplier
  ``m_w`` (the official rounding), :func:`sub_network_plan` the :class:`~nimblebert.core.plan.Plan` that
  makes the core keep the *first* ones of every layer, as sliced matrix products, at depth ``m_d``.
- **Importance and rewiring.** :func:`compute_importance` scores every attention head by the gradient
  of a per-head gate (Michel et al. 2019, "Are Sixteen Heads Really Better than One?") and every FFN
  neuron by |Σ w·∂L/∂w| over its weights (the official ``compute_neuron_head_importance``);
  :func:`rewire` permutes the weights in place so that the important heads and neurons come first. A
  permutation of heads / neurons does not change the function: the full model's outputs stay the same.
- **Materialising.** :func:`materialize` copies a Hugging Face model keeping only some layers, the first
  FFN neurons (physically smaller Linear modules, ``intermediate_size`` updated) and the first heads.

Heads and plain transformers: transformers 5 has no ``prune_heads`` / ``config.pruned_heads`` any more,
and ``BertSelfAttention`` derives the Q/K/V width from ``hidden_size`` (``all_head_size = heads ·
hidden/heads``), so a stock config cannot describe fewer heads of the same size. A materialised model
therefore keeps the Q/K/V/output shapes and **zeroes** the dropped heads (their Q/K/V rows and biases, and
their output-projection columns): exactly the sliced function, loadable with ``from_pretrained``, but
the attention projections are not physically smaller. The core runs the kept heads alone when given the
sliced Plan (see ``materialized_heads``).

Only :mod:`nimblebert.core.families` paths are used, so every supported family works the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .encoder import CoreEncoder
from .families import LayerParts, family_of, get_path, layer_parts
from .plan import FULL, Plan, depth_layers

# ---- sub-network plans --------------------------------------------------------------------------------


def width_sizes(num_heads: int, ffn_size: int, width: float) -> tuple[int, int]:
    """Heads and FFN neurons kept per layer at width multiplier ``width`` ∈ (0, 1].

    As the official ``round_to_nearest``: heads = round(H·m_w), and the FFN keeps the *same fraction*
    as the heads, int(round(H·m_w)/H · F) — on BERT-base 3/6/9/12 heads and 768/1536/2304/3072 neurons at
    m_w = 0.25/0.5/0.75/1. (This equals round(m_w·F) whenever F/H·round(H·m_w) is whole, e.g. on every
    model whose FFN size is a multiple of its head count, at the paper's widths.) At least one head and
    one neuron are kept, so any width > 0 gives a runnable sub-network.
    """
    if not 0 < width <= 1:
        raise UserError(f"width {width} is out of range: use a value in (0, 1]")
    heads = max(1, round(num_heads * width))
    # The official float expression, kept as it is so that the neuron counts match it exactly.
    ffn = max(1, int(heads * 1.0 / num_heads * ffn_size))
    return heads, ffn


def sub_network_plan(num_layers: int, num_heads: int, ffn_size: int, width: float = 1.0,
                     depth: float = 1.0, depth_rule: str = "official") -> Plan:
    """The Plan of the DynaBERT sub-network at (``width``, ``depth``): the layers of ``depth_rule``
    (:func:`~nimblebert.core.plan.depth_layers`, official by default) and the first :func:`width_sizes`
    heads / neurons of every layer. Width 1 and depth 1 give :data:`~nimblebert.core.plan.FULL` (the plain model)."""
    heads, ffn = width_sizes(num_heads, ffn_size, width)
    layers = depth_layers(num_layers, depth, depth_rule)
    if layers == tuple(range(num_layers)) and heads == num_heads and ffn == ffn_size:
        return FULL
    return Plan(
        layers=None if layers == tuple(range(num_layers)) else layers,
        heads=None if heads == num_heads else (heads,) * num_layers,
        ffn=None if ffn == ffn_size else (ffn,) * num_layers,
    )


def encoder_plan(encoder: CoreEncoder, width: float = 1.0, depth: float = 1.0, depth_rule: str = "official") -> Plan:
    """:func:`sub_network_plan` for the model that ``encoder`` runs."""
    return sub_network_plan(encoder.num_layers, encoder.num_heads, encoder.ffn_size, width, depth, depth_rule)


# ---- importance ---------------------------------------------------------------------------------------


@dataclass
class Importance:
    """Importance scores, larger = more important.

    Attributes:
        heads: (L, H) accumulated |∂L/∂ξ_h| of an all-ones gate ξ on every head's output.
        neurons: (L, F) accumulated |Σ_k W1[j,k]·∂L/∂W1[j,k] + b1[j]·∂L/∂b1[j]| + |Σ_k W2[k,j]·∂L/∂W2[k,j]|.
        examples: how many labelled examples were used.
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    examples: int = 0


def _head_gate(gates: torch.Tensor, layer: int, head_dim: int) -> Callable:
    """A forward pre-hook for a layer's attention-output Linear that multiplies each head's context
    vectors by that head's gate: ctx (..., H·dh) -> ctx ⊙ ξ (the core hands (b, t, ·), or (N, ·) real tokens
    when it packs a padded batch). Gating the context is the same as gating the attention probabilities
    (what the official ``head_mask`` does): ctx_h = (ξ_h·P_h) V_h."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        ctx = args[0]
        gated = ctx.unflatten(-1, (-1, head_dim)) * gates[layer].view(-1, 1).to(ctx.dtype)  # (..., H, dh)
        return (gated.flatten(-2), *args[1:])

    return hook


def compute_importance(
    encoder: CoreEncoder,
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Importance:
    """Head and FFN-neuron importance on labelled batches (DynaBERT §3.1, "network rewiring").

    The model runs at full width in eval mode (no dropout, as in the official code); for each batch the
    task loss (cross-entropy on the gold ``labels`` unless ``loss_fn`` is given) is differentiated with
    respect to an all-ones per-head gate and to the FFN weights, and the absolute values are added up.

    Deviation from the official code, on purpose: it never zeroes the gradients between batches, so it
    adds |gradient summed over all batches so far| at each batch; here each batch adds |its own gradient|
    (Michel et al.'s per-batch estimate). The ranking is what matters, and this one does not depend on
    the batch order.
    """
    loss_fn = loss_fn or (lambda logits, labels: F.cross_entropy(logits.float(), labels))
    parts = encoder.parts
    L, H, dh = encoder.num_layers, encoder.num_heads, encoder.head_dim
    device = parts[0].query.weight.device
    gates = torch.ones(L, H, device=device, requires_grad=True)
    w1 = [p.ffn_in.weight for p in parts]
    b1 = [p.ffn_in.bias for p in parts]
    w2 = [p.ffn_out.weight for p in parts]
    tracked = [*w1, *[b for b in b1 if b is not None], *w2]
    heads = torch.zeros(L, H, dtype=torch.float64)
    neurons = torch.zeros(L, encoder.ffn_size, dtype=torch.float64)
    was_training = encoder.model.training
    saved = [t.requires_grad for t in tracked]
    handles = [p.attn_out.register_forward_pre_hook(_head_gate(gates, i, dh)) for i, p in enumerate(parts)]
    examples = 0
    encoder.model.eval()
    try:
        for t in tracked:
            t.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
                loss = loss_fn(out.logits, batch["labels"])
                grads = torch.autograd.grad(loss, [gates, *tracked])
                g = iter(grads[1:])
                g_w1 = [next(g) for _ in w1]
                g_b1 = [next(g) if b is not None else None for b in b1]
                g_w2 = [next(g) for _ in w2]
                heads += grads[0].detach().abs().double().cpu()
                with torch.no_grad():
                    for i in range(L):
                        pre = (w1[i] * g_w1[i]).sum(dim=1)  # (F,) = ∂L/∂(gate on neuron i's pre-activation)
                        if b1[i] is not None:
                            pre = pre + b1[i] * g_b1[i]
                        post = (w2[i] * g_w2[i]).sum(dim=0)  # (F,) = ∂L/∂(gate on its output)
                        neurons[i] += (pre.abs() + post.abs()).double().cpu()
                examples += int(batch["input_ids"].size(0))
    finally:
        for h in handles:
            h.remove()
        for t, flag in zip(tracked, saved, strict=True):
            t.requires_grad_(flag)
        encoder.model.train(was_training)
    return Importance(heads=heads, neurons=neurons, examples=examples)


# ---- rewiring -----------------------------------------------------------------------------------------


def _permute_(param: torch.Tensor | None, index: torch.Tensor, dim: int) -> None:
    """Reorder ``param`` along ``dim`` in place (the Parameter object stays the same)."""
    if param is None:
        return
    with torch.no_grad():
        param.copy_(param.index_select(dim, index.to(param.device)))


def reorder_heads(p: LayerParts, order: torch.Tensor, head_dim: int) -> None:
    """Put head ``order[0]`` first, ``order[1]`` second, ...: rows of Q, K, V (weights and biases, in
    blocks of ``head_dim``) and the matching columns of the attention-output projection."""
    index = (order.long()[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)  # (H·dh,)
    for linear in (p.query, p.key, p.value):
        _permute_(linear.weight, index, 0)
        _permute_(linear.bias, index, 0)
    _permute_(p.attn_out.weight, index, 1)


def reorder_neurons(p: LayerParts, order: torch.Tensor) -> None:
    """Put FFN neuron ``order[0]`` first, ...: rows (and bias) of the intermediate Linear, columns of the
    output Linear."""
    order = order.long()
    _permute_(p.ffn_in.weight, order, 0)
    _permute_(p.ffn_in.bias, order, 0)
    _permute_(p.ffn_out.weight, order, 1)


def descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort each row by descending score; ties keep their order (stable), so equal scores
    leave the weights where they are."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def rewire(encoder: CoreEncoder, importance: Importance) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder every layer's heads and FFN neurons by descending importance, in place.

    Returns the orders applied, (L, H) and (L, F): position i now holds what was at ``order[i]``.
    """
    head_order, neuron_order = descending(importance.heads), descending(importance.neurons)
    for i, p in enumerate(encoder.parts):
        reorder_heads(p, head_order[i], encoder.head_dim)
        reorder_neurons(p, neuron_order[i])
    return head_order, neuron_order


# ---- materialising ------------------------------------------------------------------------------------


def _set_path(obj: object, path: str, value: object) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(obj, parent) if parent else obj, name, value)


def _sliced_linear(linear: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    """A new Linear holding copies of the first ``rows`` outputs / ``cols`` inputs of ``linear``."""
    weight = linear.weight.detach()[:rows, :cols]
    new = nn.Linear(weight.size(1), weight.size(0), bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[:rows] if rows is not None else linear.bias.detach())
    new.train(linear.training)
    return new


def _zero_heads_from(p: LayerParts, keep: int, head_dim: int) -> None:
    """Zero every head from ``keep`` on: its Q/K/V rows and biases and its output-projection columns.
    The layer then computes exactly what the core computes with only the first ``keep`` heads."""
    n = keep * head_dim
    with torch.no_grad():
        for linear in (p.query, p.key, p.value):
            linear.weight[n:] = 0
            if linear.bias is not None:
                linear.bias[n:] = 0
        p.attn_out.weight[:, n:] = 0


def materialize(model: nn.Module, layers: Sequence[int], heads: int | Sequence[int],
                ffn: int | Sequence[int]) -> nn.Module:
    """A copy of the Hugging Face sequence classifier ``model`` that computes one sub-network.

    Args:
        layers: the model layers to keep, in order (renumbered 0..d−1 in the copy).
        heads: heads kept (the first ones) per kept layer, or one count for all.
        ffn: FFN neurons kept (the first ones), one count for all kept layers (a stock config has one
            ``intermediate_size``).

    The copy keeps only ``layers``; its FFN Linear modules are physically sliced and
    ``config.intermediate_size`` / ``config.num_hidden_layers`` updated, so ``save_pretrained`` writes a
    folder that plain ``from_pretrained`` loads. Dropped heads are zeroed, not removed (see the module
    docstring for why). ``model`` itself is not changed.
    """
    family = family_of(model)
    cfg = model.config
    num_heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // num_heads
    layers = list(layers)
    if not layers:
        raise UserError("a sub-network needs at least one layer")
    for i in layers:
        if not 0 <= i < cfg.num_hidden_layers:
            raise UserError(f"layer {i} does not exist: the model has {cfg.num_hidden_layers} layers")
    per_layer_heads = [heads] * len(layers) if isinstance(heads, int) else list(heads)
    ffn_sizes = {ffn} if isinstance(ffn, int) else set(ffn)
    if len(ffn_sizes) != 1:
        raise UserError(f"a plain transformers config has one intermediate_size; got FFN sizes {sorted(ffn_sizes)}")
    f = ffn_sizes.pop()
    if len(per_layer_heads) != len(layers):
        raise ValueError(f"{len(per_layer_heads)} head counts for {len(layers)} layers")
    if not all(1 <= h <= num_heads for h in per_layer_heads) or not 1 <= f <= cfg.intermediate_size:
        raise UserError(f"cannot keep {per_layer_heads} heads / {f} FFN neurons of a model with {num_heads} heads "
                        f"and {cfg.intermediate_size} neurons per layer")

    new = copy.deepcopy(model)
    backbone = getattr(new, family.backbone)
    old_layers = get_path(backbone, family.layers)
    _set_path(backbone, family.layers, nn.ModuleList([old_layers[i] for i in layers]))
    new.config.num_hidden_layers = len(layers)
    new.config.intermediate_size = f
    for index, (layer, p, h) in enumerate(zip(get_path(backbone, family.layers), layer_parts(new, family),
                                              per_layer_heads, strict=True)):
        if h < num_heads:
            _zero_heads_from(p, h, head_dim)
        if f < cfg.intermediate_size:
            _set_path(layer, family.ffn_in, _sliced_linear(p.ffn_in, rows=f))
            _set_path(layer, family.ffn_out, _sliced_linear(p.ffn_out, cols=f))
        for module in layer.modules():  # transformers numbers its layers (cache bookkeeping): keep it consistent
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    return new


def materialized_heads(model: nn.Module) -> list[int]:
    """Heads per layer that are not all-zero (the first ones; a materialised model zeroes the rest)."""
    family = family_of(model)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    counts = []
    for p in layer_parts(model, family):
        w = p.attn_out.weight.detach()  # (d, H·dh)
        alive = w.view(w.size(0), -1, head_dim).abs().sum(dim=(0, 2)) > 0  # (H,)
        counts.append(int(alive.nonzero().max()) + 1 if bool(alive.any()) else 1)
    return counts
