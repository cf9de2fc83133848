"""Predicted (per-op latency table) vs measured latency of a searched NAS-BERT network, and the teacher's measured
latency, at batch 1 and 32 over a few sequence lengths. Run pinned (e.g. ``/work/bin/core0``) on the CPU the table
was measured on; writes JSON.

    python benchmarks/nasbert_latency.py runs/nasbert-mr/nas-div3 --teacher runs/teacher-mr --out lat.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path when nimblebert is not installed)
from common import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", help="a folder written by `nimblebert search`")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--table", help="latency table JSON (default: the one search used, from search.json)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import nimblebert
    from nimblebert.methods.nasbert.latency import cpu_identity, measure_model, predict_latency, table_matches
    from nimblebert.methods.nasbert.objective import space_of
    from nimblebert.methods.nasbert.space import parse_arch

    net = nimblebert.load(args.net)
    teacher = nimblebert.load(args.teacher)
    report = json.loads((Path(args.net) / "search.json").read_text())
    table = json.loads(Path(args.table or report["latency_table"]).read_text())
    space = space_of(net)
    if not table_matches(table, space, [], args.batches):
        raise SystemExit("the latency table was measured on another CPU / thread count, or lacks these batch sizes")
    arch = parse_arch(net.method_config["arch"], space)
    rows = []
    for b in args.batches:
        for t in args.lengths:
            predicted = predict_latency(table, space, arch, b, t)
            measured = measure_model(net, b, t, repeats=30 if b == 1 else 5)
            teacher_ms = measure_model(teacher, b, t, repeats=30 if b == 1 else 5)
            rows.append({"batch": b, "length": t, "predicted_ms": predicted, "measured_ms": measured,
                         "error_pct": 100 * (predicted - measured) / measured, "teacher_ms": teacher_ms,
                         "speedup": teacher_ms / measured})
    out = {"net": args.net, "arch": net.method_config["arch"], "rows": rows, "cpu": cpu_identity(),
           "environment": environment(), "table_cpu": table["cpu"]}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"b{r['batch']:>2} t{r['length']:>3}: predicted {r['predicted_ms']:.3f} ms, measured "
              f"{r['measured_ms']:.3f} ms ({r['error_pct']:+.1f} %), teacher {r['teacher_ms']:.3f} ms "
              f"(×{r['speedup']:.2f})")


if __name__ == "__main__":
    main()
