"""TR-BERT's two inference knobs compared: ``keep_threshold`` (the paper's p ≥ t rule) against ``keep_fraction``
(ours: keep the policy's top share of each review's tokens at each cut). Issue 20: a threshold can be a cliff (all
tokens kept, or nearly none), a fraction reaches every saving. This measures which serves users better.

On ``mr-long`` (first 256 tokens of each review) with a trained TR-BERT model (default
``runs/trbert-mr-long-a0.5``, from ``runs/teacher-mr-long``), evaluation only (FLOPs are counted, nothing is timed):

1. Validation sweep of each knob over a fine grid (``--thresholds``, ``--fractions``): accuracy, FLOPs per review
   (policies included), the FLOPs saving against the full model, mean tokens kept per cut.
2. Per knob: how many distinct savings it reaches (savings that differ by at least ``--resolution`` points of the
   full model's FLOPs), and the "cliff": the largest jump in saving between neighbouring settings of the grid.
3. Budgets (``--budgets``, FLOPs speed-ups): per knob, the setting a user would get without the test set — the most
   accurate validation setting whose validation speed-up reaches the budget (what ``--target-speedup`` does with a
   ladder) — then reported on the test reviews: accuracy, Δ against the full model with the paired bootstrap 95%
   interval, and the test speed-up it really gave.

    python benchmarks/trbert_knobs.py                      # docs/trbert_knobs.json, docs/sections/trbert_knobs.md
    python benchmarks/trbert_knobs.py --docs /tmp/k --thresholds 0.3,0.5 --fractions 0.5 --budgets 1.5  # a quick look
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import common
from common import ROOT, environment

DATA = "mr-long"
# Steps of 0.1 on both knobs (the same number of settings each; 150 validation reviews of 256 tokens per setting).
THRESHOLDS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FRACTIONS = "1,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1"


def distinct(savings: list[float], resolution: float) -> int:
    """How many savings are at least ``resolution`` apart (greedy over the sorted values: a saving counts when it
    is ``resolution`` above the last one counted)."""
    count, last = 0, None
    for s in sorted(savings):
        if last is None or s >= last + resolution - 1e-12:
            count, last = count + 1, s
    return count


def cliff(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest jump in FLOPs saving between neighbouring settings of one knob's grid (rows in grid order, from
    the full model to the cheapest), with the two settings and their validation accuracies."""
    best = {"jump": 0.0}
    for a, b in zip(rows, rows[1:], strict=False):
        jump = abs(b["saving"] - a["saving"])
        if jump > best["jump"]:
            best = {"jump": jump, "from": a["value"], "to": b["value"], "saving_from": a["saving"],
                    "saving_to": b["saving"], "accuracy_from": a["accuracy"], "accuracy_to": b["accuracy"]}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/trbert-mr-long-a0.5", help="a trained TR-BERT folder")
    ap.add_argument("--teacher", default="runs/teacher-mr-long", help="the full model it was trained from")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--thresholds", default=THRESHOLDS, help="keep thresholds swept on validation (0 = full model)")
    ap.add_argument("--fractions", default=FRACTIONS, help="keep fractions swept on validation (1 = full model)")
    ap.add_argument("--budgets", default="1.5,2,3", help="FLOPs speed-ups asked for, comma-separated")
    ap.add_argument("--resolution", type=float, default=0.02,
                    help="two savings count as distinct when at least this far apart (fraction of the full FLOPs)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--name", default="trbert_knobs")
    ap.add_argument("--docs", help=common.DOCS_HELP)
    args = ap.parse_args()
    common.use_threads(args.threads)
    os.chdir(ROOT)

    from nimblebert import load
    from nimblebert.data import encode, make_loader
    from nimblebert.inference import metrics, predict_loader

    base = common.teacher_baseline(args.teacher, DATA, args.max_length, batch_size=args.batch_size)
    model = load(args.model)
    teacher, task = base.teacher, base.task
    val_enc = encode(task.validation, teacher.tokenizer, args.max_length, task.has_pair)
    val_loader = make_loader(val_enc, teacher.tokenizer, args.batch_size, shuffle=False, bucket_by_length=True)
    val_full = predict_loader(teacher, val_loader)
    val_full_m = metrics(val_full, teacher.num_labels)
    full_flops_val = val_full_m["flops_per_sample"]

    knobs = {"keep_threshold": [float(v) for v in args.thresholds.split(",") if v.strip()],
             "keep_fraction": [float(v) for v in args.fractions.split(",") if v.strip()]}
    sweep: dict[str, list[dict[str, Any]]] = {}
    for knob, values in knobs.items():
        sweep[knob] = []
        for value in values:
            setting = {"keep_threshold": 0.0, knob: value} if knob == "keep_fraction" else {knob: value}
            p = predict_loader(model, val_loader, **setting)
            m = metrics(p, model.num_labels)
            paired = common.paired_bootstrap((val_full.predicted == val_full.labels).numpy(),
                                             (p.predicted == p.labels).numpy(), args.bootstrap)
            row = {"value": value, "knobs": setting, "accuracy": m["accuracy"], "delta_vs_full": paired,
                   "flops_per_sample": m["flops_per_sample"],
                   "flops_speedup": full_flops_val / m["flops_per_sample"],
                   "saving": 1 - m["flops_per_sample"] / full_flops_val,
                   "mean_tokens_kept": m.get("mean_tokens_kept"), "mean_tokens_in": m.get("mean_tokens_in")}
            sweep[knob].append(row)
            print(f"{knob} {value:g}: acc {row['accuracy']:.4f} × {row['flops_speedup']:.2f} kept "
                  f"{row['mean_tokens_kept']}", flush=True)

    summary = {}
    for knob, rows in sweep.items():
        savings = [r["saving"] for r in rows]
        summary[knob] = {"distinct_savings": distinct(savings, args.resolution), "settings": len(rows),
                         "max_saving": max(savings), "min_saving": min(savings), "cliff": cliff(rows)}

    # ---- budgets: chosen on validation, reported on test ---------------------------------------------------
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    full_test_flops = base.metrics["flops_per_sample"]
    picks: list[dict[str, Any]] = []
    test_cache: dict[tuple, dict[str, Any]] = {}
    for budget in budgets:
        for knob, rows in sweep.items():
            ok = [r for r in rows if r["flops_speedup"] >= budget - 1e-9]
            pick: dict[str, Any] = {"budget": budget, "knob": knob}
            if not ok:
                fastest = max(rows, key=lambda r: r["flops_speedup"])
                pick.update({"reached": False, "fastest_validation_speedup": fastest["flops_speedup"]})
                picks.append(pick)
                continue
            chosen = max(ok, key=lambda r: (r["accuracy"], -r["flops_per_sample"]))
            key = tuple(sorted(chosen["knobs"].items()))
            if key not in test_cache:
                p = predict_loader(model, base.loader, **chosen["knobs"])
                m = metrics(p, model.num_labels)
                test_cache[key] = {"accuracy": m["accuracy"], "vs_full": base.versus(p, args.bootstrap),
                                   "flops_per_sample": m["flops_per_sample"],
                                   "flops_speedup": full_test_flops / m["flops_per_sample"],
                                   "mean_tokens_kept": m.get("mean_tokens_kept")}
            pick.update({"reached": True, "value": chosen["value"], "knobs": chosen["knobs"],
                         "validation_accuracy": chosen["accuracy"], "validation_speedup": chosen["flops_speedup"],
                         "test": test_cache[key]})
            picks.append(pick)

    # ---- table, JSON ---------------------------------------------------------------------------------------
    env = environment()
    mean_in = sweep["keep_fraction"][0].get("mean_tokens_in") or float("nan")
    sweep_table = ["| knob | value | validation acc. | Δ vs full [95% CI] (points) | tokens kept per cut "
                   f"(of {mean_in:.0f}) | FLOPs × | saving |", "|---|---|---|---|---|---|---|"]
    for knob, rows in sweep.items():
        for r in rows:
            d = r["delta_vs_full"]
            kept = " / ".join(f"{k:.0f}" for k in r["mean_tokens_kept"] or [])
            sweep_table.append(f"| {knob} | {r['value']:g} | {r['accuracy']:.4f} | {100 * d['diff']:+.2f} "
                               f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {kept} | "
                               f"{r['flops_speedup']:.2f} | {100 * r['saving']:.1f}% |")
    summary_table = ["| knob | settings | distinct savings (≥ "
                     f"{100 * args.resolution:g} points apart) | savings reached | largest jump between neighbours |",
                     "|---|---|---|---|---|"]
    for knob, s in summary.items():
        c = s["cliff"]
        jump = (f"{100 * c['jump']:.1f} points ({c['from']:g} → {c['to']:g}: saving {100 * c['saving_from']:.1f}% → "
                f"{100 * c['saving_to']:.1f}%, accuracy {c['accuracy_from']:.4f} → {c['accuracy_to']:.4f})"
                if c["jump"] > 0 else "none")
        summary_table.append(f"| {knob} | {s['settings']} | {s['distinct_savings']} | {100 * s['min_saving']:.1f}% – "
                             f"{100 * s['max_saving']:.1f}% | {jump} |")
    pick_table = ["| budget (FLOPs ×) | knob | chosen on validation | val. acc. / × | test acc. | "
                  "Δ vs full on test [95% CI] (points) | test FLOPs × |", "|---|---|---|---|---|---|---|"]
    for p in picks:
        if not p["reached"]:
            pick_table.append(f"| {p['budget']:g} | {p['knob']} | not reachable (fastest "
                              f"{p['fastest_validation_speedup']:.2f}×) | — | — | — | — |")
            continue
        t, v = p["test"], p["test"]["vs_full"]
        pick_table.append(f"| {p['budget']:g} | {p['knob']} | {p['value']:g} | {p['validation_accuracy']:.4f} / "
                          f"{p['validation_speedup']:.2f} | {t['accuracy']:.4f} | {100 * v['diff']:+.2f} "
                          f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] | {t['flops_speedup']:.2f} |")
    command = common.command_line()
    md = f"""## TR-BERT's knobs: keep threshold vs keep fraction on `mr-long`

`{command}` — model `{args.model}` (TR-BERT, cuts after layers {model.method_config['cuts']}, α
{model.method_config['alpha']:g}) from the full model `{args.teacher}` ({val_full_m['accuracy']:.4f} on the
{len(val_enc)} validation reviews, {base.metrics['accuracy']:.4f} on the {len(base.encoded)} test reviews), first
{args.max_length} tokens of each review. Evaluation only: FLOPs are counted (policies included), nothing is timed.
`keep_threshold` t keeps a token when the policy's keep probability is ≥ t (official 0.5; 0 = the full model);
`keep_fraction` f keeps the policy's top ⌈f·n⌉ of a review's n selectable tokens at each cut (1 = the full model).
Saving = 1 − FLOPs / the full model's. Δ: paired bootstrap 95% interval against the full model
({args.bootstrap} resamples; one validation review is {100 / max(len(val_enc), 1):.2f} points).

**Reach** (validation):

{chr(10).join(summary_table)}

**Budgets**: for each FLOPs speed-up asked for, the most accurate validation setting of each knob that reaches it
(what `--target-speedup` does with a ladder), then measured on test:

{chr(10).join(pick_table)}

**The sweeps** (validation):

{chr(10).join(sweep_table)}

{common.env_line(env)}
"""
    s_t, s_f = summary["keep_threshold"], summary["keep_fraction"]
    headline = (f"**TR-BERT knobs** (`{command}`): on `mr-long` validation the keep fraction reaches "
                f"{s_f['distinct_savings']} distinct FLOPs savings (largest jump between neighbours "
                f"{100 * s_f['cliff']['jump']:.1f} points), the keep threshold {s_t['distinct_savings']} (largest jump "
                f"{100 * s_t['cliff']['jump']:.1f} points).")
    result = {"data": DATA, "model": args.model, "teacher": args.teacher, "max_length": args.max_length,
              "validation_full_model": val_full_m, "test_full_model": base.metrics, "sweep": sweep,
              "summary": summary, "budgets": picks, "resolution": args.resolution, "environment": env}
    common.publish(args.name, md, result, headline, common.docs_folder(args))
    print(md)
    print(headline)


if __name__ == "__main__":
    main()
