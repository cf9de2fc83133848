"""SSA vs plain fine-tuning on `mr` and `chnsenti`, several seeds, the same budget (Chen/Kou et al. 2020).

For each dataset and seed: ``nimblebert train finetune`` and ``nimblebert train ssa`` (hybrid, the official
default; λ = 0.5 as for SST-2) from MiniLM-L6 with the same flags — 3 epochs, batch 32, lr 5e-5, max 64 tokens,
best validation epoch kept. Reported per method: mean, standard deviation and range over the seeds of the
validation and test accuracy, the training time, and SSA's probing cost (its share of the training time, the
rounds, the rows run); then the verdict the issue asks for, computed from the numbers: is SSA's mean test
accuracy above plain fine-tuning's by more than the seeds' spread (the larger of the two standard deviations)?

`chnsenti` is cut to a seeded subset of its training split (``--chnsenti-train``, default 2,000 of 13,891
rows; validation and test stay whole) so that 6 trainings fit the 2-core budget: a full-size run costs
~7× more. The subset is written once to ``runs/data/chnsenti-<N>`` as a data folder.

Budget (2 CPU cores, one run per core with ``--threads 1``): a plain run ~6 min on mr, ~7 min on the chnsenti
subset; SSA ~1.3× that (probing is forward-only). 12 runs ≈ 90 core-minutes: run one process per dataset with
``--train-only`` side by side, then once more with ``--reuse`` to evaluate and write the section.

    python benchmarks/ssa.py                                       # everything, then docs/ssa.*
    python benchmarks/ssa.py --datasets mr --train-only --threads 1 &  # one core each...
    python benchmarks/ssa.py --datasets chnsenti --train-only --threads 1
    python benchmarks/ssa.py --reuse                               # ...then evaluate and publish
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import common
from common import ROOT, cli, environment, finished

TRAIN = ["--epochs", "3", "--batch-size", "32", "--lr", "5e-5", "--max-length", "64"]


def chnsenti_subset(n: int) -> str:
    """A data folder with ``n`` training rows of chnsenti drawn with a fixed seed, and its whole validation and
    test splits."""
    import numpy as np

    from nimblebert.data import load_task

    # the row count names the folder exactly (2,500 rows must not reuse a 2k subset); whole thousands keep "<n>k"
    folder = ROOT / "runs" / "data" / (f"chnsenti-{n // 1000}k" if n % 1000 == 0 else f"chnsenti-{n}")
    if (folder / "test.jsonl").exists():
        return str(folder)
    task = load_task("chnsenti")
    folder.mkdir(parents=True, exist_ok=True)
    picks = np.random.default_rng(0).permutation(len(task.train))[:n]
    for name, ds, rows in (("train", task.train, picks), ("validation", task.validation, range(len(task.validation))),
                           ("test", task.test, range(len(task.test)))):
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in rows:
                r = ds[int(i)]
                f.write(json.dumps({"text": r["text"], "label": task.label_names[r["label"]]}, ensure_ascii=False)
                        + "\n")
    return str(folder)


TEACHER_CHECK = Path("runs/ssa/teacher_check.json")
SPEEDS = ("0.3", "0.6")


def teacher_check(threads: int | None) -> dict[str, Any]:
    """Does an SSA teacher give a better FastBERT student than a plain one? On `mr`, seed 42: an SSA-Reg model
    (the variant whose transformers head is its classifier, so other methods can read it as a teacher) and the
    plain fine-tune, each distilled into FastBERT branches with the same flags; test accuracy at two speeds."""
    reg = "runs/ssa/mr-ssareg-s42"
    if not finished(reg):
        cli("train", "ssa", "--model", "minilm-l6", "--data", "mr", "--out", reg, *TRAIN, "--seed", "42",
            "--variant", "reg", "--overwrite", "--no-progress", capture=False)
    out: dict[str, Any] = {"flags": ["--lr", "2e-5", "--distill-epochs", "2", "--max-length", "64"]}
    for name, teacher in (("plain", "runs/ssa/mr-plain-s42"), ("ssa-reg", reg)):
        student = f"runs/ssa/fastbert-from-{name}"
        if not finished(student):
            cli("train", "fastbert", "--model", teacher, "--data", "mr", "--out", student, *out["flags"],
                "--seed", "42", "--overwrite", "--no-progress", capture=False)
        out[name] = {"teacher": common.cli_json("evaluate", teacher, "--data", "mr", "--max-length", "64", "--json")}
        for speed in SPEEDS:
            out[name][speed] = common.cli_json("evaluate", student, "--data", "mr", "--max-length", "64",
                                               "--speed", speed, "--json")
    TEACHER_CHECK.write_text(json.dumps(out, indent=2))
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def carry_over(docs: Path, run_now: list[str]) -> dict[str, Any]:
    """The per-dataset results of an earlier run (``docs/ssa.json``) for the datasets not run now, each with
    the command and date that measured it. Files from before commands were stored per dataset take the
    command their section quotes."""
    path = docs / "ssa.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    quoted = common.section_command("ssa", docs) or "an earlier run of benchmarks/ssa.py"
    out = {}
    for name, r in old.get("results", {}).items():
        if name in run_now or name == "teacher_check" or "verdict" not in r:
            continue
        r.setdefault("command", old.get("command", quoted))
        r.setdefault("seeds", old.get("seeds", {}).get(name, []))
        r.setdefault("date", old.get("environment", {}).get("date", "date not recorded"))
        out[name] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mr,chnsenti")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--chnsenti-seeds", help="seeds for chnsenti (default: --seeds)")
    ap.add_argument("--chnsenti-train", type=int, default=2000, help="training rows of chnsenti used")
    ap.add_argument("--variant", default="hybrid", choices=["hybrid", "reg"])
    ap.add_argument("--reuse", action="store_true", help="keep finished runs")
    ap.add_argument("--train-only", action="store_true", help="train, do not evaluate or publish")
    ap.add_argument("--threads", type=int, help="torch threads of every run")
    ap.add_argument("--docs", help="write the files here instead of docs/")
    ap.add_argument("--teacher-check", action="store_true",
                    help="only the teacher comparison: FastBERT from an SSA-Reg teacher vs from the plain one (mr)")
    args = ap.parse_args()
    os.chdir(ROOT)
    common.use_threads(args.threads)
    if args.teacher_check:
        print(json.dumps(teacher_check(args.threads), indent=2))
        return
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    datasets_ = [d.strip() for d in args.datasets.split(",") if d.strip()]
    data_of = {"mr": "mr", "chnsenti": chnsenti_subset(args.chnsenti_train)} if "chnsenti" in datasets_ \
        else {"mr": "mr"}
    if "mr" in datasets_:
        cli("data", "prepare", "mr")

    runs: dict[tuple[str, str, str], str] = {}
    seeds_of = {name: seeds for name in datasets_}
    if args.chnsenti_seeds:
        seeds_of["chnsenti"] = [s.strip() for s in args.chnsenti_seeds.split(",") if s.strip()]
    for name in datasets_:
        for seed in seeds_of[name]:
            for method in ("finetune", "ssa"):
                label = "plain" if method == "finetune" else "ssa"
                out = f"runs/ssa/{name}-{label}-s{seed}"
                runs[name, label, seed] = out
                if args.reuse and finished(out):
                    continue
                extra = ["--variant", args.variant] if method == "ssa" else []
                cli("train", method, "--model", "minilm-l6", "--data", data_of[name], "--out", out, *TRAIN,
                    "--seed", seed, "--overwrite", "--no-progress", *extra, capture=False)
    if args.train_only:
        return

    from nimblebert import load
    from nimblebert.data import encode, load_task, make_loader
    from nimblebert.inference import metrics, predict_loader

    results: dict[str, Any] = {}
    for name in datasets_:
        per: dict[str, dict[str, list[float]]] = {}
        for (n, label, seed), out in runs.items():
            if n != name:
                continue
            model = load(out)
            task = load_task(data_of[name], label_names=model.label_names)
            row = per.setdefault(label, {"validation": [], "test": [], "train_min": [], "probe_s": [],
                                         "probe_rounds": [], "probed_rows": []})
            for split in ("validation", "test"):
                enc = encode(getattr(task, split), model.tokenizer, 64, task.has_pair)
                p = predict_loader(model, make_loader(enc, model.tokenizer, 64, shuffle=False, bucket_by_length=True))
                row[split].append(metrics(p, model.num_labels)["accuracy"])
            summary = json.loads((Path(out) / "train_summary.json").read_text())
            row["train_min"].append(summary["train_seconds"] / 60)
            probes = Path(out) / "probe_log.jsonl"
            if probes.exists():
                log = [json.loads(x) for x in probes.read_text().splitlines()]
                row["probe_s"].append(sum(x["probe_seconds"] for x in log))
                row["probe_rounds"].append(sum(x["rounds"] for x in log))
                row["probed_rows"].append(sum(x["probed_rows"] for x in log))
            print(f"{name} {label} seed {seed}: test {row['test'][-1]:.4f}", file=sys.stderr)
        results[name] = {label: {k: spread(v) for k, v in r.items() if v} for label, r in per.items()}
        results[name]["sizes"] = {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)}

    command = common.command_line()
    measured_at = environment()["date"]
    for name in datasets_:
        results[name]["command"] = command
        results[name]["date"] = measured_at
        results[name]["seeds"] = seeds_of[name]
    # Datasets not run this time keep the rows an earlier run of this script measured (docs/ssa.json), with
    # the command that measured them, so one dataset's seeds can be added without retraining the other's.
    docs_dir = common.docs_folder(args) or common.DOCS
    carried = carry_over(docs_dir, datasets_)
    results.update(carried)
    shown = datasets_ + list(carried)
    for name in carried:
        seeds_of[name] = carried[name]["seeds"]

    lines, verdicts = [], []
    for name in shown:
        r = results[name]
        for label in ("plain", "ssa"):
            v, t, m = r[label]["validation"], r[label]["test"], r[label]["train_min"]
            probe = r[label].get("probe_s")
            # Compute share: forward rows of probing against training's ≈ 3 forward-equivalents (forward +
            # backward) per row and epoch; wall-clock shares mislead on a shared machine.
            n_train, epochs = r["sizes"]["train"], float(TRAIN[TRAIN.index("--epochs") + 1])
            cost = (f"{r[label]['probed_rows']['mean']:.0f} rows ≈ "
                    f"{100 * r[label]['probed_rows']['mean'] / (3 * epochs * n_train):.0f} % of training compute; "
                    f"{probe['mean']:.0f} s, {r[label]['probe_rounds']['mean']:.0f} rounds" if probe else "—")
            acc = [f"{a['mean']:.4f} ± {a['std']:.4f} [{a['min']:.4f}, {a['max']:.4f}]" for a in (v, t)]
            lines.append(f"| {name} | {label} | {acc[0]} | {acc[1]} | {m['mean']:.1f} | {cost} |")
        gain = r["ssa"]["test"]["mean"] - r["plain"]["test"]["mean"]
        noise = max(r["ssa"]["test"]["std"], r["plain"]["test"]["std"])
        n_seeds = len(r["ssa"]["test"]["values"])
        r["verdict"] = {"test_gain": gain, "spread": noise, "seeds": n_seeds,
                        "beats_spread": gain > noise if n_seeds > 1 else None}
        if n_seeds > 1:
            verdicts.append(f"- `{name}` ({n_seeds} seeds): SSA − plain = {100 * gain:+.2f} points of mean test "
                            f"accuracy; the seeds' spread (larger std) is {100 * noise:.2f} points → "
                            + ("**above the spread**." if gain > noise else "**not above the spread**."))
        else:
            verdicts.append(f"- `{name}` (1 seed only: no spread to compare against, no verdict): SSA − plain = "
                            f"{100 * gain:+.2f} points of test accuracy.")
    # The teacher check's own file, else what an earlier run published (it names its own command).
    published = docs_dir / "ssa.json"
    check = (json.loads(TEACHER_CHECK.read_text()) if TEACHER_CHECK.exists() else
             json.loads(published.read_text()).get("results", {}).get("teacher_check") if published.exists() else None)
    if check:
        results["teacher_check"] = check
        cells = "; ".join(
            f"speed {sp}: {check['plain'][sp]['accuracy']:.4f} / {check['ssa-reg'][sp]['accuracy']:.4f} "
            f"(mean layers {check['plain'][sp]['mean_layers']:.2f} / {check['ssa-reg'][sp]['mean_layers']:.2f})"
            for sp in SPEEDS)
        verdicts.append(
            f"- Teacher check (`python benchmarks/ssa.py --teacher-check`, mr, seed 42; test accuracy, plain / SSA "
            f"teacher): teachers {check['plain']['teacher']['accuracy']:.4f} / "
            f"{check['ssa-reg']['teacher']['accuracy']:.4f} (SSA-Reg: the variant another method can read as a "
            f"teacher); FastBERT students ({' '.join(check['flags'])}) {cells}.")
    env = environment()
    sizes = "; ".join(f"`{n}` {s['train']}/{s['validation']}/{s['test']}"
                      for n, s in ((n, results[n]["sizes"]) for n in shown))
    earlier = "".join(f"\n\n`{n}`: rows carried over unchanged from an earlier run, `{results[n]['command']}` "
                      f"({results[n]['date']})." for n in carried)
    md = f"""## SSA vs plain fine-tuning (`mr`, `chnsenti`)

`{command}` — MiniLM-L6, for each seed ({'; '.join(f"{n}: {', '.join(seeds_of[n])}" for n in
shown)}) plain fine-tuning and SSA
({args.variant}, λ = 0.5, attention threshold 0.3, token-loss weight 0.3, probed share 0 / 0.2 / 0.4 over the
3 epochs) with the same flags: {' '.join(TRAIN)}, best validation epoch kept. Splits (train/validation/test):
{sizes}{f' (chnsenti: a seeded {args.chnsenti_train}-row subset of its training split)' if 'chnsenti' in datasets_
    else ''}.{earlier}

Accuracy: mean ± standard deviation [min, max] over the seeds. Probing: the forward passes that make SSA's
labels each epoch, as forward rows and as a share of training's compute (≈ 3 forward-equivalents per
row and epoch), then its wall time. Wall times: several runs shared the 2 cores (up to 4 at once) and were
paused while another benchmark timed latency, so compare them only loosely.

| data | method | validation accuracy | test accuracy | training min (wall) | probing (forward rows; time) |
|---|---|---|---|---|---|
{chr(10).join(lines)}

{chr(10).join(verdicts)}

Environment: torch {env['torch']}, {args.threads or env['threads']} thread(s) per run, {env['cpu_count']} CPUs
({env['processor']}), {env['date']}.
"""
    head = "; ".join(f"`{n}` {100 * results[n]['verdict']['test_gain']:+.2f} points ({results[n]['verdict']['seeds']} "
                     f"seed(s), spread {100 * results[n]['verdict']['spread']:.2f})" for n in shown)
    also = f" and earlier runs for {', '.join(f'`{n}`' for n in carried)}" if carried else ""
    headline = (f"**SSA** (`{command}`{also}): mean test accuracy over the seeds, SSA − plain "
                f"fine-tuning: {head}.\n")
    common.publish("ssa", md, {"results": results, "seeds": seeds_of, "train_flags": TRAIN, "environment": env},
                   headline, common.docs_folder(args))
    print(md)


if __name__ == "__main__":
    main()
