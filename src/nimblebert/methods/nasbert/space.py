"""NAS-BERT's search space, scaled to the teacher (Xu et al., KDD 2021, §3.1; METHODS.md §6).

A chain of ``blocks × slots`` layers. Inside a block the hidden size is one of ``hidden_sizes``; each slot holds
one op: MHA (heads = hidden / the teacher's head size), FFN (inner = 4 · hidden), separable convolution with
kernel 3, 5 or 7 — or the identity, which is allowed only at a block's tail (``mha, ffn, id, id`` but not
``mha, id, ffn, id``: the two would be the same network, the paper's de-duplication). A block architecture is
therefore ``(hidden, ops)`` with ``0 ≤ len(ops) ≤ slots``: 5 sizes × (1 + 5 + … + 5^6) = 97,655 per block at the
paper's 6 slots, the paper's "about 97,650".

Sizes, scaled to the teacher. The paper's teacher is BERT-base (12 × 768) in 4 blocks of 3 teacher layers, so 6
slots (MHA and FFN are separate layers) per block, and hidden sizes {128, 192, 256, 384, 512} = 768 × {1/6, 1/4,
1/3, 1/2, 2/3}. We keep both rules as ratios:

- hidden sizes = teacher hidden × {1/6, 1/4, 1/3, 1/2, 2/3}, rounded to a multiple of the teacher's head size:
  for a 12 × 768 teacher the paper's {128, 192, 256, 384, 512}; for MiniLM-L6 (6 × 384, 12 heads of 32)
  {64, 96, 128, 192, 256}. Nothing larger than 2/3 of the teacher: the point is a smaller, faster model, and
  the largest size already costs ~4/9 of a teacher layer's matrix products.
- blocks: teacher layers / 3 blocks of 3 layers when the depth allows it (12 layers: the paper's 4 blocks of 3,
  6 slots each); a 6-layer teacher gets 3 blocks of 2 layers (4 slots each, 3,905 architectures per block). Three
  blocks keep the block-wise targets close together (each student block learns two teacher layers, as in the
  paper it learns three) while giving the search more than two sizes to combine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ...core.ops import OpSpec, op_params
from ...errors import UserError

LAYER_KINDS = ("mha", "ffn", "conv3", "conv5", "conv7")
HIDDEN_RATIOS = (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3)

BlockArch = tuple[int, tuple[str, ...]]  # (hidden size, the non-identity ops in order; the rest is identity)
Arch = tuple[BlockArch, ...]


@dataclass(frozen=True)
class Space:
    """The search space of one teacher: sizes, blocks, slots per block."""

    teacher_hidden: int
    teacher_layers: int
    head_dim: int
    hidden_sizes: tuple[int, ...]
    blocks: int
    ffn_ratio: int = 4
    #: A searched network's transfers: True = one before every block that has ops (and one to the head), as in the
    #: supernet, where each block path is ``in_h, ops, out_h`` — consecutive transfers compose into one Linear, so
    #: a network initialised from the supernet computes exactly what its block losses scored; False = only where
    #: the hidden size changes (a plain stack: the hand-designed baselines).
    block_transfers: bool = False

    @property
    def layers_per_block(self) -> int:
        return self.teacher_layers // self.blocks

    @property
    def slots(self) -> int:
        """Layers per student block: two per teacher layer (MHA and FFN are separate layers)."""
        return 2 * self.layers_per_block

    def teacher_boundaries(self) -> list[int]:
        """Index into the teacher's hidden-state list ([embeddings, layer 1, ...]) of each block's output."""
        return [(n + 1) * self.layers_per_block for n in range(self.blocks)]

    def spec(self, kind: str, hidden: int) -> OpSpec:
        """The op of a layer kind at a hidden size."""
        if kind == "mha":
            return OpSpec("mha", hidden, hidden // self.head_dim)
        if kind == "ffn":
            return OpSpec("ffn", hidden, self.ffn_ratio * hidden)
        if kind.startswith("conv"):
            return OpSpec("conv", hidden, int(kind[4:]))
        raise ValueError(f"unknown layer kind {kind!r}")

    def block_archs(self) -> Iterator[BlockArch]:
        """Every block architecture, in a fixed order (sizes, then op counts, then ops lexicographically)."""
        for hidden in self.hidden_sizes:
            for n in range(self.slots + 1):
                for ops in itertools.product(LAYER_KINDS, repeat=n):
                    yield hidden, ops

    def block_params(self, arch: BlockArch) -> int:
        """Parameters of the block's ops (the transfers between blocks are counted by :func:`arch_params`)."""
        hidden, ops = arch
        return sum(op_params(self.spec(k, hidden)) for k in ops)


def default_space(teacher_config, blocks: int = 0, hidden_sizes: tuple[int, ...] = ()) -> Space:
    """The space for a teacher config (see the module docstring for the rules), with optional overrides."""
    d, layers = teacher_config.hidden_size, teacher_config.num_hidden_layers
    head_dim = d // teacher_config.num_attention_heads
    if not blocks:
        if layers % 3 == 0 and layers >= 9:
            blocks = layers // 3
        else:
            blocks = layers // 2 if layers % 2 == 0 else layers
    if layers % blocks:
        raise UserError(f"--blocks {blocks} must divide the teacher's {layers} layers")
    if not hidden_sizes:
        hidden_sizes = tuple(sorted({max(head_dim, round(d * r / head_dim) * head_dim) for r in HIDDEN_RATIOS}))
    for h in hidden_sizes:
        if h <= 0 or h % head_dim:
            raise UserError(f"--hidden-sizes: {h} must be a positive multiple of the teacher's head size {head_dim}")
    return Space(d, layers, head_dim, tuple(sorted(set(hidden_sizes))), blocks)


def format_arch(arch: Arch) -> str:
    """'192:mha,conv3,ffn/128:ffn/64:' — blocks by '/', size then ops; an empty op list is an identity block."""
    return "/".join(f"{h}:{','.join(ops)}" for h, ops in arch)


def parse_arch(text: str, space: Space) -> Arch:
    """The inverse of :func:`format_arch`, checked against ``space``."""
    blocks = text.strip().split("/")
    if len(blocks) != space.blocks:
        raise UserError(f"architecture {text!r} has {len(blocks)} blocks; this space has {space.blocks}")
    arch = []
    for block in blocks:
        size, _, ops_text = block.partition(":")
        try:
            hidden = int(size)
        except ValueError:
            raise UserError(f"architecture block {block!r} must start with a hidden size, e.g. 128:mha,ffn") from None
        ops = tuple(o.strip() for o in ops_text.split(",") if o.strip())
        if hidden not in space.hidden_sizes:
            raise UserError(f"hidden size {hidden} is not in the space {list(space.hidden_sizes)}")
        bad = [o for o in ops if o not in LAYER_KINDS]
        if bad or len(ops) > space.slots:
            raise UserError(f"block {block!r}: ops must be at most {space.slots} of {', '.join(LAYER_KINDS)} "
                            "(identity is implied at the tail)")
        arch.append((hidden, ops))
    return tuple(arch)


def arch_specs(arch: Arch, space: Space) -> list[OpSpec]:
    """The chain of a searched network in order: transfer, the block's ops, transfer, ... (see
    ``Space.block_transfers`` for where the transfers go; an identity block has no op of its own)."""
    specs: list[OpSpec] = []
    current = space.teacher_hidden
    for hidden, ops in arch:
        if space.block_transfers:
            if not ops:
                continue  # in the supernet in_h·out_h, linear: folded into the next transfer
            specs.append(OpSpec("linear", current, hidden))
            current = hidden
        elif hidden != current:
            specs.append(OpSpec("linear", current, hidden))
            current = hidden
        specs.extend(space.spec(k, hidden) for k in ops)
    if space.block_transfers or current != space.teacher_hidden:
        specs.append(OpSpec("linear", current, space.teacher_hidden))
    return specs


def transfer_specs(arch: Arch, space: Space) -> list[OpSpec]:
    """The hidden transfers of a composed architecture: embeddings → block 1, between blocks, last block → the
    teacher's size (the classification head's input)."""
    return [s for s in arch_specs(arch, space) if s.kind == "linear"]


def arch_params(arch: Arch, space: Space) -> int:
    """Parameters of the searched network's chain: block ops plus transfers (embeddings and head excluded)."""
    return sum(op_params(s) for s in arch_specs(arch, space))


def is_bert_shaped(arch: Arch, space: Space) -> bool:
    """Whether the chain is a plain BERT encoder: one size equal to the teacher's, ops alternating mha, ffn, no
    transfers (block transfers at the teacher's size are Linears a BERT layer does not have)."""
    ops = [k for _, block in arch for k in block]
    return (not space.block_transfers and all(h == space.teacher_hidden for h, _ in arch) and len(ops) % 2 == 0
            and len(ops) > 0 and ops == ["mha", "ffn"] * (len(ops) // 2))
