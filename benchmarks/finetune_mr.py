"""Fine-tune MiniLM-L6 on `mr` with the CLI; accuracy, training time, latency at batch 1 and 32.

Also checks, in the same run and on the same inputs, that the core encoder at full Plan is no slower
than 1.05× the faster of the plain transformers model with eager and with sdpa attention.

    python benchmarks/finetune_mr.py            # trains runs/teacher-mr, writes docs/finetune_mr.*
    python benchmarks/finetune_mr.py --reuse    # keep an already trained runs/teacher-mr
    python benchmarks/finetune_mr.py --reuse --docs runs/demo   # what `make demo` runs: docs/ stays as it is
"""

from __future__ import annotations

import argparse
import json
import os

from common import DOCS_HELP, cli, cli_json, docs_folder, env_line, environment, finished, publish

TRAIN = ["--epochs", "3", "--batch-size", "32", "--lr", "5e-5", "--max-length", "64", "--seed", "42"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/teacher-mr")
    ap.add_argument("--reuse", action="store_true", help="reuse a finished --out instead of training again")
    ap.add_argument("--docs", help=DOCS_HELP)
    args = ap.parse_args()

    sizes = json.loads(cli("data", "prepare", "mr").strip().splitlines()[-1])
    reused = args.reuse and finished(args.out)
    if not reused:
        cli("train", "finetune", "--model", "minilm-l6", "--data", "mr", "--out", args.out, "--overwrite", *TRAIN,
            capture=False)
    summary = json.loads(open(f"{args.out}/train_summary.json").read())
    val = cli_json("evaluate", args.out, "--data", "mr", "--split", "validation", "--max-length", "64", "--json")
    test = cli_json("evaluate", args.out, "--data", "mr", "--split", "test", "--max-length", "64", "--json",
                    "--latency")
    lat = test["latency"]
    rows = []
    for bs in ("batch1", "batch32"):
        for name, e in lat[bs].items():
            rows.append(f"| {bs[5:]} | {name} | {e['p50_ms']:.2f} | {e['p90_ms']:.2f} | {e['ms_per_sample']:.2f} | "
                        f"{e['samples_per_s']:.0f} | {e['speedup']:.2f}× |")
    ratio = {bs: lat[bs]["nimblebert"]["ms_per_sample"] / min(lat[bs]["transformers-eager"]["ms_per_sample"],
                                                                lat[bs]["transformers-sdpa"]["ms_per_sample"])
             for bs in ("batch1", "batch32")}
    env = test["environment"]
    # The threads the training ran on: this process's setting, which its training command inherited (OMP_NUM_THREADS,
    # e.g. from --threads of the other benchmarks or a wrapper), else torch's default of one per core.
    # A reused folder was trained by an earlier run whose threads this run cannot know: say so instead.
    threads = os.environ.get("OMP_NUM_THREADS") or env["cpu_count"]
    trained = "in an earlier run" if reused else f"at {threads} thread(s)"
    md = f"""## Fine-tuning MiniLM-L6 on `mr` (the baseline and the teacher)

`python benchmarks/finetune_mr.py` (`make demo` runs it too, into runs/demo). Data: `mr` (Pang & Lee sentence polarity),
splits train {sizes['train']} / validation {sizes['validation']} / test {sizes['test']}; 3 epochs, batch 32,
lr 5e-5 (warm-up 10 %, linear decay), max 64 tokens, seed 42; best validation epoch kept.

| validation accuracy | test accuracy | test macro-F1 | training time | MFLOPs / sample (test) |
|---|---|---|---|---|
| {val['accuracy']:.4f} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | {summary['train_seconds'] / 60:.1f} min \
| {test['flops_per_sample'] / 1e6:.0f} |

Latency of the fine-tuned model on the test sentences (batch 1: {100} sentences one at a time; batch 32:
640 sentences bucketed by length), median of 3 interleaved passes; × = speed-up over the faster plain
transformers model. `nimblebert` is the core encoder at full Plan.

| batch | runner | p50 ms / batch | p90 ms / batch | ms / sentence | sentences / s | × |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Core ÷ faster transformers (must be ≤ 1.05): batch 1 {ratio['batch1']:.3f}, batch 32 {ratio['batch32']:.3f}.
{env_line(env)}
"""
    b1, b32 = lat["batch1"]["nimblebert"], lat["batch32"]["nimblebert"]
    headline = (f"**Baseline** (`python benchmarks/finetune_mr.py`): MiniLM-L6 fine-tuned on `mr` — test accuracy "
                f"{test['accuracy']:.4f} ({test['examples']} sentences), {summary['train_seconds'] / 60:.1f} min of "
                f"training {trained}; {b1['ms_per_sample']:.1f} ms per sentence at batch 1, "
                f"{b32['ms_per_sample']:.1f} ms at batch 32.\n")
    publish("finetune_mr", md, {"sizes": sizes, "train": summary, "validation": val, "test": test,
                                "core_over_transformers": ratio, "environment": environment()}, headline,
            docs_folder(args))
    print(md)


if __name__ == "__main__":
    main()
