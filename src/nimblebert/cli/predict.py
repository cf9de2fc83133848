"""``nimblebert predict DIR < texts.jsonl``: one JSON line per input (label, score, exit layer)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import add_knob_flags, add_runtime_flag, add_target_flags, positive, resolve_knobs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label texts: JSONL in (stdin or --input), JSONL out")
    p.add_argument("model", help="a model folder written by nimblebert (or transformers)")
    p.add_argument("--input", help="JSONL file: objects with \"text\" (and \"text_pair\") or plain strings; "
                                   "default: standard input. Blank lines are skipped; an empty text is refused")
    p.add_argument("--batch-size", type=positive(int, "--batch-size"), default=32)
    p.add_argument("--max-length", type=positive(int, "--max-length"), default=128)
    add_knob_flags(p)
    add_target_flags(p)
    add_runtime_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.inputs import read_texts_jsonl
    from ..errors import UserError
    from ..inference import predict_loader
    from ..model import load

    model = load(args.model, runtime=args.runtime)
    knobs = resolve_knobs(model, args)
    if args.input:
        try:
            with open(args.input, "rb") as stream:  # bytes: read_texts_jsonl decodes and names a bad line
                rows = read_texts_jsonl(stream)
        except FileNotFoundError:
            raise UserError(f"--input {args.input} does not exist") from None
        except IsADirectoryError:
            raise UserError(f"--input {args.input} is a folder; give a JSONL file") from None
    else:
        # Read bytes and decode them ourselves: text mode on a pipe may turn bad bytes into surrogates that fail
        # later with a traceback; read_texts_jsonl names the line instead.
        rows = read_texts_jsonl(getattr(sys.stdin, "buffer", sys.stdin))
    if not rows:
        raise UserError("no input texts: give JSONL lines like {\"text\": \"...\"} on stdin or with --input")
    preds = predict_loader(model, batches(model.tokenizer, rows, args.max_length, args.batch_size), **knobs)
    probs = torch.softmax(preds.logits, dim=-1)
    for i in range(len(rows)):
        c = int(probs[i].argmax())
        line = {"label": model.label_names[c], "score": round(float(probs[i, c]), 6),
                "exit_layer": int(preds.layers[i]), "flops": float(preds.flops[i])}
        if preds.tokens is not None:
            line["tokens_kept"] = int(preds.tokens[i])
        print(json.dumps(line))
    return 0


def batches(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, batch_size: int) -> list[dict[str, Any]]:
    """The rows tokenized (truncated to ``max_length``) and cut into padded batches of similar length, each with
    its rows' ``index`` (what :func:`~nimblebert.inference.predict_loader` puts back in input order).

    Tokenized directly rather than through ``datasets`` (``nimblebert.data.encode``): a command that labels a
    few lines should not pay for importing it. Same tokens as ``encode``: pairs are truncated together, and a
    pair row without a pair text gets an empty one.
    """
    from ..data.batching import Collator

    has_pair = any("text_pair" in r for r in rows)
    minimum = tokenizer.num_special_tokens_to_add(pair=has_pair) + (2 if has_pair else 1)
    if max_length < minimum:
        from ..errors import UserError

        raise UserError(f"--max-length {max_length} is too small for this tokenizer; use at least {minimum}")
    texts = [r["text"] for r in rows]
    pairs = [r.get("text_pair", "") for r in rows] if has_pair else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    encoded = [{"input_ids": ids, "index": i, **({"token_type_ids": enc["token_type_ids"][i]}
                                                 if "token_type_ids" in enc else {})}
               for i, ids in enumerate(enc["input_ids"])]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]["input_ids"]), i))  # longest first
    collate = Collator(tokenizer)
    return [collate([encoded[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)]
