"""NAS-BERT on `mr` (issue 18): two supernets distilled block-wise from the fine-tuned MiniLM-L6 teacher for the
same steps, one with progressive shrinking and one without (the paper's training-time ablation), each searched
under three latency budgets (the teacher's measured batch-1 latency divided by 3, 6 and 10), each chosen network
trained with two-stage distillation — against the same architecture trained from random weights at one budget
(separates the supernet's initialisation from the architecture), a hand-designed BERT-shaped student of about the
same predicted latency through the same distillation (the paper's comparison), and the TinyBERT and DynaBERT
students already trained on the same teacher (runs/s3, runs/s2, runs/dyna-w50, runs/dyna-w25, runs/s3-dyna-w50,
runs/s3-dyna-w25, runs/s2-dyna-w50, runs/s2-dyna-w25; BASELINES).

Two phases, so that training never runs where latency is timed:

    /work/bin/bg python benchmarks/nasbert_mr.py --phase train --teacher-ms 14.25    # supernets, searches, students
    /work/bin/core0 python benchmarks/nasbert_mr.py --phase measure                   # test accuracy, latency, docs
    python benchmarks/nasbert_mr.py --render                                          # the section from its JSON

The published run (runs/nasbert-mr3): the shrinking supernet with latency caps on its bins, retrained with the
same steps and options as runs/nasbert-mr2's, and the no-shrink supernet and its networks of nasbert-mr2 reused
(``--runs runs/nasbert-mr3 --noshrink-runs runs/nasbert-mr2``; runs/nasbert-mr3/train_commands.txt).

``--parts`` picks what the train phase does (supernets, nas, nsn, noshrink, random, hand; several train phases
with different parts may run side by side, e.g. the two supernets at once). ``--teacher-ms``: the teacher's
batch-1 latency at the validation median length, measured on the timing core (14.25 ms when the budgets were first
set; the hand-designed students of --hand-runs were trained for those budgets). The budgets are predicted
latencies (the per-op table of `nimblebert search`); the measure phase reports what they became.

For every network on the test split: accuracy and its paired difference from the teacher on the same sentences
(bootstrap 95% interval), encoder parameters (embeddings and head excluded: every model here shares the teacher's
384-wide embeddings), predicted vs measured batch-1 latency at the search's length (error in %), and speed-ups over
the teacher at batch 1 and 32 on test batches, timed interleaved in the same run. Search cost: supernet training
minutes (wall time on shared cores at low priority: an upper bound), search seconds per budget. Shrinking: at
training time (the two supernets, searched alike) and at search time on the shrunk supernet (block candidates
from the whole space, ``--ignore-shrinking``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

import common
import compose_mr
from common import ROOT, cli, cli_json, environment, finished, points_ci

# TinyBERT and DynaBERT students of the same teacher, from about 1/2 to about 1/10 of its latency: the 2-layer
# ones (TinyBERT --recipe short, then DynaBERT widths as compose_mr's grid trains them) reach the smaller budgets.
BASELINES = {"TinyBERT 3-layer (runs/s3)": ("s3", {}), "DynaBERT width 0.5 (runs/dyna-w50)": ("dyna-w50", {}),
             "DynaBERT width 0.25 (runs/dyna-w25)": ("dyna-w25", {}),
             "TinyBERT 3-layer × DynaBERT 0.5 (runs/s3-dyna-w50)": ("s3-dyna-w50", {}),
             "TinyBERT 3-layer × DynaBERT 0.25 (runs/s3-dyna-w25)": ("s3-dyna-w25", {}),
             "TinyBERT 2-layer (runs/s2)": ("s2", {}),
             "TinyBERT 2-layer × DynaBERT 0.5 (runs/s2-dyna-w50)": ("s2-dyna-w50", {}),
             "TinyBERT 2-layer × DynaBERT 0.25 (runs/s2-dyna-w25)": ("s2-dyna-w25", {})}


def baseline_commands(teacher: str) -> dict[str, list[str]]:
    """How each baseline folder of :data:`BASELINES` was made, from ``teacher``: the command chain in compose_mr's
    recipes (its grid, plus the 2-layer TinyBERT and the width-0.25 exports this comparison added)."""
    made = {Path(g["out"]).name: g["make"] for g in compose_mr.chains("runs", teacher)}

    def dyna(base: str) -> list[str]:
        return ["train", "dynabert", "--model", f"runs/{base}", "--data", "mr", "--out", "{out}", *compose_mr.DYNA]

    def export(base: str, width: float) -> list[str]:
        return ["export", f"runs/{base}", "--format", "hf", "--width", f"{width:g}", "--out", "{out}"]

    made.update({"s2": ["train", "tinybert", "--teacher", teacher, "--data", "mr", "--student-layers", "2", "--out",
                        "{out}", *compose_mr.TINY],
                 "s2-dyna": dyna("s2"), "s2-dyna-w50": export("s2-dyna", 0.5), "s2-dyna-w25": export("s2-dyna", 0.25),
                 "s3-dyna-w25": export("s3-dyna", 0.25)})

    def parent(folder: str) -> str | None:
        """The folder a command starts from (an export's source, a training's --model), when made here too."""
        cmd = made[folder]
        source = cmd[1] if cmd[0] == "export" else cmd[cmd.index("--model") + 1] if "--model" in cmd else ""
        return Path(source).name if Path(source).name in made else None

    def chain(folder: str) -> list[str]:
        before = chain(parent(folder)) if parent(folder) else []
        return [*before, "nimblebert " + " ".join(a.replace("{out}", f"runs/{folder}") for a in made[folder])]

    return {folder: chain(folder) for folder, _ in BASELINES.values()}


def hand_designed(table: dict, space, budget_ms: float, length: float) -> str:
    """The hand-designed student of a budget: a uniform BERT stack (L layers of MHA + FFN at one hidden size of the
    space, FFN 4×, transfers only at the ends) — the largest by parameters whose predicted latency fits the
    budget (the paper compares at equal size; here size follows from the same latency budget)."""
    import dataclasses

    from nimblebert.methods.nasbert.latency import predict_latency
    from nimblebert.methods.nasbert.space import arch_params, format_arch

    plain = dataclasses.replace(space, block_transfers=False)
    per_block = space.slots // 2
    best = None
    for h in space.hidden_sizes:
        for layers in range(1, per_block * space.blocks + 1):
            counts = [layers // space.blocks + (1 if n < layers % space.blocks else 0) for n in range(space.blocks)]
            arch = tuple((h, ("mha", "ffn") * c) for c in counts)
            if predict_latency(table, plain, arch, 1, length) <= budget_ms:
                params = arch_params(arch, plain)
                if best is None or params > best[0]:
                    best = (params, format_arch(arch))
    if best is None:
        raise SystemExit(f"no hand-designed stack fits {budget_ms:.3f} ms")
    return best[1]


SUPERNETS = {"shrink": "supernet", "noshrink": "supernet-noshrink"}
NOSHRINK = "NAS-BERT, supernet without shrinking"
RANDOM = "NAS-BERT architecture, random init"


def home_of(args: argparse.Namespace, which: str) -> Path:
    """Where a supernet (``shrink`` / ``noshrink``) and the networks searched on it live: --runs, except the
    no-shrink one with --noshrink-runs (a later run reuses an earlier one's ablation supernet: it is trained with
    the same steps and options and does not depend on how shrinking bins)."""
    return Path(args.noshrink_runs or args.runs) if which == "noshrink" else Path(args.runs)


def supernet_flags(args: argparse.Namespace, which: str) -> list[str]:
    """`nimblebert train nasbert` flags of one of the two supernets: the same steps, data and schedule; with
    progressive shrinking (warm-up, then a round every --shrink-every steps) or without it (the paper's ablation)."""
    common_flags = ["--teacher", args.teacher, "--data", args.data, "--max-length", args.max_length,
                    "--max-steps", args.supernet_steps, "--eval-every", "1000", "--save-every", "250", "--no-progress"]
    if which == "noshrink":
        return [*common_flags, "--no-shrink"]
    return [*common_flags, "--shrink-warmup", args.shrink_warmup, "--shrink-every", args.shrink_every,
            "--shrink-samples", args.shrink_samples, "--shrink-keep", "10", "--shrink-rows", args.shrink_rows]


def train_phase(args: argparse.Namespace, runs: Path, length: int, teacher_ms: float) -> None:
    """What --parts names: ``supernets`` (both), ``nas`` / ``nsn`` (search and train on the supernet with / without
    shrinking), ``noshrink`` (search only, on the shrunk supernet, ignoring what shrinking removed), ``random`` (the
    architecture ``nas`` chose at --random-fraction, from random weights), ``hand`` (hand-designed students)."""
    from nimblebert import load
    from nimblebert.methods.nasbert.latency import default_table_path
    from nimblebert.methods.nasbert.objective import space_of

    parts = set(args.parts.split(","))
    for which, folder in SUPERNETS.items():
        if "supernets" in parts and not (args.reuse and finished(home_of(args, which) / folder)):
            cli("train", "nasbert", *supernet_flags(args, which), "--out", str(home_of(args, which) / folder),
                "--overwrite")
    common_flags = ["--data", args.data, "--max-length", args.max_length, "--batch", "1", "--length", str(length),
                    "--general-epochs", args.general_epochs, "--epochs", args.epochs, "--prediction-epochs",
                    args.prediction_epochs, "--lr", args.lr, "--overwrite", "--no-progress"]
    search_flags = ["--block-candidates", args.block_candidates, "--held-out-batches", args.held_out_batches,
                    "--top", args.top]
    supernet = runs / SUPERNETS["shrink"]
    hand_runs = Path(args.hand_runs)
    for frac in (float(f) for f in args.fractions.split(",")):
        budget = round(teacher_ms / frac, 4)
        for part, prefix, which in (("nas", "nas", "shrink"), ("nsn", "nsn", "noshrink")):
            out = home_of(args, which) / f"{prefix}-div{frac:g}"
            if part in parts and not (args.reuse and finished(out)):
                cli("search", str(home_of(args, which) / SUPERNETS[which]), "--max-latency-ms", str(budget),
                    *search_flags, *common_flags, "--out", str(out))
        if "noshrink" in parts and not (args.reuse and (runs / f"noshrink-div{frac:g}.json").exists()):
            report = cli_json("search", str(supernet), "--max-latency-ms", str(budget), *search_flags,
                              "--ignore-shrinking", "--search-only", *common_flags, "--out", str(runs / "unused"))
            (runs / f"noshrink-div{frac:g}.json").write_text(json.dumps(report, indent=2) + "\n")
        out = runs / f"rand-div{frac:g}"
        if "random" in parts and frac == args.random_fraction and not (args.reuse and finished(out)):
            arch = json.loads((runs / f"nas-div{frac:g}" / "search.json").read_text())["arch"]
            # The same network as nas-div (block transfers included), only its starting weights differ.
            cli("search", str(supernet), "--arch", arch, "--init", "random", "--transfers", "block", *common_flags,
                "--out", str(out))
        hand = hand_runs / f"hand-div{frac:g}"
        if "hand" in parts and not (args.reuse and finished(hand)):
            space = space_of(load(supernet))
            table = json.loads(default_table_path(space).read_text())  # measured by the first search when missing
            cli("search", str(supernet), "--arch", hand_designed(table, space, budget, length), "--init", "random",
                "--transfers", "size", *common_flags, "--out", str(hand))


def measure_phase(args: argparse.Namespace, runs: Path, length: int, base) -> dict:
    import torch

    import nimblebert
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import latency_batches
    from nimblebert.inference import metrics, predict_loader
    from nimblebert.methods.nasbert.latency import default_table_path, measure_model, predict_latency
    from nimblebert.methods.nasbert.objective import space_of
    from nimblebert.methods.nasbert.space import parse_arch

    def encoder_params(model) -> int:
        if model.method == "nasbert":
            return sum(p.numel() for p in model.extras["chain"].parameters())
        return sum(p.numel() for p in model.hf.base_model.encoder.parameters())

    teacher_ms = statistics.median(measure_model(base.teacher, 1, length) for _ in range(3))
    models: dict[str, tuple] = {}  # name → (model, knobs, kind, extra)
    kinds = (("NAS-BERT", "nas-div", runs), (NOSHRINK, "nsn-div", home_of(args, "noshrink")),
             (RANDOM, "rand-div", runs), ("hand-designed", "hand-div", Path(args.hand_runs)))
    for frac in (float(f) for f in args.fractions.split(",")):
        for kind, folder in ((kind, where / f"{prefix}{frac:g}") for kind, prefix, where in kinds):
            if not finished(folder):
                if folder.exists() or kind != RANDOM:
                    print(f"{folder} is not finished: left out", flush=True)
                continue
            report = json.loads((folder / "search.json").read_text())
            models[f"{kind} 1/{frac:g}"] = (nimblebert.load(folder), {}, kind, {"fraction": frac, **report})
    for folder in sorted(runs.glob("diag-*")):  # the diagnosis runs of the README, when present and finished
        if finished(folder):
            report = json.loads((folder / "search.json").read_text())
            models[f"diagnosis {folder.name}"] = (nimblebert.load(folder), {}, "diagnosis", {"fraction": 0, **report})
    for name, (folder, knobs) in BASELINES.items():
        if (ROOT / "runs" / folder).exists():
            models[name] = (nimblebert.load(ROOT / "runs" / folder), knobs, "baseline", {})
    rows = {}
    for name, (model, knobs, kind, extra) in models.items():
        preds = predict_loader(model, base.loader, **knobs)
        row = {"name": name, "kind": kind, "params": encoder_params(model), **metrics(preds, model.num_labels),
               "vs_teacher": base.versus(preds)}
        if kind != "baseline":
            space = space_of(model)
            arch = parse_arch(model.method_config["arch"], space)
            table = json.loads(default_table_path(space).read_text())
            measured = statistics.median(measure_model(model, 1, length) for _ in range(3))
            predicted = predict_latency(table, space, arch, 1, length)
            # the budget the search was given (from the train phase's --teacher-ms), not this run's teacher timing
            budget = (extra.get("budget") or {}).get("max_latency_ms") if extra["fraction"] else None
            row.update(arch=extra["arch"], fraction=extra["fraction"], budget_ms=budget,
                       predicted_ms=round(predicted, 4), measured_ms=round(measured, 4),
                       latency_error_pct=round(100 * (predicted - measured) / measured, 1),
                       search_seconds=extra.get("search_seconds"), train_seconds=extra.get("train_seconds"),
                       init=extra.get("init"), transfers=extra.get("transfers"), validation=extra.get("validation"))
        rows[name] = row
    for b in (1, 32):
        batches = latency_batches(base.teacher, base.encoded, b, 64 if b == 1 else 320)
        contenders = {"teacher": lambda x: base.teacher.infer(x)}
        contenders.update({name: (lambda x, m=m, k=k: m.infer(x, **k)) for name, (m, k, _, _) in models.items()})
        timed = compare_latency(contenders, batches, b)
        for name in models:
            rows[name][f"b{b}"] = {"ms": timed[name]["p50_ms"], "teacher_ms": timed["teacher"]["p50_ms"],
                                   "speedup": timed["teacher"]["p50_ms"] / timed[name]["p50_ms"]}
    ablation = []
    for frac in (float(f) for f in args.fractions.split(",")):
        path = runs / f"noshrink-div{frac:g}.json"
        if not path.exists():  # the ablation's searches were not run (--parts without noshrink)
            continue
        whole = json.loads(path.read_text())
        searched = runs / f"nas-div{frac:g}" / "search.json"  # absent where the shrunk space had nothing to offer
        shrunk = json.loads(searched.read_text()) if finished(runs / f"nas-div{frac:g}") else None
        ablation.append({"fraction": frac, "budget_ms": whole["budget"]["max_latency_ms"], **{key: {
            "arch": r["arch"], "best_validation": max(
            (c["accuracy"] for c in r["candidates"]), default=None), "search_seconds": r["search_seconds"],
            "min_block_loss": min((c["block_loss"] for c in r["candidates"]), default=None),
            "block_candidates": r.get("block_candidates")} if r else None
            for key, r in (("shrunk", shrunk), ("whole", whole))}})
    supernets = {}
    for which, folder in SUPERNETS.items():
        path = home_of(args, which) / folder
        if not finished(path):
            continue
        summary = json.loads((path / "train_summary.json").read_text())
        log = [json.loads(x) for x in (path / "train_log.jsonl").read_text().splitlines() if x.strip()]
        steps = [e for e in log if "block1" in e]
        last = steps[-10:]  # the last 100 steps: single-path block losses of random live architectures
        model = nimblebert.load(path)
        state = model.extras["shrink"]
        from nimblebert.methods.nasbert.latency import block_latency

        sn_space = space_of(model)
        sn_table = json.loads(default_table_path(sn_space).read_text())
        block_ms = [block_latency(sn_table, sn_space, a, 1, length) for a in state.archs]
        # What shrinking left for small budgets: the cheapest live block with ops (predicted batch-1 ms).
        cheapest = [round(min(ms for ms, alive in zip(block_ms, state.alive(n).tolist(), strict=True)
                              if alive and ms > 0), 4) for n in range(state.blocks)]
        supernets[which] = {
            "folder": str(path), "train_seconds": summary["train_seconds"], "steps": steps[-1]["step"] if steps else 0,
            "resumed_at": [e["step"] for e in log if e.get("event") == "resume"],
            "final_block_losses": {k: round(statistics.mean(e[k] for e in last), 4)
                                   for k in last[0] if k.startswith("block")} if last else {},
            "shrinking_rounds": int(state.rounds), "live_per_block": [int(state.alive(n).sum())
                                                                      for n in range(state.blocks)],
            "architectures_per_block": len(state.archs), "validation_largest_path": summary.get("stages"),
            "live_per_bin": [state.counts(n) for n in range(state.blocks)], "cheapest_live_block_ms": cheapest,
            "config": model.method_config}
    training_ablation = []
    for frac in (float(f) for f in args.fractions.split(",")):
        pair = {}
        for key, prefix, kind in (("shrink", "nas-div", "NAS-BERT"), ("noshrink", "nsn-div", NOSHRINK)):
            folder = home_of(args, key) / f"{prefix}{frac:g}"
            name = f"{kind} 1/{frac:g}"
            if finished(folder) and name in rows:
                r = json.loads((folder / "search.json").read_text())
                pair[key] = {"arch": r["arch"], "search_seconds": r["search_seconds"],
                             "min_block_loss": min((c["block_loss"] for c in r["candidates"]), default=None),
                             "best_validation": max((c["accuracy"] for c in r["candidates"]), default=None),
                             "test_accuracy": rows[name]["accuracy"]}
        if len(pair) == 2:
            training_ablation.append({"fraction": frac, **pair})
    # Budgets where the shrunk supernet gave no network: `nimblebert search` found no live architecture under them.
    unmet = [frac for frac in (float(f) for f in args.fractions.split(",")) if not finished(runs / f"nas-div{frac:g}")]
    return {"teacher": args.teacher, "teacher_accuracy": base.metrics["accuracy"], "teacher_b1_ms": teacher_ms,
            "shrunk_without_network": unmet,
            "teacher_encoder_params": sum(p.numel() for p in base.teacher.hf.base_model.encoder.parameters()),
            "length": length, "supernets": supernets, "rows": list(rows.values()), "ablation": ablation,
            "training_ablation": training_ablation, "torch_threads": torch.get_num_threads()}


def shown(path: str) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def supernet_line(name: str, sn: dict) -> str:
    losses = ", ".join(f"{v:.3f}" for v in sn["final_block_losses"].values())
    shrink = (f"{sn['shrinking_rounds']} shrinking rounds left {sn['live_per_block']} of "
              f"{sn['architectures_per_block']:,} architectures per block" if sn["shrinking_rounds"]
              else f"all {sn['architectures_per_block']:,} architectures per block kept")
    resumed = f", resumed at step {', '.join(map(str, sn['resumed_at']))}" if sn["resumed_at"] else ""
    cheapest = ", ".join(f"{ms:.2f}" for ms in sn.get("cheapest_live_block_ms", []))
    return (f"{name}: {sn['steps']:,} steps in {sn['train_seconds'] / 60:.0f} min wall time{resumed}; {shrink}; "
            f"block losses of the sampled paths over the last 100 steps {losses}; the cheapest live block with ops "
            f"per block {cheapest} ms (predicted, batch 1, with its transfer in)")


def markdown(data: dict, args: argparse.Namespace) -> str:
    rows = data["rows"]
    env = data["environment"]
    sns = data["supernets"]
    lines = [f"## NAS-BERT on {args.data}", "",
             f"Teacher {shown(data['teacher'])}: test accuracy {data['teacher_accuracy']:.4f}, batch-1 latency "
             f"{data['teacher_b1_ms']:.2f} ms at length {data['length']} (the validation median), encoder "
             f"{data['teacher_encoder_params'] / 1e6:.2f} M parameters. Two supernets distilled block-wise from it on "
             "mr's own training texts (2,800 sentences, labels unused), batch 32, the teacher's block outputs cached "
             "once; wall times on the two cores shared by four agents at low priority (an upper bound):", ""]
    lines += [f"- {supernet_line(n, sns[k])} ({shown(sns[k]['folder'])})"
              for k, n in (("shrink", "with progressive shrinking"), ("noshrink", "without shrinking")) if k in sns]
    latency_bins = bool(sns.get("shrink", {}).get("config", {}).get("latency_bins"))
    if latency_bins:
        c = sns["shrink"]["config"]
        lines += ["", f"Shrinking's {c['bins']} bins carry latency caps as well as parameter caps (the paper's bins): "
                  "an architecture is in the first bin b whose caps, (b/B) × the largest block's parameters and "
                  f"(b/B) × the slowest block's predicted batch-1 latency at length {c['bin_latency_length']:g} "
                  "(the cached latency table of the timing CPU), it meets both; each bin keeps its "
                  f"{c['shrink_keep']} lowest-loss members, so the fastest architectures survive in the low bins. "
                  "(The first measurement binned by parameters only and had no network under 1/10.)"]
    budgets = {r["fraction"]: r["budget_ms"] for r in rows if r["kind"] == "NAS-BERT" and r.get("budget_ms")}
    lines += ["", "Budgets (predicted batch-1 ms, the per-op latency table): the teacher's batch-1 latency on the "
              "timing core when the budgets were first set, divided by 3, 6 and 10 ("
              + ", ".join(f"1/{f:g} = {b:.2f} ms" for f, b in sorted(budgets.items())) + "). Each network: "
              f"general distillation {args.general_epochs} epoch(s) on mr's own training texts, intermediate "
              f"{args.epochs}, prediction {args.prediction_epochs}, lr {args.lr}; searched ones start from their "
              "supernet path, the random-init row from random weights (same architecture, same recipe); the "
              f"hand-designed students (uniform MHA + FFN stacks) come from {shown(args.hand_runs)}. "
              f"{common.env_line(env).rstrip('.')}.", "",
              "| network | architecture | encoder params | predicted / measured b1 ms (error) | accuracy | "
              "Δ vs teacher [95% CI] | speed-up b1 / b32 |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["b1"]["speedup"]):
        lat = (f"{r['predicted_ms']:.2f} / {r['measured_ms']:.2f} ({r['latency_error_pct']:+.0f} %)"
               if "predicted_ms" in r else "-")
        arch = f"`{r['arch']}`" if "arch" in r else "-"
        lines.append(f"| {r['name']} | {arch} | {r['params'] / 1e6:.2f} M | {lat} | {r['accuracy']:.4f} | "
                     f"{points_ci(r['vs_teacher'])} | ×{r['b1']['speedup']:.2f} / ×{r['b32']['speedup']:.2f} |")
    if data.get("shrunk_without_network"):
        lines += ["", "No network from the shrunk supernet at " + ", ".join(
            f"1/{f:g}" for f in data["shrunk_without_network"]) + ": `nimblebert search` found no live architecture "
            "under the budget (exit 2). " + ("Even with latency caps on the bins the cheapest survivors (with their "
            "transfers) cost more than that budget." if latency_bins else "Shrinking bins architectures by parameters "
            "only and keeps the lowest block losses of each bin, so the cheapest survivors (with their transfers) "
            "cost more than that budget.")]
    errors = [abs(r["latency_error_pct"]) for r in rows if "latency_error_pct" in r]
    if errors:
        interleaved = statistics.median(r["b1"]["teacher_ms"] for r in rows)
        lines += ["", f"Predicted vs measured batch-1 latency: mean absolute error {statistics.mean(errors):.0f} % "
                  f"(max {max(errors):.0f} %) over the {len(errors)} searched and hand-designed networks. Each "
                  "'measured' is the model timed alone at the search's length (median of 3 × 30 calls); the "
                  f"teacher so timed took {data['teacher_b1_ms']:.2f} ms, interleaved with the others on test batches "
                  f"(the speed-ups) {interleaved:.2f} ms. Absolute times move between runs with the load on the other "
                  "core (it shares caches and memory), the interleaved speed-ups much less."]
    searched = [r for r in rows if r["kind"] in ("NAS-BERT", NOSHRINK)]
    if searched:
        lines += ["", "Search cost: supernet training above, then per budget (block-loss lookup on held-out validation "
                  "rows, top candidates evaluated on validation): " + ", ".join(
                      f"{'shrunk' if r['kind'] == 'NAS-BERT' else 'unshrunk'} 1/{r['fraction']:g}: "
                      f"{r['search_seconds']:.0f} s" for r in searched) + " (wall time, shared cores)."]
    if data["training_ablation"]:
        lines += ["", "Progressive shrinking at training time (the paper's ablation): the same search on each supernet "
                  "(the unshrunk one draws its block candidates from the whole space): the lowest summed block loss "
                  "under the budget, the best candidate's supernet-path validation accuracy with the teacher's head "
                  "(before any distillation) and the distilled network's test accuracy:", "",
                  "| budget | architecture shrink / no shrink | lowest block loss | best candidate val. acc. | "
                  "test accuracy |", "|---|---|---|---|---|"]
        for a in data["training_ablation"]:
            s, w = a["shrink"], a["noshrink"]
            lines.append(f"| 1/{a['fraction']:g} | `{s['arch']}` / `{w['arch']}` | "
                         f"{s['min_block_loss'] or 0:.3f} / {w['min_block_loss'] or 0:.3f} | "
                         f"{s['best_validation'] or 0:.4f} / {w['best_validation'] or 0:.4f} | "
                         f"{s['test_accuracy']:.4f} / {w['test_accuracy']:.4f} |")
    if data["ablation"]:
        lines += ["", "At search time on the shrunk supernet: block candidates drawn from the whole space instead of "
                  "the architectures shrinking kept (same held-out rows, same budgets):", "",
                  "| budget | search s shrunk / whole | lowest block loss shrunk / whole | best candidate val. acc. "
                  "shrunk / whole | architecture, whole space |", "|---|---|---|---|---|"]
    for a in data["ablation"]:
        w = a["whole"]
        s = a["shrunk"] or {"search_seconds": None, "min_block_loss": None, "best_validation": None}

        def pair(key: str, fmt: str, s: dict = s, w: dict = w) -> str:
            return " / ".join("none" if d[key] is None else format(d[key], fmt) for d in (s, w))

        lines.append(f"| 1/{a['fraction']:g} = {a['budget_ms']:.2f} ms | {pair('search_seconds', '.0f')} | "
                     f"{pair('min_block_loss', '.3f')} | {pair('best_validation', '.4f')} | `{w['arch']}` |")
    lines += ["", "Training (on the shared cores, low priority): " + "; ".join(f"`{c}`" for c in data["train_commands"])
              + f". Timing (pinned): `{common.quoted_command(data['command'])}`."]
    chains = baseline_commands(shown(data["teacher"]))
    present = [(name, folder) for name, (folder, _) in BASELINES.items() if any(r["name"] == name for r in rows)]
    if present:
        lines += ["", "The TinyBERT and DynaBERT students (compose_mr's recipes; `nimblebert info FOLDER` shows each "
                  "stack):", ""]
        lines += [f"- {name}: " + "; then ".join(f"`{c}`" for c in chains[folder]) for name, folder in present]
    return "\n".join(lines) + "\n"


def train_commands(args: argparse.Namespace, runs: Path) -> list[str]:
    """The commands that trained what this run measures: those of --runs and, when the no-shrink supernet comes
    from another run (--noshrink-runs), that run's commands for it and its networks only."""
    def read(home: Path) -> list[str]:
        path = home / "train_commands.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in lines if c.strip() and not c.startswith("#")]

    other = home_of(args, "noshrink")
    borrowed = [c for c in read(other) if "supernet-noshrink" in c or "--parts nsn" in c] if other != runs else []
    return read(runs) + borrowed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["train", "measure", "all"], default="all")
    ap.add_argument("--data", default="mr")
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "teacher-mr"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "nasbert-mr2"))
    ap.add_argument("--noshrink-runs", default="",
                    help="where the no-shrink supernet and its searched networks are (default: --runs)")
    ap.add_argument("--name", default="nasbert_mr")
    ap.add_argument("--docs", help="write the files here instead of docs/")
    ap.add_argument("--reuse", action="store_true", help="reuse finished models")
    ap.add_argument("--teacher-ms", type=float, default=None, help="the teacher's b1 ms (train phase; see above)")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--hand-runs", default=str(ROOT / "runs" / "nasbert-mr"),
                    help="where the hand-designed students are (trained once: they do not depend on the supernet)")
    ap.add_argument("--supernet-steps", default="1000")
    ap.add_argument("--shrink-warmup", default="260")
    ap.add_argument("--shrink-every", default="60")
    ap.add_argument("--shrink-samples", default="512")
    ap.add_argument("--shrink-rows", default="8")
    ap.add_argument("--random-fraction", type=float, default=6.0,
                    help="the budget whose searched architecture is also trained from random weights")
    ap.add_argument("--block-candidates", default="150")
    ap.add_argument("--held-out-batches", default="1")
    ap.add_argument("--top", default="5")
    ap.add_argument("--fractions", default="3,6,10", help="budgets: teacher batch-1 latency divided by these")
    ap.add_argument("--parts", default="supernets,nas,nsn,noshrink,random,hand",
                    help="train phase: what to train (searched networks, the ablation's searches, hand-designed "
                         "students); several train phases with different --parts/--fractions may run at once")
    ap.add_argument("--general-epochs", default="1")
    ap.add_argument("--epochs", default="1", help="epochs of the intermediate stage")
    ap.add_argument("--prediction-epochs", default="1")
    ap.add_argument("--lr", default="5e-4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true",
                    help="redraw the section from docs/<name>.json (the options of the run it stores), measure nothing")
    args = ap.parse_args()
    if args.render:
        path = (common.docs_folder(args) or common.DOCS) / f"{args.name}.json"
        data = json.loads(path.read_text())
        ran = ap.parse_args(shlex.split(data["command"])[2:])  # the measured run's options, for the text
        common.publish(args.name, markdown(data, ran), data, headline_of(data, ran), common.docs_folder(args))
        return
    common.use_threads(args.threads)
    from nimblebert.data import encode, load_task
    from nimblebert.methods.nasbert.latency import measure_model
    from nimblebert.model import load

    runs = Path(args.runs)
    started = time.time()
    teacher = load(args.teacher)
    task = load_task(args.data, label_names=teacher.label_names)
    val = encode(task.validation, teacher.tokenizer, int(args.max_length), task.has_pair)
    length = int(statistics.median(len(x) for x in val["input_ids"]))  # what `nimblebert search` budgets for
    if args.phase in ("train", "all"):
        teacher_ms = args.teacher_ms or measure_model(teacher, 1, length)
        train_phase(args, runs, length, teacher_ms)
        done = runs / "train_commands.txt"  # every train phase that ran (they may run side by side)
        lines = done.read_text().splitlines() if done.exists() else []
        done.write_text("\n".join(dict.fromkeys([*lines, common.command_line()])) + "\n")
    if args.phase in ("measure", "all"):
        base = common.teacher_baseline(args.teacher, args.data, int(args.max_length))
        data = measure_phase(args, runs, length, base)
        data.update(environment=environment(), command=common.command_line(),
                    train_commands=train_commands(args, runs),
                    wall_seconds=round(time.time() - started, 1))
        text = markdown(data, args)
        common.publish(args.name, text, data, headline_of(data, args), common.docs_folder(args))
        print(text)


def headline_of(data: dict, args: argparse.Namespace) -> str:
    """The README's one line: the fastest searched network's speed-up and accuracy change."""
    searched = [r for r in data["rows"] if r["kind"] == "NAS-BERT"]
    if not searched:
        return f"NAS-BERT ({args.data}): see docs/{args.name}.md"
    best = max(searched, key=lambda r: r["b1"]["speedup"])
    return (f"NAS-BERT ({args.data}): searched at 1/{best['fraction']:g} of the teacher's latency, "
            f"×{best['b1']['speedup']:.1f} at batch 1, {100 * best['vs_teacher']['diff']:+.1f} points; "
            f"see docs/{args.name}.md")


if __name__ == "__main__":
    main()
