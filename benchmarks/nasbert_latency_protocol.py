"""How to time NAS-BERT's per-op latency table: each op alone, many calls in a row (protocol 1, the first tables),
or all ops in turn (protocol 2, round robin, what ``nimblebert search`` measures now) — judged by the error of the
predicted batch-1 latency of random networks of the space against their measured latency. Run pinned (e.g.
``/work/bin/core0``); writes JSON.

    python benchmarks/nasbert_latency_protocol.py runs/nasbert-mr/supernet --out docs/nasbert/latency_protocol.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import common
from common import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("supernet", help="a supernet folder (its teacher's embeddings and head, its space)")
    ap.add_argument("--networks", type=int, default=10)
    ap.add_argument("--lengths", type=int, nargs="+", default=[27, 64])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    common.use_threads(args.threads)
    import torch

    import nimblebert
    from nimblebert.core.ops import build_op
    from nimblebert.methods.nasbert.latency import (
        _median_ms,
        measure_model,
        measure_table,
        op_name,
        predict_latency,
        space_ops,
    )
    from nimblebert.methods.nasbert.objective import space_of
    from nimblebert.methods.nasbert.search import build_searched
    from nimblebert.methods.nasbert.space import format_arch

    supernet = nimblebert.load(args.supernet).eval()
    space = space_of(supernet)
    grid = [16, 32, 64, 128]
    round_robin = measure_table(supernet, space, grid, [1], args.repeats, progress=False)
    alone = json.loads(json.dumps(round_robin))  # the same fixed part; each op timed alone on hot caches
    for spec in space_ops(space):
        op = build_op(spec, 0.0).eval()
        row = []
        for t in grid:
            x, mask = torch.randn(1, t, spec.hidden), torch.ones(1, t, dtype=torch.long)
            row.append(_median_ms(lambda op=op, x=x, mask=mask: op(x, mask, None), args.repeats))
        alone["ops_ms"]["b1"][op_name(spec)] = row
    rng = random.Random(args.seed)
    archs = [a for a in space.block_archs() if a[1]]
    rows = []
    for _ in range(args.networks):
        arch = tuple(rng.choice(archs) for _ in range(space.blocks))
        net = build_searched(supernet, arch, "random").eval()
        net_space = space_of(net)
        for length in args.lengths:
            measured = statistics.median(measure_model(net, 1, length) for _ in range(3))
            row = {"arch": format_arch(arch), "length": length, "measured_ms": round(measured, 4)}
            for name, table in (("alone", alone), ("round_robin", round_robin)):
                predicted = predict_latency(table, net_space, arch, 1, length)
                row[name] = {"predicted_ms": round(predicted, 4),
                             "error_pct": round(100 * (predicted - measured) / measured, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {f"length {t}": {name: round(statistics.mean(abs(r[name]["error_pct"]) for r in rows
                                                           if r["length"] == t), 1)
                               for name in ("alone", "round_robin")} for t in args.lengths}
    data = {"summary_mean_abs_error_pct": summary, "rows": rows, "environment": environment(),
            "command": common.command_line()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
