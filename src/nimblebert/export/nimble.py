"""The ``nimble`` and ``hf`` formats: one writer for a nimblebert model folder, which is also a transformers folder.

Every folder nimblebert writes is a Hugging Face model folder (``config.json``, ``model.safetensors``, the
tokenizer) with what the methods added beside it (``nimblebert.safetensors``, the config's ``nimblebert``
section). The two formats therefore write the same thing and differ only in what they fix:

- ``hf``: the structure is fixed, so that plain ``AutoModelForSequenceClassification.from_pretrained`` loads
  the network that runs. A component whose structure is a knob is materialized at the given (or default) knob
  values (DynaBERT at ``--width 0.5``: real smaller weights); components that decide per sample (FastBERT's
  exits, TR-BERT's token cuts) stay live beside it for ``nimblebert.load``.
- ``nimble``: nothing is fixed that was not asked for. Without knobs the folder keeps every knob (width
  included); given knobs are fixed as in ``hf``. With ``--int8`` its config says ``"runtime": "int8"``: the
  folder still holds the float32 weights, and ``nimblebert.load`` (so ``evaluate``, ``predict``, ``bench``,
  ``pick``'s commands, ``serve``) quantizes them at load time (:mod:`nimblebert.runtime.int8`), every knob
  still live.

The written folder is checked twice: plain transformers must reproduce the model's own network (``model.hf``)
exactly, and ``nimblebert.load`` must reproduce the whole model (exactly in float32; in int8 the largest logit
difference and the agreement of the predictions are reported).
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
    """``model.save`` into ``folder`` (flagged for the int8 runtime with ``options.int8``), then both checks."""
    from transformers import AutoModelForSequenceClassification

    from ..model import load

    runtime = "int8" if options.int8 else "fp32"
    previous = model.runtime
    model.runtime = runtime  # only the saved flag: the weights written are float32
    try:
        model.save(folder)
    finally:
        model.runtime = previous
    report: dict[str, Any] = {"runtime": runtime,
                              # every file of the folder, the segments' graphs in ort-int8/ too (what a deploy copies)
                              "files": {p.relative_to(folder).as_posix(): p.stat().st_size
                                        for p in sorted(folder.rglob("*")) if p.is_file()}}
    if options.check:
        batches = check_batches(model.tokenizer, model.hf.config)
        plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        reloaded = load(folder)
        names = input_names(model.hf)
        plain_diff, diff, agree, total = 0.0, 0.0, 0, 0
        with torch.inference_mode():
            for b in batches:
                feed = {n: b[n] for n in names}
                plain_diff = max(plain_diff, float((plain(**feed).logits - model.hf(**feed).logits).abs().max()))
                ours, ref = reloaded.infer(b).logits, model.infer(b).logits
                diff = max(diff, float((ours - ref).abs().max()))
                agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
                total += ref.size(0)
        report["reload_max_abs_diff"] = plain_diff
        report["check"] = {"max_abs_diff": diff, "argmax_agreement": agree / total, "examples": total}
        if plain_diff > 1e-5 or (runtime == "fp32" and diff > 1e-5):
            raise UserError(f"the exported folder does not reproduce the model (max |logits diff| "
                            f"{max(plain_diff, diff):.2e}); please report it")
    (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


NIMBLE = register_exporter(Exporter(
    name="nimble",
    help="a nimblebert model folder with every knob kept (given knobs are fixed); --int8: it loads with the int8 "
         "runtime (float32 weights stored, quantized at load)",
    write=write,
    supports_int8=True,
    keep_modules=True,
    extra={"keeps_knobs": True},
))

HF = register_exporter(Exporter(
    name="hf",
    help="a plain transformers model folder (safetensors + config + tokenizer) of the network that runs: structure "
         "knobs fixed (given or default), per-sample exits and token cuts kept live beside it for nimblebert",
    write=write,
    keep_modules=True,
))


def write_ort_int8(model: NimbleModel, folder: Path, options: ExportOptions) -> dict[str, Any]:
    """A nimblebert folder (float32 weights, as ``nimble``) that loads on the ``ort-int8`` runtime, with its
    onnxruntime segments stored in ``ort-int8/`` (:mod:`nimblebert.runtime.segments`), so that loading it exports
    nothing (a width left live: the default width's graphs are stored, another's are made when first asked for).
    Checked: the float32 segments must give the model's logits (1e-4) and its exits at every speed tried; the int8
    segments' agreement with the float32 model is reported."""
    import numpy as np

    from ..runtime.segments import SEGMENTS_DIR, SegmentRunner, check_fit, export_segments
    from .onnx import require_onnx

    require_onnx()
    check_fit(model)
    previous = model.runtime
    model.runtime = "ort-int8"  # only the saved flag: the weights written are float32
    try:
        model.save(folder)
    finally:
        model.runtime = previous
    manifest = export_segments(model, folder / SEGMENTS_DIR)
    report: dict[str, Any] = {"runtime": "ort-int8", "segments": manifest,
                              # every file of the folder, the segments' graphs in ort-int8/ too (what a deploy copies)
                              "files": {p.relative_to(folder).as_posix(): p.stat().st_size
                                        for p in sorted(folder.rglob("*")) if p.is_file()}}
    if options.check:
        has_speed = "speed" in {k.name for k in model.knobs()}
        speeds = (0.0, 0.3, 0.6, 1.0) if has_speed else (0.0,)
        runners = {tag: SegmentRunner(folder / SEGMENTS_DIR, int8=tag == "int8") for tag in ("fp32", "int8")}
        diff, same_exit, agree, total = 0.0, True, 0, 0
        with torch.inference_mode():
            for b in check_batches(model.tokenizer, model.hf.config):
                feed = {k: v.numpy() for k, v in b.items()}
                for speed in speeds:
                    ref = model.infer(b, **({"speed": speed} if has_speed else {}))
                    f32, q = runners["fp32"](feed, speed), runners["int8"](feed, speed)
                    diff = max(diff, float(np.abs(f32.logits - ref.logits.numpy()).max()))
                    same_exit &= f32.layers_run.tolist() == ref.layers_run.tolist()
                    agree += int((q.logits.argmax(-1) == ref.logits.argmax(-1).numpy()).sum())
                    total += len(q.logits)
        report["check"] = {"fp32_max_abs_diff": diff, "fp32_same_exits": same_exit, "speeds": list(speeds),
                           "int8_argmax_agreement": agree / total, "examples": total}
        if diff > 1e-4 or not same_exit:
            raise UserError(f"the float32 segments do not reproduce the model (max |logits diff| {diff:.2e}, same "
                            f"exits: {same_exit}); please report it")
    (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


ORT_INT8 = register_exporter(Exporter(
    name="ort-int8",
    help="a nimblebert folder that runs on onnxruntime int8, one graph per layer with FastBERT's exits between them "
         "(speed live; a DynaBERT width fixed at the given --width, else live: the default width's graphs stored, "
         "others made at load when asked for), checked against PyTorch",
    write=write_ort_int8,
    keep_modules=True,
    extra={"keeps_knobs": True},
))
