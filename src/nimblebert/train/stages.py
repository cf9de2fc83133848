"""What a method hands the trainer: a list of :class:`Stage`, and the shared :class:`TrainOptions`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pathlib import Path

    from ..model import NimbleModel

Objective = Callable[["NimbleModel", dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class TrainOptions:
    """The training flags that mean the same for every method (DESIGN: "What the user sees")."""

    out: str = "runs/model"
    model: str | None = None  # base model or teacher-to-start-from: alias, folder or hub id
    teacher: str | None = None  # a fine-tuned teacher, for distillation methods
    epochs: float = 3.0
    max_steps: int | None = None  # per stage; overrides epochs
    batch_size: int = 32
    lr: float = 5e-5
    max_length: int = 128
    seed: int = 42
    warmup: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int | None = None  # steps; None = once per epoch
    save_every: int = 100  # steps between resume checkpoints
    eval_batch_size: int = 64
    bucket: bool = True  # training batches of similar length (shuffled within windows): ~2x less padding
    resume: bool = False
    overwrite: bool = False
    log_every: int = 10
    progress: bool = True


@dataclass
class TrainData:
    """What the trainer trains on, handed to ``Method.stages`` (importance data, augmentation sources)."""

    task: Any  # nimblebert.data.TaskData: raw splits and label names
    train: Any  # encoded train split
    validation: Any  # encoded validation split


@dataclass
class Stage:
    """One phase of training, run by :func:`nimblebert.train.loop.train`.

    Attributes:
        objective: (model, batch) -> {"loss": ..., other parts for the log}.
        trainable: the parameters this stage updates (all others are frozen); None = all.
        select: "best" keeps the checkpoint with the best validation ``metric``; "last" the final one.
        eval_knobs: knob values used for validation inference in this stage.
        evaluate: (model, validation loader) -> metrics, replacing the default single-setting evaluation
            (e.g. DynaBERT selects on the summed accuracy of all its sub-networks).
        train_data: an encoded dataset to train on instead of the task's train split (augmented or
            unlabelled text).
        schedule: "linear" (warm-up then linear decay to 0) or "constant".
        epoch_data: (model, epoch, cache folder) -> the encoded training set of that epoch, called at the
            start of every epoch (SSA re-labels its data by probing the latest model each epoch). Every epoch's
            set must have as many rows as the first. The callable should cache its result in the folder it
            is given (kept until the run finishes) so that a resumed run trains on the same data.
    """

    name: str
    objective: Objective
    lr: float
    epochs: float = 3.0
    max_steps: int | None = None  # None: the run's --max-steps, if given
    warmup: float = 0.1
    schedule: str = "linear"
    weight_decay: float | None = None  # None: the run's --weight-decay
    trainable: Callable[[NimbleModel], Iterable[torch.nn.Parameter]] | None = None
    select: str = "best"
    metric: str = "accuracy"
    eval_knobs: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[NimbleModel, Any], dict[str, float]] | None = None
    train_data: Any = None
    epoch_data: Callable[[NimbleModel, int, Path], Any] | None = None
