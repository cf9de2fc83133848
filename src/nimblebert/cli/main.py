"""``nimblebert`` / ``python -m nimblebert``: dispatch to one file per subcommand.

Bad input (:class:`~nimblebert.errors.UserError`) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import UserError
from . import bench, calibrate, data, evaluate, export, info, pick, predict, search, serve, train
from .common import Parser

COMMANDS = {"data": data, "train": train, "evaluate": evaluate, "predict": predict, "bench": bench,
            "export": export, "pick": pick, "info": info, "calibrate": calibrate, "serve": serve, "search": search}


def build_parser() -> Parser:
    parser = Parser(prog="nimblebert", description="Fast, small BERT encoders with a speed knob.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"nimblebert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def quiet_libraries() -> None:
    """transformers' per-load progress bars and load reports are noise on a command line (and would
    break the one-line error contract); our own progress bars and messages say what happens."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        sys.stderr.write(f"nimblebert: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("nimblebert: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
