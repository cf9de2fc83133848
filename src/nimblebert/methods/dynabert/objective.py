"""DynaBERT's training stages (Hou et al., NeurIPS 2020, §3; official ``run_glue.py``).

Before training, **network rewiring** (§3.1): heads and FFN neurons of the fine-tuned model are ranked
by importance on labelled held-out data and permuted so that the important ones come first
(:mod:`nimblebert.core.slicing`). Then, each stage one list of sub-networks per optimizer step, their
losses summed (= gradients accumulated) before one clipped step:

1. **DynaBERT_W** (``phase "width"``, §3.1): for each width m_w in descending order, at full depth,

       loss_w = λ1 · softCE(z_S, z_T) + λ2 · Σ_{l=0..L} MSE(H_S^l, H_T^l),    λ1 = 1, λ2 = 0.1,

   where the teacher is the fine-tuned model (frozen, full size), softCE sums over classes and averages
   over the batch (T = 1), and the hidden states include the embeddings' output (unmasked MSE).
2. **DynaBERT** (``phase "depth"``, §3.2): for each depth m_d and, inside, each width (both descending),

       loss = λ1 · softCE(z_S, z_T) + λ2 · Σ_j MSE(H_S^j, H_T^{idx_j}),    λ1 = λ2 = 1,

   with the teacher the DynaBERT_W model at full width and depth (the official code; the paper's text
   has a teacher at the same width, the author found both similar — issue #120), and
   idx = [floor(i/m_d) for i < round(L·m_d)] + [L]: the student's j-th hidden state (0 = embeddings)
   matches the teacher's idx_j-th, so its last layer always matches the teacher's last.
3. **Final fine-tuning** (``phase "final"``, optional): gold-label cross-entropy of every sub-network.

Summing the sub-networks' losses into one ``loss`` gives exactly the gradient of the official
per-sub-network ``backward()`` calls (gradients add up), and keeps the one-forward-one-backward contract
of the trainer that DDP and Accelerate's gradient scaling rely on (a ``backward()`` per sub-network inside
the objective would break both). The price is that the graphs of all sub-networks of a step are alive at
once: memory grows with their number — measured on CPU, about 3.4 GB for MiniLM-L6 (6 × 384, FFN 1536) at
12 sub-networks, batch 32 × 64 real tokens.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

from ...core.plan import depth_layers
from ...core.slicing import compute_importance, encoder_plan, rewire
from ...distill.augment import augment_cache, encoded_training_set
from ...distill.teacher import SnapshotTeacher, Teacher
from ...errors import UserError
from ...train.stages import Stage, TrainData, TrainOptions
from ..losses import hidden_mse, soft_cross_entropy
from ..options import options_from
from .config import DynaBertConfig

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from ...model import NimbleModel


def config_of(model: NimbleModel) -> DynaBertConfig:
    """The DynaBERT options of ``model`` (its component's saved options)."""
    return options_from(DynaBertConfig, model.method_config)


def hidden_targets(num_layers: int, depth: float, rule: str = "official") -> list[int]:
    """Teacher hidden-state indices (0 = embeddings) that the sub-network at ``depth`` matches, in order
    of its own hidden states.

    Official rule: [floor(i/m_d) for i < round(L·m_d)] + [L] (``kept_layers_index``); on 12 layers
    m_d = 0.5 -> [0, 2, 4, 6, 8, 10, 12]; m_d = 0.75 -> [0, 1, 2, 4, 5, 6, 8, 9, 10, 12].
    Rule "last": the output of kept layer k matches the teacher's output of layer k, i.e. [0] + [k + 1 for
    the kept k] (on 6 layers at 0.5: kept 1, 3, 5 -> [0, 2, 4, 6], TinyBERT's uniform map).
    """
    if rule == "official":
        return [*depth_layers(num_layers, depth), num_layers]
    return [0, *(k + 1 for k in depth_layers(num_layers, depth, rule))]


def depth_rule_of(model: NimbleModel) -> str:
    """The depth rule a DynaBERT model was trained with (models from before the option: official)."""
    return str(model.method_config.get("depth_rule", "official"))


# ---- objectives ---------------------------------------------------------------------------------------


class SubNetworkObjective:
    """One optimizer step over a grid of sub-networks (depths × widths, both descending), their losses summed.

    With a teacher: λ1 · softCE(student logits, teacher logits) + λ2 · Σ_j MSE(H_S^j, H_T^{idx_j})
    (DynaBERT §3.1 / §3.2); without: cross-entropy on the gold labels (the final fine-tuning).
    """

    def __init__(self, widths: Sequence[float], depths: Sequence[float], lambda1: float = 1.0,
                 lambda2: float = 1.0, teacher: Teacher | SnapshotTeacher | None = None,
                 depth_rule: str = "official") -> None:
        self.widths = sorted(widths, reverse=True)
        self.depth_rule = depth_rule
        self.depths = sorted(depths, reverse=True)
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.teacher = teacher

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask, types = batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        target = self.teacher(model, batch) if self.teacher is not None else None  # once per batch
        total = torch.zeros((), device=ids.device)
        kd_sum, hidden_sum = torch.zeros((), device=ids.device), torch.zeros((), device=ids.device)
        parts: dict[str, torch.Tensor] = {}
        for depth in self.depths:
            targets = hidden_targets(model.encoder.num_layers, depth, self.depth_rule)
            for width in self.widths:
                out = model.encoder(ids, mask, types, plan=encoder_plan(model.encoder, width, depth, self.depth_rule),
                                    output_hidden_states=target is not None)
                if target is None:
                    loss = F.cross_entropy(out.logits.float(), batch["labels"])
                else:
                    assert out.hidden_states is not None
                    kd = soft_cross_entropy(out.logits.float(), target.logits.float(), reduction="sum")
                    hidden = hidden_mse([h.float() for h in out.hidden_states],
                                        [target.hidden[i].float() for i in targets])
                    loss = self.lambda1 * kd + self.lambda2 * hidden
                    kd_sum = kd_sum + kd.detach()
                    hidden_sum = hidden_sum + hidden.detach()
                total = total + loss
                parts[f"w{width:g}_d{depth:g}"] = loss.detach()
        summary = {"kd": kd_sum, "hidden": hidden_sum} if target is not None else {}
        return {"loss": total, **summary, **parts}


@torch.no_grad()
def evaluate_grid(model: NimbleModel, loader: DataLoader, widths: Sequence[float],
                  depths: Sequence[float]) -> dict[str, float]:
    """Validation accuracy of every sub-network and their sum — the official model-selection criterion
    ("save when the sum of accuracies over all sub-networks improves")."""
    from ...inference import metrics, predict_loader

    scores: dict[str, float] = {}
    for depth in sorted(depths, reverse=True):
        for width in sorted(widths, reverse=True):
            m = metrics(predict_loader(model, loader, width=width, depth=depth), model.num_labels)
            scores[f"accuracy_w{width:g}_d{depth:g}"] = m.get("accuracy", 0.0)
    values = list(scores.values())
    return {"accuracy_sum": sum(values), "accuracy": sum(values) / len(values), **scores}


def _selection(widths: Sequence[float], depths: Sequence[float]) -> dict[str, Any]:
    """How a stage keeps its weights: the checkpoint with the best *summed* validation accuracy over the
    stage's sub-networks, as the official code does."""
    return {"evaluate": partial(evaluate_grid, widths=list(widths), depths=list(depths)), "select": "best",
            "metric": "accuracy_sum"}


# ---- importance data, teacher checks ------------------------------------------------------------------


def importance_loader(model: NimbleModel, opts: TrainOptions, cfg: DynaBertConfig,
                      data: TrainData | None) -> DataLoader:
    """Labelled held-out batches for importance: the trainer's split when it hands the data over, else
    ``--importance-data``."""
    from ...data import encode, load_task, make_loader

    split = cfg.importance_split
    encoded = getattr(data, split, None) if data is not None else None
    if encoded is None:
        if not cfg.importance_data:
            raise UserError("dynabert ranks heads and FFN neurons on labelled held-out data before training: pass "
                            "--importance-data with the same value as --data (its validation split is used), or "
                            "--no-rewire to train without rewiring")
        task = load_task(cfg.importance_data, label_names=list(model.label_names), splits=(split,))
        table = getattr(task, split)
        if table is None or len(table) == 0:
            raise UserError(f"--importance-data {cfg.importance_data} has no labelled {split} split; choose another "
                            "--importance-split")
        encoded = encode(table, model.tokenizer, opts.max_length, task.has_pair)
    if "labels" not in encoded.column_names:
        raise UserError(f"the {split} data for importance has no labels; importance needs labelled examples")
    if cfg.importance_examples and cfg.importance_examples < len(encoded):
        encoded = encoded.select(range(cfg.importance_examples))
    return make_loader(encoded, model.tokenizer, opts.eval_batch_size, shuffle=False, bucket_by_length=True)


def continued_from(spec: str | None, cfg: DynaBertConfig) -> dict[str, Any] | None:
    """The saved options of the DynaBERT model that ``--model`` names, when this run continues one (e.g. the
    width × depth stage or the final fine-tuning after an earlier run's stages), else None. Its depth rule must be
    this run's: the sub-networks it trained are those of its rule."""
    from ...model import nimblebert_section

    section = nimblebert_section(spec)
    if section is None or section.get("method") != "dynabert":
        return None
    saved = dict(section.get("method_config") or {})
    rule = saved.get("depth_rule", "official")
    if rule != cfg.depth_rule:
        raise UserError(f"{spec} was trained with --depth-rule {rule}, this run has --depth-rule {cfg.depth_rule}: "
                        f"pass --depth-rule {rule} to continue it")
    return saved


def check_fine_tuned(spec: str | None) -> None:
    """DynaBERT distils a *fine-tuned* classifier; a bare pretrained encoder would get a random head."""
    if not spec:
        return
    from ...model import resolve_model

    try:
        config = AutoConfig.from_pretrained(resolve_model(spec))
    except (OSError, ValueError):
        return  # from_base reports unreadable folders itself
    if getattr(config, "nimblebert", None):
        return
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        return
    raise UserError(f"dynabert distils a fine-tuned classifier, but {spec} is a bare encoder: first run `nimblebert "
                    f"train finetune --model {spec} --data ... --out runs/teacher`, then pass --model runs/teacher")


def load_teacher(model: NimbleModel, spec: str) -> torch.nn.Module:
    """``--teacher``: a fine-tuned classifier of the same shape as the student (hidden states are matched
    one to one)."""
    from ...model import resolve_model

    teacher = AutoModelForSequenceClassification.from_pretrained(resolve_model(spec)).eval()
    a, b = teacher.config, model.hf.config
    if (a.hidden_size, a.num_hidden_layers, a.num_labels) != (b.hidden_size, b.num_hidden_layers, b.num_labels):
        raise UserError(f"--teacher {spec} has hidden size {a.hidden_size}, {a.num_hidden_layers} layers and "
                        f"{a.num_labels} labels, the student {b.hidden_size}, {b.num_hidden_layers} and "
                        f"{b.num_labels}: DynaBERT's teacher is the full-size model itself; leave out --teacher or "
                        "give one of the same shape")
    return teacher


# ---- stages -------------------------------------------------------------------------------------------


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """Rewire ``model`` (unless resuming: the checkpoint holds rewired weights), then the stages of
    ``--phases`` with the official recipe: lr ``--lr`` (paper: 2e-5), no warm-up, linear decay.

    Args:
        data: the encoded splits the trainer hands over (importance uses ``--importance-split`` of them);
            without them (a direct API call), importance data comes from ``--importance-data``.
    """
    cfg = config_of(model)
    check_fine_tuned(opts.model or opts.teacher)
    source = continued_from(opts.model, cfg)
    separate = bool(opts.model and opts.teacher and opts.teacher != opts.model)  # else the student *is* the teacher
    teacher_hf = None
    if "width" in cfg.phases or ("depth" in cfg.phases and separate):
        # The official teacher is the fine-tuned model itself, copied before rewiring (which keeps its function
        # anyway); --teacher next to a different --model names another one.
        teacher_hf = load_teacher(model, opts.teacher) if separate else copy.deepcopy(model.hf)

    if source is not None and cfg.rewire and not opts.resume:
        # Its heads and neurons are already ranked, and its sub-networks trained on that order: a new ranking
        # would hand every sub-network other heads.
        sys.stderr.write(f"dynabert: {opts.model} is a DynaBERT model (already rewired): no rewiring\n")
    elif cfg.rewire and not opts.resume:
        loader = importance_loader(model, opts, cfg, data)
        from ...train.progress import tracked

        importance = compute_importance(model.encoder, tracked(loader, len(loader), "importance", opts.progress))
        rewire(model.encoder, importance)
        sys.stderr.write(f"dynabert: heads and FFN neurons rewired by importance on {importance.examples} "
                         f"{cfg.importance_split} examples\n")

    # The official --data_aug: both distillation stages train on the original + augmented rows, the teacher
    # relabelling each (their labels are not read); the final fine-tuning uses the gold-labelled set alone.
    augmented = None
    if cfg.augment and ("width" in cfg.phases or "depth" in cfg.phases):
        # TinyBERT's augmentation (§3.3) and its cache, so that TinyBERT's set for the same texts and options is
        # reused; candidates from the teacher's masked-LM head, else its input embeddings.
        augmented = encoded_training_set(data, cfg, opts, teacher_hf if teacher_hf is not None else model.hf,
                                         model.tokenizer, model.label_names, augment_cache())

    ckpt = None
    if opts.out:
        from ...train.loop import CHECKPOINT_DIR

        ckpt = Path(opts.out) / CHECKPOINT_DIR
    common = {"lr": opts.lr, "max_steps": opts.max_steps, "warmup": 0.0, "schedule": "linear",
              "eval_knobs": {"width": cfg.eval_width, "depth": cfg.eval_depth}}
    result: list[Stage] = []
    if "width" in cfg.phases:
        objective = SubNetworkObjective(cfg.widths, [1.0], cfg.width_lambda1, cfg.width_lambda2,
                                        Teacher(teacher_hf))
        result.append(Stage("dynabert-width", objective, epochs=cfg.width_epochs or opts.epochs, **common,
                            train_data=augmented, **_selection(cfg.widths, [1.0])))
    if "depth" in cfg.phases:
        teacher: Teacher | SnapshotTeacher
        if "width" in cfg.phases or teacher_hf is None:  # distil the model as the stage starts (DynaBERT_W)
            teacher = SnapshotTeacher(ckpt / "dynabert-depth-teacher.safetensors" if ckpt else None)
        else:
            teacher = Teacher(teacher_hf)
        objective = SubNetworkObjective(cfg.widths, cfg.depths, cfg.depth_lambda1, cfg.depth_lambda2, teacher,
                                        cfg.depth_rule)
        result.append(Stage("dynabert-depth", objective, epochs=cfg.depth_epochs or opts.epochs, **common,
                            train_data=augmented, **_selection(cfg.widths, cfg.depths)))
    if "final" in cfg.phases:
        # Every depth once some stage trained them: this run's width × depth stage or the one of the model it
        # continues (e.g. `--phases final` on a DynaBERT folder); else the widths at full depth.
        depth_trained = "depth" in cfg.phases or (source is not None and "depth" in source.get("phases", []))
        depths = cfg.depths if depth_trained else [1.0]
        objective = SubNetworkObjective(cfg.widths, depths, depth_rule=cfg.depth_rule)
        result.append(Stage("dynabert-final", objective, epochs=cfg.final_epochs or opts.epochs, **common,
                            **_selection(cfg.widths, depths)))
    return result
