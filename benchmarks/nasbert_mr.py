"""NAS-BERT on `mr`: one supernet distilled block-wise from the fine-tuned MiniLM-L6 teacher, searched under
latency budgets that are fractions of the teacher's own measured batch-1 latency, each chosen network trained with
two-stage distillation.

For every searched network on the test split: accuracy and its paired difference from the teacher on the same
sentences (bootstrap 95% interval), chain parameters, predicted vs measured batch-1 latency (error in %), and
measured speed-up over the teacher at batch 1 and 32, timed interleaved in the same run. Search cost: supernet
training seconds, search seconds per budget. Writes ``<docs>/<name>.json`` and the Markdown section.

Not in this script (issue 18's full measurement): TinyBERT / DynaBERT students of equal measured latency, a
hand-designed student of the same size through the same two-stage distillation, the ablation without shrinking
at full scale. The defaults are a small run (a few hundred supernet steps, one epoch per distillation stage).

    python benchmarks/finetune_mr.py                                   # first: the teacher, runs/teacher-mr
    /work/bin/core0 python benchmarks/nasbert_mr.py --docs /tmp/nas    # a trial run; --reuse keeps models
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common
from common import ROOT, cli, cli_json, environment, finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mr")
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "teacher-mr"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "nasbert-mr"))
    ap.add_argument("--name", default="nasbert_mr")
    ap.add_argument("--docs", help="write the files here instead of docs/")
    ap.add_argument("--reuse", action="store_true", help="reuse finished models")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--supernet-steps", default="200")
    ap.add_argument("--shrink-every", default="50")
    ap.add_argument("--shrink-samples", default="32")
    ap.add_argument("--shrink-batches", default="1")
    ap.add_argument("--fractions", default="3,6,10", help="budgets: teacher batch-1 latency divided by these")
    ap.add_argument("--epochs", default="1", help="epochs of each distillation stage of a searched network")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    common.use_threads(args.threads)
    import torch

    import nimblebert
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import latency_batches
    from nimblebert.inference import metrics, predict_loader
    from nimblebert.methods.nasbert.latency import measure_model

    runs = Path(args.runs)
    supernet = runs / "supernet"
    started = time.time()
    if not (args.reuse and finished(supernet)):
        cli("train", "nasbert", "--teacher", args.teacher, "--data", args.data, "--max-length", args.max_length,
            "--out", str(supernet), "--max-steps", args.supernet_steps, "--shrink-every", args.shrink_every,
            "--shrink-samples", args.shrink_samples, "--shrink-batches", args.shrink_batches, "--overwrite",
            "--no-progress")
    supernet_s = json.loads((supernet / "train_summary.json").read_text())["train_seconds"]

    base = common.teacher_baseline(args.teacher, args.data, int(args.max_length))
    length = int(statistics.median(len(x) for x in base.encoded["input_ids"]))
    teacher_ms = measure_model(base.teacher, 1, length)
    rows = []
    for frac in (float(f) for f in args.fractions.split(",")):
        budget = round(teacher_ms / frac, 4)
        out = runs / f"nas-div{frac:g}"
        if args.reuse and finished(out):
            report = json.loads((out / "search.json").read_text())
        else:
            report = cli_json("search", str(supernet), "--data", args.data, "--max-length", args.max_length,
                              "--max-latency-ms", str(budget), "--batch", "1", "--length", str(length),
                              "--general-epochs", args.epochs, "--epochs", args.epochs, "--out", str(out),
                              "--overwrite", "--no-progress")
        model = nimblebert.load(out)
        preds = predict_loader(model, base.loader)
        lat = {}
        for b in (1, 32):
            batches = latency_batches(base.teacher, base.encoded, b, 64 if b == 1 else 320)
            timed = compare_latency({"teacher": lambda x: base.teacher.infer(x), "nas": lambda x, m=model: m.infer(x)},
                                    batches, b)
            lat[f"b{b}"] = {"teacher_ms": timed["teacher"]["p50_ms"], "nas_ms": timed["nas"]["p50_ms"],
                            "speedup": timed["teacher"]["p50_ms"] / timed["nas"]["p50_ms"]}
        rows.append({"fraction": frac, "budget_ms": budget, "arch": report["arch"], "params": report["params"],
                     "predicted_ms": report["predicted_ms"], "measured_ms": report.get("measured_ms"),
                     "latency_error_pct": report.get("latency_error_pct"), "search_seconds": report["search_seconds"],
                     "train_seconds": report.get("train_seconds"), **metrics(preds, model.num_labels),
                     "vs_teacher": base.versus(preds), "latency": lat})
    teacher_params = sum(p.numel() for p in base.teacher.hf.base_model.encoder.parameters())
    data = {"teacher": args.teacher, "teacher_accuracy": base.metrics["accuracy"], "teacher_b1_ms": teacher_ms,
            "teacher_encoder_params": teacher_params, "length": length, "supernet_train_seconds": supernet_s,
            "rows": rows, "environment": environment(), "command": common.command_line(),
            "wall_seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads()}
    lines = [f"## NAS-BERT on {args.data} (small run)", "",
             f"Teacher {args.teacher}: accuracy {base.metrics['accuracy']:.4f}, batch-1 latency {teacher_ms:.3f} ms "
             f"at length {length}; encoder {teacher_params / 1e6:.1f} M parameters. Supernet: {args.supernet_steps} "
             f"steps, {supernet_s / 60:.1f} min. CPU: {data['environment']}.", "",
             "| budget | architecture | chain params | predicted / measured b1 ms (error) | accuracy | Δ vs teacher "
             "[95% CI] | speed-up b1 / b32 | search s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_teacher"]
        err = f"{r['latency_error_pct']:+.0f} %" if r["latency_error_pct"] is not None else "-"
        measured = f"{r['measured_ms']:.3f}" if r["measured_ms"] is not None else "-"
        lines.append(f"| 1/{r['fraction']:g} = {r['budget_ms']:.3f} ms | `{r['arch']}` | {r['params'] / 1e6:.2f} M | "
                     f"{r['predicted_ms']:.3f} / {measured} ({err}) | {r['accuracy']:.4f} | "
                     f"{100 * v['diff']:+.2f} [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] | "
                     f"×{r['latency']['b1']['speedup']:.2f} / ×{r['latency']['b32']['speedup']:.2f} | "
                     f"{r['search_seconds']:.0f} |")
    lines += ["", f"Command: `{data['command']}`"]
    markdown = "\n".join(lines) + "\n"
    headline = f"NAS-BERT ({args.data}, small run): see docs/{args.name}.md"
    common.publish(args.name, markdown, data, headline, Path(args.docs) if args.docs else None)
    print(markdown)


if __name__ == "__main__":
    main()
