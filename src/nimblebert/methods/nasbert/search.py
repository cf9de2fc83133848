"""Model selection under a budget (Xu et al. 2021, §3.4; METHODS.md §6 "Model selection") and the searched
network's construction.

1. Lookup tables per block: for each live block architecture (after progressive shrinking; without it, a seeded
   sample of at most ``block_candidates``), its block loss on held-out batches, its parameters and its ops'
   predicted latency (:mod:`.latency`).
2. Combination: the paper enumerates all (m·B)^N combinations; we grow architectures block by block with a beam
   of the ``beam`` lowest summed losses, dropping partial architectures that cannot meet the budgets even with the
   cheapest rest (exact when the beam holds every feasible partial one, approximate beyond). Transfers are counted
   where the network to be built has them (by default before every block with ops and before the head, as in the
   supernet: ``Space.block_transfers``), so the latency and parameters are those of the network built.
3. The top ``top`` by summed block loss are evaluated exactly on validation (the supernet path with the teacher's
   head, :func:`~.policy.infer`); the most accurate is kept (ties: the lower loss).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...core.ops import OpSpec, op_params
from ...errors import UserError
from ...inference import metrics, predict_loader
from .latency import fixed_latency, op_latency
from .modules import build_net, init_net_from_supernet
from .objective import block_losses, config_of, held_out_batches, space_of, teacher_blocks
from .space import Arch, BlockArch, Space, format_arch

if TYPE_CHECKING:
    from ...model import NimbleModel


@dataclass
class Candidate:
    arch: Arch
    loss: float
    latency_ms: float
    params: int
    accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"arch": format_arch(self.arch), "block_loss": round(self.loss, 6),
                "predicted_ms": round(self.latency_ms, 4), "params": self.params, "accuracy": self.accuracy}


def block_tables(supernet: NimbleModel, validation: Any, batch_size: int, batches: int, block_candidates: int,
                 seed: int, shrunk: bool = True) -> list[tuple[list[BlockArch], torch.Tensor]]:
    """Per block: the candidate architectures and their block losses on ``batches`` held-out batches. ``shrunk``
    False draws from every architecture of the space, also those progressive shrinking removed (the ablation)."""
    space = space_of(supernet)
    state = supernet.extras["shrink"]
    held = held_out_batches(validation, supernet.tokenizer, batch_size, batches)
    ys = [teacher_blocks(supernet.encoder, b, space) for b in held]
    masks = [b["attention_mask"] for b in held]
    generator = torch.Generator().manual_seed(seed)
    tables = []
    for n in range(space.blocks):
        live = (state.alive(n) if shrunk else torch.ones_like(state.alive(n))).nonzero().squeeze(1)
        if len(live) > block_candidates:
            live = live[torch.randperm(len(live), generator=generator)[:block_candidates]].sort().values
        archs = [state.archs[int(i)] for i in live]
        tables.append((archs, block_losses(supernet, n, archs, ys, masks)))
    return tables


def combine(space: Space, tables: list[tuple[list[BlockArch], torch.Tensor]], table: dict[str, Any], batch: int,
            length: float, max_latency_ms: float | None, max_params: int | None, beam: int) -> list[Candidate]:
    """Whole architectures within the budgets, lowest summed block loss first (see the module docstring)."""
    d = space.teacher_hidden
    inf = float("inf")
    lat_cap = max_latency_ms if max_latency_ms is not None else inf
    par_cap = max_params if max_params is not None else inf

    block_mode = space.block_transfers

    def transfer(a: int, b: int) -> tuple[float, int]:
        if a == b and not block_mode:
            return 0.0, 0
        spec = OpSpec("linear", a, b)
        return op_latency(table, spec, batch, length), op_params(spec)

    def block_cost(arch: BlockArch) -> tuple[float, int]:
        h, kinds = arch
        specs = [space.spec(k, h) for k in kinds]
        return sum(op_latency(table, s, batch, length) for s in specs), sum(op_params(s) for s in specs)

    costs = [[block_cost(a) for a in archs] for archs, _ in tables]
    # The cheapest possible rest after block n (without transfers: a lower bound), to drop hopeless partials early.
    min_lat = [min(c[0] for c in block) for block in costs]
    min_par = [min(c[1] for c in block) for block in costs]
    rest_lat = [sum(min_lat[n + 1:]) for n in range(len(tables))]
    rest_par = [sum(min_par[n + 1:]) for n in range(len(tables))]
    # Transfer costs between sizes, index 0 = the teacher's size (embeddings in, head out).
    sizes = [d, *space.hidden_sizes]
    index = {h: i for i, h in enumerate(sizes)}
    t_lat = torch.tensor([[transfer(a, b)[0] for b in sizes] for a in sizes], dtype=torch.float64)
    t_par = torch.tensor([[transfer(a, b)[1] for b in sizes] for a in sizes], dtype=torch.float64)

    # The beam of partial architectures, as parallel tensors (P,): summed loss, latency, params, the size index the
    # chain is at, and the choice in each block so far (P, n).
    loss = torch.zeros(1, dtype=torch.float64)
    lat = torch.tensor([fixed_latency(table, batch, length)], dtype=torch.float64)
    par = torch.zeros(1, dtype=torch.float64)
    prev = torch.zeros(1, dtype=torch.long)
    chosen = torch.zeros(1, 0, dtype=torch.long)
    for n, (archs, losses) in enumerate(tables):
        c_lat = torch.tensor([c[0] for c in costs[n]], dtype=torch.float64)  # (C,)
        c_par = torch.tensor([float(c[1]) for c in costs[n]], dtype=torch.float64)
        c_size = torch.tensor([index[a[0]] for a in archs])
        # With block transfers an identity block costs nothing and leaves the chain where it was (arch_specs).
        c_empty = torch.tensor([block_mode and not a[1] for a in archs])
        enter_lat = t_lat[prev][:, c_size].masked_fill(c_empty[None, :], 0.0)  # (P, C)
        enter_par = t_par[prev][:, c_size].masked_fill(c_empty[None, :], 0.0)
        grown_lat = lat[:, None] + enter_lat + c_lat[None, :]  # (P, C)
        grown_par = par[:, None] + enter_par + c_par[None, :]
        ok = (grown_lat + rest_lat[n] <= lat_cap) & (grown_par + rest_par[n] <= par_cap)
        grown_loss = (loss[:, None] + losses.double()[None, :]).masked_fill(~ok, inf)
        keep = min(beam, int(ok.sum()))
        if keep == 0:
            return []
        loss, flat = grown_loss.flatten().topk(keep, largest=False)  # ascending: the lowest summed losses
        rows, cols = flat // len(archs), flat % len(archs)
        lat, par = grown_lat.flatten()[flat], grown_par.flatten()[flat]
        prev = torch.where(c_empty[cols], prev[rows], c_size[cols])
        chosen = torch.cat([chosen[rows], cols[:, None]], dim=1)
    # The last transfer back to the head's size (without block transfers zero where the chain is at that size).
    lat, par = lat + t_lat[prev, 0], par + t_par[prev, 0]
    fits = (lat <= lat_cap) & (par <= par_cap)
    result = [Candidate(tuple(tables[n][0][int(i)] for n, i in enumerate(chosen[j])), float(loss[j]), float(lat[j]),
                        int(par[j])) for j in fits.nonzero().squeeze(1).tolist()]
    return sorted(result, key=lambda c: c.loss)


def search(supernet: NimbleModel, validation: Any, table: dict[str, Any], *, batch: int, length: float,
           max_latency_ms: float | None, max_params: int | None, top: int, beam: int, block_candidates: int,
           held_out: int, batch_size: int, seed: int, block_transfers: bool = True, shrunk: bool = True
           ) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns the chosen candidate, the evaluated ones and the timings.
    ``block_transfers``: the transfers of the network to be built (:class:`~.space.Space`), which its latency and
    parameters count. ``shrunk``: see :func:`block_tables`."""
    if max_latency_ms is None and max_params is None:
        raise UserError("give a budget: --max-latency-ms and/or --max-params")
    space = dataclasses.replace(space_of(supernet), block_transfers=block_transfers)
    started = time.time()
    tables = block_tables(supernet, validation, batch_size, held_out, block_candidates, seed, shrunk)
    lookup_s = time.time() - started
    found = combine(space, tables, table, batch, length, max_latency_ms, max_params, beam)
    if not found:
        smallest = fixed_latency(table, batch, length)
        raise UserError(f"no architecture of the supernet fits the budget (latency ≤ {max_latency_ms} ms, params ≤ "
                        f"{max_params}); the fixed part alone (embeddings, head) takes {smallest:.3f} ms here at batch "
                        f"{batch}, length {length:g}: raise the budget")
    from ...data import make_loader

    loader = make_loader(validation, supernet.tokenizer, batch_size, shuffle=False, bucket_by_length=True)
    evaluated = found[:top]
    for c in evaluated:
        preds = predict_loader(supernet, loader, arch=format_arch(c.arch))
        c.accuracy = metrics(preds, supernet.num_labels)["accuracy"]
    best = max(evaluated, key=lambda c: (c.accuracy, -c.loss))
    return {"best": best, "candidates": evaluated, "feasible": len(found),
            "block_candidates": [len(a) for a, _ in tables], "lookup_seconds": round(lookup_s, 2),
            "search_seconds": round(time.time() - started, 2)}


def build_searched(supernet: NimbleModel, arch: Arch, init: str = "supernet", block_transfers: bool = True
                   ) -> NimbleModel:
    """A searched network as a NimbleModel: a 0-layer copy of the teacher (its embeddings and head) plus the chain,
    initialised from the supernet's weights (``init`` "supernet") or at random ("random", the paper's choice).
    ``block_transfers``: see :class:`~.space.Space` (the supernet's weights compose exactly only with them)."""
    from ...model import NimbleModel

    teacher = supernet.hf
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = 0
    config.nimblebert = None
    hf = type(teacher)(config)
    missing, _ = hf.load_state_dict(teacher.state_dict(), strict=False)
    if missing:
        raise ValueError(f"the teacher lacks {missing[:3]}")
    cfg = config_of(supernet)
    keep = {k: supernet.method_config[k] for k in ("teacher_hidden", "teacher_layers", "head_dim", "space_sizes",
                                                   "space_blocks")}
    if init == "supernet" and not block_transfers:
        raise UserError("--init supernet needs block transfers (--transfers block): without them the ops of two "
                        "same-size blocks meet without the transfers they were trained behind")
    method_config = {**cfg.__dict__, "role": "net", "arch": format_arch(arch), "block_transfers": block_transfers,
                     "teacher_source": supernet.source or cfg.teacher_source, **keep}
    model = NimbleModel(hf, supernet.tokenizer, "nasbert", method_config, supernet.label_names)
    model.method_spec.attach(model)
    if init == "supernet":
        init_net_from_supernet(model.extras["chain"], model.extras["proj"], supernet.extras["ops"], space_of(model),
                               arch)
    elif init != "random":
        raise UserError(f"--init {init!r} is unknown; choose supernet or random")
    return model


__all__ = ["Candidate", "block_tables", "build_net", "build_searched", "combine", "search"]
