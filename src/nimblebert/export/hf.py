"""The ``hf`` format: a transformers model folder (``AutoModelForSequenceClassification`` loads it).

For a static model this is a copy; with ``--teacher-only`` it is the teacher inside a dynamic model; a component
whose structure is a knob and that registers a materializer (``Method.materialize``, e.g. DynaBERT at
``--width 0.5 --depth 0.5``) is written as the chosen sub-network, real smaller weights. Components that decide
per sample (FastBERT's exits, TR-BERT's token cuts) stay live beside it in ``nimblebert.safetensors``:
``nimblebert.load`` runs them with their knobs, plain transformers loads the sub-network (what they sit on).
The written folder is reloaded with transformers and compared with the model it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..model import NimbleModel
from .onnx import check_batches, input_names
from .registry import Exporter, ExportOptions, register_exporter


def write(model: NimbleModel, folder: Path, options: ExportOptions) -> dict[str, Any]:
    """``model.save`` into ``folder``, then reload it with plain transformers and compare logits."""
    from transformers import AutoModelForSequenceClassification

    model.save(folder)
    report: dict[str, Any] = {"files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}}
    if options.check:
        reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        names = input_names(model.hf)
        diff = 0.0
        with torch.no_grad():
            for b in check_batches(model.tokenizer, model.hf.config):
                feed = {n: b[n] for n in names}
                diff = max(diff, float((reloaded(**feed).logits - model.hf(**feed).logits).abs().max()))
        report["reload_max_abs_diff"] = diff
        if diff > 1e-5:
            raise UserError(f"the exported folder does not reproduce the model (max |logits diff| {diff:.2e}); "
                            "please report it")
    (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


HF = register_exporter(Exporter(
    name="hf",
    help="a plain transformers model folder (safetensors + config + tokenizer)",
    write=write,
    keep_modules=True,
))
