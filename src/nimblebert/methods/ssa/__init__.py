"""SSA: self-supervised attention for more accurate fine-tuning (Chen/Kou et al., arXiv 2004.03808;
official code ``yrchen92/ssa_BERT``, ``run_ssa.py``).

Not an efficiency method: it fine-tunes a more accurate model (and so a better teacher for the others).
Each epoch the latest model is probed to find tokens whose masking leaves a correct prediction unchanged
(:mod:`.probe`); the model learns those weak token labels with a token head (SSA-Reg) and, in the hybrid
model (the official default), pools the last layer by the predicted importance, mixed with the pooled
[CLS] (SSA-Trans, :mod:`.heads`). Loss: (1 − w)·CE(task) + w·CE(token labels), w = 0.3.

What a plain ``from_pretrained`` of the folder gives:
- ``--variant reg``: exactly the SSA model (its own [CLS] head predicts); it serves as a teacher for
  FastBERT, TinyBERT and DynaBERT like any fine-tuned folder.
- ``--variant hybrid``: the encoder with an **untrained** transformers head — the hybrid's classifier reads
  the importance pooling and lives in ``nimblebert.safetensors``. ``nimblebert.load`` and every CLI command
  run the hybrid; as ``--model``/``--teacher`` of another method it is refused (a one-line error).

Deviations: one Stage whose training set is rebuilt each epoch by the trainer (``Stage.epoch_data``);
model selection on the full validation set (the official code averages three random thirds of it);
AdamW with bias correction (official BertAdam); gradient clipping at the run's ``--grad-clip`` (official 1e4).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...model import NimbleModel
from ...train.stages import Stage, TrainData, TrainOptions
from ..options import options_from
from ..registry import Method, register_method
from .config import SsaConfig
from .heads import TokenHead, contribute, forward, importance_pooling, special_mask
from .probe import aug_ratio, mask_positions, probe_epoch, token_labels

__all__ = ["SSA", "SsaConfig", "TokenHead", "aug_ratio", "attach", "contribute", "importance_pooling",
           "mask_positions", "objective", "probe_epoch", "special_mask", "stages", "token_labels"]


def config_of(model: NimbleModel) -> SsaConfig:
    """The SSA options of ``model`` (its component's saved options)."""
    return options_from(SsaConfig, model.method_config)


def attach(model: NimbleModel) -> None:
    """Add the token head (and, for the hybrid, the pooled classifier) to ``model.extras``."""
    cfg = config_of(model)
    model.method_config = dataclasses.asdict(cfg)
    hf_cfg = model.hf.config
    d = hf_cfg.hidden_size
    positions = None if cfg.share_weight else getattr(hf_cfg, "max_position_embeddings", 512)
    model.extras["token_head"] = TokenHead(d, getattr(hf_cfg, "layer_norm_eps", 1e-12), positions)
    if cfg.variant == "hybrid":
        model.extras["classifier"] = nn.Linear(d, model.num_labels)


def objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(1 − w)·CE(task) + w·CE(token labels, ignoring −100), w = ``aug_loss_weight`` (official 0.3)."""
    w = model.method_config["aug_loss_weight"]
    out, token_logits = forward(model, batch)
    task = F.cross_entropy(out.logits, batch["labels"])
    labels = batch.get("token_labels")
    if labels is None:  # plain rows (e.g. a custom train set): every text token is "important"
        labels = torch.where(special_mask(model, batch["input_ids"], batch["attention_mask"]), 1, -100)
    token = F.cross_entropy(token_logits.reshape(-1, 2).float(), labels.reshape(-1), ignore_index=-100)
    return {"loss": (1 - w) * task + w * token, "task": task.detach(), "token": token.detach()}


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """One fine-tuning stage whose training set is re-probed at the start of every epoch."""
    if data is None:
        raise ValueError("SSA needs the training data: its labels come from probing the model on it")
    cfg = config_of(model)
    log = Path(opts.out) / "probe_log.jsonl"

    def epoch_data(model: NimbleModel, epoch: int, cache: Path):
        fresh = not (cache / f"epoch-{epoch}").exists()
        rows, report = probe_epoch(model, data.train, epoch, cfg, opts.seed, cache / f"epoch-{epoch}")
        if fresh:
            with log.open("a") as f:
                f.write(json.dumps(report) + "\n")
            if report["wanted"]:
                print(f"ssa: epoch {epoch}: {report['probed']}/{report['wanted']} probed examples in "
                      f"{report['rounds']} round(s), {report['probe_seconds']:.1f} s", file=sys.stderr)
        return rows

    if not opts.resume:
        log.unlink(missing_ok=True)
    return [Stage("ssa", objective, lr=opts.lr, epochs=opts.epochs, warmup=opts.warmup, epoch_data=epoch_data)]


SSA = register_method(
    Method(
        name="ssa",
        config_cls=SsaConfig,
        attach=attach,
        stages=stages,
        contribute=contribute,
        static=False,
        help="SSA (Chen/Kou et al. 2020): fine-tuning with self-supervised token-importance labels probed from "
             "the model each epoch (--variant hybrid: importance pooling; reg: token loss only, a plain model)",
        # Whether the saved transformers head is the model's classifier (what another method's teacher reads).
        head_is_classifier=lambda cfg: cfg.get("variant", "hybrid") == "reg",
        teacher_hint=" (train it with --variant reg for a teacher)",
    )
)
