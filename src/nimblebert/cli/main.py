"""``nimblebert`` / ``python -m nimblebert``: dispatch to one file per subcommand.

Bad input (:class:`~nimblebert.errors.UserError`) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import UserError
from .common import Parser

# Subcommand -> its module (``nimblebert.cli.<module>``), imported only when needed: a command pays for its own
# imports (datasets, accelerate, matplotlib, ...), not for every other command's.
COMMANDS = {"data": "data", "train": "train", "evaluate": "evaluate", "predict": "predict", "bench": "bench",
            "export": "export", "pick": "pick", "info": "info", "calibrate": "calibrate", "serve": "serve",
            "search": "search"}


def build_parser(only: str | None = None) -> Parser:
    """The ``nimblebert`` parser; with ``only`` (a subcommand name), just that subcommand is registered (the
    others' modules are not imported), which is what a command line naming one needs."""
    parser = Parser(prog="nimblebert", description="Fast, small BERT encoders with a speed knob.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"nimblebert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f".{module}", __package__).register(sub)
    return parser


def quiet_libraries() -> None:
    """transformers' per-load progress bars and load reports are noise on a command line (and would
    break the one-line error contract); our own progress bars and messages say what happens."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the subcommand comes first
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    quiet_libraries()
    from ..runtime import keep_heap

    keep_heap()  # activations reuse heap memory instead of fresh pages on every call (see its doc)
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
