"""``nimblebert bench MODEL... --data NAME --out DIR``: accuracy, FLOPs and measured speed, one table.

Every model (at every knob setting given with ``--sweep``) is timed interleaved with the plain
transformers version of the first model (the baseline) on the same inputs, in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from .common import add_data_flags, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="accuracy / FLOPs / latency table of several models (first = baseline)")
    p.add_argument("models", nargs="+", help="model folders; the first one's plain transformers model is the baseline")
    add_data_flags(p)
    p.add_argument("--out", required=True, help="folder for results.jsonl / .csv / .md")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--sweep", action="append", default=[], metavar="KNOB=V1,V2,...",
                   help="knob values to sweep for the models that have the knob (repeatable)")
    p.add_argument("--rounds", type=positive(int, "--rounds"), default=3, help="timing passes over the inputs")
    p.add_argument("--b1-examples", type=positive(int, "--b1-examples"), default=100)
    p.add_argument("--b32-examples", type=positive(int, "--b32-examples"), default=640)
    p.set_defaults(run=run)


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    sweep = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--sweep {item!r}: write KNOB=V1,V2 (e.g. --sweep speed=0,0.3,0.6)")
        name, values = item.split("=", 1)
        sweep[name.strip().replace("-", "_")] = [v for v in values.split(",") if v.strip()]
    return sweep


def run(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from ..bench.latency import environment
    from ..bench.measure import add_speedups, hf_contender, measure_latency, nimble_contender, transformers_baselines
    from ..bench.report import write_results
    from ..data import encode, load_task, make_loader
    from ..inference import metrics, predict_loader
    from ..model import load

    sweep = parse_sweep(args.sweep)
    models = [load(m) for m in args.models]
    first = models[0]
    for m, path in zip(models[1:], args.models[1:], strict=True):
        if m.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise UserError(f"{path} uses a different tokenizer from {args.models[0]}; bench models that share one")
        if m.label_names != first.label_names:
            raise UserError(f"{path} has labels {m.label_names}, {args.models[0]} has {first.label_names}")
    task = load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column, label_names=first.label_names)
    split = args.split if getattr(task, args.split) is not None else "validation"
    encoded = encode(getattr(task, split), first.tokenizer, args.max_length, task.has_pair)
    loader = make_loader(encoded, first.tokenizer, 64, shuffle=False, bucket_by_length=True)

    rows, contenders = [], {}
    baseline_flops = None
    for path, model in zip(args.models, models, strict=True):
        names = [k.name for k in model.method_spec.knobs if k.name in sweep]
        for values in itertools.product(*(sweep[n] for n in names)):
            knobs = model.method_spec.check_knobs(dict(zip(names, values, strict=True)))
            label = Path(path).name + "".join(f" {k}={v}" for k, v in zip(names, values, strict=True))
            preds = predict_loader(model, loader, **knobs)
            row = {"name": label, "path": path, "method": model.method, "knobs": knobs,
                   **metrics(preds, model.num_labels),
                   "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
            if baseline_flops is None:
                baseline_flops = row["flops_per_sample"]
            row["flops_speedup"] = round(baseline_flops / row["flops_per_sample"], 3)
            rows.append(row)
            contenders[label] = nimble_contender(model, knobs)
            sys.stderr.write(f"{label}: accuracy {row.get('accuracy', float('nan')):.4f}\n")
    if first.source:
        contenders.update({k: hf_contender(m) for k, m in transformers_baselines(first.source).items()})
    torch.manual_seed(0)
    lat = measure_latency(contenders, first, encoded, examples={1: args.b1_examples, 32: args.b32_examples},
                          rounds=args.rounds)
    add_speedups(lat)
    for row in rows:
        b1, b32 = lat["batch1"][row["name"]], lat["batch32"][row["name"]]
        row.update(b1_ms=b1["p50_ms"], b1_p90_ms=b1["p90_ms"], b1_speedup=b1.get("speedup"),
                   b32_ms_per_sample=b32["ms_per_sample"], b32_speedup=b32.get("speedup"))
    for name in (n for n in contenders if n.startswith("transformers-")):
        b1, b32 = lat["batch1"][name], lat["batch32"][name]
        rows.append({"name": name, "method": "baseline", "knobs": {}, "b1_ms": b1["p50_ms"], "b1_p90_ms": b1["p90_ms"],
                     "b1_speedup": b1.get("speedup"), "b32_ms_per_sample": b32["ms_per_sample"],
                     "b32_speedup": b32.get("speedup")})
    meta = {"data": args.data, "split": split, "examples": len(encoded), "b1_examples": args.b1_examples,
            "b32_examples": args.b32_examples, "environment": environment(), "latency": lat}
    write_results(Path(args.out), rows, meta)
    (Path(args.out) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print((Path(args.out) / "results.md").read_text())
    return 0
