"""``nimblebert train METHOD``: the shared training flags plus each method's own options."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..methods import get_method, list_methods
from ..train.stages import TrainData, TrainOptions
from .common import (
    OFFICIAL,
    add_config_flags,
    add_data_flags,
    add_recipe_flag,
    config_from_args,
    positive,
    recipe_help,
    recipe_keys,
    recipe_value,
    recipes_of,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with one of the methods")
    msub = p.add_subparsers(dest="method", required=True, parser_class=type(p))
    for name in list_methods():
        method = get_method(name)
        m = msub.add_parser(name, help=method.help, description=method.help)
        g = m.add_argument_group("model")
        g.add_argument("--model", help="base model: built-in alias (minilm-l6), a model folder or a hub id")
        g.add_argument("--teacher", help="fine-tuned teacher folder (distillation methods)")
        g.add_argument("--out", required=True, help="output model folder")
        add_data_flags(m)
        t = m.add_argument_group("training (the same for every method)")
        by_recipe = recipe_keys(method.config_cls)
        t.add_argument("--epochs", type=positive(float, "--epochs"), default=None if "epochs" in by_recipe else 3.0,
                       help="epochs of training" + (recipe_help(method.config_cls, "epochs", 3.0) if "epochs" in
                                                    by_recipe else " (default 3)"))
        t.add_argument("--max-steps", type=positive(int, "--max-steps"), default=None,
                       help="optimizer steps per stage; overrides --epochs")
        t.add_argument("--batch-size", type=positive(int, "--batch-size"), default=32)
        t.add_argument("--lr", type=positive(float, "--lr"), default=None if "lr" in by_recipe else 5e-5,
                       help="learning rate" + (recipe_help(method.config_cls, "lr", 5e-5) if "lr" in by_recipe
                                               else " (default 5e-05)"))
        t.add_argument("--seed", type=int, default=42)
        t.add_argument("--eval-every", type=positive(int, "--eval-every"), default=None,
                       help="steps between validation runs (default: once per epoch"
                            + ("; " + recipe_help(method.config_cls, "eval_every", "per epoch")[2:-1] + ")"
                               if "eval_every" in by_recipe else ")"))
        t.add_argument("--save-every", type=positive(int, "--save-every"), default=100,
                       help="steps between resume checkpoints")
        t.add_argument("--resume", action="store_true", help="continue a killed run in --out")
        t.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")
        t.add_argument("--no-progress", action="store_true", help="no progress bar")
        t.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                       help="a model with knobs: measure every knob setting on the validation split after training "
                            "and store the ladder (ladder.json) that --target-speedup, info and serve read")
        t.add_argument("--bucket", action=argparse.BooleanOptionalAction, default=True,
                       help="training batches of rows of similar length, shuffled within windows (less padding)")
        add_recipe_flag(t, method.config_cls)
        add_config_flags(m, method.config_cls)
        m.set_defaults(run=run)


def training_value(args: argparse.Namespace, config_cls: type, name: str, default: Any) -> Any:
    """A shared training flag (``--epochs``, ``--lr``, ``--eval-every``) as given, else the recipe's value (TinyBERT's
    recipes set them), else ``default``."""
    given = getattr(args, name)
    if given is not None:
        return given
    return recipe_value(config_cls, getattr(args, "recipe", OFFICIAL), name, default)


def training_epochs(args: argparse.Namespace, config_cls: type) -> float:
    """``--epochs`` as given, else the recipe's (TinyBERT's short recipe sets it), else 3."""
    return float(training_value(args, config_cls, "epochs", 3.0))


def training_lr(args: argparse.Namespace, config_cls: type) -> float:
    """``--lr`` as given, else the recipe's (TinyBERT's joint recipe sets it), else 5e-5."""
    return float(training_value(args, config_cls, "lr", 5e-5))


def training_eval_every(args: argparse.Namespace, config_cls: type) -> int | None:
    """``--eval-every`` as given, else the recipe's (TinyBERT's joint recipe sets it), else None (once per epoch)."""
    return training_value(args, config_cls, "eval_every", None)


def run(args: argparse.Namespace) -> int:
    from ..data import encode, load_task
    from ..model import check_head_is_classifier, from_base
    from ..train.loop import check_output_folder, train

    method = get_method(args.method)
    config = config_from_args(method.config_cls, args)
    recipe = getattr(args, "recipe", OFFICIAL)
    epochs = training_epochs(args, method.config_cls)
    opts = TrainOptions(
        out=args.out, model=args.model, teacher=args.teacher, epochs=epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=training_lr(args, method.config_cls), max_length=args.max_length, seed=args.seed,
        eval_every=training_eval_every(args, method.config_cls), save_every=args.save_every, resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress, bucket=args.bucket,
    )
    check_output_folder(opts)
    base = args.model or args.teacher
    if base is None:
        from ..errors import UserError

        raise UserError(f"train {args.method} needs --model (e.g. --model minilm-l6 or a fine-tuned folder)")
    if args.teacher and args.teacher != base:  # from_base checks --model; a separate --teacher's head is read too
        check_head_is_classifier(args.teacher)
    task = load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column)
    import torch

    torch.manual_seed(args.seed)  # the new classifier's initialisation is part of the run's seed
    model = from_base(base, task.label_names, method.name, config)
    train_enc = encode(task.train, model.tokenizer, args.max_length, task.has_pair)
    val_enc = encode(task.validation, model.tokenizer, args.max_length, task.has_pair)
    stages = method.stages(model, opts, TrainData(task, train_enc, val_enc))
    if recipes_of(method.config_cls) and int(os.environ.get("RANK", "0")) == 0:
        # Say which recipe runs (after every check, so that bad input still gets one line): the official one is
        # long, and a first-time user may not know that a short one exists.
        other = ", ".join(f"--recipe {r}" for r in [OFFICIAL, *recipes_of(method.config_cls)] if r != recipe)
        sys.stderr.write(f"{method.name}: {recipe} recipe (explicit flags override it; see also {other})\n")
    summary = train(model, stages, train_enc, val_enc, opts)
    if int(os.environ.get("RANK", "0")) != 0:  # under a launcher, one process reports
        return 0
    sys.stderr.write(f"saved {method.name} model to {args.out} ({summary['train_seconds']} s)\n")
    ladder = None
    if args.calibrate and model.knobs():
        ladder = calibrate_after_training(model, val_enc, args)
    print(json.dumps({"out": args.out, "method": method.name, "recipe": recipe,
                      "train_seconds": summary["train_seconds"], "validation": summary["stages"],
                      **({"ladder_rungs": len(ladder.rungs)} if ladder is not None else {})}))
    return 0


def calibrate_after_training(model, val_enc, args: argparse.Namespace):
    """The trained model's ladder on the validation split (every knob setting's accuracy and cost, Pareto front),
    stored beside it, so that a user can ask for a speed-up instead of a knob value; a knob that never buys speed
    on this data is named in one line."""
    from ..ladder import calibrate, save_ladder, stuck_message

    model.eval()
    ladder = calibrate(model, val_enc, meta={"data": args.data, "split": "validation", "max_length": args.max_length})
    save_ladder(args.out, ladder)
    top, fast = ladder.rungs[0], ladder.rungs[-1]
    sys.stderr.write(f"ladder: {len(ladder.rungs)} calibrated settings on the validation split, from accuracy "
                     f"{top.accuracy:.4f} at {top.flops_speedup:.2f}× FLOPs to {fast.accuracy:.4f} at "
                     f"{fast.flops_speedup:.2f}× (ladder.json; nimblebert info {args.out})\n")
    for name in ladder.stuck:
        sys.stderr.write(f"ladder: {stuck_message(ladder, name)}\n")
    return ladder
