"""FastBERT on `mr` (or `chnsenti`): self-distil a fine-tuned teacher, then sweep the speed knob.

For each speed (and each PABEE patience) on the test split: accuracy, the paired bootstrap 95% interval
of its difference from the teacher on the same sentences, mean exit layer, FLOPs speed-up, and the
measured speed-up over the plain transformers teacher at batch 1 and batch 32, timed interleaved in the
same run. Also per-layer diagnostics of the student branches (accuracy, agreement with the teacher,
mean uncertainty). Writes ``docs/<name>.json``, the Markdown section and ``docs/<name>.png``.

    python benchmarks/finetune_mr.py                  # first: the teacher, runs/teacher-mr
    python benchmarks/fastbert_mr.py                  # trains runs/fastbert-mr, writes docs/fastbert_mr.*
    python benchmarks/fastbert_mr.py --reuse          # keep an already trained runs/fastbert-mr
    python benchmarks/fastbert_mr.py --data chnsenti  # teacher runs/teacher-chnsenti -> docs/fastbert_chnsenti.*
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import ROOT, cli, environment, finished

SPEEDS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
PATIENCE = "1,2,3"


def branch_diagnostics(model: Any, loader: Any) -> list[dict[str, float]]:
    """Each student branch run on every test sentence (no exits): accuracy, agreement with the teacher,
    mean normalized entropy (the uncertainty that speed is compared with)."""
    import torch

    from nimblebert.inference import move
    from nimblebert.methods.fastbert import normalized_entropy

    branches = model.extras["branches"]
    n = len(branches) + 1
    correct, agree, unc, total = np.zeros(n), np.zeros(n), np.zeros(n), 0
    with torch.inference_mode():
        for batch in loader:
            batch = move(batch, "cpu")
            out = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                output_hidden_states=True)
            teacher = out.logits.argmax(-1)
            per = [b(out.hidden_states[i + 1], batch["attention_mask"]) for i, b in enumerate(branches)]
            for i, logits in enumerate([*per, out.logits]):
                correct[i] += float((logits.argmax(-1) == batch["labels"]).sum())
                agree[i] += float((logits.argmax(-1) == teacher).sum())
                unc[i] += float(normalized_entropy(logits).sum())
            total += batch["labels"].numel()
    return [{"layer": i + 1, "role": "teacher" if i == n - 1 else "student", "accuracy": correct[i] / total,
             "agreement_with_teacher": agree[i] / total, "mean_uncertainty": unc[i] / total} for i in range(n)]


def plot(rows: list[dict[str, Any]], teacher_acc: float, path: Path, title: str) -> None:
    """Left: accuracy vs speed-up (measured at batch 1 and 32, and in FLOPs). Right: the paired accuracy
    difference from the teacher with its bootstrap 95% interval, per speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    speed_rows = [r for r in rows if r["policy"] == "entropy"]
    patience_rows = [r for r in rows if r["policy"] == "patience"]
    accuracy = [r["accuracy"] for r in speed_rows]
    for key, marker, label in (("b1_speedup", "o-", "measured, batch 1"), ("b32_speedup", "s-", "measured, batch 32"),
                               ("flops_speedup", "x--", "FLOPs")):
        ax.plot([r[key] for r in speed_rows], accuracy, marker, label=f"speed sweep: {label}")
    for r in speed_rows:
        ax.annotate(f"{r['speed']:g}", (r["b32_speedup"], r["accuracy"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if patience_rows:
        ax.plot([r["b32_speedup"] for r in patience_rows], [r["accuracy"] for r in patience_rows], "^",
                label="patience (PABEE), batch 32")
        for r in patience_rows:
            ax.annotate(f"p={r['patience']}", (r["b32_speedup"], r["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.axhline(teacher_acc, color="grey", linestyle=":", label="teacher (plain model)")
    ax.set_xlabel("speed-up over the plain transformers teacher (×)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    diff = [100 * r["vs_teacher"]["diff"] for r in speed_rows]
    err = [[100 * (r["vs_teacher"]["diff"] - r["vs_teacher"]["low"]) for r in speed_rows],
           [100 * (r["vs_teacher"]["high"] - r["vs_teacher"]["diff"]) for r in speed_rows]]
    bx.errorbar([r["speed"] for r in speed_rows], diff, yerr=err, fmt="o-", capsize=3)
    bx.axhline(0, color="grey", linestyle=":")
    bx.set_xlabel("speed (normalized-entropy threshold)")
    bx.set_ylabel("accuracy − teacher's (points), 95% CI")
    bx.set_title("paired difference on the same sentences", fontsize=10)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mr", help="mr, chnsenti, or a data folder")
    ap.add_argument("--teacher", help="fine-tuned teacher folder (default runs/teacher-<data>)")
    ap.add_argument("--out", help="FastBERT model folder (default runs/fastbert-<data>)")
    ap.add_argument("--name", help="results name (default fastbert_<data>): docs/<name>.json, .png, section")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--epochs", default="3", help="stage-1 epochs, if stage 1 runs (not for a fine-tuned teacher)")
    ap.add_argument("--distill-epochs", default="5", help="stage-2 epochs (the paper's README: 5)")
    ap.add_argument("--lr", default="2e-5", help="stage-1 lr; stage 2 runs at 10× (paper: 2e-5 / 2e-4)")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--seed", default="42")
    ap.add_argument("--branch", default="attention", choices=["attention", "mlp", "linear"])
    ap.add_argument("--speeds", default=SPEEDS)
    ap.add_argument("--patience", default=PATIENCE, help="PABEE patience values to add ('' for none)")
    common.add_options(ap, reuse="reuse a finished --out instead of training again", timing={1: 100, 32: 640})
    args = ap.parse_args()
    # Paths the user gave are taken from the current folder; the defaults live under the repository.
    data, tag, teacher_dir = common.task_paths(args)
    out = os.path.abspath(args.out) if args.out else f"runs/fastbert-{tag}"
    name = args.name or f"fastbert_{tag}"
    docs = common.docs_folder(args) or common.DOCS

    import torch

    from nimblebert import load
    from nimblebert.bench.measure import (
        add_speedups,
        hf_contender,
        measure_latency,
        nimble_contender,
        transformers_baselines,
    )
    from nimblebert.data import builtin_names
    from nimblebert.inference import metrics, predict_loader

    common.use_threads(args.threads)
    os.chdir(ROOT)
    sizes = json.loads(cli("data", "prepare", data).strip().splitlines()[-1]) if data in builtin_names() else None
    if not finished(teacher_dir):
        raise SystemExit(f"no teacher in {teacher_dir}: run benchmarks/finetune_mr.py first (or pass --teacher)")
    train_args = ["--model", teacher_dir, "--data", data, "--out", out, "--max-length", args.max_length,
                  "--epochs", args.epochs, "--distill-epochs", args.distill_epochs, "--lr", args.lr,
                  "--batch-size", args.batch_size, "--seed", args.seed, "--branch", args.branch, "--finetune", "auto"]
    if not (args.reuse and finished(out)):
        cli("train", "fastbert", *train_args, "--overwrite", capture=False)
    summary = json.loads((Path(out) / "train_summary.json").read_text())

    fast = load(out)
    # Accuracy and FLOPs, per example, paired with the teacher on the same sentences.
    baseline = common.teacher_baseline(teacher_dir, data, int(args.max_length))
    split, encoded, loader, base_metrics = baseline.split, baseline.encoded, baseline.loader, baseline.metrics

    settings = [{"speed": float(s)} for s in args.speeds.split(",") if s.strip()]
    settings += [{"patience": int(p)} for p in args.patience.split(",") if p.strip()]
    rows, contenders = [], {}
    for knobs in settings:
        label = ", ".join(f"{k}={v:g}" for k, v in knobs.items())
        preds = predict_loader(fast, loader, **knobs)
        m = metrics(preds, fast.num_labels)
        counts = np.bincount(preds.layers.numpy(), minlength=fast.hf.config.num_hidden_layers + 1)[1:]
        rows.append({"setting": label, "policy": "patience" if "patience" in knobs else "entropy",
                     "speed": knobs.get("speed", 0.0), "patience": knobs.get("patience", 0), **m,
                     "agreement_with_teacher": baseline.agreement(preds),
                     "vs_teacher": baseline.versus(preds, args.bootstrap),
                     "exit_layer_counts": counts.tolist(),
                     "flops_speedup": base_metrics["flops_per_sample"] / m["flops_per_sample"]})
        contenders[label] = nimble_contender(fast, knobs)
        print(f"{label}: accuracy {m['accuracy']:.4f}, layers {m['mean_layers']:.2f}", file=sys.stderr, flush=True)
    zero = next((r for r in rows if r["policy"] == "entropy" and r["speed"] == 0.0), None)
    if zero is not None and zero["agreement_with_teacher"] != 1.0:
        print(f"WARNING: speed 0 agrees with the teacher on only {zero['agreement_with_teacher']:.4f}", file=sys.stderr)

    # Latency, every setting interleaved with the plain transformers teacher (eager and sdpa).
    contenders.update({k: hf_contender(m) for k, m in transformers_baselines(teacher_dir).items()})
    torch.manual_seed(0)
    lat = measure_latency(contenders, fast, encoded, examples={1: args.b1_examples, 32: args.b32_examples},
                          rounds=args.rounds)
    add_speedups(lat)
    for r in rows:
        b1, b32 = lat["batch1"][r["setting"]], lat["batch32"][r["setting"]]
        r.update(b1_ms=b1["p50_ms"], b1_speedup=b1["speedup"], b32_ms_per_sample=b32["ms_per_sample"],
                 b32_speedup=b32["speedup"], b1_over_flops=b1["speedup"] / r["flops_speedup"],
                 b32_over_flops=b32["speedup"] / r["flops_speedup"])
    diagnostics = branch_diagnostics(fast, loader)

    # Table, plot, JSON.
    env = environment()
    table = ["| setting | accuracy | Δ vs teacher [95% CI] (points) | mean layers | MFLOPs | FLOPs × | b1 × | "
             "b32 × | b32 × ÷ FLOPs × |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_teacher"]
        table.append(f"| {r['setting']} | {r['accuracy']:.4f} | {100 * v['diff']:+.2f} [{100 * v['low']:+.2f}, "
                     f"{100 * v['high']:+.2f}] | {r['mean_layers']:.2f} | {r['flops_per_sample'] / 1e6:.0f} | "
                     f"{r['flops_speedup']:.2f} | {r['b1_speedup']:.2f} | {r['b32_speedup']:.2f} | "
                     f"{r['b32_over_flops']:.2f} |")
    diag = ["| layer | branch | accuracy | agrees with teacher | mean uncertainty |", "|---|---|---|---|---|"]
    diag += [f"| {d['layer']} | {d['role']} | {d['accuracy']:.4f} | {d['agreement_with_teacher']:.4f} | "
             f"{d['mean_uncertainty']:.3f} |" for d in diagnostics]
    base_lat = {bs: {k: v for k, v in lat[bs].items() if k.startswith("transformers-")} for bs in lat}
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / f"{name}.png"
    plot(rows, base_metrics["accuracy"], png, f"FastBERT on {tag}: accuracy vs speed-up ({len(encoded)} {split} "
                                              f"sentences)")
    stage_note = ("stage 1 skipped (the teacher is already fine-tuned: its classifier is the teacher head)"
                  if "finetune" not in summary["stages"] else "stage 1 fine-tuned the teacher first")
    command = common.command_line()  # what ran (less --reuse), e.g. with --out or --threads
    md = f"""## FastBERT on `{tag}`: the speed knob

`{command}` — teacher `{teacher_dir}` (accuracy {base_metrics['accuracy']:.4f} on the {len(encoded)} {split}
sentences).

- Training: {stage_note}; self-distillation for {args.distill_epochs} epochs at lr {float(args.lr) * 10:g}
  (10 × {args.lr}), batch {args.batch_size}, max {args.max_length} tokens, `{args.branch}` branches;
  {summary['train_seconds'] / 60:.1f} min.
- Δ: accuracy difference from the teacher on the same sentences, with its paired bootstrap 95% interval
  ({args.bootstrap} resamples).
- ×: speed-up over the faster plain transformers teacher (eager/sdpa), timed interleaved in the same run;
  batch 1 over {args.b1_examples} sentences, batch 32 over {args.b32_examples} (bucketed by length), median of
  {args.rounds} passes. FLOPs × counts the branches that ran; the last column should stay near 1.

{chr(10).join(table)}

Each student branch on every {split} sentence (no exit), and the teacher:

{chr(10).join(diag)}

![accuracy vs speed-up]({png.name})

{common.env_line(env)}
"""
    lossless = [r for r in rows if r["policy"] == "entropy" and r["vs_teacher"]["low"] <= 0 <= r["vs_teacher"]["high"]
                and r["speed"] > 0]
    best = max(lossless, key=lambda r: r["b32_speedup"], default=None)
    if best is None:
        claim = "no speed setting kept the teacher's accuracy within its 95% interval."
    else:
        v = best["vs_teacher"]
        claim = (f"at speed {best['speed']:g}, accuracy {best['accuracy']:.4f} vs the teacher's "
                 f"{base_metrics['accuracy']:.4f} (Δ {100 * v['diff']:+.2f} points, 95% CI [{100 * v['low']:+.2f}, "
                 f"{100 * v['high']:+.2f}]), {best['mean_layers']:.2f} layers on average, "
                 f"{best['b1_speedup']:.2f}× faster at batch 1 and {best['b32_speedup']:.2f}× at batch 32 "
                 f"(FLOPs {best['flops_speedup']:.2f}×).")
    headline = f"**FastBERT** (`{command}`) on `{tag}`: {claim}"
    result = {"data": data, "split": split, "examples": len(encoded), "sizes": sizes, "teacher": teacher_dir,
              "model": out, "train_command": "nimblebert train fastbert " + " ".join(train_args),
              "train": summary, "teacher_metrics": base_metrics, "settings": rows, "branches": diagnostics,
              "transformers_latency": base_lat, "latency": lat, "environment": env}
    common.publish(name, md, result, headline, docs if args.docs else None)
    print(md)
    print(headline)


if __name__ == "__main__":
    main()
