"""FastBERT on an uncertain teacher: does asking for 2× give about 2×? (issue 20)

The issue saw FastBERT's ``--speed`` do nothing on a teacher that is unsure of everything (a 5-class topic task with
a few hundred training documents): every branch's normalized entropy stays above any speed of the usual range, so
speed 0.8 still runs every layer. No multi-class text set ships offline (DATA.md: `mr`, `mr-long`, `chnsenti`), so
the uncertain teacher is made on purpose: MiniLM-L6 fine-tuned for ``--teacher-epochs`` (default 1) on ``--rows``
sentences of `mr` (the seeded stratified sample of ``tinybert_small.py``), then FastBERT trained on it on the same
rows; training ends with the calibrated ladder on mr's 400 validation sentences (refined per model: see
``nimblebert.ladder.refine``).

Then on mr's 800 test sentences: the full model (speed 0), the raw ``--speed`` values of ``--speeds`` (the one-line
message when one saves nothing is recorded), and ``--target-speedup`` for each of ``--targets``: the rung the ladder
chose, the FLOPs speed-up measured on test against the full model, the mean layers, the accuracy and its paired
bootstrap 95% interval against the full model on the same sentences. FLOPs are counted, nothing is timed.

    python benchmarks/fastbert_uncertain.py          # runs/robust/fastbert-uncertain/*, docs/fastbert_uncertain.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
from common import ROOT, cli, environment, finished, points_ci
from tinybert_small import subset


def evaluate(folder: str, data: str, max_length: str, *knobs: str) -> tuple[dict[str, Any], str]:
    """``nimblebert evaluate --json`` on test: its result and its stderr (the one-line messages)."""
    cmd = [sys.executable, "-m", "nimblebert", "evaluate", folder, "--data", data, "--split", "test",
           "--max-length", max_length, "--json", *knobs]
    print("$ nimblebert " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    messages = [line for line in proc.stderr.splitlines() if line.startswith(("ladder:", "evaluate:"))]
    return json.loads(proc.stdout.strip().splitlines()[-1]), "\n".join(messages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--teacher-epochs", default="1")
    ap.add_argument("--teacher-lr", default="5e-5")
    ap.add_argument("--epochs", default="3", help="FastBERT's epochs (stage 2, self-distillation)")
    ap.add_argument("--lr", default="2e-5", help="FastBERT's --lr (stage 2 runs at 10× it, the paper's)")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--speeds", default="0.8", help="raw --speed values to report")
    ap.add_argument("--targets", default="1.5,2,3", help="--target-speedup values")
    ap.add_argument("--cli-speed", default="0.8", help="the raw speed also run through `nimblebert evaluate`")
    ap.add_argument("--cli-target", default="2", help="the target also run through `nimblebert evaluate`")
    ap.add_argument("--runs", default="runs/robust/fastbert-uncertain")
    ap.add_argument("--name", default="fastbert_uncertain")
    ap.add_argument("--docs", help=common.DOCS_HELP)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    common.use_threads(args.threads)
    os.chdir(ROOT)
    runs = Path(args.runs)
    cli("data", "prepare", "mr")
    data = str(runs / "data")
    sizes = subset(args.rows, args.data_seed, Path(data))
    teacher, fast = str(runs / "teacher"), str(runs / "fast")
    common_args = ["--data", data, "--max-length", args.max_length, "--no-progress"]
    if not (args.reuse and finished(teacher)):
        cli("train", "finetune", "--model", "minilm-l6", "--out", teacher, "--overwrite", *common_args,
            "--epochs", args.teacher_epochs, "--lr", args.teacher_lr, "--batch-size", "16", capture=False)
    fast_args = ["--model", teacher, "--out", fast, *common_args, "--epochs", args.epochs, "--lr", args.lr]
    if not (args.reuse and finished(fast)):
        cli("train", "fastbert", *fast_args, "--overwrite", capture=False)
    ladder = json.loads((Path(fast) / "ladder.json").read_text())

    # ---- on test: the full model, raw speeds, targets -------------------------------------------------------
    import numpy as np

    from nimblebert import load
    from nimblebert.data import encode, load_task, make_loader
    from nimblebert.inference import metrics, predict_loader
    from nimblebert.ladder import Ladder, choose
    from nimblebert.methods.fastbert.modules import normalized_entropy

    # In-process runs for the figures (one pass each); the CLI itself for two of them (the one-line messages a
    # user sees, and a check that the CLI measures what this script does).
    model = load(fast)
    task = load_task(data, label_names=model.label_names)
    enc = encode(task.test, model.tokenizer, int(args.max_length), task.has_pair)
    loader = make_loader(enc, model.tokenizer, 64, shuffle=False, bucket_by_length=True)
    full_p = predict_loader(model, loader)
    full = metrics(full_p, model.num_labels)
    # The teacher's own uncertainty on test: the normalized entropy of its head (what the branches learn to copy).
    entropy = normalized_entropy(full_p.logits).numpy()
    full_correct = (full_p.predicted == full_p.labels).numpy()

    def measure(asked: str, knobs: dict[str, Any]) -> dict[str, Any]:
        p = predict_loader(model, loader, **knobs)
        m = metrics(p, model.num_labels)
        return {"asked": asked, "knobs": knobs, "accuracy": m["accuracy"], "mean_layers": m["mean_layers"],
                "flops_speedup": full["flops_per_sample"] / m["flops_per_sample"],
                "vs_full": common.paired_bootstrap(full_correct, (p.predicted == p.labels).numpy(), args.bootstrap),
                "message": ""}

    rows: list[dict[str, Any]] = []
    for speed in [s.strip() for s in args.speeds.split(",") if s.strip()]:
        rows.append(measure(f"--speed {speed}", model.check_knobs({"speed": float(speed)})))
    lad = Ladder.from_json(ladder)
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        rung = choose(lad, target_speedup=float(target))
        row = measure(f"--target-speedup {target}", model.check_knobs(rung.knobs))
        row.update({"target": float(target), "validation_speedup": rung.flops_speedup,
                    "validation_accuracy": rung.accuracy})
        rows.append(row)
    cli_checks = {}
    for row in rows:
        if row["asked"] in (f"--speed {args.cli_speed}", f"--target-speedup {args.cli_target}"):
            r, said = evaluate(fast, data, args.max_length, *row["asked"].split())
            row["message"] = said
            cli_checks[row["asked"]] = {"accuracy": r["accuracy"], "mean_layers": r["mean_layers"],
                                        "knobs": r["knobs"], "same_as_script": r["knobs"] == row["knobs"]
                                        and abs(r["accuracy"] - row["accuracy"]) < 1e-9}

    env = environment()
    table = ["| asked | setting used | test acc. | Δ vs full [95% CI] (points) | mean layers | test FLOPs × | "
             "ladder's × on validation | message (stderr) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_full"]
        val = f"{r['validation_speedup']:.2f}" if r.get("validation_speedup") else "—"
        table.append(f"| `{r['asked']}` | speed {r['knobs'].get('speed')} | {r['accuracy']:.4f} | "
                     f"{points_ci(v)} | "
                     f"{r['mean_layers']:.2f} | "
                     f"{r['flops_speedup']:.2f} | {val} | {r['message'].replace('|', '/') or '—'} |")
    refined = ladder["meta"].get("refined", {}).get("speed", [])
    grid = [s for s in ladder["settings"] if s["knobs"]["speed"] not in refined]
    command = common.command_line()
    t_sum = json.loads((Path(teacher) / "train_summary.json").read_text())
    cli_line = "; ".join(f"`{k}` gave {v['knobs']}, accuracy {v['accuracy']:.4f}, {v['mean_layers']:.2f} layers ("
                         f"{'the same as above' if v['same_as_script'] else 'NOT the same as above'})"
                         for k, v in cli_checks.items()) or "not run"
    md = f"""## FastBERT on an uncertain teacher: asking for 2× gives about 2×

`{command}` — teacher `{teacher}`: MiniLM-L6 fine-tuned for {args.teacher_epochs} epoch(s) on {sizes['train']} `mr`
sentences (seeded stratified sample), {t_sum['stages']['finetune']['accuracy']:.4f} on validation; FastBERT on it,
same rows, {args.epochs} epochs (branch self-distillation at 10 × {args.lr}). Its head's normalized entropy on the
{len(enc)} test sentences: median {np.median(entropy):.4f}, 10th percentile {np.percentile(entropy, 10):.4f}, minimum
{entropy.min():.4f} (1 = 50/50). The ladder (`ladder.json`, on
mr's {ladder['meta']['examples']} validation sentences): the grid's {len(grid)} speeds reach at most
{max(s['flops_speedup'] for s in grid):.2f}× (stuck knobs: {', '.join(ladder['stuck']) or 'none'}); the per-model
refinement added {len(refined)} speeds ({', '.join(f'{v:g}' for v in sorted(refined))}). Test: FLOPs × against
the full model (speed 0) on the same sentences, Δ with a paired bootstrap 95% interval ({args.bootstrap}
resamples).

{chr(10).join(table)}

Through the CLI (`nimblebert evaluate ... --split test`): {cli_line}.

{common.env_line(env)}
"""
    by_target = {r["target"]: r for r in rows if "target" in r}
    two = by_target.get(2.0)
    headline = (f"**Uncertain FastBERT** (`{command}`): `--target-speedup 2` gave {two['flops_speedup']:.2f}× FLOPs on "
                f"test ({two['mean_layers']:.2f} layers of 6, Δ {100 * two['vs_full']['diff']:+.2f} points) where "
                "`--speed 0.8` saves nothing." if two else f"**Uncertain FastBERT** (`{command}`).")
    result = {"data": data, "sizes": sizes, "teacher": teacher, "model": fast, "train_command":
              "nimblebert train fastbert " + " ".join(fast_args), "full": full, "cli_checks": cli_checks,
              "teacher_entropy": {"median": float(np.median(entropy)), "p10": float(np.percentile(entropy, 10)),
                                  "min": float(entropy.min())},
              "ladder": ladder, "rows": rows, "environment": env}
    common.publish(args.name, md, result, headline, common.docs_folder(args))
    print(md)


if __name__ == "__main__":
    main()
