"""FastBERT's two training stages (Liu et al., ACL 2020, "Model training"; official ``run_fastbert.py``).

Stage 1, fine-tuning: the backbone and the teacher classifier learn the task with cross-entropy on the
gold labels; the student branches are untouched. Skipped when the model is already a fine-tuned
classifier (its head then *is* the stage-1 teacher).

Stage 2, self-distillation: the backbone and the teacher run under ``no_grad`` (frozen, as the authors
insist in FastBERT#38), and every student branch learns to match the teacher's distribution:

    loss = Σ_{i=1..L-1} KL(p_T ‖ p_S,i),   p_T = softmax(z_L) (T = 1),   batch-mean reduction,

summed over the students, not averaged. The paper writes D_KL(p_s, p_t); the official code computes
KL(teacher ‖ student), which we follow. No labels are needed, so unlabelled text can be used. The
learning rate is 10× stage 1's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ...core.encoder import LoopState
from ...errors import UserError
from ...model import finetune_first
from ...train.stages import Stage, TrainData, TrainOptions
from ..losses import kl_batchmean
from ..options import options_from
from .config import FastBertConfig

if TYPE_CHECKING:
    from ...model import NimbleModel


def finetune_objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage 1: cross-entropy of the teacher (the model's own head after the last layer) on gold labels."""
    out = model.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
    loss = F.cross_entropy(out.logits.float(), batch["labels"])
    return {"loss": loss, "ce": loss.detach()}


def parent_settings(model: NimbleModel) -> list[dict[str, Any]]:
    """The knob settings of the components below FastBERT that its branches are distilled at: the product of each
    one's ``Method.train_settings`` (DynaBERT: every width it was trained at; TR-BERT: its default threshold), so
    that the exits hold at the settings they will run at. A plain model below: one setting, ``{}``."""
    settings: list[dict[str, Any]] = [{}]
    for i, component in enumerate(model.stack[:-1]):
        spec = component.spec
        if component.fixed or spec.train_settings is None:
            continue
        with model.focus(i):
            options = spec.train_settings(model)
        settings = [{**a, **b} for a in settings for b in options]
    return settings


def distill_objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage 2: Σ over student branches of KL(p_teacher ‖ p_student), batch-mean, T = 1.

    The teacher is the model's own classification head — the one stage 1 trained (or the fine-tuned
    model's classifier) — never a fresh module (the BitVoyage/FastBERT#12 bug). As in the official code
    the backbone keeps its training-mode dropout while it runs under ``no_grad``.

    On a stack (FastBERT on DynaBERT, on TR-BERT), the pass runs once per :func:`parent_settings` through the
    one runner, exits off: each branch learns from the states its layer produces at that setting (a narrower
    sub-network, fewer tokens) and from the prediction of that setting's own head; the loss is the mean over
    the settings of the official sum over branches.
    """
    from ...inference import contributions

    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    branches = model.extras["branches"]
    settings = parent_settings(model)
    parts: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=ids.device)
    for setting in settings:
        seen: dict[int, tuple[torch.Tensor, torch.Tensor, Any]] = {}

        def record(state: LoopState, seen: dict = seen) -> None:
            seen[state.layer] = (state.hidden, state.mask, state.attn_mask)

        with torch.no_grad():
            run = contributions(model, batch, model.check_knobs(setting))  # exits off: speed 0 is the default
            out = model.encoder(ids, mask, batch.get("token_type_ids"), plan=run.plan, hooks=[*run.hooks, record])
            teacher = out.logits.float()  # (b, C) the head's logits at this setting
        for layer, (hidden, live_mask, mask4d) in sorted(seen.items()):
            if layer >= len(branches):
                continue  # after the last layer the model's own head answers
            kl = kl_batchmean(branches[layer](hidden, live_mask, mask4d).float(), teacher) / len(settings)
            total = total + kl
            parts[f"kl_{layer + 1}"] = parts.get(f"kl_{layer + 1}", torch.zeros((), device=ids.device)) + kl.detach()
    return {"loss": total, **parts}


def config_of(model: NimbleModel) -> FastBertConfig:
    """The FastBERT options of ``model`` (its component's saved options)."""
    return options_from(FastBertConfig, model.method_config)


def distill_texts(path: str, tokenizer: Any, max_length: int) -> Any:
    """The encoded texts of a JSONL file (``{"text": ...}`` or a JSON string per line), no labels."""
    import datasets

    from ...data import encode, read_texts_jsonl

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--distill-data {path} does not exist; give a JSONL file of texts")
    with file.open(encoding="utf-8") as stream:
        rows = read_texts_jsonl(stream)
    if not rows:
        raise UserError(f"--distill-data {path} holds no texts; give one {{\"text\": ...}} per line")
    has_pair = any("text_pair" in r for r in rows)
    ds = datasets.Dataset.from_list(
        [{"text": r["text"], **({"text_pair": r.get("text_pair", "")} if has_pair else {})} for r in rows])
    return encode(ds, tokenizer, max_length, has_pair)


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """Stage 1 (unless skipped, see ``--finetune``) then stage 2, with the official recipe: linear
    warm-up (10%) and decay in both, stage-2 learning rate = ``distill_lr_mult`` × ``--lr``."""
    cfg = config_of(model)
    base = opts.model or opts.teacher
    run_stage1 = finetune_first("fastbert", cfg.finetune, base, "stage 1 skipped, its head is the teacher")
    result = []
    if run_stage1:
        result.append(Stage(
            "finetune", finetune_objective, lr=opts.lr, epochs=opts.epochs, max_steps=opts.max_steps,
            warmup=opts.warmup, weight_decay=opts.weight_decay,
            trainable=lambda m: m.hf.parameters(),  # backbone + teacher head; the students stay as they are
            select="best", eval_knobs={"speed": 0.0}))
    texts = distill_texts(cfg.distill_data, model.tokenizer, opts.max_length) if cfg.distill_data else None
    result.append(Stage(
        "distill", distill_objective, lr=opts.lr * cfg.distill_lr_mult,
        epochs=cfg.distill_epochs or opts.epochs,
        max_steps=opts.max_steps, warmup=opts.warmup, weight_decay=opts.weight_decay,
        trainable=lambda m: m.extras["branches"].parameters(),  # only the students learn
        # The paper has no model selection for stage 2 (FastBERT#26): keep the last weights.
        select="last", eval_knobs={"speed": cfg.eval_speed},
        train_data=texts))
    return result
