"""TR-BERT's training stages (Ye et al., NAACL 2021, §3.2–3.3; official ``run_classification.py``; METHODS.md §4).

1. ``finetune`` — cross-entropy on the gold labels, full model, no policy. Skipped when ``--model`` already is a
   fine-tuned classifier for these labels (``--finetune auto``).
2. Residual-gradient scores, once over the training set with the fine-tuned model (official ``--do_eval_grad``):
   score_t = |⟨∂L/∂h_tgt[t], h_tgt[t] − h_src[t]⟩|, src = the cut's layer, tgt = layer L − L/4. Cached per
   example on disk (``--cache-dir``), keyed by the weights and the data, so runs with several α share them.
3. ``rl`` — the policies alone learn (BERT frozen, run without gradients) by REINFORCE: K rollouts per example
   (a ~ Bernoulli(p)), reward R = −CE(gold) − α·mean over cuts of kept/length, baseline = the mean of the K
   rewards, loss = mean((R − b)·ℓ_sel). During the first ``guide_rate`` of the steps one rollout per example is
   the heuristic's action (keep the top-n by score, n = round(Σp)).
4. ``joint`` — every weight learns: task loss = soft CE against the fine-tuned full model's probabilities
   (cached once, official ``--do_eval_logits``), averaged over the rollouts, + the same REINFORCE loss (its
   reward's task term is that soft CE); no guidance.

Deviations, named:
- Penalty denominator: each row's real length by default (``--penalty-length real``), not the padded length.
  The official 512 is a constant; with dynamic padding the padded length depends on the batch-mates, which
  would make a row's reward depend on its batch. ``padded`` restores the official rule.
- ℓ_sel runs over the tokens the policy decides (forced tokens have no sampled action).
- Model selection in ``rl`` / ``joint``: the last weights (``--select last``). "Best validation accuracy"
  would prefer a policy that keeps everything — accuracy alone ignores α's trade-off.
- Learning rates: ``--lr`` for every stage unless ``--rl-lr`` / ``--joint-lr`` (official 3e-5 everywhere).
- The guidance window counts optimizer steps of this process: a resumed RL stage restarts the count.
"""

from __future__ import annotations

import copy
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserError
from ...model import finetune_first
from ...train.stages import Stage, TrainData, TrainOptions
from ..losses import soft_cross_entropy
from ..options import options_from
from .config import TrBertConfig, guide_target
from .modules import CutHook, forced_tokens
from .policy import cuts_of, special_ids

if TYPE_CHECKING:
    from ...core.encoder import LoopState
    from ...model import NimbleModel


def config_of(model: NimbleModel) -> TrBertConfig:
    """The TR-BERT options of ``model`` (its component's saved options)."""
    return options_from(TrBertConfig, model.method_config)


def finetune_objective(model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage 1: cross-entropy of the full model (no cut) on the gold labels."""
    out = model.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
    loss = F.cross_entropy(out.logits.float(), batch["labels"])
    return {"loss": loss, "ce": loss.detach()}


# ---- residual-gradient heuristic (official --do_eval_grad) -------------------------------------------------
def residual_scores(model: NimbleModel, batch: dict[str, torch.Tensor], cuts: list[int], target: int
                    ) -> torch.Tensor:
    """score[c, b, t] = |⟨∂L/∂h_tgt[t], h_tgt[t] − h_src[t]⟩| for each cut c (src = its 1-based layer), with
    L = CE(gold) of the full model and tgt = ``target`` (1-based): the first-order estimate of the loss change
    if token t skipped layers src+1..tgt through the residual path. Zero at padding. Returns (cuts, b, t)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    grabbed: dict[str, torch.Tensor] = {}

    def grab(state: LoopState) -> None:
        if state.layer == target - 1:  # a leaf from here on: its gradient is what we need
            state.hidden = state.hidden.detach().requires_grad_(True)
            grabbed["h"] = state.hidden

    with torch.enable_grad():
        out = model.encoder(ids, mask, batch.get("token_type_ids"), hooks=[grab], output_hidden_states=True)
        # Summed, not averaged: each row's gradient is then exactly that row's own loss gradient.
        loss = F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum")
        (grad,) = torch.autograd.grad(loss, grabbed["h"])
    h_tgt = grabbed["h"].detach()
    hiddens = out.hidden_states  # [embeddings, layer 1, ...]
    assert hiddens is not None
    scores = [((h_tgt - hiddens[c].detach()) * grad).sum(dim=-1).abs() * mask for c in cuts]  # (b, t) each
    return torch.stack(scores).float()


def compute_scores(model: NimbleModel, encoded: Any, cuts: list[int], target: int, batch_size: int,
                   progress: bool = True) -> list[np.ndarray]:
    """The heuristic scores of every example of ``encoded``: a (cuts, length) float32 array each, in
    eval mode (no dropout), with the model as it is now (fine-tuned, before any policy training)."""
    from ...data import make_loader
    from ...inference import move
    from ...train.progress import tracked

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    result: list[np.ndarray] = [np.zeros((len(cuts), 0), np.float32)] * len(encoded)
    loader = make_loader(encoded, model.tokenizer, batch_size, shuffle=False, bucket_by_length=True)
    for batch in tracked(loader, len(loader), "trbert residual scores", progress):
        batch = move(batch, device)
        scores = residual_scores(model, batch, cuts, target).cpu().numpy()  # (cuts, b, t)
        for r, (i, n) in enumerate(zip(batch["index"].tolist(), batch["attention_mask"].sum(1).tolist(),
                                       strict=True)):
            result[i] = scores[:, r, :n].copy()
    model.train(was_training)
    return result


def cached_scores(model: NimbleModel, encoded: Any, cuts: list[int], target: int, cache_dir: Path, batch_size: int,
                  progress: bool = True) -> list[np.ndarray]:
    """:func:`compute_scores`, cached on disk by (weights, token ids, layers): runs with several α from one
    fine-tuned model compute them once. Written to a temporary file, then renamed (a killed run leaves none)."""
    import hashlib
    import json
    import os

    from ...distill.fingerprint import rows_fingerprint, tensors_fingerprint

    rows = rows_fingerprint([encoded["input_ids"], encoded["token_type_ids"]])
    key = hashlib.sha256(json.dumps({"weights": tensors_fingerprint(model.hf.state_dict()), "rows": rows,
                                     "cuts": cuts, "target": target}).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"scores-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            flat, lengths = f["flat"], f["lengths"]
        return [a.reshape(len(cuts), -1) for a in np.split(flat, np.cumsum(lengths * len(cuts))[:-1])]
    scores = compute_scores(model, encoded, cuts, target, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, flat=np.concatenate([a.reshape(-1) for a in scores]),
             lengths=np.array([a.shape[1] for a in scores], dtype=np.int64))
    os.replace(tmp, path)
    return scores


def padded_scores(scores: list[np.ndarray], index: torch.Tensor, width: int, device: torch.device
                  ) -> list[torch.Tensor]:
    """The cached scores of a batch's rows, padded to ``width``: one (b, width) tensor per cut."""
    cuts = scores[int(index[0])].shape[0]
    out = torch.zeros(cuts, index.numel(), width)
    for r, i in enumerate(index.tolist()):
        s = scores[i]
        out[:, r, : s.shape[1]] = torch.from_numpy(s)
    return [t.to(device) for t in out.unbind(0)]


def full_model_logits(model: NimbleModel, encoded: Any, cache_dir: Path, batch_size: int, progress: bool
                      ) -> torch.Tensor:
    """The full model's logits on every example (official ``--do_eval_logits``), through TinyBERT's teacher
    cache: computed once per (weights, data), on a frozen copy (the joint stage goes on training the original)."""
    from ...distill.cache import build_cache
    from ...distill.teacher import Teacher

    teacher = Teacher(copy.deepcopy(model.hf))
    cache = build_cache(teacher, encoded, model.tokenizer, [], [], logits=True, inner=False, cache_dir=cache_dir,
                        batch_size=batch_size, progress=progress)
    assert cache.logits is not None
    return cache.logits


def cache_dir_of(cfg: TrBertConfig) -> Path:
    from ...distill.cache import cache_root

    return cache_root(cfg.cache_dir, "trbert")


# ---- the RL and joint stages --------------------------------------------------------------------------------
class RLObjective:
    """REINFORCE over K rollouts per example (official ``train_rl`` / ``train_both``); see the module docstring.

    ``joint`` False: the RL stage (BERT frozen and run without gradients; CE on the gold label in the reward;
    guidance for the first ``guide_steps`` calls). True: the joint stage (soft CE against ``teacher_logits``,
    averaged over rollouts, is also minimised; no guidance).
    """

    def __init__(self, cfg: TrBertConfig, joint: bool, train: Any = None, guide_steps: int = 0,
                 score_batch_size: int = 32, progress: bool = True) -> None:
        self.cfg, self.joint, self.train = cfg, joint, train
        self.rollouts = (cfg.joint_rollouts or cfg.rollouts) if joint else cfg.rollouts
        self.guide_steps = 0 if joint else guide_steps
        self.score_batch_size, self.progress = score_batch_size, progress
        self.calls = 0
        self.scores: list[np.ndarray] | None = None  # residual-gradient heuristic, per example (official npy)
        self.teacher_logits: torch.Tensor | None = None  # (n, C) full-model logits, per example

    def prepare(self, model: NimbleModel) -> None:
        """What the stage needs, computed at its first step (after the fine-tuning stage has run)."""
        cuts = cuts_of(model)
        if self.guide_steps > 0 and self.scores is None:
            if self.train is None:
                raise UserError("TR-BERT's imitation guidance needs the training data (pass --guide-rate 0 "
                                "to train without it)")
            target = guide_target(model.hf.config.num_hidden_layers, cuts, self.cfg.guide_layer)
            sys.stderr.write(f"trbert: residual-gradient scores of {len(self.train)} examples (layers {cuts} -> "
                             f"{target})\n")
            self.scores = cached_scores(model, self.train, cuts, target, cache_dir_of(self.cfg),
                                        self.score_batch_size, self.progress)
        if self.joint and self.teacher_logits is None:
            if self.train is None:
                raise UserError("TR-BERT's joint stage needs the training data for the full model's logits")
            self.teacher_logits = full_model_logits(model, self.train, cache_dir_of(self.cfg),
                                                    self.score_batch_size, self.progress)

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.prepare(model)
        guiding = model.training and self.calls < self.guide_steps
        if model.training:
            self.calls += 1
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        b, k = ids.size(0), self.rollouts
        rep = (lambda x: x.repeat_interleave(k, dim=0)) if k > 1 else (lambda x: x)  # (b·K, ...), rollouts adjacent
        forced = forced_tokens(batch, special_ids(model), self.cfg.keep_first_segment)
        guide_rows = guide_scores = None
        if guiding and self.scores is not None:
            guide_rows = torch.zeros(b * k, dtype=torch.bool, device=ids.device)
            guide_rows[::k] = True  # rollout 0 of every example imitates the heuristic
            guide_scores = [rep(s) for s in padded_scores(self.scores, batch["index"], ids.size(1), ids.device)]
        hook = CutHook(model.extras["policies"], cuts_of(model), rep(forced), sample=True,
                       detach_input=not self.joint, guide_rows=guide_rows, guide_scores=guide_scores)
        types = batch.get("token_type_ids")
        # The RL stage's BERT is frozen: no graph through it (the hook re-enables gradients for the policy).
        with nullcontext() if self.joint else torch.no_grad():
            out = model.encoder(rep(ids), rep(mask), rep(types) if types is not None else None, hooks=[hook])
        logits = out.logits.float()  # (b·K, C)
        if self.joint:
            assert self.teacher_logits is not None
            teacher = rep(self.teacher_logits[batch["index"].cpu()].to(logits.device))
            task = soft_cross_entropy(logits, teacher, self.cfg.temperature, reduction="none")  # (b·K,)
        else:
            task = F.cross_entropy(logits, rep(batch["labels"]), reduction="none")
        length = (torch.full_like(mask[:, 0], mask.size(1)) if self.cfg.penalty_length == "padded"
                  else mask.sum(dim=1))  # (b,)
        kept_fraction = (hook.kept.float() / rep(length).float()[:, None]).mean(dim=1)  # (b·K,) mean over cuts
        reward = -task.detach() - self.cfg.alpha * kept_fraction
        baseline = reward.view(b, k).mean(dim=1).repeat_interleave(k)  # self-critical: mean of the K rewards
        policy_loss = ((reward - baseline) * hook.nll).mean()
        loss = policy_loss + task.mean() if self.joint else policy_loss
        return {"loss": loss, "policy": policy_loss.detach(), "task": task.mean().detach(),
                "reward": reward.mean().detach(), "kept_fraction": kept_fraction.mean().detach(),
                "guided": torch.tensor(float(guiding))}


def _steps(epochs: float, opts: TrainOptions, examples: int) -> int:
    """Optimizer steps the trainer will run for a stage (as ``train.loop`` counts them, one process)."""
    if opts.max_steps:
        return opts.max_steps
    return max(1, math.ceil(epochs * max(1, math.ceil(examples / opts.batch_size))))


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """finetune (unless skipped) → rl → joint (unless ``--joint-epochs`` < 0), with the official recipe's
    linear warm-up (``--warmup``) and decay in each."""
    cfg = config_of(model)
    base = opts.model or opts.teacher
    run_finetune = finetune_first("trbert", cfg.finetune, base, "the fine-tuning stage is skipped")
    train = data.train if data is not None else None
    examples = len(train) if train is not None else 0
    eval_knobs = {"keep_threshold": cfg.eval_threshold, "drop_mode": "policy"}
    result = []
    if run_finetune:
        result.append(Stage(
            "finetune", finetune_objective, lr=opts.lr, epochs=opts.epochs, max_steps=opts.max_steps,
            warmup=opts.warmup, trainable=lambda m: m.hf.parameters(), select="best",
            eval_knobs={"keep_threshold": 0.0, "drop_mode": "policy"}))
    rl_epochs = cfg.rl_epochs or opts.epochs
    guide_steps = round(cfg.guide_rate * _steps(rl_epochs, opts, examples)) if train is not None else 0
    result.append(Stage(
        "rl", RLObjective(cfg, joint=False, train=train, guide_steps=guide_steps,
                          score_batch_size=opts.eval_batch_size, progress=opts.progress),
        lr=cfg.rl_lr or opts.lr, epochs=rl_epochs, max_steps=opts.max_steps, warmup=opts.warmup,
        trainable=lambda m: m.extras["policies"].parameters(),  # BERT frozen: only linear_1/linear_2 learn
        select=cfg.select, eval_knobs=eval_knobs))
    if cfg.joint_epochs >= 0:
        result.append(Stage(
            "joint", RLObjective(cfg, joint=True, train=train, score_batch_size=opts.eval_batch_size,
                                 progress=opts.progress),
            lr=cfg.joint_lr or opts.lr, epochs=cfg.joint_epochs or opts.epochs, max_steps=opts.max_steps,
            warmup=opts.warmup, trainable=None, select=cfg.select, eval_knobs=eval_knobs))
    return result
