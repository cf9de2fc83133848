"""TR-BERT options (Ye et al., NAACL 2021). Each field is a ``nimblebert train trbert --flag``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import UserError

FINETUNE = ("auto", "yes", "no")
PENALTY_LENGTHS = ("real", "padded")
SELECTS = ("last", "best")


@dataclass
class TrBertConfig:
    """What TR-BERT adds to a model (token-selection policies after chosen layers) and how its stages run.

    Defaults are the official recipe's (``thunlp/TR-BERT`` ``run_classification.py``, METHODS.md §4): two cuts
    (after layer 1 and layer L/2), a Linear(d→32)-GELU-Linear(32→1)-sigmoid policy per cut, K = 8 rollouts,
    guide rate 0.5, α = 1 (the README's IMDB / 20News value), heuristic target layer L − L/4 (9 of 12).
    """

    # ``train trbert --recipe short``: what benchmarks/trbert_mr_long.py runs, one epoch per stage and K = 4 / 2
    # rollouts (official: 3 epochs each, K = 8). The official one stays the default (the paper's numbers).
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {
        "short": {"rl_epochs": 1.0, "joint_epochs": 1.0, "rollouts": 4, "joint_rollouts": 2}}

    cuts: list[int] = field(default_factory=list, metadata={
        "help": "1-based layers after which a policy drops tokens (cumulative); empty = the official placement: "
                "after layer 1 and after layer L/2 (12 layers: 1 6; 6 layers: 1 3)"})
    policy_hidden: int = field(default=32, metadata={"help": "hidden width of each policy MLP (official: 32)"})
    keep_first_segment: bool = field(default=False, metadata={
        "help": "for sentence pairs, never drop the first segment's tokens (as the official QA / multiple-choice "
                "variants keep the question); [CLS] and [SEP] are always kept"})
    finetune: str = field(default="auto", metadata={
        "help": "fine-tuning stage: 'auto' skips it when --model is already a fine-tuned classifier for these "
                "labels, 'yes' always runs it, 'no' never does"})
    alpha: float = field(default=1.0, metadata={
        "help": "harmonic coefficient α of the reward R = −task loss − α·(mean over cuts of the kept fraction); "
                "larger = fewer tokens (official IMDB: 1)"})
    rollouts: int = field(default=8, metadata={"help": "K sampled rollouts per example in the RL stage (official 8)"})
    joint_rollouts: int = field(default=0, metadata={
        "help": "K in the joint stage; 0 = the same as --rollouts (fewer is cheaper: all weights train there)"})
    guide_rate: float = field(default=0.5, metadata={
        "help": "fraction of the RL stage's steps in which one rollout per example is the residual-gradient "
                "heuristic's action (official 0.5); 0 = no imitation guidance"})
    guide_layer: int = field(default=0, metadata={
        "help": "1-based target layer of the residual-gradient scores; 0 = L − L/4 (official: 9 of 12, 5 of 6)"})
    penalty_length: str = field(default="real", metadata={
        "help": "denominator of the kept fraction in the reward: 'real' = each row's own length (ours: padding "
                "is arbitrary under dynamic padding), 'padded' = the batch's padded length (official: 512)"})
    rl_epochs: float = field(default=0.0, metadata={
        "help": "epochs of the policy-only RL stage; 0 = the same as --epochs (official: 3)"})
    joint_epochs: float = field(default=0.0, metadata={
        "help": "epochs of the joint stage; 0 = the same as --epochs (official: 3); a negative value skips it"})
    rl_lr: float = field(default=0.0, metadata={
        "help": "learning rate of the RL stage; 0 = --lr (official: 3e-5 everywhere; the 32-wide policy alone "
                "learns slowly at that rate on small data)"})
    joint_lr: float = field(default=0.0, metadata={"help": "learning rate of the joint stage; 0 = --lr"})
    temperature: float = field(default=1.0, metadata={
        "help": "temperature of the joint stage's soft cross-entropy against the full model (official 1)"})
    select: str = field(default="last", metadata={
        "help": "checkpoint kept by the RL and joint stages: 'last' (default: validation accuracy alone would "
                "favour the policy that keeps everything) or 'best' validation accuracy"})
    eval_threshold: float = field(default=0.5, metadata={
        "help": "keep threshold of the validation runs logged during the RL and joint stages"})
    cache_dir: str = field(default="", metadata={
        "help": "folder for the cached residual-gradient scores and full-model logits; default $NIMBLEBERT_HOME/cache/"
                "trbert. Safe to delete"})

    def __post_init__(self) -> None:
        try:
            self.cuts = [int(c) for c in self.cuts]
        except (TypeError, ValueError):
            raise UserError(f"--cuts takes layer numbers (e.g. --cuts 1 6), got {self.cuts}") from None
        if any(c < 1 for c in self.cuts):
            raise UserError(f"--cuts {self.cuts}: layers are numbered from 1")
        if self.policy_hidden < 1 or self.rollouts < 1 or self.joint_rollouts < 0:
            raise UserError("--policy-hidden and --rollouts must be positive, --joint-rollouts ≥ 0")
        if self.finetune not in FINETUNE:
            raise UserError(f"--finetune {self.finetune!r} is unknown; choose from {', '.join(FINETUNE)}")
        if self.penalty_length not in PENALTY_LENGTHS:
            raise UserError(f"--penalty-length {self.penalty_length!r} is unknown; choose real or padded")
        if self.select not in SELECTS:
            raise UserError(f"--select {self.select!r} is unknown; choose last or best")
        if self.alpha < 0:
            raise UserError(f"--alpha {self.alpha} must be ≥ 0")
        if not 0.0 <= self.guide_rate <= 1.0:
            raise UserError(f"--guide-rate {self.guide_rate} is out of range: use a value in [0, 1]")
        if not 0.0 <= self.eval_threshold <= 1.0:
            raise UserError(f"--eval-threshold {self.eval_threshold} is out of range: use a value in [0, 1]")
        if self.rl_epochs < 0 or self.rl_lr < 0 or self.joint_lr < 0 or self.temperature <= 0 or self.guide_layer < 0:
            raise UserError("--rl-epochs, --rl-lr, --joint-lr and --guide-layer must be ≥ 0, --temperature > 0")


def default_cuts(num_layers: int) -> list[int]:
    """The official placement: after layer 1 and after layer L/2 (BERT-base 1, 6; DistilBERT 1, 3), without
    duplicates and never after the last layer (nothing would run on the shorter sequence)."""
    return sorted({c for c in (1, num_layers // 2) if 1 <= c < num_layers})


def guide_target(num_layers: int, cuts: list[int], guide_layer: int = 0) -> int:
    """1-based target layer of the residual-gradient scores: L − L/4 (official 9 of 12, 5 of 6), and above
    every cut (so that the residual path it stands for skips at least one layer)."""
    target = guide_layer or num_layers - num_layers // 4
    return min(num_layers, max(target, max(cuts, default=0) + 1))
