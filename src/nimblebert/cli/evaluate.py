"""``nimblebert evaluate DIR --data NAME``: accuracy, macro-F1, layers run, FLOPs, throughput, latency."""

from __future__ import annotations

import argparse
import json
import time

from .common import add_data_flags, add_knob_flags, add_runtime_flag, knob_values, positive


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
    add_runtime_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import encode, load_task, make_loader
    from ..inference import metrics, predict_loader
    from ..model import load

    model = load(args.model, runtime=args.runtime)
    knobs = model.method_spec.check_knobs(knob_values(args))
    task = load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column, label_names=model.label_names)
    split = args.split if getattr(task, args.split) is not None else "validation"
    encoded = encode(getattr(task, split), model.tokenizer, args.max_length, task.has_pair)
    loader = make_loader(encoded, model.tokenizer, args.batch_size, shuffle=False, bucket_by_length=True)
    t0 = time.perf_counter()
    preds = predict_loader(model, loader, **knobs)
    seconds = time.perf_counter() - t0
    result = {"model": args.model, "method": model.method, "runtime": model.runtime, "data": args.data, "split": split,
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
