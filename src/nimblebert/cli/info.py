"""``nimblebert info DIR``: what a model folder holds — its network, the stack of methods trained into it (each
with the folder it started from and its options), the knobs it accepts with their ranges, and its calibrated
ladder when it has one. Reads ``config.json`` only: no weights are loaded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..ladder import LADDER_FILE, Ladder, stuck_message


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="a model folder's network, stack of methods, knobs and ladder")
    p.add_argument("model", help="a model folder written by nimblebert (or transformers)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def describe_folder(spec: str) -> dict[str, Any]:
    """The facts ``info`` prints, as one JSON-ready dict."""
    from transformers import AutoConfig

    from ..errors import UserError
    from ..model import kept_heads, resolve_model, stack_of

    folder = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"{spec}: config.json is not readable ({str(e).splitlines()[0]})") from None
    section = getattr(config, "nimblebert", None) or {}
    stack = stack_of(section)
    heads = kept_heads(stack)
    labels = section.get("label_names") or [config.id2label[i] for i in range(config.num_labels)]
    network = {"model_type": config.model_type, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
               "heads": heads or config.num_attention_heads, "ffn": config.intermediate_size}
    if heads:
        network["heads_stored"] = config.num_attention_heads  # the rest are zeros; only the kept heads run
    components, knobs = [], []
    for c in stack:
        spec_ = c.spec
        components.append({**c.to_json(), "role": _role(spec_.role), "static": spec_.static})
        if c.fixed:
            continue
        for k in spec_.knobs:
            knobs.append({"name": k.name, "flag": k.flag, "method": c.method, "default": k.default,
                          "low": k.low, "high": k.high, "type": k.type.__name__, "help": k.help})
    out: dict[str, Any] = {"folder": str(folder), "labels": labels, "network": network, "stack": components,
                           "knobs": knobs}
    ladder = Path(folder) / LADDER_FILE
    if ladder.is_file():
        try:
            out["ladder"] = json.loads(ladder.read_text())
        except ValueError:
            raise UserError(f"{ladder} is not valid JSON; calibrate the model again") from None
    return out


def _role(role: int) -> str:
    from ..methods.registry import ROLE_NAMES

    return ROLE_NAMES.get(role, str(role))


def run(args: argparse.Namespace) -> int:
    info = describe_folder(args.model)
    if args.json:
        print(json.dumps(info))
        return 0
    net = info["network"]
    heads = f"{net['heads']} heads" + (f" (of {net['heads_stored']} stored)" if "heads_stored" in net else "")
    print(f"{info['folder']}: {net['model_type']}, {net['layers']} layers × {net['hidden']}, {heads}, "
          f"FFN {net['ffn']}; labels {', '.join(map(str, info['labels']))}")
    print("stack (first trained first):")
    for i, c in enumerate(info["stack"], 1):
        fixed = f"; fixed at {', '.join(f'{k}={v}' for k, v in c['fixed'].items())}" if c.get("fixed") else ""
        teacher = f"; distilled from a {'+'.join(c['teacher_stack']) or 'plain'} teacher" if c.get("teacher_stack") \
            is not None else ""
        print(f"  {i}. {c['method']} ({c['role']}) from {c['from'] or '-'}{fixed}{teacher}")
    if info["knobs"]:
        print("knobs (all accepted together):")
        for k in info["knobs"]:
            high = k['high'] if k['high'] is not None else '∞'
            bounds = f"[{k['low']}, {high}]" if k["low"] is not None else k["type"]
            print(f"  {k['flag']} {bounds}, default {k['default']} ({k['method']})")
    else:
        print("knobs: none (a static model)")
    ladder = info.get("ladder")
    if ladder is not None:
        rungs = ladder.get("rungs", ladder) if isinstance(ladder, dict) else ladder
        print(f"ladder ({len(rungs)} settings on the Pareto front, calibrated on "
              f"{(ladder.get('meta') or {}).get('split', 'validation')} data; pick one with --target-speedup, "
              "--target-layers or --max-accuracy-loss):")
        try:
            parsed = Ladder.from_json(ladder)
            stuck = [stuck_message(parsed, name) for name in parsed.stuck]
        except (ValueError, KeyError, TypeError):  # an old or hand-edited ladder: its rungs still print below
            stuck = [f"--{name.replace('_', '-')} never bought speed on that data" for name in ladder.get("stuck", [])]
        for line in stuck:
            print(f"  {line}")
        for r in rungs:
            knobs = ", ".join(f"{k}={v}" for k, v in (r.get("knobs") or {}).items()) or "defaults"
            figures = "  ".join(f"{key} {r[key]:.4g}" for key in ("accuracy", "flops_speedup", "mean_layers")
                                if isinstance(r.get(key), (int, float)))
            print(f"  {knobs}: {figures}")
    return 0
