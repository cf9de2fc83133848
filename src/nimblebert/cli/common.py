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


def check_out_folder(path: str, flag: str = "--out") -> None:
    """Refuse an output path that is an existing file before any work is done (the work would be lost at the end)."""
    from pathlib import Path

    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder path")


def add_data_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required,
                   help="built-in name (mr, mr-long, chnsenti), a folder with train.*/validation.*/test.* "
                        "(csv, tsv, jsonl, parquet) or a hub dataset id")
    g.add_argument("--text-column", default="text")
    g.add_argument("--text-pair-column", default="text_pair")
    g.add_argument("--label-column", default="label")
    g.add_argument("--max-length", type=positive(int, "--max-length"), default=128,
                   help="tokens per example; longer texts are truncated")


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


def add_target_flags(p: argparse.ArgumentParser) -> None:
    """Ask for a cost or an accuracy instead of a knob value: mapped through the folder's calibrated ladder."""
    g = p.add_argument_group("targets (instead of knob values; need the folder's ladder.json, written at the end of "
                             "training or by nimblebert calibrate)")
    g.add_argument("--target-speedup", type=positive(float, "--target-speedup"), default=None,
                   help="the most accurate calibrated setting that runs at least this many times fewer FLOPs")
    g.add_argument("--target-layers", type=positive(float, "--target-layers"), default=None,
                   help="the most accurate calibrated setting that runs at most this many layers on average")
    g.add_argument("--max-accuracy-loss", type=positive(float, "--max-accuracy-loss", allow_zero=True),
                   default=None, help="the cheapest calibrated setting within this many accuracy points of the most "
                                      "accurate one")


def resolve_knobs(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The knobs a command runs at: the ones given as flags, or (with a target flag) the ladder's chosen rung, said
    in one line on stderr. Both kinds at once is refused: a target picks every knob."""
    values = knob_values(args)
    targets = {k: getattr(args, k, None) for k in ("target_speedup", "target_layers", "max_accuracy_loss")}
    if all(v is None for v in targets.values()):
        return model.check_knobs(values)
    if values:
        raise UserError(f"--{next(iter(values)).replace('_', '-')} and a target (--target-speedup, --target-layers, "
                        "--max-accuracy-loss) both set the knobs: give one or the other")
    from ..ladder import LADDER_FILE, choose, load_ladder

    ladder = load_ladder(model.source) if model.source else None
    if ladder is None:
        raise UserError(f"{model.source or 'the model'} has no {LADDER_FILE}: calibrate it first (nimblebert calibrate "
                        "FOLDER --data NAME), or give knob values")
    rung = choose(ladder, targets["target_speedup"], targets["max_accuracy_loss"], targets["target_layers"])
    knobs = model.check_knobs(rung.knobs)
    sys.stderr.write(f"ladder: {', '.join(f'{k} {v}' for k, v in rung.knobs.items()) or 'the defaults'} "
                     f"({rung.flops_speedup:.2f}× FLOPs, {rung.mean_layers:.2f} layers, accuracy {rung.accuracy:.4f} "
                     f"on calibration)\n")
    return knobs


def add_runtime_flag(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """``--runtime fp32|fp32-onednn|bf16-onednn|int8|ort-int8``: the kernels the model's matrix products run on
    (default: what the folder's config names, else fp32). With ``multiple``, repeatable: each model is run on each
    runtime given."""
    from ..runtime import RUNTIMES

    help_text = ("fp32; fp32-onednn: the same float32 products through oneDNN on weights packed once (CPU; faster "
                 "at batch 1 and after exits), every knob live; bf16-onednn: those products in bfloat16 (several "
                 "times faster on CPUs with AMX; refused where oneDNN has no bfloat16), every knob live; int8: "
                 "dynamic int8 matrix products on the CPU, every knob still live; ort-int8: onnxruntime "
                 "int8, one graph per layer, FastBERT's --speed and DynaBERT's --width live (graphs per width), no "
                 "token cuts (default: the folder's runtime, else fp32)")
    if not multiple:
        p.add_argument("--runtime", choices=RUNTIMES, default=None, help=help_text)
        return

    def runtimes(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in RUNTIMES]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown runtime {(bad or [text])[0]!r}; choose from "
                                             f"{', '.join(RUNTIMES)} (several: --runtime fp32,int8)")
        return names

    p.add_argument("--runtime", "--runtimes", dest="runtime", type=runtimes, default=[], action="extend",
                   metavar="RUNTIME[,RUNTIME]",
                   help=help_text + "; several, comma-separated or repeated (--runtime fp32,int8), run each model on "
                                    "each")


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


OFFICIAL = "official"


def recipes_of(config_cls: type) -> dict[str, dict[str, Any]]:
    """A method's named recipes besides the official one (its config's defaults): ``{"short": {field: value}}``."""
    return dict(getattr(config_cls, "RECIPES", {}))


def recipe_keys(config_cls: type) -> set[str]:
    return {key for recipe in recipes_of(config_cls).values() for key in recipe}


def recipe_help(config_cls: type, name: str, official: Any) -> str:
    """" (official: 10; --recipe short: 1)" for a flag that a recipe sets, else ""."""
    others = [f"--recipe {r}: {values[name]}" for r, values in recipes_of(config_cls).items() if name in values]
    return f" (official: {official}; {'; '.join(others)})" if others else ""


def recipe_value(config_cls: type, recipe: str, name: str, official: Any) -> Any:
    """The value of ``name`` under ``recipe`` (the official default when the recipe does not set it)."""
    return recipes_of(config_cls).get(recipe, {}).get(name, official)


def add_recipe_flag(p: argparse.ArgumentParser, config_cls: type) -> None:
    """``--recipe official|short``, for a method whose config declares ``RECIPES``."""
    recipes = recipes_of(config_cls)
    if not recipes:
        return
    notes = getattr(config_cls, "RECIPE_HELP", {})  # what a recipe is for, when the config says it
    described = "; ".join(f"{name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
                          + (f" ({notes[name]})" if name in notes else "") for name, values in recipes.items())
    p.add_argument("--recipe", choices=[OFFICIAL, *recipes], default=OFFICIAL,
                   help=f"'official' (the default: the paper's recipe, which its published numbers need; hours on a "
                        f"CPU) or a shorter one ({described}). Flags given explicitly win")


def add_config_flags(p: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of a method's config dataclass (help from the field's metadata). A field that a recipe
    sets defaults to None here and is filled from ``--recipe`` in :func:`config_from_args`, so that a flag given
    explicitly always wins over the recipe."""
    g = p.add_argument_group(f"{config_cls.__name__} options")
    by_recipe = recipe_keys(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if f.name in by_recipe and not isinstance(default, (bool, list, tuple)):
            g.add_argument(flag, dest=f"cfg_{f.name}", type=type(default), default=None, metavar=f.name.upper(),
                           help=help_text + recipe_help(config_cls, f.name, default))
            continue
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
    recipe = getattr(args, "recipe", OFFICIAL)
    for f in dataclasses.fields(config_cls):
        if values[f.name] is None and f.name in recipe_keys(config_cls):  # not given: the recipe's value
            values[f.name] = recipe_value(config_cls, recipe, f.name, f.default)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
