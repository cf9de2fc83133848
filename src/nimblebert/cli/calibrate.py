"""``nimblebert calibrate DIR --data NAME``: the model's ladder of knob settings (see :mod:`nimblebert.ladder`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_data_flags, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure accuracy and cost of the model's knob settings on validation "
                                         "data; store the Pareto ladder in the folder (ladder.json)")
    p.add_argument("model", help="a model folder written by nimblebert")
    add_data_flags(p)
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"],
                   help="split to calibrate on (default validation: keep the test split for reporting)")
    p.add_argument("--batch-size", type=positive(int, "--batch-size"), default=64)
    p.add_argument("--max-settings", type=positive(int, "--max-settings"), default=60,
                   help="at most this many knob settings (the grid is thinned evenly beyond)")
    p.add_argument("--time", action="store_true", help="also record the measured ms per sample of each setting")
    p.add_argument("--json", action="store_true", help="print the ladder as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import encode, load_task
    from ..errors import UserError
    from ..ladder import LADDER_FILE, calibrate, grid, save_ladder, stuck_message
    from ..model import load

    if not Path(args.model).is_dir():
        raise UserError(f"{args.model} is not a local model folder: calibrate writes {LADDER_FILE} into the folder")
    model = load(args.model)
    task = load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column, label_names=model.label_names)
    split = getattr(task, args.split)
    if split is None:
        raise UserError(f"--data {args.data} has no {args.split} split; pick another with --split")
    encoded = encode(split, model.tokenizer, args.max_length, task.has_pair)
    settings = grid(model, args.max_settings)
    ladder = calibrate(model, encoded, args.batch_size, settings, measure_time=args.time,
                       meta={"data": args.data, "split": args.split, "max_length": args.max_length})
    path = save_ladder(args.model, ladder)
    for name in ladder.stuck:
        sys.stderr.write(f"calibrate: {stuck_message(ladder, name)}\n")
    if args.json:
        print(json.dumps(ladder.to_json()))
        return 0
    print(f"{len(ladder.rungs)} rungs on the Pareto front of {len(settings)} settings "
          f"({len(encoded)} {args.split} examples), written to {path}")
    for i, r in enumerate(ladder.rungs):
        knobs = " ".join(f"{k}={v}" for k, v in r.knobs.items()) or "(no knobs)"
        ms = f"  {r.ms_per_sample:.3f} ms/sample" if r.ms_per_sample is not None else ""
        print(f"{i:>3}  {knobs:<32} acc {r.accuracy:.4f}  agree {r.agreement:.4f}  layers {r.mean_layers:.2f}  "
              f"FLOPs ×{r.flops_speedup:.2f}{ms}")
    return 0
