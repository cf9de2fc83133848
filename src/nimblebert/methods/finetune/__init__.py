"""Plain fine-tuning: the baseline every other method starts from (Devlin et al. 2019, §4).

Cross-entropy on the gold labels through the model's own classification head; the result is a plain
transformers model. It adds nothing at inference (a sub-network exported narrower than its config says runs only
its kept heads: the core reads that from the folder's stack, see ``nimblebert.model.kept_heads``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...model import NimbleModel
from ...train.stages import Stage, TrainData, TrainOptions
from ..registry import Method, register_method


@dataclass
class FinetuneConfig:
    """No options: the shared training flags (lr, epochs, ...) are all it needs."""


def cross_entropy_objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    loss = F.cross_entropy(out.logits, batch["labels"])
    return {"loss": loss, "ce": loss.detach()}


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    return [Stage("finetune", cross_entropy_objective, lr=opts.lr, epochs=opts.epochs, warmup=opts.warmup)]


def attach(model: NimbleModel) -> None:
    """Fine-tuning adds no modules."""


FINETUNE = register_method(
    Method(
        name="finetune",
        config_cls=FinetuneConfig,
        attach=attach,
        stages=stages,
        continues=True,
        help="plain fine-tuning with cross-entropy (the baseline and the usual teacher)",
    )
)
