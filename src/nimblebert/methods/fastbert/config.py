"""FastBERT options (Liu et al., ACL 2020). Each field is a ``nimblebert train fastbert --flag``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UserError

BRANCHES = ("attention", "mlp", "linear")
POOLINGS = ("first", "mean")
FINETUNE = ("auto", "yes", "no")


@dataclass
class FastBertConfig:
    """What FastBERT adds to a model and how its two training stages run.

    The defaults are the paper's (§3.1 and the official ``run_fastbert.py``): a branch of width 128
    with 2-head self-attention and first-token pooling after every layer, distilled at 10× the
    fine-tuning learning rate.
    """

    branch: str = field(default="attention", metadata={
        "help": "branch classifier after each layer: 'attention' = the paper's (project to --branch-hidden, "
                "tanh, --branch-heads self-attention over the layer's tokens, pool, dense+tanh, labels); "
                "'mlp' = lighter: masked mean of the tokens, dense+tanh, labels; 'linear' = lightest: masked "
                "mean of the tokens, one linear layer to the labels"})
    branch_hidden: int = field(default=128, metadata={"help": "width of the branch classifiers (paper: 128)"})
    branch_heads: int = field(default=2, metadata={
        "help": "self-attention heads in an 'attention' branch (paper: 2)"})
    pooling: str = field(default="first", metadata={
        "help": "pooling of an 'attention' branch: 'first' token (paper) or masked 'mean'"})
    branch_dropout: float = field(default=0.1, metadata={
        "help": "dropout on the branch's attention probabilities while training (paper: the config's 0.1)"})
    finetune: str = field(default="auto", metadata={
        "help": "stage 1 (fine-tune backbone + teacher with cross-entropy): 'auto' skips it when --model is "
                "already a fine-tuned classifier for these labels, 'yes' always runs it, 'no' never does"})
    distill_lr_mult: float = field(default=10.0, metadata={
        "help": "stage-2 (self-distillation) learning rate = this × --lr (paper: 10)"})
    distill_epochs: float = field(default=0.0, metadata={
        "help": "epochs of stage 2; 0 = the same as --epochs (the paper's README uses 5)"})
    distill_data: str = field(default="", metadata={
        "help": "optional JSONL file of unlabelled texts ({\"text\": ...} or a string per line) to distil on "
                "instead of the training split; labels are not needed in stage 2"})
    eval_speed: float = field(default=0.5, metadata={
        "help": "speed of the validation runs logged during stage 2 (the last stage-2 weights are kept)"})

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise UserError(f"--branch {self.branch!r} is unknown; choose from {', '.join(BRANCHES)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"--pooling {self.pooling!r} is unknown; choose from {', '.join(POOLINGS)}")
        if self.finetune not in FINETUNE:
            raise UserError(f"--finetune {self.finetune!r} is unknown; choose from {', '.join(FINETUNE)}")
        if self.branch_hidden < 1 or self.branch_heads < 1:
            raise UserError("--branch-hidden and --branch-heads must be positive")
        if self.branch == "attention" and self.branch_hidden % self.branch_heads:
            raise UserError(f"--branch-hidden {self.branch_hidden} must be divisible by --branch-heads "
                            f"{self.branch_heads}")
        if not 0.0 <= self.branch_dropout < 1.0:
            raise UserError(f"--branch-dropout {self.branch_dropout} is out of range: use a value in [0, 1)")
        if self.distill_lr_mult <= 0 or self.distill_epochs < 0:
            raise UserError("--distill-lr-mult must be > 0 and --distill-epochs ≥ 0")
        if not 0.0 <= self.eval_speed <= 1.0:
            raise UserError(f"--eval-speed {self.eval_speed} is out of range: use a value in [0, 1]")
