"""Flags shared by subcommands, so that each means the same everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def add_data_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required,
                   help="built-in name (mr, mr-long, chnsenti), a folder with train.*/validation.*/test.* "
                        "(csv, tsv, jsonl, parquet) or a hub dataset id")
    g.add_argument("--text-column", default="text")
    g.add_argument("--text-pair-column", default="text_pair")
    g.add_argument("--label-column", default="label")
    g.add_argument("--max-length", type=int, default=128, help="tokens per example; longer texts are truncated")


def add_knob_flags(p: argparse.ArgumentParser) -> None:
    """Every knob of every registered method, as an optional flag (checked against the model's method)."""
    from ..methods import get_method, list_methods

    g = p.add_argument_group("knobs (only those of the model's method apply)")
    seen: set[str] = set()
    for name in list_methods():
        for knob in get_method(name).knobs:
            if knob.name not in seen:
                seen.add(knob.name)
                g.add_argument(f"--{knob.name.replace('_', '-')}", dest=f"knob_{knob.name}", default=None,
                               help=f"{knob.help} (default {knob.default})")


def add_runtime_flag(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """``--runtime fp32|int8``: the kernels the model's matrix products run on (default: what the folder's config
    names, else fp32). With ``multiple``, repeatable: each model is run on each runtime given."""
    from ..runtime import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default=[] if multiple else None,
                   action="append" if multiple else "store",
                   help="fp32, or int8: dynamic int8 matrix products on the CPU, every knob still live (default: "
                        "the folder's runtime, else fp32)"
                        + ("; repeat to run each model on several" if multiple else ""))


def knob_values(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("knob_"):]: v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}


def positive(kind: type, name: str, allow_zero: bool = False):
    """An argparse type that rejects zero/negative values with a clear message."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}, got {text}")
        return value

    return parse


def add_config_flags(p: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of a method's config dataclass (help from the field's metadata)."""
    g = p.add_argument_group(f"{config_cls.__name__} options")
    for f in dataclasses.fields(config_cls):
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if isinstance(default, bool):
            g.add_argument(flag, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=default,
                           help=help_text)
        elif isinstance(default, (list, tuple)):
            kind = type(default[0]) if default else str
            g.add_argument(flag, dest=f"cfg_{f.name}", nargs="+", type=kind, default=list(default), help=help_text,
                           metavar=f.name.upper())
        else:
            kind = type(default) if default is not None else str
            g.add_argument(flag, dest=f"cfg_{f.name}", type=kind, default=default,
                           help=f"{help_text} (default {default})", metavar=f.name.upper())


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f"cfg_{f.name}") for f in dataclasses.fields(config_cls)}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
