"""SSA options (Chen/Kou et al., "Improving BERT with Self-Supervised Attention", arXiv 2004.03808).

Each field is a ``nimblebert train ssa --flag``. Defaults are the official ``run_ssa.py`` /
``scripts/ssa_base_re.sh`` values for single sentences (SST-2: ``cls_weight`` 0.5, shared token head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UserError

VARIANTS = ("hybrid", "reg")


@dataclass
class SsaConfig:
    """The hybrid SSA model (SSA-Reg + SSA-Trans) or SSA-Reg alone, and its per-epoch probing."""

    variant: str = field(default="hybrid", metadata={
        "help": "'hybrid' (official default BertForNSPAug: token-importance head + importance-weighted pooling "
                "mixed with the pooled [CLS]) or 'reg' (BertForNSP_co: the token loss as a regulariser, the "
                "model's own [CLS] head predicts — a plain transformers model, usable as a teacher)"})
    cls_weight: float = field(default=0.5, metadata={
        "help": "λ: output = λ·pooled [CLS] + (1−λ)·importance-weighted pooling (official SST-2/MRPC/RTE: 0.5)"})
    share_weight: int = field(default=1, metadata={
        "help": "1: one token decoder shared by all positions (official default for single sentences); 0: a "
                "separate d→2 decoder per position after the shared transform (official RTE/STS-B setting)"})
    attention_threshold: float = field(default=0.3, metadata={
        "help": "tokens whose predicted importance is below this are left out of the pooling (official 0.3)"})
    aug_loss_weight: float = field(default=0.3, metadata={
        "help": "w in (1−w)·task loss + w·token loss (official 0.3)"})
    aug_threshold: float = field(default=0.1, metadata={
        "help": "probing: chance per token of a masking event (official 0.1)"})
    rm_threshold: float = field(default=0.7, metadata={
        "help": "probing: a masking event masks 3 tokens when u > this, 2 when u > rm_low, else 1 (official 0.7)"})
    rm_low: float = field(default=0.4, metadata={"help": "probing: see --rm-threshold (official 0.4)"})
    aug_ratio_step: float = field(default=0.2, metadata={
        "help": "share of probed examples in the epoch's training set: 0 in epoch 0, then this much more each "
                "epoch (official 0.2)"})
    max_aug_ratio: float = field(default=0.8, metadata={
        "help": "the share stops growing here (official: grows while < 1.0, i.e. up to 0.8)"})
    probe_rounds: int = field(default=8, metadata={
        "help": "at most this many probing rounds per epoch (the official code repeats until enough examples "
                "qualify; a cap keeps an epoch's cost bounded — the shortfall is filled with originals)"})
    probe_batch_size: int = field(default=128, metadata={"help": "batch size of the probing passes"})

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UserError(f"--variant {self.variant!r} is unknown; choose from {', '.join(VARIANTS)}")
        for name in ("cls_weight", "attention_threshold", "aug_loss_weight", "aug_threshold", "rm_threshold",
                     "rm_low", "max_aug_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} {value} is out of range: use a value in [0, 1]")
        if self.share_weight not in (0, 1):
            raise UserError(f"--share-weight {self.share_weight} is unknown: use 1 (shared) or 0 (per position)")
        if self.rm_low > self.rm_threshold:
            raise UserError("--rm-low must not exceed --rm-threshold")
        if self.aug_ratio_step < 0:
            raise UserError("--aug-ratio-step must be ≥ 0")
        if self.probe_rounds < 1 or self.probe_batch_size < 1:
            raise UserError("--probe-rounds and --probe-batch-size must be at least 1")
