"""NAS-BERT's modules: the weight-sharing supernet, the shrinking state, and a searched network's chain.

Supernet (Xu et al. 2021, §3.2): every slot of every block holds one op per (layer kind, hidden size), and every
block one input transfer (teacher size → h) and one output transfer (h → teacher size) per hidden size. A path
through a block is ``in_h, op, op, ..., out_h``; block-wise training feeds it the teacher's hidden states. The
ops live in ``model.extras["ops"]`` (a ModuleDict the core runs through ``Plan.ops``), so a path through the
supernet is a Plan like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.ops import OpSpec, build_op
from .space import Arch, BlockArch, Space, arch_specs


def op_key(block: int, slot: int, kind: str, hidden: int) -> str:
    return f"b{block}_s{slot}_{kind}_{hidden}"


def transfer_key(block: int, direction: str, hidden: int) -> str:
    return f"b{block}_{direction}_{hidden}"


def build_supernet(space: Space, dropout: float) -> nn.ModuleDict:
    """Every op of every slot, and the block transfers (``in``: teacher size → h, ``out``: h → teacher size)."""
    from .space import LAYER_KINDS

    ops: dict[str, nn.Module] = {}
    d = space.teacher_hidden
    for n in range(space.blocks):
        for h in space.hidden_sizes:
            ops[transfer_key(n, "in", h)] = build_op(OpSpec("linear", d, h), dropout)
            ops[transfer_key(n, "out", h)] = build_op(OpSpec("linear", h, d), dropout)
            for j in range(space.slots):
                for kind in LAYER_KINDS:
                    ops[op_key(n, j, kind, h)] = build_op(space.spec(kind, h), dropout)
    return nn.ModuleDict(ops)


def block_path(n: int, arch: BlockArch) -> list[str]:
    """Keys of block ``n``'s path: in-transfer, its ops slot by slot (identity tail skipped), out-transfer."""
    hidden, kinds = arch
    return [transfer_key(n, "in", hidden), *(op_key(n, j, k, hidden) for j, k in enumerate(kinds)),
            transfer_key(n, "out", hidden)]


def supernet_path(arch: Arch) -> tuple[str, ...]:
    """A whole architecture through the supernet: block paths chained at the teacher's size (what block-wise
    training made each block's output imitate), for exact evaluation of a candidate."""
    return tuple(k for n, block in enumerate(arch) for k in block_path(n, block))


def assign_bins(params: torch.Tensor, latency: torch.Tensor | None, bins: int) -> torch.Tensor:
    """The bin of each block architecture (Xu et al. 2021, §3.3): "B bins by parameter count; bin b's cap is
    (b/B) × the largest architecture's parameters; bins also carry latency caps".

    How we read it: bin b (1-based) caps both the parameters at (b/B) × the largest block's and the latency at
    (b/B) × the slowest block's; an architecture belongs to the first bin whose caps it meets both, i.e. to
    max(its parameter bin, its latency bin). The paper does not say how the two caps combine; this reading keeps
    every architecture in exactly one bin and puts the architectures that are small *and* fast in the low bins,
    so shrinking, which keeps each bin's ``m`` lowest-loss members, keeps fast ones too. With parameter caps only,
    bin 1 held small-but-slow ones (many ops at 64 wide: few weights, but each op's fixed cost at batch 1), whose
    lower block loss won, and nothing was left under 1/10 of the teacher's latency (docs/sections/nasbert_mr.md).
    Empty architectures (0 parameters, 0 ms) go to bin 1. ``latency`` None: parameter caps only."""
    def bin_by(values: torch.Tensor) -> torch.Tensor:
        top = float(values.max())
        if top <= 0:
            return torch.zeros(len(values), dtype=torch.long)
        return torch.clamp(torch.ceil(values / top * bins - 1e-9).long() - 1, 0, bins - 1)

    by_params = bin_by(params.double())
    return by_params if latency is None else torch.maximum(by_params, bin_by(latency.double()))


class ShrinkState(nn.Module):
    """Which block architectures are still in the space (progressive shrinking, §3.3), as buffers so that the
    trainer's checkpoints and the saved folder carry it: ``alive{n}`` (A,) bool, ``bin`` (A,) the bin of each
    architecture (:func:`assign_bins`; by parameters and, once :meth:`set_latency` ran, latency), ``steps`` the
    supernet training steps run, ``rounds`` the shrinking rounds done."""

    def __init__(self, space: Space, bins: int) -> None:
        super().__init__()
        self.archs: list[BlockArch] = list(space.block_archs())  # the fixed order the buffers index
        params = torch.tensor([space.block_params(a) for a in self.archs], dtype=torch.float64)
        # By parameters until set_latency gives the latency caps too (training does, from the latency table).
        bin_of = assign_bins(params, None, bins)
        self.register_buffer("params", params.long(), persistent=False)
        for n in range(space.blocks):
            self.register_buffer(f"alive{n}", torch.ones(len(self.archs), dtype=torch.bool))
        self.register_buffer("bin", bin_of)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self.blocks, self.bins = space.blocks, bins

    def set_latency(self, latency: torch.Tensor) -> None:
        """Re-bin with latency caps: ``latency`` (A,) the predicted ms of each block architecture (same order as
        ``archs``). Only before shrinking starts: the bins a round used must stay the bins of the run."""
        self.bin.copy_(assign_bins(self.params.double(), latency.double(), self.bins))

    def alive(self, n: int) -> torch.Tensor:
        return getattr(self, f"alive{n}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> BlockArch:
        """One live architecture of block ``n``, uniformly (single-path training)."""
        live = self.alive(n).nonzero().squeeze(1)
        return self.archs[int(live[torch.randint(len(live), (1,), generator=generator)])]

    def largest(self, n: int) -> BlockArch:
        """The live architecture of block ``n`` with the most parameters (the supernet's default path)."""
        live = self.alive(n).nonzero().squeeze(1)
        return self.archs[int(live[self.params[live].argmax()])]

    def counts(self, n: int) -> list[int]:
        """Live architectures per bin of block ``n``."""
        return [int((self.alive(n) & (self.bin == b)).sum()) for b in range(self.bins)]


def build_net(space: Space, arch: Arch, dropout: float) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """A searched network's chain (keys ``c0``, ``c1``, ... in order) and, for distillation, one projection per
    block from its size to the teacher's (``p{n}``; none where the sizes are equal, except with block transfers,
    where every block with ops has one: the supernet's out-transfer it starts from)."""
    chain = nn.ModuleDict({f"c{i}": build_op(s, dropout) for i, s in enumerate(arch_specs(arch, space))})
    proj = nn.ModuleDict({f"p{n}": build_op(OpSpec("linear", h, space.teacher_hidden), dropout)
                          for n, (h, kinds) in enumerate(arch)
                          if (kinds if space.block_transfers else h != space.teacher_hidden)})
    return chain, proj


def block_ends(space: Space, arch: Arch) -> list[int | None]:
    """Index in the chain (``c{i}``) after which each block's output is (−1: before the first op); the hidden
    state there is the one distilled from the teacher's block output. With block transfers an identity block has
    none (None): its in- and out-transfers are folded into the next transfer, so no state of the chain is its
    output — except the last block, whose output is the chain's last state (the final transfer, at the teacher's
    size)."""
    ends: list[int | None] = []
    i, current = 0, space.teacher_hidden
    for hidden, kinds in arch:
        if space.block_transfers:
            if not kinds:
                ends.append(None)
                continue
            i += 1  # the block's transfer
        elif hidden != current:
            i += 1
            current = hidden
        i += len(kinds)
        ends.append(i - 1)
    if space.block_transfers and ends[-1] is None:
        ends[-1] = i  # the final transfer c{i}
    return ends


def _set_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    target.weight.copy_(weight)
    target.bias.copy_(bias)


@torch.no_grad()
def init_net_from_supernet(chain: nn.ModuleDict, proj: nn.ModuleDict, supernet: nn.ModuleDict, space: Space,
                           arch: Arch) -> None:
    """Start a searched network from the supernet's weights: each op from its slot, each projection from the
    block's out-transfer, and each transfer as the product of the supernet's transfers it replaces.

    With block transfers (``space.block_transfers``) the network is the supernet path exactly: the chain of
    Linears between two blocks' ops (out_n, then in_{n+1}; through an identity block in_m·out_m too) is one Linear,
    W = W_in·W_out, b = W_in·b_out + b_in. Without them only transfers where the size changes exist, and ops of
    consecutive same-size blocks meet directly (an approximation: each block learnt on its own in-transfer's
    basis). The paper re-trains from scratch; this is our option (``--init``)."""
    d = space.teacher_hidden
    # The pending affine map from the last op's output (the embeddings at first) to the current point.
    weight = torch.eye(d)
    bias = torch.zeros(d)
    i, current = 0, d

    def through(key: str) -> None:
        nonlocal weight, bias
        lin: nn.Linear = supernet[key].proj
        weight, bias = lin.weight @ weight, lin.weight @ bias + lin.bias

    for n, (hidden, kinds) in enumerate(arch):
        if space.block_transfers:
            through(transfer_key(n, "in", hidden))
            if not kinds:
                through(transfer_key(n, "out", hidden))
                continue
            _set_linear(chain[f"c{i}"].proj, weight, bias)
            i += 1
        elif hidden != current:
            through(transfer_key(n, "in", hidden))
            _set_linear(chain[f"c{i}"].proj, weight, bias)
            i += 1
        current = hidden
        for j, k in enumerate(kinds):
            chain[f"c{i}"].load_state_dict(supernet[op_key(n, j, k, hidden)].state_dict())
            i += 1
        out: nn.Linear = supernet[transfer_key(n, "out", hidden)].proj
        weight, bias = out.weight.clone(), out.bias.clone()  # pending: this block's out-transfer (h → d)
        if f"p{n}" in proj:
            _set_linear(proj[f"p{n}"].proj, out.weight, out.bias)
    if f"c{i}" in chain:  # the last transfer, back to the teacher's size (the head's input)
        _set_linear(chain[f"c{i}"].proj, weight, bias)
