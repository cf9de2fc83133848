"""The one training loop: a list of stages on Hugging Face Accelerate.

For each stage: AdamW with linear warm-up/decay (or constant), gradient clipping, evaluation every N
steps keeping the best checkpoint, progress (a tqdm bar on a terminal, plain lines in a pipe; one line per
stage with its size and an estimated time), a JSONL log, and resume checkpoints written atomically
so that a killed run continues with ``--resume`` to the same weights as an uninterrupted one.

Several processes (``torchrun --nproc_per_node 2`` on CPU with gloo, ``accelerate launch`` on GPUs):
every rank builds the same seeded batch order and takes every world-size-th batch; DDP averages the
gradients, so all ranks hold equal weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..data import make_loader
from ..errors import UserError
from ..inference import metrics, move, predict_loader
from ..io import atomic_write, load_tensors, save_tensors, write_json
from ..model import FINISHED_MARKER, NimbleModel
from .progress import StageClock, announce, progress_bar
from .stages import Stage, TrainOptions

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
PAUSE_ENV = "NIMBLEBERT_TEST_CHECKPOINT_PAUSE"  # tests only, see _fault_pause
PAUSE_MARK = "nimblebert-test: checkpoint half written:"


class StopTraining(Exception):
    """Raised by ``stop_after`` (tests): behaves like a kill right after a checkpoint step."""


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reseed the loader's shuffling for ``epoch`` (the batch order depends only on seed and epoch)."""
    for obj in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def has_checkpoint(out: str | Path) -> bool:
    """Whether ``out`` holds a killed run's resume checkpoint (what ``--resume`` continues)."""
    return (Path(out) / CHECKPOINT_DIR / "state.json").exists()


def check_output_folder(opts: TrainOptions) -> Path:
    """Refuse to overwrite a finished model unless asked; refuse --resume with nothing to resume."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    finished = (out / FINISHED_MARKER).exists()
    if opts.resume:
        if not has_checkpoint(out):
            if finished:
                raise UserError(f"{out} already holds a finished model; nothing to resume")
            raise UserError(f"nothing to resume in {out} (no {CHECKPOINT_DIR}/); run without --resume")
    elif finished and not opts.overwrite:
        raise UserError(f"{out} already holds a finished model; pass --overwrite or choose another --out")
    elif (out / CHECKPOINT_DIR).exists() and not opts.overwrite:
        raise UserError(f"{out} holds an unfinished run; continue it with --resume or pass --overwrite")
    return out


def _param_groups(model: NimbleModel, stage: Stage, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters for the stage; no weight decay on biases and LayerNorm weights (BERT)."""
    chosen = list(stage.trainable(model)) if stage.trainable else list(model.parameters())
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) in ids:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(stage: Stage, total: int):
    warm = int(stage.warmup * total)

    def factor(step: int) -> float:
        if stage.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def evaluate(model: NimbleModel, loader: DataLoader, knobs: dict[str, Any]) -> dict[str, float]:
    return metrics(predict_loader(model, loader, **knobs), model.num_labels)


def _fault_pause(what: str) -> None:
    """Tests only: with ``NIMBLEBERT_TEST_CHECKPOINT_PAUSE=SECONDS`` set, say on stderr that a checkpoint is half
    written and wait, so that the resume-under-faults test can SIGKILL the run exactly there."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        sys.stderr.write(f"{PAUSE_MARK} {what}\n")
        sys.stderr.flush()
        time.sleep(float(pause))


def _write_checkpoint(ckpt: Path, model: NimbleModel, state: dict[str, Any], extra: dict[str, Any] | None) -> None:
    """Write a checkpoint so that a kill at any moment leaves the previous one whole.

    Each write gets new file names (``model-N.safetensors``, ``optimizer-N.pt``), each written atomically;
    ``state.json`` is replaced last and names them, so it always points at one consistent set (weights, optimizer,
    schedule and RNG of the same step). Files it no longer names are removed afterwards. Overwriting fixed names
    in place instead would let a kill between two files pair new weights with an old step.
    """
    # A number above every file present (the one state.json names included), so no write reuses a live name.
    names = (re.fullmatch(r"(?:model|optimizer)-(\d+)\.(?:safetensors|pt)", f.name) for f in ckpt.glob("*"))
    present = [int(m.group(1)) for m in names if m]
    serial = max([int(state.get("serial", 0)), *present]) + 1
    files = {"model": f"model-{serial}.safetensors"}
    save_tensors(ckpt / files["model"], model.state_dict())
    if extra is not None:
        files["optimizer"] = f"optimizer-{serial}.pt"
        # our own file: read back with weights_only=True
        atomic_write(ckpt / files["optimizer"], lambda p: torch.save(extra, p))
    _fault_pause(f"step {state.get('step')} of stage {state.get('stage')}")
    state.update(serial=serial, files=files)
    write_json(ckpt / "state.json", state)
    keep = set(files.values())
    for old in [*ckpt.glob("model-*.safetensors"), *ckpt.glob("optimizer-*.pt")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)


def save_checkpoint(ckpt: Path, model: NimbleModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                    accelerator: Accelerator, state: dict[str, Any]) -> None:
    """Everything a resumed run needs (see :func:`_write_checkpoint`); ``state`` gains the files' names."""
    if accelerator.is_main_process:
        blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
        _write_checkpoint(ckpt, model, state, blob)
    accelerator.wait_for_everyone()


def checkpoint_file(ckpt: Path, state: dict[str, Any], kind: str) -> Path:
    """The checkpoint's ``kind`` file ("model" or "optimizer") that ``state.json`` names (older runs: fixed names)."""
    default = {"model": "model.safetensors", "optimizer": "optimizer.pt"}[kind]
    return ckpt / state.get("files", {}).get(kind, default)


class _Log:
    def __init__(self, path: Path, main: bool) -> None:
        self.path, self.main = path, main

    def write(self, record: dict[str, Any]) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def train(
    model: NimbleModel,
    stages: list[Stage],
    train_data: Any,
    validation_data: Any,
    opts: TrainOptions,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run ``stages`` in order and save the final model to ``opts.out``.

    Args:
        train_data / validation_data: encoded datasets (see :func:`nimblebert.data.encode`).
        stop_after: tests only — stop (as if killed) after this many optimizer steps in total.

    Returns: a summary with the best validation metrics of each stage and the training time.
    """
    # Without a GPU, cpu=True is what makes Accelerate start gloo under torchrun (MULTI_CPU);
    # with one, Accelerate picks the device (and NCCL under a launcher) itself.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    out = Path(opts.out)
    ckpt = out / CHECKPOINT_DIR
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not opts.resume:
            shutil.rmtree(ckpt, ignore_errors=True)
            (out / LOG_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    log = _Log(out / LOG_FILE, main)
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)

    state: dict[str, Any] = {"stage": 0, "step": 0, "global_step": 0, "best": None, "summary": {}, "elapsed": 0.0}
    if opts.resume:
        state = json.loads((ckpt / "state.json").read_text())
        model.load_state_dict(load_tensors(checkpoint_file(ckpt, state, "model")))
        log.write({"event": "resume", "stage": state["stage"], "step": state["step"]})
    model.to(accelerator.device)
    val_loader = make_loader(validation_data, model.tokenizer, opts.eval_batch_size, shuffle=False,
                             bucket_by_length=True)
    start = time.time() - state["elapsed"]

    for si, stage in enumerate(stages):
        if si < state["stage"]:
            continue
        data = stage.train_data if stage.train_data is not None else train_data
        state.setdefault("train_rows", {})[stage.name] = len(data)  # what the stage trained on (augmented sets)
        loader = make_loader(data, model.tokenizer, opts.batch_size, shuffle=True, seed=opts.seed + 1000 * si,
                             bucket_by_length=opts.bucket)
        per_epoch = max(1, len(loader) // world)
        # --max-steps applies to every stage that does not fix its own length.
        total = stage.max_steps or opts.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
        decay = opts.weight_decay if stage.weight_decay is None else stage.weight_decay
        optimizer = torch.optim.AdamW(_param_groups(model, stage, decay), lr=stage.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(stage, total))
        step, best = 0, None
        # Each stage starts from its own seed: a run resumed at a stage boundary (whose checkpoint holds no RNG
        # state) then draws the same dropout masks as an uninterrupted one. Stage 0 keeps the run's seed.
        torch.manual_seed(opts.seed + 1000 * si)
        random.seed(opts.seed + 1000 * si)
        if opts.resume and si == state["stage"] and state["step"] > 0:
            extra = torch.load(checkpoint_file(ckpt, state, "optimizer"), weights_only=True)
            optimizer.load_state_dict(extra["optimizer"])
            scheduler.load_state_dict(extra["scheduler"])
            torch.set_rng_state(extra["torch_rng"])
            random.setstate(extra["python_rng"])
            step, best = state["step"], state["best"]
        wrapped = accelerator.prepare_model(model)  # DDP on several processes, the model itself on one
        eval_every = opts.eval_every or per_epoch

        bar = progress_bar(total, step, stage.name, main and opts.progress)
        # Say what the stage will do, with an estimate from its first steps (a long default recipe must not be
        # announced by nothing but a progress bar).
        clock = StageClock(stage.name, len(data), per_epoch, total, step)
        wrapped.train()
        model.objective = stage.objective
        while step < total:
            epoch, skip = divmod(step, per_epoch)
            if stage.epoch_data is not None:
                # One process builds (and caches) the epoch's set, then the others read that cache: every rank
                # trains on the same rows and no two processes write the cache at once.
                if main:
                    fresh = stage.epoch_data(model, epoch, ckpt / f"epoch-data-{si}")
                accelerator.wait_for_everyone()
                if not main:
                    fresh = stage.epoch_data(model, epoch, ckpt / f"epoch-data-{si}")
                if len(fresh) != len(data):
                    raise ValueError(f"stage {stage.name}: epoch {epoch} has {len(fresh)} rows, not {len(data)}")
                loader = make_loader(fresh, model.tokenizer, opts.batch_size, shuffle=True,
                                     seed=opts.seed + 1000 * si, bucket_by_length=opts.bucket)
                wrapped.train()
            set_epoch(loader, epoch)
            for bi, batch in enumerate(loader):
                if bi // world >= per_epoch or step >= total:
                    break
                if bi % world != rank or bi // world < skip:
                    continue
                parts = wrapped(move(batch, accelerator.device))
                accelerator.backward(parts["loss"])
                if opts.grad_clip:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], opts.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                state["global_step"] += 1
                bar.update(1)
                if (plan := clock.step()) is not None and main:
                    announce(plan)
                if step % opts.log_every == 0 or step == total:
                    log.write({"stage": stage.name, "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                               **{k: float(v.detach()) for k, v in parts.items()}})
                if step % eval_every == 0 or step == total:
                    scores = (stage.evaluate(model, val_loader) if stage.evaluate
                              else evaluate(model, val_loader, stage.eval_knobs))
                    wrapped.train()
                    value = scores.get(stage.metric, 0.0)
                    log.write({"stage": stage.name, "step": step, "event": "eval", **scores})
                    if stage.select == "best" and (best is None or value > best):
                        best = value
                        if main:
                            save_tensors(ckpt / f"best-{si}.safetensors", model.state_dict())
                        state["summary"][stage.name] = scores
                    elif stage.select == "last":
                        state["summary"][stage.name] = scores
                if step % opts.save_every == 0 or step == total:
                    save_checkpoint(ckpt, model, optimizer, scheduler, accelerator, {
                        **state, "stage": si, "step": step, "best": best, "elapsed": time.time() - start})
                if stop_after is not None and state["global_step"] >= stop_after:
                    bar.close()
                    if step % opts.save_every != 0 and step != total:
                        save_checkpoint(ckpt, model, optimizer, scheduler, accelerator, {
                        **state, "stage": si, "step": step, "best": best, "elapsed": time.time() - start})
                    raise StopTraining(f"stopped after {stop_after} steps")
        bar.close()
        accelerator.wait_for_everyone()
        if stage.select == "best" and (ckpt / f"best-{si}.safetensors").exists():
            model.load_state_dict(load_tensors(ckpt / f"best-{si}.safetensors", accelerator.device))
        model.objective = None
        state.update(stage=si + 1, step=0, best=None)
        step = 0
        if main:
            state["elapsed"] = time.time() - start
            _write_checkpoint(ckpt, model, state, None)  # the next stage starts fresh: no optimizer to keep
        accelerator.wait_for_everyone()

    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    summary = {"stages": state["summary"], "train_rows": state.get("train_rows", {}),
               "train_seconds": round(time.time() - start, 1),
               "options": asdict(opts), "processes": world}
    if main:
        model.save(out)
        write_json(out / "train_summary.json", summary)
        shutil.rmtree(ckpt, ignore_errors=True)
        log.write({"event": "done", **{k: v for k, v in summary.items() if k != "options"}})
    accelerator.wait_for_everyone()
    return summary
