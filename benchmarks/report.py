"""The efficiency report: every composition of the `mr` grid on every CPU runtime (fp32, fp32-onednn, bf16-onednn,
int8, ort-int8), both training seeds, against plain transformers and onnxruntime fp32 / int8 of the teacher, timed
in ONE interleaved run.

The goal it shows or refutes (issue 17): within 1 point of the teacher ≥ 10× at batch 1 and batch 32, within 3
points ≥ 20×, and ≥ 3× ahead of onnxruntime's dynamic int8 of the teacher; two training seeds.

- Models: the grid of ``compose_mr.py`` (FastBERT, TinyBERT 3 layers, DynaBERT and their stacks), per seed: seed
  42 in ``runs/``, seed 43 in ``runs/seed43/`` (for another dataset ``runs/<data>/`` and ``runs/<data>/seed43/``).
  One teacher per dataset (``runs/teacher-<data>``), trained once, shared by both seeds. ``--train`` trains what is
  missing with the same recipe and ``--seed N``; otherwise missing folders are listed and left out.
- Selection: per model, runtime (``nimblebert.load(folder, runtime=...)``: see :data:`RUNTIMES`) and budget (0, 1
  and 3 points below the teacher's *validation* accuracy), every knob setting runs on validation *under that
  runtime* (int8 changes the logits the exit rule reads, so exits are re-checked, never assumed) and the one with
  the fewest FLOPs within the budget is kept (``--val-examples N``: chosen on a fixed random N of the validation
  examples); it is then run once on test. Δ: paired difference from the fp32
  teacher on the same test sentences, bootstrap 95% interval.
- Timing: all chosen settings and the baselines (transformers eager and sdpa: the baseline is the faster; the
  nimblebert teacher in fp32, fp32-onednn, bf16-onednn and int8; onnxruntime fp32 and dynamic int8 of the teacher,
  from ``nimblebert export --format onnx [--int8]``, in onnxruntime's default session, and the int8 graph once more
  without the SkipLayerNormalization fusion, ``onnxruntime-int8-tuned``) are timed interleaved in one run, batch 1
  (p50, mean, p90) and batch 32 (per sentence, bucketed by length). Headline ×: batch-1 p50 (median) and batch-32
  median batch time per sentence.
- Accuracies (validation sweep and test predictions) are kept in ``bench/report_cache.json``, keyed by the model's
  weight files, the runtime, the setting and a hash of the code that computes logits (core, runtime, methods,
  inference), so a second run only times; timing is never cached.

Writes ``docs/efficiency_<data>.json`` (everything), its section (``docs/sections/efficiency_<data>.md``, in
``docs/results.md``), the README's results table and the Pareto chart ``docs/efficiency_<data>.png``. ``--render``
redraws the Markdown and the chart from the JSON alone.

    python benchmarks/report.py --threads 1                       # mr, seeds 42 and 43
    python benchmarks/report.py --data chnsenti --threads 1       # once runs/teacher-chnsenti exists
    python benchmarks/report.py --render                          # Markdown and chart from docs/efficiency_mr.json
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import compose_mr
from common import ROOT, cli, finished

from nimblebert.runtime.segments import LiveStructure

BUDGETS = (0.0, 0.01, 0.03)
GOALS = {0.01: 10.0, 0.03: 20.0}  # budget -> the speed-up issue 17 asks for, at batch 1 and at the big batch
GOAL_VS_ORT = 3.0  # × ahead of onnxruntime int8 of the teacher
# ort-int8 (onnxruntime segments, exits between them: benchmarks/ort_segments_mr.py) runs the models it can: exits and
# DynaBERT's width live (graphs per width), not token cuts; the others are left out of that runtime.
# fp32-onednn: the same float32 products on oneDNN-packed weights (nimblebert.runtime.onednn), same accuracy as fp32;
# bf16-onednn: those products in bfloat16 (AMX where the CPU has it; refused, so left out, on CPUs without bfloat16).
RUNTIMES = ("fp32", "fp32-onednn", "bf16-onednn", "int8", "ort-int8")
DEFAULT_SEED = 42  # the seed every training command uses when --seed is not given
TEACHERS = {"mr": "runs/teacher-mr", "chnsenti": "runs/teacher-chnsenti"}
BIG = 32
ORT_INT8 = "onnxruntime-int8"
CACHE = ROOT / "bench" / "report_cache.json"
# The code whose change changes logits: a cached accuracy is only reused under the same code. export/: the ort-int8
# runtime's graphs are traced from the static model (export/static.py) and rewritten by export/onnx.py.
NUMERICS = ("core", "runtime", "methods", "export", "inference.py", "model.py")


# ---- models ---------------------------------------------------------------------------------------

def seed_runs(runs: str, data: str, seed: int) -> str:
    """The folder holding one seed's students: ``runs`` (mr, seed 42), ``runs/seed43``, ``runs/chnsenti/seed43``."""
    base = runs if data == "mr" else f"{runs}/{data}"
    return base if seed == DEFAULT_SEED else f"{base}/seed{seed}"


def adapt(cmd: list[str], data: str, length: int, seed: int) -> list[str]:
    """A grid command of compose_mr (written for mr at 64 tokens) for ``data``, ``length`` tokens and ``seed``."""
    out = list(cmd)
    for flag, value in (("--data", data), ("--importance-data", data), ("--max-length", str(length))):
        if flag in out:
            out[out.index(flag) + 1] = value
    if out[0] == "train" and seed != DEFAULT_SEED:
        out += ["--seed", str(seed)]
    return out


def grid_of(runs: str, teacher: str, data: str, length: int, seed: int) -> list[dict[str, Any]]:
    """compose_mr's grid for one dataset and seed: name, folder, parts and the command that makes each model."""
    grid = compose_mr.chains(seed_runs(runs, data, seed), teacher)
    for g in grid:
        g["make"] = adapt(g["make"], data, length, seed)
        g["seed"] = seed
        g["command"] = "nimblebert " + " ".join(a.replace("{out}", g["out"]) for a in g["make"])
    return grid


def only(grid: list[dict[str, Any]], names: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``--only``: the grid's models named in ``names`` (comma-separated: a model's name, or its folder's name, which
    a name with a comma in it, ``dynabert → fastbert, w0.75 fixed``, needs), and the names of the ones left out."""
    wanted = {n.strip() for n in names.split(",")}
    unknown = wanted - {g["name"] for g in grid} - {Path(g["out"]).name for g in grid}
    if unknown:
        raise SystemExit(f"--only: no model of the grid is called {', '.join(sorted(unknown))} (a name, or a "
                         f"folder name such as dyna-fast-w75)")
    kept = [g for g in grid if g["name"] in wanted or Path(g["out"]).name in wanted]
    return kept, list(dict.fromkeys(g["name"] for g in grid if g not in kept))


def teacher_length(teacher: str, default: int) -> int:
    """The teacher's training max length (its train_summary.json), which the students and the report use."""
    summary = Path(teacher) / "train_summary.json"
    try:
        return int(json.loads(summary.read_text())["options"]["max_length"])
    except (OSError, KeyError, TypeError, ValueError):
        return default


# ---- accuracy cache -------------------------------------------------------------------------------

def code_hash() -> str:
    """A short hash of the source files that compute logits (see :data:`NUMERICS`)."""
    import nimblebert

    src = Path(nimblebert.__file__).parent
    h = hashlib.sha256()
    for name in NUMERICS:
        p = src / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(src)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def weights_stamp(folder: str) -> str:
    """Names, sizes and modification times of a folder's weights and config: a retrained folder misses the cache."""
    parts = []
    for f in sorted(Path(folder).glob("*.safetensors")) + [Path(folder) / "config.json"]:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts)


class Cache:
    """Accuracy results on disk, so that a timing run need not re-evaluate (see the module docstring)."""

    def __init__(self, path: Path, code: str, enabled: bool = True) -> None:
        self.path, self.code, self.enabled = path, code, enabled
        self.data: dict[str, Any] = {}
        if enabled and path.exists():
            self.data = json.loads(path.read_text())

    def key(self, data: str, split: str, folder: str, runtime: str, knobs: dict[str, float]) -> str:
        return json.dumps([self.code, data, split, str(Path(folder).resolve()), weights_stamp(folder), runtime,
                           sorted(knobs.items())])

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key) if self.enabled else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two runs may fill the cache at once (e.g. --accuracy-only per seed on each core): under a lock, merge what
        # the other wrote since we read, so that neither run's entries are lost, then replace the file atomically.
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.data = {**json.loads(self.path.read_text()), **self.data}
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)


def evaluate(model: Any, loader: Any, knobs: dict[str, float], keep: bool) -> dict[str, Any]:
    """Metrics of ``model`` at ``knobs`` on ``loader``; with ``keep``, the per-example predictions too (for the
    paired comparison with the teacher)."""
    from nimblebert.inference import metrics, predict_loader

    preds = predict_loader(model, loader, **knobs)
    m = metrics(preds, model.num_labels)
    out = {k: m[k] for k in ("accuracy", "macro_f1", "mean_layers", "flops_per_sample", "examples")}
    if keep:
        out["predicted"] = preds.predicted.tolist()
    return out


def logits_predicted(fn: Any, loader: Any) -> list[int]:
    """Predicted labels (in the data's order) of any logits function: a plain transformers model, an onnxruntime
    session."""
    import torch

    from nimblebert.bench.measure import HF_INPUTS

    logits, index = [], []
    with torch.inference_mode():
        for batch in loader:
            logits.append(torch.as_tensor(fn({k: v for k, v in batch.items() if k in HF_INPUTS})).float())
            index.append(batch["index"])
    return torch.cat(logits)[torch.argsort(torch.cat(index))].argmax(-1).tolist()


# ---- the run --------------------------------------------------------------------------------------

def label_of(g: dict[str, Any], knobs: dict[str, float], runtime: str, seeds: list[int]) -> str:
    seed = f" · seed {g['seed']}" if len(seeds) > 1 else ""
    return f"{compose_mr.label_of(g['name'], knobs)} · {runtime}{seed}"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from nimblebert import load
    from nimblebert.bench.measure import (
        add_speedups,
        hf_contender,
        measure_latency,
        nimble_contender,
        transformers_baselines,
    )
    from nimblebert.bench.onnx import onnx_baselines
    from nimblebert.data import encode, make_loader
    from nimblebert.errors import UserError

    t_start = time.time()
    cli("data", "prepare", args.data)
    if not finished(args.teacher):
        raise SystemExit(f"no teacher in {args.teacher}: fine-tune it first (benchmarks/finetune_mr.py for mr)")
    length = teacher_length(args.teacher, args.max_length)
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [g for s in seeds for g in grid_of(args.runs, args.teacher, args.data, length, s)]
    excluded: list[str] = []  # the grid's models this run leaves out (--only): the section names them
    if args.only:
        grid, excluded = only(grid, args.only)
    missing = []
    for g in grid:
        if finished(g["out"]):
            continue
        if not args.train:
            missing.append(g)
            continue
        extra = common.train_flags(g["out"]) if g["make"][0] == "train" else []
        cli(*[a.replace("{out}", g["out"]) for a in g["make"]], *extra, capture=False)
    for g in missing:
        print(f"left out (not trained; --train makes it): {g['command']}", file=sys.stderr)
    grid = [g for g in grid if finished(g["out"])]

    cache = Cache(CACHE, code_hash(), enabled=not args.no_cache)
    base = common.teacher_baseline(args.teacher, args.data, length)
    teacher = base.teacher
    validation = base.task.validation
    val_total = len(validation)
    val_split = "validation"
    if args.val_examples and args.val_examples < val_total:  # a fixed subset: its own cache entries
        validation = validation.shuffle(seed=0).select(range(args.val_examples))
        val_split = f"validation[{args.val_examples} of {val_total}, seed 0]"
    val_enc = encode(validation, teacher.tokenizer, length, base.task.has_pair)
    val_loader = make_loader(val_enc, teacher.tokenizer, 64, shuffle=False, bucket_by_length=True)
    teacher_val = evaluate(teacher, val_loader, {}, keep=False)
    teacher_correct = base.correct
    base_flops = base.metrics["flops_per_sample"]

    def paired(predicted: list[int]) -> tuple[dict[str, float], float]:
        pred = np.asarray(predicted)
        labels = base.predictions.labels.numpy()
        vs = common.paired_bootstrap(teacher_correct, pred == labels, args.bootstrap)
        agree = float((pred == base.predictions.predicted.numpy()).mean())
        return vs, agree

    # ---- per phase (one seed at a time: the models a seed's timing holds, every model on every runtime, take
    # ~10 GB; both seeds' do not fit in 24): selection on validation, per model, runtime and budget; test once per
    # chosen setting; then those settings timed interleaved with the baselines, and compared with the baselines of
    # their own phase
    # ---- the baselines: what a user would run instead (timed beside every phase's models) --------------
    base_rows: list[dict[str, Any]] = []
    baseline_fns: dict[str, Any] = {}
    onnx_report = None
    if not args.accuracy_only:
        onnx_dir = Path(tempfile.mkdtemp(prefix="report_onnx_"))
        sessions, onnx_report = onnx_baselines(teacher, onnx_dir)
        plain = transformers_baselines(args.teacher)
        # The unchanged teacher on nimblebert's other CPU runtimes: their predictions are measured, never copied.
        teachers = {}
        for rt in ("fp32-onednn", "bf16-onednn", "int8"):
            try:
                teachers[f"nimblebert teacher · {rt}"] = (rt, load(args.teacher, runtime=rt))
            except UserError as e:  # bf16-onednn on a CPU without bfloat16 instructions
                print(f"teacher: no {rt} row: {e}", file=sys.stderr)
        baselines: dict[str, tuple[str, Any, Any]] = {  # label -> (group, timed function, predicted labels)
            **{name: ("transformers", hf_contender(m), None) for name, m in plain.items()},
            **{name: ("onnxruntime", fn, None) for name, fn in sessions.items()},
            "nimblebert teacher · fp32": ("nimblebert fp32", nimble_contender(teacher, {}),
                                          base.predictions.predicted.tolist()),
            **{name: (f"nimblebert {rt}", nimble_contender(m, {}), None) for name, (rt, m) in teachers.items()},
        }
        for name, (group, fn, predicted) in baselines.items():
            if predicted is None:
                key = cache.key(args.data, base.split, args.teacher, name, {})
                hit = cache.get(key)
                if hit is None:
                    if name in teachers:
                        hit = evaluate(teachers[name][1], base.loader, {}, keep=True)
                    else:  # onnxruntime int8 changes predictions: measured, never copied from the teacher
                        hit = {"predicted": logits_predicted(fn, base.loader)}
                    # the ONNX files are re-exported on every run: same weights, but cached only for this code
                    cache.put(key, hit)
                predicted = hit["predicted"]
            vs, agree = paired(predicted)
            runtime = teachers[name][0] if name in teachers else _runtime_of(name)
            base_rows.append({"label": name, "kind": "baseline", "group": group, "runtime": runtime,
                              "accuracy": float(np.mean(np.asarray(predicted) == base.predictions.labels.numpy())),
                              "vs_teacher": vs, "agreement_with_teacher": agree,
                              "mean_layers": base.metrics["mean_layers"], "flops_per_sample": base_flops,
                              "flops_speedup": 1.0})
            baseline_fns[name] = fn

    candidates: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    timing_minutes = 0.0

    def time_phase(phase: list[int], phase_rows: list[dict[str, Any]], contenders: dict[str, Any]) -> float:
        """Time this phase's settings interleaved with the baselines; fill its rows' times (and, in the first phase,
        the baselines'), each against the baselines timed beside it; returns the minutes it took."""
        contenders.update(baseline_fns)
        print(f"timing {len(contenders)} contenders interleaved (seeds {phase}) ...", file=sys.stderr, flush=True)
        t_time = time.time()
        torch.manual_seed(0)
        lat = measure_latency(contenders, teacher, base.encoded, batch_sizes=(1, BIG),
                              examples={1: args.b1_examples, BIG: args.batch_examples}, rounds=args.rounds,
                              blocks={1: args.b1_block})
        add_speedups(lat)
        b1_mean_base = common.plain_mean_ms(lat["batch1"])
        ort1, ortb = lat["batch1"][ORT_INT8], lat[f"batch{BIG}"][ORT_INT8]
        for r in phase_rows + (base_rows if not phases else []):
            b1, bb = lat["batch1"][r["label"]], lat[f"batch{BIG}"][r["label"]]
            mean = 1e3 / b1["samples_per_s"]
            r.update({"b1_p50_ms": b1["p50_ms"], "b1_mean_ms": round(mean, 3), "b1_p90_ms": b1["p90_ms"],
                      "b1_speedup": b1["speedup"], "b1_mean_speedup": round(b1_mean_base / mean, 3),
                      f"b{BIG}_ms_per_sample": bb["ms_per_sample"], f"b{BIG}_speedup": bb["speedup"]})
            r.update({"b1_over_flops": over_flops(r, 1, BIG), f"b{BIG}_over_flops": over_flops(r, BIG, BIG),
                      "vs_ort_int8": {"b1": round(ort1["p50_ms"] / b1["p50_ms"], 3),
                                      f"b{BIG}": round(ortb["ms_per_sample"] / bb["ms_per_sample"], 3)}})
        phases.append({"seeds": phase, "latency": lat})
        return (time.time() - t_time) / 60

    for phase in ([s] for s in seeds):
        models: dict[tuple[str, str], Any] = {}
        phase_rows: list[dict[str, Any]] = []
        contenders: dict[str, Any] = {}
        for g in [g for g in grid if g["seed"] in phase]:
            for runtime in RUNTIMES:
                try:
                    model = load(g["out"], runtime=runtime)
                except UserError as e:  # a live width or token cut on ort-int8, bf16 on a CPU without it (says why)
                    print(f"{g['name']} (seed {g['seed']}): no {runtime} row: {e}", file=sys.stderr)
                    continue
                own = []
                for knobs in compose_mr.settings_of(model):
                    key = cache.key(args.data, val_split, g["out"], runtime, knobs)
                    m = cache.get(key)
                    if m is None:
                        m = evaluate(model, val_loader, knobs, keep=False)
                        cache.put(key, m)
                    own.append({"name": g["name"], "seed": g["seed"], "runtime": runtime, "knobs": knobs,
                                "val_accuracy": m["accuracy"], "val_flops": m["flops_per_sample"],
                                "val_mean_layers": m["mean_layers"]})
                candidates += own
                mine: dict[str, dict[str, Any]] = {}  # this model's chosen settings on this runtime, by label
                for budget in BUDGETS:
                    ok = [c for c in own if c["val_accuracy"] >= teacher_val["accuracy"] - budget - 1e-9]
                    if not ok:
                        continue
                    best = min(ok, key=lambda c: (c["val_flops"], -c["val_accuracy"]))
                    label = label_of(g, best["knobs"], runtime, seeds)
                    entry = mine.setdefault(label, {**best, "label": label, "kind": "model", "budgets": [],
                                                    "parts": g["parts"], "folder": g["out"], "command": g["command"]})
                    entry["budgets"].append(budget)
                print(f"{g['name']} (seed {g['seed']}, {runtime}): {len(own)} settings on validation", file=sys.stderr,
                      flush=True)
                # Test once per chosen setting, now, while the model is loaded: an accuracy-only pass then holds one
                # model at a time (both seeds' passes fit side by side), a timed one only what it times.
                for label, c in mine.items():
                    key = cache.key(args.data, base.split, c["folder"], c["runtime"], c["knobs"])
                    m = cache.get(key)
                    if m is None:
                        m = evaluate(model, base.loader, c["knobs"], keep=True)
                        cache.put(key, m)
                    vs, agree = paired(m["predicted"])
                    phase_rows.append({**c, **{k: v for k, v in m.items() if k != "predicted"}, "vs_teacher": vs,
                                       "agreement_with_teacher": agree,
                                       "flops_speedup": base_flops / m["flops_per_sample"]})
                    if not args.accuracy_only:
                        contenders[label] = nimble_contender(model, c["knobs"])
                if mine and not args.accuracy_only:
                    models[(g["out"], runtime)] = model
                    if isinstance(getattr(model, "segments", None), LiveStructure):  # only the timed widths' graphs
                        model.segments.keep_only([c["knobs"] for c in mine.values()])
                del model
                release_memory()

        rows += phase_rows
        if not args.accuracy_only:
            timing_minutes += time_phase(phase, phase_rows, contenders)
        models.clear()  # this phase's models go before the next phase loads its own
        contenders.clear()
        release_memory()

    if args.accuracy_only:
        return {}
    lat = phases[0]["latency"]  # the baseline rows' times: the first phase's

    env = common.environment()
    env["minutes"] = round((time.time() - t_start) / 60, 1)
    env["timing_minutes"] = round(timing_minutes, 1)
    return {"data": args.data, "command": common.command_line(), "teacher": args.teacher, "length": length,
            "seeds": seeds, "seed_folders": {str(s): seed_runs(args.runs, args.data, s) for s in seeds},
            "budgets": list(BUDGETS), "goals": {str(k): v for k, v in GOALS.items()},
            "goal_vs_ort_int8": GOAL_VS_ORT, "big_batch": BIG, "b1_examples": args.b1_examples,
            "big_examples": args.batch_examples, "rounds": args.rounds, "b1_block": args.b1_block,
            "bootstrap": args.bootstrap,
            "sweeps": {k: list(v) for k, v in compose_mr.SWEEPS.items()},
            "teacher_test": {k: base.metrics[k] for k in ("accuracy", "macro_f1", "examples", "flops_per_sample")},
            "teacher_validation": teacher_val, "validation_examples": len(val_enc), "validation_total": val_total,
            "test_examples": len(base.encoded), "code_hash": cache.code,
            "grid": [{k: g[k] for k in ("name", "seed", "parts", "out", "command")} for g in grid],
            "missing": [g["command"] for g in missing], "excluded": excluded,
            "onnx_check": onnx_report if isinstance(onnx_report, dict) else None, "candidates": candidates,
            "baselines": base_rows, "rows": rows, "latency": lat, "timing_phases": phases, "environment": env}


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise): exporting onnxruntime segments
    leaves hundreds of MB of freed ONNX protos in the heap, and the report holds every model of both seeds on every
    runtime at once (12.7 GB for one seed without this, on a 24 GB machine)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _runtime_of(name: str) -> str:
    if name.startswith("transformers-"):
        return "fp32 (" + name.split("-", 1)[1] + ")"
    return "int8" if "int8" in name else "fp32"


# ---- rendering (from the JSON alone) --------------------------------------------------------------

def cpu_name(env: dict[str, Any]) -> str:
    return env.get("cpu_model") or env.get("cpu", {}).get("model", "?")


def env_text(env: dict[str, Any]) -> str:
    cpu = cpu_name(env)
    isa = env.get("isa") or ", ".join(env.get("cpu", {}).get("isa", []))
    pinned = f", pinned to CPU {','.join(map(str, env['affinity']))}" if env.get("affinity") else ""
    return (f"{cpu} ({isa}), {env.get('threads')} thread(s){pinned}, torch {env.get('torch')}, {env.get('date')}, "
            f"{env.get('minutes')} min in all ({env.get('timing_minutes')} min of timing)")


def best_rows(result: dict[str, Any], seed: int, budget: float, key: str) -> dict[str, Any] | None:
    """The fastest (by ``key``) of a seed's settings chosen on validation within ``budget``."""
    within = [r for r in result["rows"] if r["seed"] == seed and budget in r["budgets"]]
    return max(within, key=lambda r: r[key], default=None)


def goal_table(result: dict[str, Any]) -> str:
    """Per seed, budget and batch size: the fastest setting chosen within the budget, against the goal."""
    big = result["big_batch"]
    if not result["rows"]:
        # no student trained on this data yet: a goal table of "none within the budget" would read as a verdict
        cells = [f"{b['label']} ({b['runtime']}) {b['accuracy']:.4f}, {b['b1_speedup']:.2f}× / "
                 f"{b[f'b{big}_speedup']:.2f}×" for b in result["baselines"]]
        return ("No student trained on this data yet (the commands are in the section), so the goal is not measured "
                f"here; the teacher's baselines, test accuracy and × at batch 1 / {big}: " + "; ".join(cells) + ".")
    lines = ["| seed | budget (validation) | batch | fastest setting chosen | test Δ vs teacher [95% CI] (points) | "
             "× plain transformers (goal) | × onnxruntime int8 (goal 3×) |", "|---" * 7 + "|"]
    for seed in result["seeds"]:
        for budget in result["budgets"]:
            goal = result["goals"].get(str(budget))
            for batch, key in ((1, "b1_speedup"), (big, f"b{big}_speedup")):
                r = best_rows(result, seed, budget, key)
                if r is None:
                    lines.append(f"| {seed} | ≤ {100 * budget:g} pt | {batch} | none within the budget | — | — | — |")
                    continue
                x, ort = r[key], r["vs_ort_int8"][f"b{batch}"]
                target = f" ({x / goal:.0%} of {goal:g}×)" if goal else ""
                # the budget is kept on validation; say so where the test's point estimate lost more (the goal
                # counts the test's loss), rather than let the speed-up's percentage read as a met goal
                over = " · over the budget on test" if r["vs_teacher"]["diff"] < -budget - 1e-9 else ""
                lines.append(f"| {seed} | ≤ {100 * budget:g} pt | {batch} | {r['label']} | "
                             f"{common.points_ci(r['vs_teacher'])}{over} | "
                             f"{x:.2f}×{target} | {ort:.2f}× ({ort / result['goal_vs_ort_int8']:.0%} of "
                             f"{result['goal_vs_ort_int8']:g}×) |")
    return "\n".join(lines)


def over_flops(r: dict[str, Any], batch: int, big: int) -> float:
    """Measured speed-up ÷ FLOPs speed-up of row ``r`` at ``batch``. FLOPs × is a mean over the examples, so at batch
    1 the measured speed-up it is set against is the mean time's (throughput), not the p50's: with early exits the
    median sentence leaves early, and a p50 would credit the runtime with savings the FLOPs already count. At batch
    ``big`` every batch mixes early and late rows: its median batch time per sentence."""
    speedup = r["b1_mean_speedup"] if batch == 1 else r[f"b{big}_speedup"]
    return speedup / r["flops_speedup"]


def flops_checks(result: dict[str, Any]) -> str:
    """Measured ÷ FLOPs speed-up per runtime and batch size: the lowest and the median over the chosen settings
    (issue 17: ≥ 0.9 for every fp32 row; int8 rows should be above 1)."""
    import statistics

    big = result["big_batch"]
    lines = ["| runtime | batch | lowest measured ÷ FLOPs speed-up (setting) | median | goal |", "|---" * 5 + "|"]
    for runtime, goal in (("fp32", "≥ 0.9 every row"), ("fp32-onednn", "≥ 0.9 every row"), ("bf16-onednn", "> 1"),
                          ("int8", "> 1"), ("ort-int8", "> 1")):
        own = [r for r in result["rows"] if r["runtime"] == runtime]
        for batch in (1, big):
            if not own:
                continue
            low = min(own, key=lambda r: over_flops(r, batch, big))
            lines.append(f"| {runtime} | {batch} | {over_flops(low, batch, big):.2f} ({low['label']}) | "
                         f"{statistics.median(over_flops(r, batch, big) for r in own):.2f} | {goal} |")
    return "\n".join(lines)


def main_table(result: dict[str, Any]) -> str:
    big = result["big_batch"]
    head = ("| setting (chosen on validation) | runtime | seed | budget | test acc. | Δ vs teacher [95% CI] (points) | "
            f"mean layers | FLOPs × | b1 p50 / mean / p90 ms | b1 × (p50) | b1 × (mean) | b{big} ms/sent. | "
            f"b{big} × | b1 ÷ FLOPs (mean) | b{big} ÷ FLOPs | × ORT int8 b1 / b{big} |")
    lines = [head, "|---" * 16 + "|"]
    order = {}
    for g in result["grid"]:
        order.setdefault(g["name"], len(order))

    def row(r: dict[str, Any], name: str, seed: str, budget: str) -> str:
        return (f"| {name} | {r['runtime']} | {seed} | {budget} | {r['accuracy']:.4f} | "
                f"{common.points_ci(r['vs_teacher'])} | "
                f"{r['mean_layers']:.2f} | {r['flops_speedup']:.2f} | {r['b1_p50_ms']:.2f} / {r['b1_mean_ms']:.2f} / "
                f"{r['b1_p90_ms']:.2f} | {r['b1_speedup']:.2f} | {r['b1_mean_speedup']:.2f} | "
                f"{r[f'b{big}_ms_per_sample']:.3f} | {r[f'b{big}_speedup']:.2f} | {over_flops(r, 1, big):.2f} | "
                f"{over_flops(r, big, big):.2f} | {r['vs_ort_int8']['b1']:.2f} / {r['vs_ort_int8'][f'b{big}']:.2f} |")

    for r in result["baselines"]:
        lines.append(row(r, f"**{r['label'].split(' · ')[0]}**", "—", "—"))
    rows = sorted(result["rows"], key=lambda r: (order[r["name"]], r["runtime"], min(r["budgets"]), r["seed"]))
    for r in rows:
        budgets = " & ".join(f"≤ {100 * b:g}" for b in r["budgets"])
        lines.append(row(r, compose_mr.label_of(r["name"], r["knobs"]), str(r["seed"]), budgets))
    return "\n".join(lines)


SHORT = ((" (width live)", ""), ("tinybert3", "tiny3"), ("dynabert", "dyna"), ("fastbert", "fast"), (" → ", "→"),
         (" @ ", " "), ("speed ", "s"), ("width ", "w"), (" · seed ", " · s"))


def short(label: str) -> str:
    """A chart label short enough not to squeeze the axes: ``dyna→fast s0.8, w0.5 · int8 · s42``."""
    for old, new in SHORT:
        label = label.replace(old, new)
    return label


def chart_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows as :func:`nimblebert.bench.pareto.plot_pareto` reads them: colour = runtime, the plain transformers
    model as the baseline star, onnxruntime int8 as the reference diamond."""
    big = result["big_batch"]
    out = []
    for r in result["baselines"]:
        out.append({"name": r["label"], "accuracy": r["accuracy"], "b1_speedup": r["b1_speedup"],
                    "b32_speedup": r[f"b{big}_speedup"], "method": r["group"],
                    "baseline": r["group"] == "transformers", "reference": r["label"] == ORT_INT8})
    for r in result["rows"]:
        out.append({"name": short(r["label"]), "accuracy": r["accuracy"], "b1_speedup": r["b1_speedup"],
                    "b32_speedup": r[f"b{big}_speedup"], "method": f"nimblebert {r['runtime']}"})
    return out


def render(result: dict[str, Any], chart: str) -> tuple[str, str]:
    """The section (docs/results.md) and the README block, from the JSON alone."""
    big, env = result["big_batch"], result["environment"]
    tt, tv = result["teacher_test"], result["teacher_validation"]
    command = common.quoted_command(result["command"])
    lat1 = result["latency"]["batch1"]
    plain = ", ".join(f"{k.split('-', 1)[1]} {v['p50_ms']:.2f}" for k, v in lat1.items()
                      if k.startswith("transformers-"))
    swept = "; ".join(f"{k} {', '.join(f'{v:g}' for v in vals)}" for k, vals in result["sweeps"].items()
                      if any(k in c["knobs"] for c in result["candidates"]))
    seeds = result["seeds"]
    recipe = "\n".join(f"  - {g['name']}: `{g['command']}`" for g in result["grid"] if g["seed"] == seeds[0])
    folders = result.get("seed_folders", {})
    other_seeds = "".join(f"; seed {s}: the same commands with `--seed {s}`, folders under "
                          f"`{folders.get(str(s), '?')}/`" for s in seeds[1:])
    missing = ("\n- Not trained, left out: " + "; ".join(f"`{c}`" for c in result["missing"])) if result["missing"] \
        else ""
    data = result["data"]
    runtimes = [rt for rt in RUNTIMES if any(r["runtime"] == rt for r in result["rows"])]
    ort_note = ("\n  ort-int8 = `nimblebert.load(folder, runtime=\"ort-int8\")`: onnxruntime int8 segments, one graph "
                "per layer, speed live, a live width with graphs per width (models with token cuts have no ort-int8 "
                "row); its sessions leave out onnxruntime's SkipLayerNormalization fusion (slower here), as "
                "onnxruntime-int8-tuned does for the teacher's int8 graph."
                if "ort-int8" in runtimes else "")
    amx = "AMX on this CPU" if "amx_bf16" in env_text(env) else "no AMX on this CPU"
    phases = result.get("timing_phases") or []
    phased = ""
    if len(phases) > 1:  # one timing per seed, each with the baselines beside it
        per = "; ".join(f"seed {', '.join(map(str, p['seeds']))}: " + ", ".join(
            f"{k} {v['p50_ms']:.2f}" for k, v in p["latency"]["batch1"].items()
            if k.startswith("transformers-") or k == ORT_INT8) for p in phases)
        phased = (f"\n- Timed in {len(phases)} phases, one per seed (every model of one seed on every runtime fills "
                  "~15 GB: both seeds do not fit in memory at once), each seed's settings interleaved with the "
                  "baselines and compared with the baselines of their own phase; the baseline rows show the first "
                  "phase's times "
                  f"(batch-1 p50 ms per phase: {per}).")
    bf16_note = ("\n  bf16-onednn = `nimblebert.load(folder, runtime=\"bf16-onednn\")`: the Transformer layers' "
                 f"products in bfloat16 on oneDNN ({amx}), every knob live." if "bf16-onednn" in runtimes else "")
    # with no student trained yet the section holds the teacher's baselines only: say so instead of an empty grid;
    # a run restricted with --only names its models, and the grid's others below
    excluded = result.get("excluded", [])
    names = ", ".join(dict.fromkeys(g["name"] for g in result["grid"]))
    scope = (f"{'every composition' if not excluded else names} × {{{', '.join(runtimes)}}}, {len(seeds)} seed(s)"
             if runtimes else "the teacher's baselines (no student trained yet)")
    if excluded:
        missing += ("\n- Left out of this run (`--only`), the rest of the grid: " + ", ".join(excluded)
                    + " (`benchmarks/compose_mr.py` has their commands)")
    swept = swept or "none: no student"
    block = result.get("b1_block", 1)  # runs before the option timed sentence by sentence
    turns = ("the contenders taking turns sentence by sentence" if block == 1 else
             f"the contenders taking turns {block} sentences at a time (a turn's first call pays for the caches "
             "the previous contender filled; a server running one model does not)")
    # CPUs differ: the title says which, and when (two hosts may report the same CPU name: the date tells the
    # sections apart)
    cpu = cpu_name(env) + (f", {str(env['date']).split()[0]}" if env.get("date") else "")
    n_val, all_val = result["validation_examples"], result.get("validation_total", result["validation_examples"])
    val_text = (f"the {n_val} validation examples" if n_val == all_val else
                f"{n_val} of the {all_val} validation examples (a fixed random subset, seed 0, on which every "
                "setting is chosen)")
    md = f"""## Efficiency report on `{data}` ({cpu}): {scope}, one run{", timed per seed" if len(phases) > 1 else ""}

`{command}` — teacher `{result['teacher']}`: {tt['accuracy']:.4f} on the {result['test_examples']} test
examples, {tv['accuracy']:.4f} on {val_text} (max {result['length']}
tokens, {tt['flops_per_sample'] / 1e6:.0f} MFLOPs per test example). CPU: {env_text(env)}.

- Settings: per model, runtime and budget (0, 1, 3 points below the teacher's validation accuracy), every knob
  setting ({swept}) runs on validation *under that runtime*; the one with the fewest FLOPs within the budget is
  run once on test. Δ: paired difference from the fp32 teacher on the same test examples, bootstrap 95% interval
  ({result['bootstrap']} resamples). int8 = `nimblebert.load(folder, runtime="int8")`, exits and widths live.\
{bf16_note}{ort_note}
- ×: speed-up over the faster plain transformers teacher (eager / sdpa), every row timed interleaved in this run
  ({result['rounds']} rounds): batch 1 over {result['b1_examples']} examples, {turns} — **headline: p50
  (median)**, mean = throughput, p90 — and batch {big} over {result['big_examples']} (bucketed by length, median batch
  time per sentence). Plain transformers at batch 1: {plain} ms (p50). × ORT int8: the same times against onnxruntime's
  dynamic int8 of the teacher (`nimblebert export {result['teacher']} --format onnx --int8`) in onnxruntime's default
  session, what one line of onnxruntime runs (onnxruntime-int8-tuned, when there: the same graph without onnxruntime's
  SkipLayerNormalization fusion, as nimblebert's onnxruntime sessions run).{phased}
- Goal (issue 17): within 1 point ≥ {result['goals']['0.01']:g}× at batch 1 and batch {big}, within 3 points ≥
  {result['goals']['0.03']:g}×, and ≥ {result['goal_vs_ort_int8']:g}× ahead of onnxruntime int8.

Fastest setting per seed, budget and batch size, against the goal:

{goal_table(result)}

![accuracy against measured speed-up, batch 1 and {big}]({chart})

Measured speed-up ÷ FLOPs speed-up over the chosen settings (1 = every saved FLOP saved time; at batch 1 from the
mean time, as FLOPs × is a mean over the examples: a p50 would flatter early exits):

{flops_checks(result)}

Every chosen setting and the baselines:

{main_table(result)}

- Models, seed {seeds[0]} (each from the folder before{other_seeds}):
{recipe}{missing}
"""
    # a subset's accuracy is not the teacher's validation accuracy quoted elsewhere: name the subset
    val_short = "validation" if n_val == all_val else f"validation ({n_val} of {all_val} rows)"
    # The baseline's own speed: two hosts that report the same CPU name and flags can differ twofold (two Intel
    # Xeon VMs, 2026-12-06 and -07: plain transformers 7.1 against 14.7 ms at batch 1), and every × here is over it.
    plain_rows = [b for b in result["baselines"] if b["label"].startswith("transformers-")]
    base_speed = (f"plain transformers {min(b['b1_p50_ms'] for b in plain_rows):.2f} ms at batch 1, "
                  f"{min(b[f'b{big}_ms_per_sample'] for b in plain_rows):.2f} ms per sentence at batch {big}; "
                  if plain_rows else "")
    headline = (f"**Efficiency on `{data}`** (`{command}`; teacher {tt['accuracy']:.4f} test / "
                f"{tv['accuracy']:.4f} {val_short}; × over plain transformers in the same run, batch 1 p50; "
                f"{base_speed}{env_text(env)}):\n\n{goal_table(result)}\n\n![Pareto chart](docs/{Path(chart).name})\n")
    return md, headline


def default_name(data: str) -> str:
    return f"efficiency_{data.replace('-', '_')}"


def publish(result: dict[str, Any], docs: str | None) -> str:
    from nimblebert.bench.pareto import plot_pareto

    name = result.get("name") or default_name(result["data"])
    folder = Path(docs) if docs else common.DOCS
    folder.mkdir(parents=True, exist_ok=True)
    plot_pareto(chart_rows(result), folder / f"{name}.png",
                title=f"{result['data']} test: accuracy vs measured speed-up (every runtime, seeds "
                      f"{', '.join(map(str, result['seeds']))}; {result['environment'].get('threads')} thread)")
    md, headline = render(result, f"{name}.png")
    common.publish(name, md, result, headline, Path(docs) if docs else None)
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mr", choices=sorted(TEACHERS))
    ap.add_argument("--teacher", help="the fine-tuned teacher (default: runs/teacher-<data>)")
    ap.add_argument("--runs", default="runs", help="folder of the trained students (seed 42; others in seed<N>/)")
    ap.add_argument("--seeds", default="42,43", help="comma-separated training seeds of the students")
    ap.add_argument("--train", action="store_true", help="train the students that are missing (slow)")
    ap.add_argument("--only", help="comma-separated models of the grid to include, by name or folder name "
                    "(dyna-fast-w75): a trial, or a report without the models not trained yet")
    ap.add_argument("--max-length", type=int, default=64, help="when the teacher's train_summary.json does not say")
    ap.add_argument("--b1-examples", type=int, default=200)
    ap.add_argument("--batch-examples", type=int, default=640, help=f"examples timed at batch {BIG}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--b1-block", type=int, default=10,
                    help="batch 1: sentences each contender runs in a row per turn (1 = sentence by sentence; a "
                         "turn's first call pays for the caches the previous contender filled)")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--val-examples", type=int, metavar="N",
                    help="choose the settings on a fixed random subset of N validation examples (seed 0) instead of "
                         "all of them; test stays whole (chnsenti: 1,736 rows at 128 tokens; the FastBERT model "
                         "alone takes ~11 min of one core on 868 of them)")
    ap.add_argument("--threads", type=int, help="CPU threads of training and timing (default: torch's)")
    ap.add_argument("--sweep", action="append", default=[], metavar="KNOB=V1,V2",
                    help="the values swept for one knob instead of the default ones (repeatable)")
    ap.add_argument("--no-cache", action="store_true", help=f"re-evaluate every accuracy (no {CACHE.name})")
    ap.add_argument("--accuracy-only", action="store_true",
                    help=f"only fill {CACHE.name} (validation sweep, test predictions) without timing or writing "
                         "docs: run it at low priority first, then the timed run only times")
    ap.add_argument("--docs", help="write the files here instead of docs/ (a trial: no results.md or README)")
    ap.add_argument("--name", help="the section's name (default efficiency_<data>); e.g. efficiency_mr_epyc for the "
                    "same report on another CPU, published beside the default one instead of replacing it")
    ap.add_argument("--render", action="store_true", help="redraw the section and chart from the JSON only")
    args = ap.parse_args()
    os.chdir(ROOT)
    common.use_threads(args.threads)
    for item in args.sweep:
        knob, _, values = item.partition("=")
        compose_mr.SWEEPS[knob.replace("-", "_")] = tuple(float(v) for v in values.split(","))
    args.teacher = args.teacher or TEACHERS[args.data]
    if args.name is not None and not re.fullmatch(r"efficiency_\w+", args.name):
        ap.error(f"--name {args.name!r}: give efficiency_<letters, digits, _> (the README shows efficiency_*)")
    if args.val_examples is not None and args.val_examples < 1:
        ap.error(f"--val-examples {args.val_examples}: give a positive number of examples")
    name = args.name or default_name(args.data)
    if args.render:
        result = json.loads((Path(args.docs or common.DOCS) / f"{name}.json").read_text())
    else:
        result = measure(args)
        if args.accuracy_only:
            return
        result["name"] = name
    print(publish(result, args.docs))


if __name__ == "__main__":
    main()
