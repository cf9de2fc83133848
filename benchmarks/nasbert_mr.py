"""NAS-BERT on `mr` (issue 18): one supernet distilled block-wise from the fine-tuned MiniLM-L6 teacher, searched
under three latency budgets (the teacher's measured batch-1 latency divided by 3, 6 and 10), each chosen network
trained with two-stage distillation — against a hand-designed BERT-shaped student of about the same predicted
latency through the same distillation (the paper's comparison), and against the TinyBERT and DynaBERT students
already trained on the same teacher (runs/s3, runs/dyna-w50, runs/dyna-w25, runs/s3-dyna-w50).

Two phases, so that training never runs where latency is timed:

    /work/bin/bg python benchmarks/nasbert_mr.py --phase train --teacher-ms 14.2     # supernet, searches, students
    /work/bin/core0 python benchmarks/nasbert_mr.py --phase measure                   # test accuracy, latency, docs

``--teacher-ms``: the teacher's batch-1 latency at the validation median length, measured on the timing core
(the measure phase prints it; without the flag the train phase measures it where it runs). The budgets are
predicted latencies (the per-op table of `nimblebert search`); the measure phase reports what they became.

For every network on the test split: accuracy and its paired difference from the teacher on the same sentences
(bootstrap 95% interval), encoder parameters (embeddings and head excluded: every model here shares the teacher's
384-wide embeddings), predicted vs measured batch-1 latency at the search's length (error in %), and speed-ups over
the teacher at batch 1 and 32 on test batches, timed interleaved in the same run. Search cost: supernet training
minutes (wall time on a shared core at low priority: an upper bound), search seconds per budget. The ablation of
progressive shrinking on the same supernet: the search drawing its block candidates from the whole space instead
of the shrunk one (``--ignore-shrinking``), judged by the supernet-path validation accuracy of its best candidate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common
from common import ROOT, cli, cli_json, environment, finished, points_ci

BASELINES = {"TinyBERT 3-layer (runs/s3)": ("s3", {}), "DynaBERT width 0.5 (runs/dyna-w50)": ("dyna-w50", {}),
             "DynaBERT width 0.25 (runs/dyna-w25)": ("dyna-w25", {}),
             "TinyBERT 3-layer × DynaBERT 0.5 (runs/s3-dyna-w50)": ("s3-dyna-w50", {})}


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


def train_phase(args: argparse.Namespace, runs: Path, length: int, teacher_ms: float) -> None:
    from nimblebert import load
    from nimblebert.methods.nasbert.latency import default_table_path
    from nimblebert.methods.nasbert.objective import space_of

    supernet = runs / "supernet"
    if not (args.reuse and finished(supernet)):
        cli("train", "nasbert", "--teacher", args.teacher, "--data", args.data, "--max-length", args.max_length,
            "--out", str(supernet), "--max-steps", args.supernet_steps, "--shrink-every", args.shrink_every,
            "--shrink-warmup", args.shrink_every, "--shrink-samples", args.shrink_samples, "--shrink-batches",
            args.shrink_batches, "--eval-every", args.supernet_steps, "--overwrite", "--no-progress")
    common_flags = ["--data", args.data, "--max-length", args.max_length, "--batch", "1", "--length", str(length),
                    "--general-epochs", args.general_epochs, "--epochs", args.epochs, "--prediction-epochs",
                    args.prediction_epochs, "--lr", args.lr, "--overwrite", "--no-progress"]
    search_flags = ["--block-candidates", args.block_candidates, "--held-out-batches", args.held_out_batches,
                    "--top", args.top]
    space = space_of(load(supernet))
    table = json.loads(default_table_path(space).read_text())  # measured by the first search when missing
    parts = set(args.parts.split(","))
    for frac in (float(f) for f in args.fractions.split(",")):
        budget = round(teacher_ms / frac, 4)
        out = runs / f"nas-div{frac:g}"
        if "nas" in parts and not (args.reuse and finished(out)):
            cli("search", str(supernet), "--max-latency-ms", str(budget), *search_flags, *common_flags,
                "--out", str(out))
        if "noshrink" in parts and not (args.reuse and (runs / f"noshrink-div{frac:g}.json").exists()):
            report = cli_json("search", str(supernet), "--max-latency-ms", str(budget), *search_flags,
                              "--ignore-shrinking", "--search-only", *common_flags, "--out", str(out) + "-unused")
            (runs / f"noshrink-div{frac:g}.json").write_text(json.dumps(report, indent=2) + "\n")
        table = json.loads(default_table_path(space).read_text())
        hand = runs / f"hand-div{frac:g}"
        if "hand" in parts and not (args.reuse and finished(hand)):
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
    for frac in (float(f) for f in args.fractions.split(",")):
        for kind, folder in (("NAS-BERT", runs / f"nas-div{frac:g}"), ("hand-designed", runs / f"hand-div{frac:g}")):
            if not finished(folder):
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
        if not finished(runs / f"nas-div{frac:g}"):
            continue
        shrunk = json.loads((runs / f"nas-div{frac:g}" / "search.json").read_text())
        path = runs / f"noshrink-div{frac:g}.json"
        if not path.exists():  # the ablation's searches were not run (--parts without noshrink)
            continue
        whole = json.loads(path.read_text())
        ablation.append({"fraction": frac, "budget_ms": shrunk["budget"]["max_latency_ms"], **{key: {
            "arch": r["arch"], "best_validation": max(
            (c["accuracy"] for c in r["candidates"]), default=None), "search_seconds": r["search_seconds"],
            "min_block_loss": min((c["block_loss"] for c in r["candidates"]), default=None),
            "block_candidates": r.get("block_candidates")} for key, r in (("shrunk", shrunk), ("whole", whole))}})
    supernet = runs / "supernet"
    summary = json.loads((supernet / "train_summary.json").read_text())
    live = json.loads((supernet / "config.json").read_text())
    log = [json.loads(x) for x in (supernet / "train_log.jsonl").read_text().splitlines() if x.strip()]
    resumed = [e["step"] for e in log if e.get("event") == "resume"]
    return {"teacher": args.teacher, "teacher_accuracy": base.metrics["accuracy"], "teacher_b1_ms": teacher_ms,
            "teacher_encoder_params": sum(p.numel() for p in base.teacher.hf.base_model.encoder.parameters()),
            "length": length, "supernet_train_seconds": summary["train_seconds"],
            "supernet_options": summary.get("options"), "supernet_resumed_at": resumed,
            "supernet_validation": summary.get("stages"), "supernet_config": live.get("nimblebert"),
            "rows": list(rows.values()), "ablation": ablation, "torch_threads": torch.get_num_threads()}


def markdown(data: dict, args: argparse.Namespace) -> str:
    rows = data["rows"]
    env = data["environment"]
    lines = [f"## NAS-BERT on {args.data}", "",
             f"Teacher {data['teacher']}: test accuracy {data['teacher_accuracy']:.4f}, batch-1 latency "
             f"{data['teacher_b1_ms']:.2f} ms at length {data['length']} (the validation median), encoder "
             f"{data['teacher_encoder_params'] / 1e6:.2f} M parameters. Supernet: {args.supernet_steps} steps of "
             f"block-wise distillation, {data['supernet_train_seconds'] / 60:.0f} min wall time on a shared core at "
             f"low priority" + (f" (killed and resumed at step {data['supernet_resumed_at'][0]}: the first steps ran "
                                "under a longer run's learning-rate schedule)" if data["supernet_resumed_at"] else "")
             + f". Each network: general distillation {args.general_epochs} epoch(s) on mr's own "
             f"training texts, intermediate {args.epochs}, prediction {args.prediction_epochs}, lr {args.lr}. "
             f"{common.env_line(env).rstrip('.')}.", "",
             "| network | architecture | encoder params | predicted / measured b1 ms (error) | accuracy | "
             "Δ vs teacher [95% CI] | speed-up b1 / b32 |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["b1"]["speedup"]):
        lat = (f"{r['predicted_ms']:.2f} / {r['measured_ms']:.2f} ({r['latency_error_pct']:+.0f} %)"
               if "predicted_ms" in r else "-")
        arch = f"`{r['arch']}`" if "arch" in r else "-"
        lines.append(f"| {r['name']} | {arch} | {r['params'] / 1e6:.2f} M | {lat} | {r['accuracy']:.4f} | "
                     f"{points_ci(r['vs_teacher'])} | ×{r['b1']['speedup']:.2f} / ×{r['b32']['speedup']:.2f} |")
    if any(r["kind"] == "diagnosis" for r in rows):
        lines += ["", "Diagnosis row (why the trial reached 0.635, docs/nasbert/trial): a hand-designed 4 × 192 stack "
                  "through the trial's kind of recipe — teacher embeddings trained, one epoch of each stage."]
    lines += ["", "Search seconds per budget (predicted-latency budget): " + ", ".join(
        f"1/{r['fraction']:g} = {r['budget_ms']:.2f} ms: {r['search_seconds']:.0f} s" for r in rows
        if r["kind"] == "NAS-BERT") + " (wall time on the shared cores; almost all of it the block-loss lookup)."]
    if not data["ablation"]:
        lines += ["", "The shrinking ablation was not run in this measurement (--parts without noshrink)."]
    lines += ["", "Budgets (predicted b1 ms) and search cost; the ablation: the same search drawing block candidates "
              "from the whole space instead of the architectures progressive shrinking kept: the lowest summed block "
              "loss found under the budget (held-out validation batches, the same for both) and the best candidate's "
              "supernet-path validation accuracy (before any distillation of the network):", "",
              "| budget | search s shrunk / whole | lowest block loss shrunk / whole | best candidate val. acc. "
              "shrunk / whole | architecture, whole space |", "|---|---|---|---|---|"] if data["ablation"] else []
    for a in data["ablation"]:
        s, w = a["shrunk"], a["whole"]
        lines.append(f"| 1/{a['fraction']:g} = {a['budget_ms']:.2f} ms | "
                     f"{s['search_seconds']:.0f} / {w['search_seconds']:.0f} | "
                     f"{s['min_block_loss'] or 0:.3f} / {w['min_block_loss'] or 0:.3f} | "
                     f"{s['best_validation'] or 0:.4f} / {w['best_validation'] or 0:.4f} | `{w['arch']}` |")
    lines += ["", "Training (on the shared cores, low priority): " + "; ".join(f"`{c}`" for c in data["train_commands"])
              + f". Timing (pinned): `{data['command']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["train", "measure", "all"], default="all")
    ap.add_argument("--data", default="mr")
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "teacher-mr"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "nasbert-mr"))
    ap.add_argument("--name", default="nasbert_mr")
    ap.add_argument("--docs", help="write the files here instead of docs/")
    ap.add_argument("--reuse", action="store_true", help="reuse finished models")
    ap.add_argument("--teacher-ms", type=float, default=None, help="the teacher's b1 ms (train phase; see above)")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--supernet-steps", default="200")
    ap.add_argument("--shrink-every", default="75")
    ap.add_argument("--shrink-samples", default="32")
    ap.add_argument("--shrink-batches", default="1")
    ap.add_argument("--block-candidates", default="150")
    ap.add_argument("--held-out-batches", default="2")
    ap.add_argument("--top", default="5")
    ap.add_argument("--fractions", default="3,6,10", help="budgets: teacher batch-1 latency divided by these")
    ap.add_argument("--parts", default="nas,noshrink,hand",
                    help="train phase: what to train (searched networks, the ablation's searches, hand-designed "
                         "students); several train phases with different --parts/--fractions may run at once")
    ap.add_argument("--general-epochs", default="1")
    ap.add_argument("--epochs", default="1", help="epochs of the intermediate stage")
    ap.add_argument("--prediction-epochs", default="1")
    ap.add_argument("--lr", default="5e-4")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
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
                    train_commands=(runs / "train_commands.txt").read_text().splitlines(),
                    wall_seconds=round(time.time() - started, 1))
        text = markdown(data, args)
        searched = [r for r in data["rows"] if r["kind"] == "NAS-BERT"]
        best = max(searched, key=lambda r: r["b1"]["speedup"]) if searched else None
        headline = (f"NAS-BERT ({args.data}): searched at 1/{best['fraction']:g} of the teacher's latency, "
                    f"×{best['b1']['speedup']:.1f} at batch 1, {100 * best['vs_teacher']['diff']:+.1f} points; "
                    f"see docs/{args.name}.md") if best else f"NAS-BERT ({args.data}): see docs/{args.name}.md"
        common.publish(args.name, text, data, headline, Path(args.docs) if args.docs else None)
        print(text)


if __name__ == "__main__":
    main()
