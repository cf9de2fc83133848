"""NAS-BERT: one weight-sharing supernet, trained block-wise once, searched under a latency or parameter budget
(Xu et al., KDD 2021; spec in METHODS.md §6; no official training code — ML.NET's port of searched architectures
shows the ops).

``nimblebert train nasbert --teacher runs/teacher --data mr --out runs/supernet`` trains the supernet: per
block, every op (MHA, FFN, separable convolution k 3/5/7) at every hidden size of :mod:`.space`, distilled block by
block from the teacher with one random path per block per step, with progressive shrinking (:mod:`.objective`).
``nimblebert search runs/supernet --max-latency-ms 2 --batch 1 --out runs/nas-2ms`` measures (or reuses) a
latency table of this CPU (:mod:`.latency`), picks the architecture with the least block loss under the budget,
checks the top candidates on validation, and trains the winner with two-stage distillation (:mod:`.search`).

A searched network is a model folder: ``model.safetensors`` holds the teacher's embeddings and head (a
0-layer transformers model), ``nimblebert.safetensors`` its chain of ops, which the core runs as a Plan of ops
(:mod:`nimblebert.core.ops`), so ``evaluate``, ``predict`` and ``bench`` take it like any other.
"""

from __future__ import annotations

import dataclasses

from ...errors import UserError
from ...model import NimbleModel
from ..registry import Knob, Method, register_method
from .config import NasBertConfig
from .modules import ShrinkState, build_net, build_supernet
from .objective import config_of, resolve_space, space_of, stages
from .policy import contribute
from .space import Space, default_space, format_arch, parse_arch

__all__ = ["NASBERT", "NasBertConfig", "Space", "attach", "default_space", "contribute", "format_arch", "parse_arch"]


def attach(model: NimbleModel) -> None:
    """Build the supernet's ops and shrinking state, or a searched network's chain, into ``model.extras``, and
    hand the ops to the core (``encoder.op_modules``)."""
    cfg = config_of(model)
    if cfg.role == "supernet":
        space = space_of(model) if "space_blocks" in model.method_config else resolve_space(model, cfg)
        model.extras["ops"] = build_supernet(space, cfg.dropout)
        model.extras["shrink"] = ShrinkState(space, cfg.bins)
        model.encoder.op_modules = model.extras["ops"]
    else:
        space = space_of(model)
        chain, proj = build_net(space, parse_arch(cfg.arch, space), cfg.dropout)
        model.extras["chain"], model.extras["proj"] = chain, proj
        model.encoder.op_modules = chain
    keep = {k: v for k, v in model.method_config.items() if k not in NasBertConfig.__dataclass_fields__}
    model.method_config = {**dataclasses.asdict(cfg), **keep}


def materialize(model: NimbleModel, arch: str = "", traced: bool = False) -> NimbleModel:
    """``nimblebert export``: a searched network (or a supernet's ``--arch``, with the supernet's weights) as a plain
    transformers model, when it is BERT-shaped (see :mod:`.plain`; otherwise a UserError says why not). ``traced``
    (formats that trace the core, ONNX): a network that is not BERT-shaped is returned as it is, the core's chain
    traced into the graph."""
    from .plain import to_plain
    from .search import build_searched
    from .space import is_bert_shaped

    if model.method_config.get("role") == "supernet":
        from .policy import LARGEST, largest_arch

        if not arch:
            raise UserError("export of a NAS-BERT supernet needs --arch (an architecture or 'largest'); its teacher "
                            "is exported with --teacher-only")
        model = build_searched(model, largest_arch(model) if arch == LARGEST else parse_arch(arch, space_of(model)))
    if traced and not is_bert_shaped(parse_arch(model.method_config["arch"], space_of(model)), space_of(model)):
        return model
    return to_plain(model)


NASBERT = register_method(
    Method(
        name="nasbert",
        config_cls=NasBertConfig,
        attach=attach,
        stages=stages,
        contribute=contribute,
        knobs=(Knob("arch", "", "NAS-BERT supernet: the architecture to run through the supernet, e.g. "
                                "128:mha,ffn/96:conv3/64:ffn, or 'largest' (each block's largest live one); empty: "
                                "the teacher. A searched network has its own", type=str, full=""),),
        static=False,
        materialize=materialize,
        export_refusal="only a BERT-shaped searched network has a plain transformers form",
        help="NAS-BERT (Xu et al. 2021): a supernet of MHA/FFN/convolution ops at several sizes, trained block-wise "
             "from --teacher with progressive shrinking; `nimblebert search` then picks a network under a budget",
    )
)
