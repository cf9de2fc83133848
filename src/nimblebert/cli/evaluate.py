"""``nimblebert evaluate DIR --data NAME``: accuracy, macro-F1, layers run, FLOPs, throughput, latency."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .common import add_data_flags, add_knob_flags, add_runtime_flag, add_target_flags, positive, resolve_knobs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, layers used, FLOPs and speed of a model on a dataset")
    p.add_argument("model", help="a model folder written by nimblebert (or transformers)")
    add_data_flags(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="split to evaluate (test falls back to validation when the data has none)")
    p.add_argument("--batch-size", type=positive(int, "--batch-size"), default=64)
    p.add_argument("--latency", action="store_true",
                   help="also measure latency at batch 1 and 32 against the plain transformers model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_knob_flags(p)
    add_target_flags(p)
    add_runtime_flag(p)
    p.set_defaults(run=run)


def _load_task_for(model: Any, args: argparse.Namespace) -> Any:
    """The data, with the model's labels; only the split evaluated is read (test falls back to validation): a bad
    row elsewhere is not the problem, and reading a big train split would cost time for nothing."""
    from ..data import load_task
    from ..errors import UserError

    try:
        return load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                         label_column=args.label_column, label_names=model.label_names,
                         splits=("validation", "test") if args.split == "test" else (args.split,))
    except UserError as e:
        if "is unknown" in str(e) and model.label_names == [f"LABEL_{i}" for i in range(len(model.label_names))]:
            # transformers' placeholder names: a base model whose classifier was never trained for a task
            raise UserError(f"{args.model} has no labels of its own (transformers' placeholders LABEL_0...): it was "
                            f"not fine-tuned for a task; fine-tune it first: nimblebert train finetune --model "
                            f"{args.model} --data {args.data} --out ...") from None
        raise


def _say_when_knobs_saved_nothing(model: Any, args: argparse.Namespace, knobs: dict[str, Any], loader: Any,
                                  preds: Any) -> None:
    """Issue 20: a knob turned by hand (e.g. --speed 0.8 on a model whose branches are never that confident) that
    ran every sample at the whole model's cost gets one line on stderr saying so, and what to ask instead."""
    import torch

    from ..bench.measure import full_model_flops
    from .common import knob_values

    given = knob_values(args)
    moved = {k.name: knobs[k.name] for k in model.knobs()
             if k.name in given and k.full is not None and knobs.get(k.name) != k.full}
    if not moved or preds.flops.numel() == 0:
        return
    full = torch.cat([full_model_flops(model, batch["attention_mask"]) for batch in loader]).mean()
    if float(preds.flops.mean()) >= float(full) * (1 - 1e-6):
        said = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in moved.items())
        sys.stderr.write(f"evaluate: {said} saved nothing on this data (every example ran at the whole model's cost "
                         f"or more; mean layers {float(preds.layers.float().mean()):.2f}): ask for a cost with "
                         "--target-speedup or --target-layers, mapped through the model's calibrated ladder\n")


def run(args: argparse.Namespace) -> int:
    from ..data import encode, make_loader
    from ..inference import metrics, predict_loader
    from ..model import load

    model = load(args.model, runtime=args.runtime)
    knobs = resolve_knobs(model, args)
    task = _load_task_for(model, args)
    split = args.split if getattr(task, args.split) is not None else "validation"
    encoded = encode(getattr(task, split), model.tokenizer, args.max_length, task.has_pair)
    loader = make_loader(encoded, model.tokenizer, args.batch_size, shuffle=False, bucket_by_length=True)
    t0 = time.perf_counter()
    preds = predict_loader(model, loader, **knobs)
    seconds = time.perf_counter() - t0
    _say_when_knobs_saved_nothing(model, args, knobs, loader, preds)
    result = {"model": args.model, "method": model.method, "stack": model.methods, "runtime": model.runtime,
              "data": args.data, "split": split,
              **metrics(preds, model.num_labels), "knobs": knobs,
              "eval_samples_per_s": round(len(encoded) / seconds, 2)}
    if args.latency:
        from ..bench.latency import environment
        from ..bench.measure import (
            add_speedups,
            hf_contender,
            measure_latency,
            nimble_contender,
            transformers_baselines,
        )

        contenders = {"nimblebert": nimble_contender(model, knobs)}
        if model.source:
            contenders.update({k: hf_contender(m) for k, m in transformers_baselines(model.source).items()})
        lat = measure_latency(contenders, model, encoded)
        add_speedups(lat)
        result["latency"] = lat
        result["environment"] = environment()
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("accuracy", "macro_f1", "examples", "mean_layers", "flops_per_sample", "eval_samples_per_s",
                    "mean_tokens_in", "mean_tokens_kept"):
            if key in result:
                value = result[key]
                print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
        if knobs:
            print(f"{'knobs':>20}: {knobs}")
        for bs, table in result.get("latency", {}).items():
            for name, entry in table.items():
                print(f"{bs:>8} {name:>20}: p50 {entry['p50_ms']:.2f} ms  p90 {entry['p90_ms']:.2f} ms  "
                      f"{entry['ms_per_sample']:.3f} ms/sample  ×{entry.get('speedup', 1):.2f}")
    return 0
