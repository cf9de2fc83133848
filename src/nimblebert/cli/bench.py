"""``nimblebert bench MODEL... --data NAME --out DIR``: accuracy, FLOPs and measured speed, one table.

Every model (at every knob setting given with ``--sweep``) is timed interleaved with the baselines a
user would pick instead, on the same inputs, in the same run: the plain transformers version of the first
model (sdpa and eager attention; the faster is the baseline every speed-up is quoted against) and, unless
``--no-onnx``, that model exported to ONNX and run with onnxruntime in float32 and dynamic int8 (and so is every
other folder that exports to ONNX as it is: a static one). ``--runtime fp32,int8`` runs every folder at every knob
setting on both of nimblebert's runtimes, so that ``pick`` chooses among settings and backends. Every row's
accuracy is measured on the same evaluation batches. Writes ``results.jsonl`` / ``.csv`` / ``.md``,
``pareto.png`` and ``meta.json``; ``nimblebert pick`` reads the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import add_data_flags, add_runtime_flag, check_out_folder, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="accuracy / FLOPs / latency table of several models (first = baseline)")
    p.add_argument("models", nargs="+", help="model folders; the first one's plain transformers model is the baseline")
    add_data_flags(p)
    p.add_argument("--out", required=True, help="folder for results.jsonl / .csv / .md, pareto.png (and onnx/)")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--sweep", action="append", default=[], metavar="KNOB=V1,V2,...",
                   help="knob values to sweep for the models that have the knob (repeatable)")
    p.add_argument("--rounds", type=positive(int, "--rounds"), default=3, help="timing passes over the inputs")
    p.add_argument("--b1-examples", type=positive(int, "--b1-examples"), default=100)
    p.add_argument("--b1-block", type=positive(int, "--b1-block"), default=10,
                   help="batch 1: sentences each contender runs in a row per turn of the interleaving (1 = sentence "
                        "by sentence, where each call pays for the caches the contender before it filled)")
    p.add_argument("--b32-examples", type=positive(int, "--b32-examples"), default=640)
    p.add_argument("--threads", type=positive(int, "--threads"), default=None,
                   help="CPU threads for every contender (torch and onnxruntime alike; default: torch's). On a "
                        "machine shared with other jobs, 1 avoids OpenMP threads waiting on each other")
    add_runtime_flag(p, multiple=True)
    p.add_argument("--no-onnx", action="store_true",
                   help="skip the onnxruntime baselines (the first model exported to ONNX, fp32 and int8)")
    p.set_defaults(run=run)


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    sweep = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--sweep {item!r}: write KNOB=V1,V2 (e.g. --sweep speed=0,0.3,0.6)")
        name, values = item.split("=", 1)
        sweep[name.strip().replace("-", "_")] = [v for v in values.split(",") if v.strip()]
    return sweep


def _label(path: str, short: bool, names: list[str], values: tuple) -> str:
    return (Path(path).name if short else path) + "".join(f" {k}={v}" for k, v in zip(names, values, strict=True))


def run(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from ..bench.latency import environment
    from ..bench.measure import (
        add_speedups,
        evaluate_logits,
        hf_contender,
        measure_latency,
        nimble_contender,
        transformers_baselines,
        weights_size_mb,
    )
    from ..bench.pareto import run_command
    from ..bench.report import write_results
    from ..data import encode, load_task, make_loader
    from ..inference import metrics, predict_loader
    from ..io import atomic_write
    from ..model import load

    check_out_folder(args.out)
    sweep = parse_sweep(args.sweep)
    if len(set(args.models)) != len(args.models):
        raise UserError("a model folder is given twice; give each once (sweep its knobs with --sweep)")
    if args.threads:
        torch.set_num_threads(args.threads)  # OrtModel sessions take the same count
    if not args.no_onnx:
        from ..export.onnx import require_onnx

        require_onnx()  # before minutes of evaluation, not after
    runtimes = list(args.runtime) or [None]  # None: each folder's own runtime
    models = [load(m, runtime=runtimes[0]) for m in args.models]
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
    out = Path(args.out)

    def params_m(module: torch.nn.Module) -> float:
        return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)

    # ---- nimblebert's models at every knob setting -------------------------------------------------
    rows, contenders = [], {}
    # Rows are named by folder name, or by the path given when two folders share a name (runs/a/model, ...).
    short = len({Path(p).name for p in args.models}) == len(args.models)
    loaded = [(path, model) for path, model in zip(args.models, models, strict=True)]
    for runtime in runtimes[1:]:
        loaded += [(path, load(path, runtime=runtime)) for path in args.models]
    tagged = len(set(runtimes)) > 1 or any(m.runtime != "fp32" for _, m in loaded)
    for path, model in loaded:
        names = [k.name for k in model.knobs() if k.name in sweep]
        for values in itertools.product(*(sweep[n] for n in names)):
            knobs = model.check_knobs(dict(zip(names, values, strict=True)))
            label = _label(path, short, names, values) + (f" [{model.runtime}]" if tagged else "")
            if label in contenders:
                raise UserError(f"--runtime {model.runtime} is given twice; give each runtime once")
            preds = predict_loader(model, loader, **knobs)
            rows.append({"name": label, "path": path, "method": model.describe(), "runtime": "nimblebert",
                         "precision": model.runtime,
                         "static": is_static(model), "knobs": knobs, **metrics(preds, model.num_labels),
                         "params_m": params_m(model), "size_mb": weights_size_mb(model.source)})
            contenders[label] = nimble_contender(model, knobs)
            sys.stderr.write(f"{label}: accuracy {rows[-1].get('accuracy', float('nan')):.4f}\n")

    # ---- the baselines a user would pick instead: the first model's plain transformers model ------
    first_path, first_static = args.models[0], is_static(first)
    base = {"path": first_path, "static": first_static, "knobs": {}, "params_m": params_m(first.hf)}
    if first.source:
        for name, hf in transformers_baselines(first.source).items():
            contenders[name] = hf_contender(hf)
            impl = name.split("-", 1)[1]
            rows.append({"name": name, "method": "transformers", "runtime": "transformers",
                         "attn_implementation": impl, **base,
                         **evaluate_logits(contenders[name], first, loader),
                         "size_mb": weights_size_mb(first.source, ("model.safetensors",))})
    onnx_report = None
    if not args.no_onnx:
        from ..bench.onnx import onnx_baselines

        sys.stderr.write("exporting the baseline to ONNX (fp32 and int8)\n")
        # ONNX is exported from the float32 modules (an int8-runtime model's Linears run torch's quantized kernels).
        def fp32(model: Any, path: str) -> Any:
            return model if model.runtime == "fp32" else load(path, runtime="fp32")

        sessions, onnx_report = onnx_baselines(fp32(first, first_path), out / "onnx")
        for name, session in sessions.items():
            contenders[name] = session
            rows.append({"name": name, "method": "onnxruntime", "runtime": "onnxruntime", **base,
                         **evaluate_logits(session, first, loader), "onnx_file": str(session.path),
                         "size_mb": round(session.path.stat().st_size / 1e6, 2)})
            sys.stderr.write(f"{name}: accuracy {rows[-1].get('accuracy', float('nan')):.4f}\n")
        # The other folders that export to ONNX as they are (static: no knob left) are backends to choose from too.
        for k, (path, model) in enumerate(zip(args.models[1:], models[1:], strict=True), 1):
            if not is_static(model):
                continue
            label = Path(path).name if short else path
            sys.stderr.write(f"exporting {label} to ONNX (fp32 and int8)\n")
            sessions, _ = onnx_baselines(fp32(model, path), out / "onnx" / f"{k}-{Path(path).name}")
            for name, session in sessions.items():
                row_name = f"{label} [{name}]"
                contenders[row_name] = session
                rows.append({"name": row_name, "method": "onnxruntime", "runtime": "onnxruntime", "path": path,
                             "static": True, "knobs": {}, "params_m": params_m(model.hf),
                             **evaluate_logits(session, model, loader), "onnx_file": str(session.path),
                             "size_mb": round(session.path.stat().st_size / 1e6, 2)})
                sys.stderr.write(f"{row_name}: accuracy {rows[-1].get('accuracy', float('nan')):.4f}\n")

    # ---- latency of everything, interleaved on the same inputs -------------------------------------
    torch.manual_seed(0)
    lat = measure_latency(contenders, first, encoded, examples={1: args.b1_examples, 32: args.b32_examples},
                          rounds=args.rounds, blocks={1: args.b1_block})
    add_speedups(lat)
    # The baseline of each table: the faster plain transformers contender (what add_speedups divides by).
    bases = {tag: min((n for n in lat[table] if n.startswith("transformers-")),
                      key=lambda n, t=table: lat[t][n]["ms_per_sample"], default=None)
             for tag, table in (("b1", "batch1"), ("b32", "batch32"))}
    baseline_flops = next((r["flops_per_sample"] for r in rows if r["runtime"] == "transformers"),
                          rows[0]["flops_per_sample"])
    for row in rows:
        b1, b32 = lat["batch1"][row["name"]], lat["batch32"][row["name"]]
        row.update(b1_ms=b1["p50_ms"], b1_p90_ms=b1["p90_ms"], b1_speedup=b1.get("speedup"),
                   b32_ms_per_sample=b32["ms_per_sample"], b32_samples_per_s=b32["samples_per_s"],
                   b32_speedup=b32.get("speedup"))
        # FLOPs are relative to the plain model (the baseline), not to whichever row came first.
        row["flops_speedup"] = round(baseline_flops / row["flops_per_sample"], 3)
        row["baseline"] = [tag for tag, name in bases.items() if name == row["name"]]
        row["command"] = run_command(row)
    meta = {"data": args.data, "split": split, "examples": len(encoded), "b1_examples": args.b1_examples,
            "b1_block": args.b1_block,
            "b32_examples": args.b32_examples, "baseline": bases, "environment": environment(),
            "onnx": onnx_report, "latency": lat}
    write_results(out, rows, meta)
    atomic_write(out / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    print((out / "results.md").read_text())
    return 0


def is_static(model: Any) -> bool:
    """Whether every component of the model's stack leaves a plain transformers model (no knob, no module)."""
    return all(c.spec.static or c.fixed for c in model.stack)
