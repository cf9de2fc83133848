"""Per-call overhead, before and after a change, in ONE process: the same models run by this checkout's
nimblebert and by the package as it was at another commit, timed interleaved on the same sentences.

Two runs of ``benchmarks/overhead.py`` minutes apart differ by the machine's drift (10-20 % on these shared
machines), which is as large as the change measured; here both versions take turns call by call, so the drift hits
both alike. The older package is extracted from git (``git archive COMMIT src/nimblebert``) into a temporary folder
and imported under another name (its imports are relative).

    python benchmarks/overhead_ab.py --threads 1 --before 0903e3c --fast /work/main/runs/fast \
        --dyna-fast /work/main/runs/dyna-fast

Another change's comparison publishes beside that one under its own ``--name`` (e.g. ``overhead_ab_int8_width``
with ``--dyna-fast runs/dyna-fast --width 0.25``: the int8 runtime's fused Q·K·V at a live width).

For each model and runtime: batch-1 p50 of the full model (speed 0) and of a sentence that leaves after layer 1
(speed 1), warm (each contender over every sentence in turn) and interleaved (contenders take turns sentence by
sentence), and the operator calls one call dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
from common import ROOT, env_line, environment, in_repo
from overhead import aten_ops, timed


def import_package_at(commit: str, name: str = "nimblebert_before") -> Any:
    """``src/nimblebert`` as it was at ``commit``, imported as ``name``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src/nimblebert"], check=True,
                          capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="nimblebert-ab-"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "nimblebert").rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the git commit to compare this checkout with")
    ap.add_argument("--fast", default="runs/fast")
    ap.add_argument("--dyna-fast", default="", help="also FastBERT on DynaBERT (width live), at --width")
    ap.add_argument("--width", type=float, default=0.5, help="the width --dyna-fast runs at")
    ap.add_argument("--name", default="overhead_ab",
                    help="the section's name: another change's comparison (overhead_ab_<what>) sits beside the first")
    ap.add_argument("--data", default="mr")
    ap.add_argument("--max-length", type=int, default=64)
    common.add_options(ap, bootstrap=False, timing={1: 100}, threads_default=1)
    ap.add_argument("--check-speeds", default="0.3,0.5,0.7",
                    help="speeds at which both versions' predictions are compared on the whole split ('' = none)")
    opts = ap.parse_args()
    common.use_threads(opts.threads)
    t_start = time.time()

    import nimblebert
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import latency_batches
    from nimblebert.data import encode, load_task, make_loader

    old = import_package_at(opts.before)
    old_run = importlib.import_module(f"{old.__name__}.inference").run
    new_run = importlib.import_module("nimblebert.inference").run

    specs = [("fast", in_repo(opts.fast), {})] + ([(f"dyna-fast w{opts.width:g}", in_repo(opts.dyna_fast),
                                                    {"width": opts.width})] if opts.dyna_fast else [])
    first = nimblebert.load(specs[0][1])
    task = load_task(opts.data, label_names=first.label_names)
    split = "test" if task.test is not None else "validation"
    b1 = latency_batches(first, encode(getattr(task, split), first.tokenizer, opts.max_length, task.has_pair),
                         1, opts.b1_examples)

    speeds = [float(v) for v in opts.check_speeds.split(",") if v.strip()]
    encoded = encode(getattr(task, split), first.tokenizer, opts.max_length, task.has_pair)
    loader = make_loader(encoded, first.tokenizer, 64, shuffle=False, bucket_by_length=True)
    rows, checks = [], []
    for tag, folder, extra in specs:
        for rt in ("fp32", "int8"):
            fns, models = {}, {}
            for code, pkg, run in (("before", old, old_run), ("after", nimblebert, new_run)):
                model = models[code] = pkg.load(folder, runtime=rt).eval()
                for speed in (0.0, 1.0):
                    knobs = model.check_knobs({**extra, "speed": speed})
                    fns[(code, speed)] = (lambda m, k, r: lambda b: r(m, b, k))(model, knobs, run)
            # The same exits before and after: accuracy, mean exit layer and agreement on the whole split.
            for speed in speeds:
                preds = {code: importlib.import_module(f"{pkg.__name__}.inference").predict_loader(
                    models[code], loader, **extra, speed=speed)
                    for code, pkg in (("before", old), ("after", nimblebert))}
                a, b = preds["before"], preds["after"]
                checks.append({"model": tag, "runtime": rt, "speed": speed,
                               "before_accuracy": float((a.predicted == a.labels).float().mean()),
                               "after_accuracy": float((b.predicted == b.labels).float().mean()),
                               "before_mean_layers": float(a.layers.float().mean()),
                               "after_mean_layers": float(b.layers.float().mean()),
                               "agreement": float((a.predicted == b.predicted).float().mean()),
                               "same_exit_layer": float((a.layers == b.layers).float().mean())})
            named = {f"{code} speed={speed:g}": fn for (code, speed), fn in fns.items()}
            inter = compare_latency(named, b1, 1, rounds=opts.rounds)
            with torch.inference_mode():
                warm = {name: timed(fn, b1, opts.rounds) for name, fn in named.items()}
                ops = {name: aten_ops(fn, b1[0]) for name, fn in named.items()}
            for code in ("before", "after"):
                full, ex = f"{code} speed=0", f"{code} speed=1"
                rows.append({"model": tag, "runtime": rt, "code": code,
                             "full_p50_ms": inter[full]["p50_ms"], "exit1_p50_ms": inter[ex]["p50_ms"],
                             "ratio": round(inter[ex]["p50_ms"] / inter[full]["p50_ms"], 4),
                             "warm_full_p50_ms": warm[full]["p50_ms"], "warm_exit1_p50_ms": warm[ex]["p50_ms"],
                             "warm_ratio": round(warm[ex]["p50_ms"] / warm[full]["p50_ms"], 4),
                             "full_ops": ops[full], "exit1_ops": ops[ex]})
            print(rows[-2], rows[-1], file=sys.stderr, flush=True)

    env = {**environment(), "minutes": round((time.time() - t_start) / 60, 1)}
    data = {"before": opts.before, "after": git_head(), "data": opts.data, "b1_examples": len(b1), "rows": rows,
            "checks": checks, "split": split, "environment": env}
    md = render(data, common.command_line())
    common.publish(opts.name, md, data, headline=None, docs=common.docs_folder(opts))  # docs/ when not given
    print(md)


def git_head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def render(data: dict[str, Any], command: str) -> str:
    lines = [
        f"## Per-call overhead before and after, in one process: `{data['before']}` → `{data['after']}`",
        "",
        f"`{command}`. The package at `{data['before']}` (*before*) and this checkout at `{data['after']}` "
        f"(*after*) run the same folders, taking turns on {data['b1_examples']} `{data['data']}` test sentences one "
        "at a time (batch 1, p50 ms). *Interleaved*: every call follows the other contenders' calls (cold caches); "
        "*warm*: each contender over every sentence in turn. Ratio: exit after layer 1 ÷ full model (ideal 1/6). "
        "Ops: operator calls one call dispatches.",
        "",
        "| model | runtime | code | full ms | exit after layer 1 ms | ratio | warm full ms | warm exit ms | warm ratio "
        "| ops full / exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['runtime']} | {r['code']} | {r['full_p50_ms']:.2f} | {r['exit1_p50_ms']:.2f} "
              f"| {r['ratio']:.3f} | {r['warm_full_p50_ms']:.2f} | {r['warm_exit1_p50_ms']:.2f} "
              f"| {r['warm_ratio']:.3f} | {r['full_ops']} / {r['exit1_ops']} |" for r in data["rows"]]
    if data.get("checks"):
        lines += ["", f"The same exits before and after, on the whole {data['split']} split: accuracy, mean exit "
                  "layer, share of sentences with the same prediction and the same exit layer.", "",
                  "| model | runtime | speed | accuracy before / after | mean layers before / after | same prediction "
                  "| same exit layer |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['model']} | {c['runtime']} | {c['speed']:g} | {c['before_accuracy']:.4f} / "
                  f"{c['after_accuracy']:.4f} | {c['before_mean_layers']:.3f} / {c['after_mean_layers']:.3f} "
                  f"| {c['agreement']:.4f} | {c['same_exit_layer']:.4f} |" for c in data["checks"]]
    lines += ["", env_line(data["environment"]) + " The process is pinned to one core."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
