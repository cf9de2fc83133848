"""Options of the distillation parts that several methods share: the data augmentation (TinyBERT §3.3).

Plain dataclasses with no heavy imports: the method configs that inherit them are read when the CLI builds
its flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

AUG_SOURCES = ("auto", "mlm", "embeddings")


@dataclass
class AugmentOptions:
    """Options of TinyBERT's data augmentation (§3.3), for every method that trains on the augmented set
    (TinyBERT's task stages; DynaBERT's width and width × depth stages use the same data, as its official
    ``--data_aug``). Plain data, shared as fields; :func:`check_augment_options` validates them.
    """

    augment: bool = field(default=True, metadata={
        "help": "train on the augmented training set (original + up to --aug-copies variants per example; "
                "TinyBERT: its task stages); --no-augment trains on the training set as it is"})
    aug_copies: int = field(default=20, metadata={
        "help": "N: augmentation trials per text field (paper: 20; the official per-task values range 10-30)"})
    aug_p: float = field(default=0.4, metadata={"help": "p: probability of replacing each candidate word"})
    aug_candidates: int = field(default=15, metadata={"help": "K: replacement candidates per word (paper: 15)"})
    aug_source: str = field(default="auto", metadata={
        "help": "where replacement candidates come from: 'mlm' = the top-K predictions of a masked-LM head for "
                "single-piece words (as the paper), 'embeddings' = the K nearest whole words in the input "
                "embedding space (cosine); 'auto' = 'mlm' when the --aug-model has an MLM head, else "
                "'embeddings'. Words of several pieces always use embeddings (the paper uses GloVe there)"})
    aug_model: str = field(default="", metadata={
        "help": "model that proposes the candidates (a masked LM, e.g. bert-base-uncased); default: the teacher"})


def check_augment_options(opts: AugmentOptions) -> None:
    if opts.aug_source not in AUG_SOURCES:
        raise UserError(f"--aug-source {opts.aug_source!r} is unknown; choose from {', '.join(AUG_SOURCES)}")
    if not 0.0 <= opts.aug_p <= 1.0:
        raise UserError(f"--aug-p {opts.aug_p} is out of range: use a value in [0, 1]")
    if opts.aug_copies < 0 or opts.aug_candidates < 1:
        raise UserError("--aug-copies must be ≥ 0 and --aug-candidates ≥ 1")
