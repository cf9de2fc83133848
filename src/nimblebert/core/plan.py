"""Plan: what the core encoder runs.

A Plan is static per call: which layers run, and how many heads / FFN neurons each layer keeps
(the *first* ones, so importance rewiring must put the important ones first — DynaBERT, Hou et al.
2020, §3.1). Per-sample decisions (early exit, token dropping) are not in the Plan: they are made by
hooks while the layer loop runs (see :mod:`nimblebert.core.encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Plan:
    """Which parts of the encoder run.

    Attributes:
        layers: indices of the layers to run, in order. ``None`` runs every layer.
        heads: heads kept per *model* layer (indexed by the layer's own index). ``None`` keeps all.
        ffn: FFN neurons kept per model layer. ``None`` keeps all.
        ops: NAS-BERT: keys into ``CoreEncoder.op_modules``, the heterogeneous ops that run, in order, instead of
            the BERT layers (see :mod:`nimblebert.core.ops`). ``None``: the BERT layers run.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    ffn: tuple[int, ...] | None = None
    ops: tuple[str, ...] | None = None

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """The layers that run, validated against the model's depth (none when the plan runs ``ops``)."""
        if self.ops is not None:
            return ()
        if self.layers is None:
            return tuple(range(num_layers))
        for i in self.layers:
            if not 0 <= i < num_layers:
                raise UserError(f"plan names layer {i}, but the model has {num_layers} layers (0..{num_layers - 1})")
        return self.layers

    def heads_at(self, layer: int, total: int) -> int:
        return total if self.heads is None else self.heads[layer]

    def ffn_at(self, layer: int, total: int) -> int:
        return total if self.ffn is None else self.ffn[layer]

    def is_full(self, num_layers: int) -> bool:
        return (self.layers in (None, tuple(range(num_layers))) and self.heads is None and self.ffn is None
                and self.ops is None)

    def merged(self, other: Plan | None) -> Plan:
        """Both plans at once (two components of a stack each restricting the structure): the layers both
        run, in this plan's order, and per layer the smaller head and FFN counts."""
        if other is None or other == FULL:
            return self
        if self == FULL:
            return other
        layers = self.layers if other.layers is None else (
            other.layers if self.layers is None else tuple(i for i in self.layers if i in set(other.layers)))
        if self.ops is not None and other.ops is not None and self.ops != other.ops:
            raise ValueError("two components of a stack name different op chains (NAS-BERT): only one can")
        return Plan(layers=layers, heads=_smaller(self.heads, other.heads), ffn=_smaller(self.ffn, other.ffn),
                    ops=self.ops if self.ops is not None else other.ops)


def _smaller(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(min(x, y) for x, y in zip(a, b, strict=True))


FULL = Plan()


DEPTH_RULES = ("official", "last")


def depth_layers(num_layers: int, depth_mult: float, rule: str = "official") -> tuple[int, ...]:
    """Layers kept at depth multiplier ``m_d``.

    ``rule="official"`` (DynaBERT's code): keeps ``floor(i / m_d)`` for ``i = 0 .. round(L·m_d) − 1``
    (0-based): at ``m_d = 0.5`` on 12 layers that is {0, 2, 4, 6, 8, 10}; on 6 layers {0, 2, 4}. It always
    drops the last layer, the one the classifier was trained on — cheap on 12 layers, costly on 6.

    ``rule="last"`` (our option, not the paper's): the same pattern counted from the top, so the last layer
    always runs: {1, 3, 5, ..., 11} on 12 layers, {1, 3, 5} on 6 (TinyBERT's uniform map g(m) = 2m).
    """
    if not 0 < depth_mult <= 1:
        raise UserError(f"depth {depth_mult} is out of range: use a value in (0, 1]")
    if rule not in DEPTH_RULES:
        raise UserError(f"depth rule {rule!r} is unknown; choose from {', '.join(DEPTH_RULES)}")
    kept = max(1, round(num_layers * depth_mult))
    official = tuple(min(int(i / depth_mult), num_layers - 1) for i in range(kept))
    if rule == "official":
        return official
    return tuple(sorted(num_layers - 1 - i for i in official))
