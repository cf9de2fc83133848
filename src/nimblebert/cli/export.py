"""``nimblebert export DIR --out OUT [--format onnx|hf|nimble] [--int8] [--teacher-only] [knobs]``.

``--format nimble`` writes a nimblebert folder that keeps every knob not given (``--int8``: it loads with the int8
runtime); ``--format hf`` the same folder with its structure fixed so that plain transformers loads it (exits and
token cuts stay live for nimblebert); ``onnx`` a static graph. One line on stderr says which knobs were fixed at
export, which stay live and which were dropped. Static models (plain
fine-tunes, TinyBERT students, exported sub-networks) export as they are; a dynamic method exports at
given knob settings once it registers a materializer (DynaBERT: ``--width 0.5 --depth 0.5``); a model with
per-sample control flow (FastBERT) exports its teacher with ``--teacher-only``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_knob_flags, check_out_folder, knob_values


def register(sub: argparse._SubParsersAction) -> None:
    from ..export import get_exporter, list_formats

    p = sub.add_parser("export", help="write a model as ONNX, a plain transformers folder or a nimblebert folder "
                                      "(int8 runtime), checked against PyTorch")
    p.add_argument("model", help="a model folder written by nimblebert (or transformers)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="onnx", choices=list_formats(),
                   help="; ".join(f"{n}: {get_exporter(n).help}" for n in list_formats()) + " (default onnx)")
    p.add_argument("--int8", action="store_true",
                   help="onnx: also write model_int8.onnx (dynamic int8 quantization); nimble: the folder loads with "
                        "the int8 runtime (knobs kept)")
    p.add_argument("--teacher-only", action="store_true",
                   help="export the plain transformers model inside a dynamic model (e.g. FastBERT's backbone and "
                        "head) as it is")
    add_knob_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export_model
    from ..export.api import knobs_line

    check_out_folder(args.out)
    report = export_model(args.model, args.out, args.format, knob_values(args), args.teacher_only,
                          ExportOptions(int8=args.int8))
    print(json.dumps(report))
    print(knobs_line(report), file=sys.stderr)  # what became of each knob, for the person at the terminal
    return 0
