"""The ``nimble`` format: a nimblebert model folder, knobs kept, optionally flagged to run in int8.

Unlike ``onnx`` and ``hf`` it keeps a dynamic model dynamic: FastBERT's exits, TR-BERT's token cuts and
DynaBERT's widths stay knobs of the written folder (given knobs make it static first, as in every format).
With ``--int8`` the folder still holds the float32 weights, and its config's ``nimblebert`` section says
``"runtime": "int8"``: ``nimblebert.load`` (and ``evaluate`` / ``predict`` / ``bench``) quantize it at load
time (:mod:`nimblebert.runtime.int8`), so nothing fixes a knob. The written folder is loaded back and its
logits compared with the source's on a few batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..model import NimbleModel
from .onnx import check_batches
from .registry import Exporter, ExportOptions, register_exporter


def write(model: NimbleModel, folder: Path, options: ExportOptions) -> dict[str, Any]:
    """``model.save`` into ``folder`` with the runtime flag, then load it back and compare logits."""
    from ..model import load

    previous = model.runtime
    model.runtime = "int8" if options.int8 else "fp32"  # only the saved flag: the weights written are float32
    try:
        model.save(folder)
    finally:
        model.runtime = previous
    report: dict[str, Any] = {"runtime": "int8" if options.int8 else "fp32",
                              "knobs": [k.name for k in model.knobs()],
                              "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}}
    if options.check:
        reloaded = load(folder)
        diff, agree, total = 0.0, 0, 0
        with torch.inference_mode():
            for b in check_batches(model.tokenizer, model.hf.config):
                ours, ref = reloaded.infer(b).logits, model.infer(b).logits
                diff = max(diff, float((ours - ref).abs().max()))
                agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
                total += ref.size(0)
        report["check"] = {"max_abs_diff": diff, "argmax_agreement": agree / total, "examples": total}
        if not options.int8 and diff > 1e-5:
            raise UserError(f"the exported folder does not reproduce the model (max |logits diff| {diff:.2e}); "
                            "please report it")
    (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


NIMBLE = register_exporter(Exporter(
    name="nimble",
    help="a nimblebert model folder with its knobs kept; --int8 flags it to load with the int8 runtime "
         "(float32 weights stored, quantized at load)",
    write=write,
    supports_int8=True,
    extra={"keeps_knobs": True},
))
