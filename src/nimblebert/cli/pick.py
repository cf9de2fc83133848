"""``nimblebert pick RESULTS_DIR --max-latency-ms X | --min-accuracy A [--batch 1|32]``.

Reads a ``nimblebert bench`` folder (``results.jsonl``) and prints, as one JSON object, the best
configuration within the budget and the command that runs it: the most accurate one within a latency
budget, the fastest one above an accuracy floor, or with both, the most accurate one meeting both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pick", help="the best configuration of a bench run within a latency or accuracy budget")
    p.add_argument("results", help="a folder written by nimblebert bench (holding results.jsonl), or the file")
    p.add_argument("--max-latency-ms", type=positive(float, "--max-latency-ms"), default=None,
                   help="latency budget in ms: batch-1 p50, or per sentence with --batch 32")
    p.add_argument("--min-accuracy", type=positive(float, "--min-accuracy", allow_zero=True), default=None,
                   help="accuracy floor (0..1)")
    p.add_argument("--batch", type=int, default=1, choices=[1, 32],
                   help="1: batch-1 p50 latency (default); 32: batch-32 latency per sentence")
    p.set_defaults(run=run)


def read_results(path: str) -> list[dict]:
    """The rows of ``results.jsonl`` (``path`` is the bench folder or the file itself)."""
    from ..errors import UserError

    file = Path(path)
    if file.is_dir():
        file = file / "results.jsonl"
    if not file.is_file():
        raise UserError(f"{file} does not exist; give a folder written by nimblebert bench")
    rows = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{file} line {n} is not JSON; re-run nimblebert bench") from None
    if not rows:
        raise UserError(f"{file} holds no results; re-run nimblebert bench")
    return rows


def run(args: argparse.Namespace) -> int:
    from ..bench.pareto import pick
    from ..errors import UserError

    if args.min_accuracy is not None and args.min_accuracy > 1:
        raise UserError(f"--min-accuracy {args.min_accuracy:g} is above 1: give a fraction such as 0.85")
    best = pick(read_results(args.results), args.max_latency_ms, args.min_accuracy, args.batch)
    print(json.dumps(best, indent=2))
    return 0
