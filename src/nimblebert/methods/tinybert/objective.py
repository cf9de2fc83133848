"""TinyBERT's losses and stages (Jiao et al., Findings of EMNLP 2020, §3.1-3.3; official ``task_distill.py``
and ``general_distill.py``).

Losses, with student layer m distilled from teacher layer g(m) (see :mod:`.student`):

- embeddings and hidden states (eqs. 4 and 5): Σ_{j=0..M} MSE(H_S^j W_h, H_T^{g(j)}), with one learnable
  projection ``fit_dense`` (d_S → d_T) shared by the embeddings and every layer (the official code; the paper
  writes separate W_e and W_h), applied even when d_S = d_T;
- attention (eq. 3): Σ_{m=1..M} MSE(A_S^m, A_T^{g(m)}) on the pre-softmax scores QKᵀ/√d_h with the mask
  added, entries ≤ −100 (masked) set to 0 in both, averaged over batch × heads × L × L;
- prediction layer (eq. 6): soft cross-entropy −softmax(z_T/t)·log_softmax(z_S/t), ``.mean()`` over batch
  and classes as in the official code.

Stages, each from the previous one's weights:

1. general distillation (optional): attention + hidden-state losses on unlabelled text, from the
   pre-trained (not fine-tuned) teacher; 10% warm-up then linear decay, last weights kept;
2. intermediate-layer distillation: attention + hidden-state losses only, from the fine-tuned teacher, on
   the augmented training set; constant learning rate (official schedule 'none'), last weights kept (the
   student's classifier is untrained here, so validation says nothing);
3. prediction-layer distillation: the soft cross-entropy only (combining it with stage 2's losses worked worse,
   huawei-noah/Pretrained-Language-Model#101); 10% warm-up then linear decay, best validation weights kept.

``--stages joint`` (ours, not the official recipe) replaces stages 2 and 3 by one stage that minimises their sum,
L_attn + L_hidn + w·L_pred (``--pred-weight`` w, 1 by default), at ``--lr`` for ``--epochs`` (10% warm-up, linear
decay, best validation weights): the one-stage distillation of TextBrewer's TinyBERT-style configurations (Yang
et al., ACL 2020 demo). The paper's own objective (eq. 7) is this sum over all layers; the official code splits it
in two.
Why it was tried: with a few hundred rows the intermediate stage moves the layers under the head copied from the
teacher for all its epochs with no prediction loss (on 400 `mr` rows the 2-layer student's validation accuracy
peaked at 0.63 after 2 epochs and fell to 0.54 by the fifth), leaving the prediction stage a few dozen steps to
re-align; the joint stage keeps the head in step from the first one. Why ``--pred-weight``: in that sum the
attention loss on pre-softmax scores is 15-30 times the prediction loss (about 5 against 0.3 on mr; TextBrewer's
attention loss on probabilities is tiny, so its soft cross-entropy leads), and one epoch of the joint stage on the
whole of mr ended 1.5 points behind the two stages on validation at w = 1. Measured results: docs/results.md,
sections tinybert_small and tinybert_small_full.

The projection is dropped when stage 3 starts, so the saved model is a plain transformers classifier.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...core.encoder import CoreEncoder
from ...distill.augment import augment_cache, encoded_training_set
from ...distill.cache import TeacherCache, build_cache, cache_root, inner_bytes
from ...distill.teacher import Targets, Teacher, zero_padding
from ...distill.texts import base_of_teacher, general_dataset, training_task
from ...errors import UserError
from ...io import load_tensors
from ...train.stages import Stage, TrainOptions
from ..losses import attention_mse, hidden_mse, soft_cross_entropy
from ..options import options_from
from .config import TinyBertConfig, copies_for_rows
from .student import (
    build_student,
    check_student,
    has_trained_classifier,
    hidden_map,
    student_shape,
)

if TYPE_CHECKING:
    from ...model import NimbleModel
    from ...train.stages import TrainData

PROJECTION = "fit_dense"  # the key of the projection in model.extras, the official name


def config_of(model: NimbleModel) -> TinyBertConfig:
    """The TinyBERT options of ``model`` (its component's saved options)."""
    return options_from(TinyBertConfig, model.method_config)


class TargetSource:
    """Where a stage's teacher targets come from: the cache when it holds them, else the teacher, run now."""

    def __init__(self, teacher: Teacher, cache: TeacherCache | None, hidden_idx: list[int],
                 score_idx: list[int]) -> None:
        self.teacher, self.cache = teacher, cache
        self.hidden_idx, self.score_idx = hidden_idx, score_idx

    def __call__(self, batch: dict[str, torch.Tensor], logits: bool, inner: bool) -> Targets:
        cache = self.cache
        if cache is not None and "index" in batch and (not logits or cache.logits is not None) \
                and (not inner or cache.inner):
            return cache.targets(batch, logits, inner)
        return self.teacher.run(batch, self.hidden_idx if inner else [], self.score_idx if inner else [], logits)


def layer_losses(model: NimbleModel, batch: dict[str, torch.Tensor], targets: TargetSource
                 ) -> dict[str, torch.Tensor]:
    """Stages 1 and 2: L_attn + L_hidn (eqs. 3-5) with unit weights; no prediction loss."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model.encoder(ids, mask, batch.get("token_type_ids"), output_hidden_states=True, output_scores=True,
                        classify=False)  # the classifier takes no part in these stages
    teacher = targets(batch, logits=False, inner=True)
    fit = model.extras[PROJECTION]
    student_hidden = [fit(h) for h in out.hidden_states]  # type: ignore[union-attr]  # M+1 × (b, T, d_T)
    student_hidden, student_scores = zero_padding(student_hidden, out.scores, mask)  # type: ignore[arg-type]
    attn = attention_mse(student_scores, teacher.scores)
    hidden = hidden_mse(student_hidden, teacher.hidden)  # projection already applied (before zeroing padding)
    return {"loss": attn + hidden, "attn": attn.detach(), "hidden": hidden.detach()}


def prediction_loss(model: NimbleModel, batch: dict[str, torch.Tensor], targets: TargetSource,
                    temperature: float) -> dict[str, torch.Tensor]:
    """Stage 3: soft cross-entropy against the teacher's logits at temperature t (eq. 6), official normalisation."""
    out = model.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    teacher = targets(batch, logits=True, inner=False).logits
    loss = soft_cross_entropy(out.logits.float(), teacher, temperature, reduction="mean")  # type: ignore[arg-type]
    return {"loss": loss, "pred": loss.detach()}


def joint_losses(model: NimbleModel, batch: dict[str, torch.Tensor], targets: TargetSource, temperature: float,
                 pred_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``--stages joint``: L_attn + L_hidn + w·L_pred (eqs. 3-6; eq. 7 sums the layers' losses with unit weights,
    ``--pred-weight`` w = 1 by default) in one pass of the student. ``pred`` is logged unweighted."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model.encoder(ids, mask, batch.get("token_type_ids"), output_hidden_states=True, output_scores=True)
    teacher = targets(batch, logits=True, inner=True)
    fit = model.extras[PROJECTION]
    student_hidden = [fit(h) for h in out.hidden_states]  # type: ignore[union-attr]  # M+1 × (b, T, d_T)
    student_hidden, student_scores = zero_padding(student_hidden, out.scores, mask)  # type: ignore[arg-type]
    attn = attention_mse(student_scores, teacher.scores)
    hidden = hidden_mse(student_hidden, teacher.hidden)
    pred = soft_cross_entropy(out.logits.float(), teacher.logits, temperature, reduction="mean")  # type: ignore[arg-type]
    return {"loss": attn + hidden + pred_weight * pred, "attn": attn.detach(), "hidden": hidden.detach(),
            "pred": pred.detach()}


def _bind(fn: Any, *args: Any) -> Any:
    def objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return fn(model, batch, *args)

    return objective


# ---- models -------------------------------------------------------------------------------------


def _load_classifier(spec: str, label_names: list[str], tokenizer: Any) -> nn.Module:
    from ...model import from_base

    other = from_base(spec, label_names, "finetune")
    if other.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"{spec} uses a different vocabulary from the student; TinyBERT's student and teachers "
                        "must read the same token ids")
    return other.hf


def _require_finetuned(spec: str | None) -> None:
    from ...model import resolve_model

    if spec and has_trained_classifier(resolve_model(spec)) is False:
        raise UserError(f"the teacher {spec} has no trained classifier: TinyBERT's task distillation needs a teacher "
                        f"fine-tuned on this task (nimblebert train finetune --model {spec} ...), or run only "
                        "general distillation with --stages general")


def swap_in_student(model: NimbleModel, student: nn.Module) -> None:
    """Make ``student`` the model that trains and is saved; the core encoder is rebuilt around it."""
    model.hf = student
    object.__setattr__(model, "encoder", CoreEncoder(student))


def _keep_projection_consistent(model: NimbleModel) -> None:
    """On resume, a checkpoint written after the prediction stage dropped the projection has no
    ``extras.fit_dense``: drop it here too before loading, so the two structures agree."""
    if getattr(model, "_tinybert_hook", False):
        return

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        if PROJECTION in module.extras and not any(k.startswith(f"{prefix}extras.{PROJECTION}.") for k in state_dict):
            del module.extras[PROJECTION]

    model.register_load_state_dict_pre_hook(hook)
    object.__setattr__(model, "_tinybert_hook", True)


def _drop_projection_then(model: NimbleModel) -> Any:
    """The prediction stage's parameters: the whole student. The projection has served its purpose and is
    removed now, so that the saved result is a plain transformers classifier."""
    if PROJECTION in model.extras:
        del model.extras[PROJECTION]
    return model.hf.parameters()


def _student_and_projection(model: NimbleModel) -> Any:
    return [*model.hf.parameters(), *model.extras[PROJECTION].parameters()]


def prepare_models(model: NimbleModel, opts: TrainOptions, cfg: TinyBertConfig, task_stages: bool
                   ) -> tuple[nn.Module, list[int]]:
    """Put the student into ``model`` and return the (frozen) task teacher and the layer map.

    ``from_base`` loaded ``--model`` (or ``--teacher``) into ``model.hf``. With both given, that is the
    student's initialisation (a small pretrained model) and the teacher comes from ``--teacher``; with one,
    that is the teacher and the student is built from the config.
    """
    both = bool(opts.model and opts.teacher and opts.model != opts.teacher)
    init = cfg.student_init if cfg.student_init != "auto" else ("model" if both else None)
    teacher_spec = opts.teacher or opts.model
    if task_stages:
        _require_finetuned(teacher_spec)
    if init == "model":
        if not both:
            raise UserError("--student-init model takes the student from --model and the teacher from --teacher; "
                            "give both")
        teacher = _load_classifier(opts.teacher, model.label_names, model.tokenizer)  # type: ignore[arg-type]
        student = model.hf
        given = {"student_layers": "num_hidden_layers", "student_hidden": "hidden_size",
                 "student_ffn": "intermediate_size", "student_heads": "num_attention_heads"}
        for flag, attr in given.items():
            value = getattr(cfg, flag)
            if value and value != getattr(student.config, attr):
                raise UserError(f"--{flag.replace('_', '-')} {value} contradicts the student given with --model "
                                f"({attr} = {getattr(student.config, attr)}); leave it out")
    else:
        if both:
            raise UserError(f"--model {opts.model} would be the student's initialisation, but --student-init is "
                            f"{cfg.student_init!r}: give only --teacher, or --student-init model")
        teacher = model.hf
        if init is None:  # auto: copy the teacher's layers when the student has their shape
            shape, t = student_shape(cfg, teacher.config), teacher.config
            init = "teacher" if (shape["hidden"], shape["ffn"]) == (t.hidden_size, t.intermediate_size) else "random"
        student = build_student(teacher, cfg, init, seed=opts.seed)
    mapping = check_student(student, teacher, cfg)
    swap_in_student(model, student)
    model.method_config["student_init_used"] = init
    return teacher, mapping


def _projection(model: NimbleModel, opts: TrainOptions, teacher_hidden: int) -> nn.Linear:
    """A fresh shared projection d_S → d_T, or the one saved with a --model student that a previous TinyBERT
    run without a prediction stage left (the official task distillation starts from the general student's
    ``fit_dense``)."""
    student_hidden = model.hf.config.hidden_size
    fit = nn.Linear(student_hidden, teacher_hidden)
    if opts.model and opts.teacher and opts.model != opts.teacher:
        from ...model import EXTRAS_FILE, resolve_model

        saved = Path(resolve_model(opts.model)) / EXTRAS_FILE
        if saved.is_file():
            state = load_tensors(saved)
            weights = {k[len(PROJECTION) + 1:]: v for k, v in state.items() if k.startswith(f"{PROJECTION}.")}
            if weights and tuple(weights["weight"].shape) == (teacher_hidden, student_hidden):
                fit.load_state_dict(weights)
                sys.stderr.write(f"tinybert: projection {PROJECTION} taken from {saved}\n")
    return fit


def cache_home(cfg: TinyBertConfig) -> Path:
    """Folder of the cached teacher outputs (``teacher/``) and augmented sets (``augment/``, :func:`augment_cache`)."""
    return cache_root(cfg.cache_dir, "tinybert")


def _teacher_cache(teacher: Teacher, encoded: Any, model: NimbleModel, hidden_idx: list[int], score_idx: list[int],
                   logits: bool, inner: bool, cfg: TinyBertConfig, opts: TrainOptions, what: str) -> TeacherCache:
    """Cache the teacher's outputs over ``encoded``; hidden states/scores only within ``--teacher-cache-gb``."""
    if inner:
        import numpy as np

        lengths = np.array([len(r) for r in encoded["input_ids"]])
        c = teacher.hf.config
        size = inner_bytes(lengths, len(hidden_idx), len(score_idx), c.hidden_size, c.num_attention_heads)
        if size > cfg.teacher_cache_gb * 1e9:
            sys.stderr.write(f"tinybert: the teacher's hidden states and scores for the {what} would take "
                             f"{size / 1e9:.1f} GB (over --teacher-cache-gb {cfg.teacher_cache_gb:g}): the teacher "
                             "recomputes them at every step\n")
            inner = False
    return build_cache(teacher, encoded, model.tokenizer, hidden_idx, score_idx, logits, inner,
                       cache_home(cfg) / "teacher", batch_size=opts.eval_batch_size, progress=opts.progress)


def _general_teacher(cfg: TinyBertConfig, opts: TrainOptions, model: NimbleModel, teacher: nn.Module) -> nn.Module:
    """General distillation's teacher: pre-trained, not fine-tuned (the official GD uses BERT-base itself)."""
    from ...model import resolve_model

    spec = cfg.general_teacher
    teacher_spec = opts.teacher or opts.model
    if not spec:
        folder = resolve_model(teacher_spec) if teacher_spec else None
        if folder is None or has_trained_classifier(folder) is False:
            return teacher  # the teacher is itself a pre-trained model
        spec = base_of_teacher(folder)
        if not spec:
            raise UserError(f"general distillation needs the pre-trained model {teacher_spec} was fine-tuned from; "
                            "name it with --general-teacher (e.g. --general-teacher minilm-l6)")
        sys.stderr.write(f"tinybert: general distillation from {spec}, the base {teacher_spec} was fine-tuned from\n")
    return _load_classifier(spec, model.label_names, model.tokenizer)


def announce_plan(encoded: Any, data: TrainData | None, cfg: TinyBertConfig, opts: TrainOptions,
                  task_stages: list[str]) -> None:
    """Issue 20: before the teacher's pass over the (augmented) rows, one line says what the task stages will do:
    rows, epochs and steps per stage, so that a default run (N = 20, 10 + 3 epochs: hours on a CPU) is announced
    before it starts; each stage's own line adds the time estimate after its first timed steps."""
    import math

    from ...train.progress import announce

    per_epoch = math.ceil(len(encoded) / opts.batch_size)
    epochs = {"intermediate": cfg.intermediate_epochs, "joint": opts.epochs, "prediction": opts.epochs}
    parts = [f"{s} {epochs[s]:g} epoch{'s' if epochs[s] != 1 else ''} = "
             f"{opts.max_steps or math.ceil(per_epoch * epochs[s]):,} steps" for s in task_stages]
    original = len(data.train) if data is not None and data.train is not None else None
    rule = f", from --aug-target-rows {cfg.aug_target_rows}" if cfg.aug_target_rows else ""
    rows = f"{len(encoded):,} training rows" + (f" ({original:,} + augmented copies, N = {cfg.aug_copies}{rule})"
                                                if original is not None and len(encoded) > original else "")
    announce(f"tinybert: {rows} at batch {opts.batch_size}: {'; '.join(parts)}. The teacher runs over the rows once "
             "first (cached); each stage prints its time estimate after its first steps (--recipe short: N = 1, one "
             "epoch per stage)")


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """Build the student into ``model`` and return its stages (see the module docstring).

    ``data.task`` gives the raw training texts to augment (the trainer's encoded split is not enough). The
    prediction stage runs ``--epochs`` at ``--lr`` (the README: 3 epochs at 3e-5); the others take their own
    ``--intermediate-*`` / ``--general-*`` options.
    """
    cfg = config_of(model)
    names = cfg.stage_list()
    task_stages = [s for s in names if s != "general"]
    teacher_hf, mapping = prepare_models(model, opts, cfg, bool(task_stages))
    teacher = Teacher(teacher_hf)
    if "general" in names or "intermediate" in names or "joint" in names:
        model.extras[PROJECTION] = _projection(model, opts, teacher_hf.config.hidden_size)
        _keep_projection_consistent(model)
    result = []

    if "general" in names:
        g_hf = _general_teacher(cfg, opts, model, teacher_hf)
        g_teacher = teacher if g_hf is teacher_hf else Teacher(g_hf)
        g_mapping = check_student(model.hf, g_hf, cfg)
        if g_hf.config.hidden_size != teacher_hf.config.hidden_size:
            raise UserError("the general and the task teacher have different hidden sizes; the projection is shared")
        g_data = general_dataset(cfg.general_data, model.tokenizer, opts.max_length)
        g_hidden, g_scores = hidden_map(g_mapping), [g - 1 for g in g_mapping]
        g_cache = _teacher_cache(g_teacher, g_data, model, g_hidden, g_scores, False, True, cfg, opts,
                                 "general distillation text")
        source = TargetSource(g_teacher, g_cache, g_hidden, g_scores)
        result.append(Stage(
            "general", _bind(layer_losses, source), lr=cfg.general_lr, epochs=cfg.general_epochs,
            warmup=opts.warmup, schedule="linear", trainable=_student_and_projection, select="last",
            train_data=g_data))

    if task_stages:
        aug = cfg
        if cfg.augment and cfg.aug_target_rows:  # --recipe joint: N from the number of training rows
            rows = len(training_task(data, opts, list(model.label_names)).train)
            aug = dataclasses.replace(cfg, aug_copies=copies_for_rows(rows, cfg.aug_target_rows, cfg.aug_copies))
        encoded = encoded_training_set(data, aug, opts, teacher_hf, model.tokenizer, model.label_names,
                                       augment_cache(cfg.cache_dir))
        announce_plan(encoded, data, aug, opts, task_stages)
        hidden_idx, score_idx = hidden_map(mapping), [g - 1 for g in mapping]
        cache = _teacher_cache(teacher, encoded, model, hidden_idx, score_idx,
                               "prediction" in names or "joint" in names, "intermediate" in names or "joint" in names,
                               cfg, opts, "training set")
        source = TargetSource(teacher, cache, hidden_idx, score_idx)
        if "intermediate" in names:
            result.append(Stage(
                "intermediate", _bind(layer_losses, source), lr=cfg.intermediate_lr, epochs=cfg.intermediate_epochs,
                warmup=0.0, schedule="constant", trainable=_student_and_projection, select="last",
                train_data=encoded))
        if "joint" in names:  # the prediction stage, if it follows, drops the projection; alone, it is kept
            result.append(Stage(
                "joint", _bind(joint_losses, source, cfg.temperature, cfg.pred_weight), lr=opts.lr, epochs=opts.epochs,
                warmup=opts.warmup, schedule="linear", trainable=_student_and_projection, select="best",
                train_data=encoded))
        if "prediction" in names:
            result.append(Stage(
                "prediction", _bind(prediction_loss, source, cfg.temperature), lr=opts.lr, epochs=opts.epochs,
                warmup=opts.warmup, schedule="linear", trainable=_drop_projection_then, select="best",
                train_data=encoded))
    return result
