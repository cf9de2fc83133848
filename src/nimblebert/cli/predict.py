"""``nimblebert predict DIR < texts.jsonl``: one JSON line per input (label, score, exit layer)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_knob_flags, add_runtime_flag, knob_values, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label texts: JSONL in (stdin or --input), JSONL out")
    p.add_argument("model", help="a model folder written by nimblebert (or transformers)")
    p.add_argument("--input", help="JSONL file: objects with \"text\" (and \"text_pair\") or plain strings; "
                                   "default: standard input")
    p.add_argument("--batch-size", type=positive(int, "--batch-size"), default=32)
    p.add_argument("--max-length", type=positive(int, "--max-length"), default=128)
    add_knob_flags(p)
    add_runtime_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import datasets
    import torch

    from ..data import encode, make_loader, read_texts_jsonl
    from ..errors import UserError
    from ..inference import predict_loader
    from ..model import load

    model = load(args.model, runtime=args.runtime)
    knobs = model.method_spec.check_knobs(knob_values(args))
    if args.input:
        try:
            with open(args.input, encoding="utf-8") as stream:
                rows = read_texts_jsonl(stream)
        except FileNotFoundError:
            raise UserError(f"--input {args.input} does not exist") from None
    else:
        rows = read_texts_jsonl(sys.stdin)
    if not rows:
        raise UserError("no input texts: give JSONL lines like {\"text\": \"...\"} on stdin or with --input")
    has_pair = any("text_pair" in r for r in rows)
    ds = datasets.Dataset.from_list([{"text": r["text"], **({"text_pair": r.get("text_pair", "")} if has_pair else {})}
                                     for r in rows])
    encoded = encode(ds, model.tokenizer, args.max_length, has_pair)
    loader = make_loader(encoded, model.tokenizer, args.batch_size, shuffle=False, bucket_by_length=True)
    preds = predict_loader(model, loader, **knobs)
    probs = torch.softmax(preds.logits, dim=-1)
    for i in range(len(rows)):
        c = int(probs[i].argmax())
        line = {"label": model.label_names[c], "score": round(float(probs[i, c]), 6),
                "exit_layer": int(preds.layers[i]), "flops": float(preds.flops[i])}
        if preds.tokens is not None:
            line["tokens_kept"] = int(preds.tokens[i])
        print(json.dumps(line))
    return 0
