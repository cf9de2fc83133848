"""NAS-BERT's training: the block-wise supernet with progressive shrinking, then a searched network's two-stage
distillation (Xu et al., KDD 2021, §3.2-3.4; METHODS.md §6).

Supernet (§3.2, "block-wise training"): the teacher is cut into N blocks; student block n takes the teacher's
block n−1 output Y_{n−1} (the embeddings for n = 1) and learns to reproduce the teacher's block n output,
L_n = MSE(out_h(f(in_h(Y_{n−1}); a_n)), Y_n) over real tokens, with a_n one architecture drawn uniformly from the
block's live ones at every step (single path). All blocks train at once, each on its own teacher input, so no
block waits for another. The teacher is frozen (eval mode, no dropout) and only the supernet's ops train.

Progressive shrinking (§3.3): the block architectures are binned by parameters with latency caps
(:func:`~.modules.assign_bins`: the first bin whose parameter and latency caps both hold); every ``shrink_every``
steps after ``shrink_warmup``, each bin with more than ``shrink_keep`` live architectures samples ``shrink_samples`` of
them, scores each by its block loss on held-out batches (the validation split's first batches, used as unlabelled text)
and removes the worse half (never below ``shrink_keep``). The live sets are buffers of the model
(:class:`~.modules.ShrinkState`), so checkpoints and ``--resume`` carry them. Where we deviate from the paper:
the score uses a few held-out sentences (``shrink_rows``; the paper 5 batches of 1,024 sequences); the latency caps
are of one batch size (1) and length (the held-out median), from the cached latency table of this CPU. Bins by
parameters only (``--no-latency-bins``, what this code did first) left on mr, with keep 10 per bin, no architecture
under 1/10 of the teacher's latency (docs/sections/nasbert_mr.md): the cheapest ones had the highest block losses.

Cost (benchmarks/nasbert_supernet_cost.py): the teacher's block outputs are read from a cache built once per
training set instead of running the teacher at every step (0.50 → 0.21 s a step at 1 thread on MiniLM-L6), and
block losses share the computation of common path prefixes on length-packed rows.

Searched network (§3.4, "two-stage distillation"): TinyBERT's losses where they apply — hidden-state MSE between
each block's output (projected to the teacher's size) and the teacher's block output (the attention-score loss
does not apply: convolutions have no attention map and sizes differ), first on unlabelled text ("general"), then
on the task's training set ("intermediate"), then the prediction-layer soft cross-entropy ("prediction").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...core.tokens import attention_mask4d
from ...errors import UserError
from ...train.stages import Stage, TrainOptions
from ..losses import soft_cross_entropy
from .config import NasBertConfig
from .modules import ShrinkState, block_ends, block_path
from .space import BlockArch, Space, default_space, parse_arch

if TYPE_CHECKING:
    from ...model import NimbleModel
    from ...train.stages import TrainData


def config_of(model: NimbleModel) -> NasBertConfig:
    fields = NasBertConfig.__dataclass_fields__
    return NasBertConfig(**{k: v for k, v in model.method_config.items() if k in fields})


def space_of(model: NimbleModel) -> Space:
    """The search space recorded in the model's config (the teacher's sizes are stored: a net has no teacher)."""
    c = model.method_config
    return Space(c["teacher_hidden"], c["teacher_layers"], c["head_dim"], tuple(c["space_sizes"]), c["space_blocks"],
                 block_transfers=bool(c.get("block_transfers", False)))  # absent: folders written before the option


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the real tokens only (b, t, d) — padding is no part of a sentence, and the convolutions' outputs
    there are whatever the kernel made of the zeros around them."""
    keep = mask.to(pred.dtype)[:, :, None]  # (b, t, 1)
    return ((pred - target) ** 2 * keep).sum() / (keep.sum() * pred.size(-1)).clamp_min(1.0)


@torch.no_grad()
def teacher_blocks(teacher_encoder: Any, batch: dict[str, torch.Tensor], space: Space) -> list[torch.Tensor]:
    """[Y_0 = embeddings, Y_1, ..., Y_N]: the teacher's hidden states at the block boundaries."""
    was = teacher_encoder.model.training
    teacher_encoder.model.eval()
    out = teacher_encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                          output_hidden_states=True, classify=False)
    teacher_encoder.model.train(was)
    hs = out.hidden_states
    return [hs[0], *(hs[i] for i in space.teacher_boundaries())]


def run_block(ops: Any, n: int, arch: BlockArch, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Block ``n`` of the supernet along ``arch`` on the teacher's hidden states ``x`` (b, t, D) → (b, t, D)."""
    mask4d = attention_mask4d(mask)
    for key in block_path(n, arch):
        x = ops[key](x, mask, mask4d)
    return x


@torch.no_grad()
def block_losses(model: NimbleModel, n: int, archs: list[BlockArch], held_out: list[list[torch.Tensor]],
                 masks: list[torch.Tensor]) -> torch.Tensor:
    """Block loss of each architecture in ``archs`` for block ``n``: the masked MSE over every real token of the
    held-out batches (squared errors summed over the batches, divided by their tokens × size) — the score of
    progressive shrinking and the loss lookup of the search.

    Architectures that share a prefix (the same size and first ops) share its computation: in eval mode an op's
    output depends only on its input, so the archs are visited in sorted order and the states after each op of the
    current path are kept on a stack, and the next architecture runs only the ops after the common prefix. Exact
    (the same numbers as running each path alone); it cut a shrinking round's time by about half on our space."""
    ops = model.extras["ops"]
    was = ops.training
    ops.eval()
    mask4ds = [attention_mask4d(m) for m in masks]
    keeps = [m.to(held_out[0][n].dtype)[:, :, None] for m in masks]  # (b, t, 1)
    tokens = sum(float(k.sum()) for k in keeps) * held_out[0][n + 1].size(-1)
    scores = torch.zeros(len(archs), dtype=torch.float64)
    stack: list[tuple[str, list[torch.Tensor]]] = []  # (op key, the outputs after it, one per held-out batch)
    for i in sorted(range(len(archs)), key=lambda j: archs[j]):
        *body, out_key = block_path(n, archs[i])  # in-transfer, ops ...; the out-transfer is never shared
        common = 0
        while common < min(len(body), len(stack)) and stack[common][0] == body[common]:
            common += 1
        del stack[common:]
        xs = stack[-1][1] if stack else [ys[n] for ys in held_out]
        for key in body[common:]:
            xs = [ops[key](x, m, m4) for x, m, m4 in zip(xs, masks, mask4ds, strict=True)]
            stack.append((key, xs))
        total = 0.0
        for x, ys, m, m4, keep in zip(xs, held_out, masks, mask4ds, keeps, strict=True):
            total += float((((ops[out_key](x, m, m4) - ys[n + 1]) ** 2) * keep).sum())
        scores[i] = total / max(tokens, 1.0)
    ops.train(was)
    return scores


def shrink_round(model: NimbleModel, held_out: list[list[torch.Tensor]], masks: list[torch.Tensor],
                 samples: int, keep: int, generator: torch.Generator | None = None) -> int:
    """One progressive-shrinking round over every block and bin; returns how many architectures were removed."""
    state: ShrinkState = model.extras["shrink"]
    removed = 0
    for n in range(state.blocks):
        alive = state.alive(n)
        for b in range(state.bins):
            members = (alive & (state.bin == b)).nonzero().squeeze(1)
            if len(members) <= keep:
                continue
            chosen = members[torch.randperm(len(members), generator=generator)[:samples]]
            scores = block_losses(model, n, [state.archs[int(i)] for i in chosen], held_out, masks)
            drop = min(len(chosen) // 2, len(members) - keep)
            worst = chosen[scores.argsort(descending=True)[:drop]]
            alive[worst] = False
            removed += drop
    state.rounds += 1
    return removed


class SupernetObjective:
    """One step of block-wise supernet training, with progressive shrinking between steps when due."""

    def __init__(self, space: Space, cfg: NasBertConfig, held_out: list[dict[str, torch.Tensor]], every: int,
                 targets: Any = None) -> None:
        self.space, self.cfg, self.every = space, cfg, max(1, every)
        self.warmup = cfg.shrink_warmup or self.every
        self.held_out_batches = held_out
        self._targets: tuple[list[list[torch.Tensor]], list[torch.Tensor]] | None = None
        # The teacher's block outputs of a training batch: from the teacher cache (:func:`supernet_targets`) when
        # given and the batch carries row indices, else the teacher run now.
        self.targets = targets

    def blocks(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """[Y_0, ..., Y_N] of ``batch``: cached (padding zeroed, which no op reads at a real token) or computed."""
        if self.targets is not None and "index" in batch:
            return self.targets(batch, logits=False, inner=True).hidden
        return teacher_blocks(model.encoder, batch, self.space)

    def held_out(self, model: NimbleModel) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """The teacher's block outputs on the held-out batches, computed once (the teacher is frozen)."""
        if self._targets is None:
            device = next(model.parameters()).device
            batches = [{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)} for b in self.held_out_batches]
            self._targets = ([teacher_blocks(model.encoder, b, self.space) for b in batches],
                             [b["attention_mask"] for b in batches])
        return self._targets

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state: ShrinkState = model.extras["shrink"]
        steps = int(state.steps)
        if self.cfg.shrink and steps >= self.warmup and (steps - self.warmup) % self.every == 0:
            ys, masks = self.held_out(model)
            removed = shrink_round(model, ys, masks, self.cfg.shrink_samples, self.cfg.shrink_keep)
            if removed:
                live = [int(state.alive(n).sum()) for n in range(state.blocks)]
                sys.stderr.write(f"nasbert: shrinking round {int(state.rounds)} at step {steps}: removed {removed}, "
                                 f"live per block {live}\n")
        state.steps += 1
        ys = self.blocks(model, batch)
        mask = batch["attention_mask"]
        parts: dict[str, torch.Tensor] = {}
        total = ys[0].new_zeros(())
        for n in range(self.space.blocks):
            arch = state.sample(n)
            loss = masked_mse(run_block(model.extras["ops"], n, arch, ys[n], mask), ys[n + 1], mask)
            parts[f"block{n + 1}"] = loss.detach()
            total = total + loss
        return {"loss": total, **parts}


def held_out_batches(encoded: Any, tokenizer: Any, batch_size: int, count: int,
                     rows_per_batch: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The first ``count × batch_size`` rows of ``encoded`` (the same on every run and resume), regrouped longest
    first into batches of ``rows_per_batch`` (default ``batch_size // 4``, at least 1): the same rows and tokens,
    but each batch padded only to its own longest row — scoring thousands of architectures on them cost about
    half as much as on the loader's batches, whose padding ran to the longest of 32 rows."""
    from ...data import make_loader

    rows = min(len(encoded), count * batch_size)
    per = rows_per_batch or max(1, batch_size // 4)
    loader = make_loader(encoded.select(range(rows)), tokenizer, per, shuffle=False, bucket_by_length=True)
    return [{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            for batch in loader]


def supernet_targets(teacher_hf: Any, space: Space, encoded: Any, tokenizer: Any, opts: TrainOptions) -> Any:
    """The teacher's block outputs [Y_0 = embeddings, Y_1, ..., Y_N] of every training row, computed once and
    cached on disk in float16 (TinyBERT's teacher cache, :mod:`nimblebert.distill.cache`; about 120 MB for mr's
    training set). The teacher is frozen and runs in eval mode, so its outputs are the same at every epoch: running
    it at every step was about half of a supernet step's time (0.31 of 0.6 s at 1 thread on MiniLM-L6)."""
    import copy

    from ...distill.cache import build_cache, cache_root
    from ...distill.teacher import Teacher
    from ..tinybert.objective import TargetSource

    teacher = Teacher(copy.deepcopy(teacher_hf))
    hidden_idx = [0, *space.teacher_boundaries()]
    cache = build_cache(teacher, encoded, tokenizer, hidden_idx, [], False, True, cache_root("", "nasbert") / "teacher",
                        batch_size=opts.eval_batch_size, progress=opts.progress)
    return TargetSource(teacher, cache, hidden_idx, [])


BIN_TABLE_LENGTHS = [16, 32, 64, 128]  # the grid `nimblebert search` measures by default: one cached table serves both


def bin_latency_caps(model: NimbleModel, space: Space, cfg: NasBertConfig, held: list[dict[str, torch.Tensor]],
                     progress: bool) -> None:
    """Give the shrinking bins their latency caps (:func:`.modules.assign_bins`): each block architecture's predicted
    batch-1 latency from this CPU's latency table (cached; measured now if absent) at the held-out rows' median
    length (the length search budgets for, the validation median, when the rows are the validation's first). Batch
    1: the budgets of the paper's and our comparisons are per-sentence latencies. Recorded in the config."""
    from .latency import block_latency, default_table_path, load_or_measure

    state: ShrinkState = model.extras["shrink"]
    if int(state.rounds) > 0:
        return  # a resumed run keeps the bins its rounds used (the checkpoint carries them)
    lengths = sorted(int(n) for b in held for n in b["attention_mask"].sum(1).tolist())
    length = float(lengths[len(lengths) // 2]) if lengths else 64.0
    path = Path(cfg.latency_table) if cfg.latency_table else default_table_path(space)
    max_positions = int(getattr(model.hf.config, "max_position_embeddings", 512) or 512)
    grid = [t for t in BIN_TABLE_LENGTHS if t <= max_positions] or [max_positions]  # a short model's table
    table = load_or_measure(path, model, space, grid, [1], 20, progress)
    latency = torch.tensor([block_latency(table, space, a, 1, length) for a in state.archs], dtype=torch.float64)
    state.set_latency(latency)
    model.method_config.update(bin_latency_length=length, bin_latency_table=str(path),
                               bin_latency_cpu=table.get("cpu", {}).get("model", ""))
    if progress:
        sys.stderr.write(f"nasbert: bins with latency caps (batch 1, length {length:g}, table {path}): "
                         f"{state.counts(0)} architectures per bin\n")


def supernet_stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None) -> list[Stage]:
    from ...model import has_trained_head

    cfg = config_of(model)
    if data is None:
        raise UserError("supernet training needs data (--data)")
    teacher = opts.teacher or opts.model
    if not has_trained_head(teacher):
        # The supernet's teacher is also the one whose head judges candidates in search and whose logits the
        # searched network distils: an untrained classifier would make both meaningless.
        raise UserError(f"{teacher} is not a fine-tuned classifier: NAS-BERT distils from a fine-tuned teacher "
                        "(run `nimblebert train finetune` first and pass that folder with --teacher)")
    space = space_of(model)
    train_data = None
    if cfg.general_data:
        from ...distill.texts import general_dataset

        train_data = general_dataset(cfg.general_data, model.tokenizer, opts.max_length)
    rows = len(train_data if train_data is not None else data.train)
    per_epoch = max(1, rows // opts.batch_size)
    every = cfg.shrink_every or per_epoch
    if cfg.shrink_rows:
        held = held_out_batches(data.validation, model.tokenizer, cfg.shrink_rows, 1)
    else:
        held = held_out_batches(data.validation, model.tokenizer, opts.batch_size, cfg.shrink_batches)
    if cfg.latency_bins:
        bin_latency_caps(model, space, cfg, held, opts.progress)
    targets = supernet_targets(model.hf, space, train_data if train_data is not None else data.train,
                               model.tokenizer, opts)
    objective = SupernetObjective(space, cfg, held, every, targets)
    return [Stage("nasbert-supernet", objective, lr=cfg.supernet_lr, epochs=opts.epochs,
                  trainable=lambda m: m.extras.parameters(), select="last", train_data=train_data,
                  eval_knobs={"arch": "largest"})]  # validation: the largest path (the default runs the teacher)


# ---- the searched network ------------------------------------------------------------------------------------


def net_hidden(model: NimbleModel, batch: dict[str, torch.Tensor]) -> tuple[list[tuple[int, torch.Tensor]],
                                                                          torch.Tensor]:
    """(block index, that block's output projected to the teacher's size) of a searched network, and its logits."""
    from .policy import net_plan

    space = space_of(model)
    arch = parse_arch(model.method_config["arch"], space)
    out = model.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                        plan=net_plan(model), output_hidden_states=True)
    hs = out.hidden_states  # [embeddings, after c0, after c1, ...]
    proj = model.extras["proj"]
    blocks = []
    for n, end in enumerate(block_ends(space, arch)):
        if end is None:
            continue  # an identity block with block transfers has no hidden state of its own (see block_ends)
        h = hs[end + 1]
        blocks.append((n, proj[f"p{n}"](h, None, None) if f"p{n}" in proj else h))
    return blocks, out.logits


class NetObjective:
    """A searched network's distillation: ``hidden`` (block outputs, TinyBERT's eq. 5 at block boundaries) and/or
    ``prediction`` (TinyBERT's eq. 6, soft cross-entropy at temperature t, averaged over classes as the official
    code). ``targets(batch, logits, inner)`` gives the teacher's logits and block outputs (from the teacher cache
    when it holds the batch's rows, else the teacher run now)."""

    def __init__(self, targets: Any, hidden: bool, prediction: bool, temperature: float) -> None:
        self.targets = targets
        self.hidden, self.prediction, self.temperature = hidden, prediction, temperature

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch["attention_mask"]
        parts: dict[str, torch.Tensor] = {}
        blocks, logits = net_hidden(model, batch)
        total = logits.new_zeros(())
        teacher = self.targets(batch, logits=self.prediction, inner=self.hidden)
        if self.hidden:
            # teacher.hidden: the block outputs Y_1..Y_N (the embeddings' Y_0 is no target)
            hidden = sum((masked_mse(s, teacher.hidden[n], mask) for n, s in blocks), total)
            parts["hidden"] = hidden.detach()
            total = total + hidden
        if self.prediction:
            pred = soft_cross_entropy(logits.float(), teacher.logits, self.temperature, reduction="mean")
            parts["prediction"] = pred.detach()
            total = total + pred
        return {"loss": total, **parts}


def net_targets(teacher_hf: Any, space: Space, encoded: list[Any], tokenizer: Any, opts: TrainOptions) -> Any:
    """The teacher's targets for a searched network's stages: its logits and block outputs on each training set
    in ``encoded`` run once and cached (TinyBERT's teacher cache, :mod:`nimblebert.distill.cache`; a few hundred MB
    for mr), so each distillation step runs only the small network — the teacher dominated a step's time."""
    import copy

    from ...distill.cache import build_cache, cache_root
    from ...distill.teacher import Teacher
    from ..tinybert.objective import TargetSource

    teacher = Teacher(copy.deepcopy(teacher_hf))
    hidden_idx = space.teacher_boundaries()
    caches = [build_cache(teacher, e, tokenizer, hidden_idx, [], True, True, cache_root("", "nasbert") / "teacher",
                          batch_size=opts.eval_batch_size, progress=opts.progress) for e in encoded]
    return [TargetSource(teacher, c, hidden_idx, []) for c in caches]


def net_stages(model: NimbleModel, teacher_hf: Any, opts: TrainOptions, data: TrainData, general_data: Any,
               general_epochs: float, task_epochs: float, lr: float, temperature: float = 1.0,
               prediction_epochs: float | None = None, train_embeddings: bool = False) -> list[Stage]:
    """General distillation on ``general_data`` (unlabelled, skipped when None), then intermediate (block hidden
    states) and prediction distillation on the task's training set, each from the previous one's weights.
    ``prediction_epochs``: the prediction stage's epochs when not ``task_epochs``. ``train_embeddings`` False keeps
    the teacher's embeddings as they are (the network's first transfer adapts to them): on a small task set the
    30k × d word embeddings gain little from a few thousand sentences, and their optimizer update was the largest
    part of a step of a small network."""
    space = space_of(model)
    embeddings = {id(p) for p in model.hf.base_model.embeddings.parameters()}

    def trainable(m: NimbleModel) -> list[torch.nn.Parameter]:
        return [p for p in m.parameters() if train_embeddings or id(p) not in embeddings]

    sets = [data.train] + ([general_data] if general_data is not None else [])
    task_targets, *general_targets = net_targets(teacher_hf, space, sets, model.tokenizer, opts)
    result = []
    if general_data is not None:
        result.append(Stage("nasbert-general", NetObjective(general_targets[0], True, False, temperature), lr=lr,
                            epochs=general_epochs, select="last", train_data=general_data, trainable=trainable))
    result.append(Stage("nasbert-intermediate", NetObjective(task_targets, True, False, temperature), lr=lr,
                        epochs=task_epochs, select="last", trainable=trainable))
    result.append(Stage("nasbert-prediction", NetObjective(task_targets, False, True, temperature), lr=lr,
                        epochs=prediction_epochs or task_epochs, select="best", trainable=trainable))
    return result


def stages(model: NimbleModel, opts: TrainOptions, data: TrainData | None = None) -> list[Stage]:
    """``train nasbert`` trains a supernet; a searched network is trained by ``nimblebert search``."""
    if config_of(model).role != "supernet":
        raise UserError("a searched NAS-BERT network is trained by `nimblebert search`; `train nasbert` trains a "
                        "supernet (--teacher a fine-tuned model)")
    return supernet_stages(model, opts, data)


def resolve_space(model: NimbleModel, cfg: NasBertConfig) -> Space:
    """The space of a fresh supernet from its teacher (``model.hf``) and the options; recorded in the config."""
    space = default_space(model.hf.config, cfg.blocks, cfg.sizes())
    model.method_config.update(teacher_hidden=space.teacher_hidden, teacher_layers=space.teacher_layers,
                               head_dim=space.head_dim, space_sizes=list(space.hidden_sizes),
                               space_blocks=space.blocks)
    return space

