"""DynaBERT options (Hou et al., NeurIPS 2020). Each field is a ``nimblebert train dynabert --flag``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...core.plan import DEPTH_RULES
from ...distill.config import AugmentOptions, check_augment_options
from ...errors import UserError

PHASES = ("width", "depth", "final")
SPLITS = ("validation", "train")  # never "test": importance on it would leak into the reported numbers


@dataclass
class DynaBertConfig(AugmentOptions):
    """The sub-networks DynaBERT trains and how its stages run.

    Defaults are the official README's (``run_glue.py``): widths 0.25–1 and depths 0.5–1, λ1 = 1 and
    λ2 = 0.1 in the width stage, λ1 = λ2 = 1 in the width × depth stage, no warm-up. One deviation:
    augmentation is off unless ``--augment`` (the README trains both stages on TinyBERT's augmented set,
    N = 20 variants per example: about 20× the training time, hours on a CPU even for a small task).
    """

    # ``train dynabert --recipe short``: what benchmarks/dynabert_mr.py runs by default, one epoch per stage (the
    # official recipe: 3 each, the shared --epochs). The official one stays the default (the paper's numbers).
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {
        "short": {"width_epochs": 1.0, "depth_epochs": 1.0, "final_epochs": 1.0}}

    augment: bool = field(default=False, metadata={
        "help": "train the width and width × depth stages on TinyBERT's augmented training set (the original + "
                "up to --aug-copies variants per example; the official --data_aug), the teacher relabelling "
                "every row; the final fine-tuning always uses the training set as it is (as official). Off by "
                "default: it multiplies training time by about N + 1"})

    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25], metadata={
        "help": "width multipliers trained (fraction of heads and FFN neurons kept per layer); run in descending "
                "order each step, as the official code"})
    depths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5], metadata={
        "help": "depth multipliers trained in the width × depth stage (official rule: keep layers floor(i/m_d))"})
    depth_rule: str = field(default="official", metadata={
        "help": "which layers a depth keeps: 'official' (DynaBERT's code: floor(i/m_d), which always drops the last "
                "layer; 6 layers at 0.5 keep 1, 3, 5 counted from 1) or 'last' (ours: the same pattern counted "
                "from the top, so the last layer, the classifier's input, always runs; 6 layers at 0.5 keep 2, 4, "
                "6). Stored with the model: --depth at inference and export follow it"})
    phases: list[str] = field(default_factory=lambda: ["width", "depth"], metadata={
        "help": "stages to run, in this order: 'width' (DynaBERT_W: every width distils the full teacher), "
                "'depth' (every width × depth distils the DynaBERT_W model), 'final' (optional: gold-label "
                "fine-tuning of every sub-network)"})
    rewire: bool = field(default=True, metadata={
        "help": "rank heads and FFN neurons by importance on labelled held-out data and put the important ones "
                "first before training (the paper's network rewiring; --no-rewire skips it)"})
    importance_data: str = field(default="", metadata={
        "help": "labelled data to compute head/neuron importance on: a built-in name or a data folder (usually "
                "the same as --data); its --importance-split is used"})
    importance_split: str = field(default="validation", metadata={
        "help": "split of --importance-data used for importance: 'validation' (the official code uses the dev "
                "set) or 'train'"})
    importance_examples: int = field(default=0, metadata={
        "help": "use at most this many examples for importance (0 = all of the split)"})
    width_lambda1: float = field(default=1.0, metadata={"help": "width stage: weight of the logit distillation"})
    width_lambda2: float = field(default=0.1, metadata={
        "help": "width stage: weight of the hidden-state (embeddings + every layer) MSE"})
    depth_lambda1: float = field(default=1.0, metadata={"help": "width × depth stage: weight of the logit "
                                                                 "distillation"})
    depth_lambda2: float = field(default=1.0, metadata={"help": "width × depth stage: weight of the hidden-state "
                                                                 "MSE"})
    width_epochs: float = field(default=0.0, metadata={"help": "epochs of the width stage (0 = --epochs)"})
    depth_epochs: float = field(default=0.0, metadata={"help": "epochs of the width × depth stage (0 = --epochs)"})
    final_epochs: float = field(default=0.0, metadata={"help": "epochs of the final fine-tuning (0 = --epochs)"})
    eval_width: float = field(default=1.0, metadata={
        "help": "width of the validation runs the trainer logs during training"})
    eval_depth: float = field(default=1.0, metadata={
        "help": "depth of the validation runs the trainer logs during training"})

    def __post_init__(self) -> None:
        check_augment_options(self)
        for name, values in (("--widths", self.widths), ("--depths", self.depths)):
            if not values:
                raise UserError(f"{name} needs at least one value")
            bad = [v for v in values if not 0 < float(v) <= 1]
            if bad:
                raise UserError(f"{name} {bad[0]} is out of range: use values in (0, 1]")
        self.widths = sorted({float(w) for w in self.widths}, reverse=True)  # descending, as the official loop
        self.depths = sorted({float(d) for d in self.depths}, reverse=True)
        if self.depth_rule not in DEPTH_RULES:
            raise UserError(f"--depth-rule {self.depth_rule!r} is unknown; choose from {', '.join(DEPTH_RULES)}")
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown:
            raise UserError(f"--phases {unknown[0]!r} is unknown; choose from {', '.join(PHASES)}")
        if not self.phases or len(set(self.phases)) != len(self.phases):
            raise UserError("--phases needs each of width, depth, final at most once, and at least one")
        if list(self.phases) != [p for p in PHASES if p in self.phases]:
            raise UserError(f"--phases must keep the order {' → '.join(PHASES)} (got {' '.join(self.phases)})")
        if self.importance_split not in SPLITS:
            raise UserError(f"--importance-split {self.importance_split!r} is unknown; choose from {', '.join(SPLITS)}")
        if self.importance_examples < 0:
            raise UserError("--importance-examples must be ≥ 0")
        for name in ("width_lambda1", "width_lambda2", "depth_lambda1", "depth_lambda2", "width_epochs",
                     "depth_epochs", "final_epochs"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ 0")
        for name in ("eval_width", "eval_depth"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is out of range: use (0, 1]")
