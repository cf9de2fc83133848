"""What NAS-BERT adds at inference: a Plan of heterogeneous ops (``Plan.ops``) that the core runs instead of the
BERT layers. A searched network runs its chain; a supernet folder runs its teacher by default (so that other methods
stacked on it, and its own contract "the knob at its full value is the whole model", see a plain teacher) and one
architecture through its shared weights with the ``arch`` knob (``largest``: each block's largest live one), which
is how search evaluates candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.plan import Plan
from ...errors import UserError
from ..registry import Contribution
from .modules import supernet_path
from .space import Arch, parse_arch

if TYPE_CHECKING:
    from ...model import NimbleModel


LARGEST = "largest"


def largest_arch(model: NimbleModel) -> Arch:
    state = model.extras["shrink"]
    return tuple(state.largest(n) for n in range(state.blocks))


def net_plan(model: NimbleModel) -> Plan:
    """The chain of a searched network, in order (``c0``, ``c1``, ...)."""
    return Plan(ops=tuple(f"c{i}" for i in range(len(model.extras["chain"]))))


def supernet_plan(model: NimbleModel, arch: Arch) -> Plan:
    return Plan(ops=supernet_path(arch))


def contribute(model: NimbleModel, batch: dict[str, torch.Tensor], knobs: dict[str, Any]) -> Contribution:
    """The plan of one pass: the searched chain, or a supernet architecture (the ``arch`` knob, see
    :func:`~.space.format_arch`; ``largest``: each block's largest live one; empty: the teacher, no ops)."""
    from .objective import space_of

    arch = knobs.get("arch") or ""
    if model.method_config.get("role") == "net":
        if arch and arch != model.method_config["arch"]:
            raise UserError("--arch applies to a NAS-BERT supernet; this is a searched network with a fixed "
                            f"architecture ({model.method_config['arch']})")
        return Contribution(plan=net_plan(model))
    if not arch:
        return Contribution()  # the supernet's teacher as it is
    return Contribution(plan=supernet_plan(model, largest_arch(model) if arch == LARGEST else
                                           parse_arch(arch, space_of(model))))
