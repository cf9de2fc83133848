"""The efficiency report on `mr`: every trained model and the baselines a user would pick instead.

Runs ``nimblebert bench`` over the fine-tuned teacher and every method's model present in ``runs/``
(FastBERT swept over its speed knob), with the plain transformers model (eager, sdpa) and onnxruntime
fp32 / dynamic int8 of the teacher timed interleaved in the same run. Then, for each method, its best
point within 1 and within 3 accuracy points of the teacher, at batch 1 and at batch 32.

    python benchmarks/report_mr.py          # after finetune_mr.py (and fastbert_mr.py)

The loss budget is read off the test split the table reports, so the "best point" rows describe the
measured trade-off; they are not a model selection (pick a setting on validation for that).
"""

from __future__ import annotations

import json
import shutil

from common import DOCS, ROOT, cli, environment, finished, write_section

# (folder, knob sweeps): every method's model on mr that its benchmark script trained, when present.
MODELS = [
    ("runs/teacher-mr", []),
    ("runs/fastbert-mr", ["speed=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8"]),
    ("runs/tinybert-mr/tinybert-3l", []),
    ("runs/tinybert-mr/tinybert-2l", []),
    ("runs/dynabert-mr", ["width=1,0.75,0.5", "depth=1,0.5"]),
]


def best_points(rows: list[dict], teacher_acc: float, loss: float, key: str) -> dict[str, dict]:
    """Per method, the fastest row (by ``key``) whose accuracy is within ``loss`` of the teacher's."""
    best: dict[str, dict] = {}
    for r in rows:
        if r.get("accuracy") is None or r.get(key) is None or r["accuracy"] < teacher_acc - loss - 1e-9:
            continue
        if r["method"] not in best or r[key] > best[r["method"]][key]:
            best[r["method"]] = r
    return best


def _cell(row: dict | None, key: str) -> str:
    return "— | — | —" if row is None else f"{row['name']} | {row['accuracy']:.4f} | {row[key]:.2f}×"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", help="CPU threads for every contender (default: torch's)")
    ap.add_argument("--reuse", action="store_true", help="rebuild the section from an existing bench/mr run")
    opts = ap.parse_args()
    if not finished("runs/teacher-mr"):
        raise SystemExit("runs/teacher-mr is missing: run benchmarks/finetune_mr.py first")
    args = [path for path, _ in MODELS if finished(path)]
    sweeps = [f"--sweep={s}" for p, knobs in MODELS if finished(p) for s in knobs]
    out = ROOT / "bench" / "mr"
    threads = ["--threads", opts.threads] if opts.threads else []
    if not (opts.reuse and (out / "results.jsonl").exists()):
        cli("bench", *args, "--data", "mr", "--max-length", "64", "--out", str(out), *sweeps, *threads, capture=False)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    teacher = next(r for r in rows if r["method"] == "finetune")
    acc = teacher["accuracy"]
    shutil.copy(out / "pareto.png", DOCS / "report_mr.png")

    lines = ["| method | budget | batch 1: best setting | acc. | × | batch 32: best setting | acc. | × |",
             "|---|---|---|---|---|---|---|---|"]
    for loss in (0.01, 0.03):
        b1, b32 = best_points(rows, acc, loss, "b1_speedup"), best_points(rows, acc, loss, "b32_speedup")
        for method in sorted(set(b1) | set(b32)):
            lines.append(f"| {method} | ≤ {loss * 100:.0f} pt | {_cell(b1.get(method), 'b1_speedup')} | "
                         f"{_cell(b32.get(method), 'b32_speedup')} |")
    table = (out / "results.md").read_text()
    env = {**environment(), **json.loads((out / "meta.json").read_text())["environment"]}  # as measured
    md = f"""## Efficiency report on `mr`: methods against the baselines users would pick instead

`python benchmarks/report_mr.py` (after `finetune_mr.py` and the methods' scripts; `make bench` runs them all).
Teacher test accuracy {acc:.4f} on {teacher['examples']} sentences; × = measured speed-up over the faster plain
transformers model of the teacher, in the same run (batch 1: ms per sentence; batch 32: per sentence).

Best point per method within 1 and 3 accuracy points of the teacher:

{chr(10).join(lines)}

![accuracy against measured speed-up](report_mr.png)

Every row:

{table}
torch {env['torch']}, {env['threads']} threads, {env['cpu_count']} CPUs, {env['date']}.
"""
    headline = (f"**Efficiency on `mr`** (`python benchmarks/report_mr.py`; teacher test accuracy {acc:.4f}, "
                f"{teacher['examples']} sentences; × = measured speed-up over plain transformers, same run, "
                f"{env['threads']} thread(s)):\n\n" + "\n".join(lines) + "\n\n![Pareto chart](docs/report_mr.png)\n")
    write_section("report_mr", md, {"rows": rows, "teacher_accuracy": acc, "environment": env}, headline)
    print(md)


if __name__ == "__main__":
    main()
