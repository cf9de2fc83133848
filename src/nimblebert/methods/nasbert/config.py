"""NAS-BERT options (Xu et al., KDD 2021). Each field is a ``nimblebert train nasbert --flag``.

The paper's recipe (METHODS.md §6) at its scale: 10 bins by parameters (with latency caps), 3 warm-up epochs, then
each epoch per bin 2000 sampled architectures scored on 5 batches and the worse 1000 removed, until 10 remain per bin.
Our space is smaller (3,905 architectures per block for a 6-layer teacher, not 97,655), so the defaults sample
fewer per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UserError

ROLES = ("supernet", "net")


@dataclass
class NasBertConfig:
    """The supernet's space and training (``role`` supernet) or a searched network (``role`` net, set by search)."""

    role: str = field(default="supernet", metadata={
        "help": "'supernet' (train nasbert trains one); 'net' is what `nimblebert search` writes"})
    blocks: int = field(default=0, metadata={
        "help": "student blocks; 0 = 3 teacher layers per block for teachers of 9+ layers in multiples of 3 "
                "(BERT-base: the paper's 4), else 2 per block (MiniLM-L6: 3 blocks of 4 slots)"})
    hidden_sizes: str = field(default="", metadata={
        "help": "comma-separated hidden sizes of the ops; default: the teacher's × 1/6, 1/4, 1/3, 1/2, 2/3 in "
                "multiples of its head size (768 → the paper's 128,192,256,384,512; 384 → 64,96,128,192,256)"})
    supernet_lr: float = field(default=5e-4, metadata={
        "help": "learning rate of block-wise supernet training (the ops start from random weights)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the ops"})
    shrink: bool = field(default=True, metadata={
        "help": "progressive shrinking: periodically remove the worst architectures of each size bin by block "
                "loss on held-out batches (--no-shrink: the ablation, all architectures stay)"})
    bins: int = field(default=10, metadata={"help": "B: size bins per block (paper: 10)"})
    latency_bins: bool = field(default=True, metadata={
        "help": "bins carry latency caps too (the paper): an architecture goes to the first bin b whose parameter "
                "cap AND latency cap (b/B × the largest block's, batch 1, from the cached latency table) it meets, "
                "so the fastest architectures fill the low bins and survive shrinking (--no-latency-bins: bins by "
                "parameters only)"})
    latency_table: str = field(default="", metadata={
        "help": "the latency table (JSON) the bins' latency caps use; default: this CPU's cached table, measured "
                "now if there is none (the one `nimblebert search` uses)"})
    shrink_every: int = field(default=0, metadata={"help": "steps between shrinking rounds; 0 = once per epoch"})
    shrink_warmup: int = field(default=0, metadata={
        "help": "steps before the first shrinking round; 0 = one round interval (the paper waits 3 epochs)"})
    shrink_samples: int = field(default=128, metadata={
        "help": "E: architectures sampled per bin and round; the worse half of them is removed (paper: 2000)"})
    shrink_keep: int = field(default=10, metadata={"help": "m: stop shrinking a bin at this many (paper: 10)"})
    shrink_batches: int = field(default=2, metadata={
        "help": "held-out validation batches that score an architecture's block loss (paper: 5)"})
    shrink_rows: int = field(default=0, metadata={
        "help": "held-out rows instead (0 = --shrink-batches × --batch-size): scoring is most of shrinking's time, "
                "and it grows with the rows"})
    general_data: str = field(default="", metadata={
        "help": "unlabelled text the supernet trains on: a .txt file (one text per line), a .jsonl file or a built-in "
                "name / data folder (its train texts); default: the task's own training texts (--data)"})
    arch: str = field(default="", metadata={"help": "role net: the architecture (written by search)"})
    teacher_source: str = field(default="", metadata={"help": "where the teacher came from (recorded)"})

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise UserError(f"--role {self.role!r} is unknown; choose from {', '.join(ROLES)}")
        if self.shrink_rows < 0:
            raise UserError("--shrink-rows must be ≥ 0")
        if self.blocks < 0 or self.bins < 1 or self.shrink_keep < 1 or self.shrink_batches < 1:
            raise UserError("--blocks must be ≥ 0, --bins, --shrink-keep and --shrink-batches ≥ 1")
        if self.shrink_samples < 2 or self.shrink_every < 0 or self.shrink_warmup < 0:
            raise UserError("--shrink-samples must be ≥ 2, --shrink-every and --shrink-warmup ≥ 0")
        if self.supernet_lr <= 0 or not 0 <= self.dropout < 1:
            raise UserError("--supernet-lr must be > 0 and --dropout in [0, 1)")
        self.sizes()

    def sizes(self) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in self.hidden_sizes.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--hidden-sizes {self.hidden_sizes!r} must be comma-separated integers") from None
