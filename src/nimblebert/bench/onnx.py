"""onnxruntime baselines for ``nimblebert bench``: the first model's plain transformers model exported to
ONNX and run with onnxruntime, in float32 and with dynamic int8 quantization, each in the session a user's one line
of onnxruntime makes; and the int8 file once more as nimblebert runs onnxruntime (``-tuned``: the graph fusions
that measured slower left out, :data:`~nimblebert.export.onnx.SLOW_FUSIONS`).

These are what a user would deploy instead of nimblebert's methods, so they are timed interleaved with
every other contender and their accuracy is measured on the same evaluation batches (int8 changes
predictions; copying the teacher's accuracy would flatter it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..export.onnx import INT8_FILE, MODEL_FILE, SLOW_FUSIONS, OrtModel, require_onnx, write_onnx_files
from ..export.registry import ExportOptions
from ..model import NimbleModel

ONNX_FP32 = "onnxruntime-fp32"
ONNX_INT8 = "onnxruntime-int8"
ONNX_INT8_TUNED = "onnxruntime-int8-tuned"


def onnx_baselines(model: NimbleModel, folder: Path) -> tuple[dict[str, OrtModel], dict[str, Any]]:
    """Export ``model.hf`` (as it is: for a dynamic method, its teacher) to ``folder`` in float32 and int8.

    Returns ``({name: OrtModel}, report)``; the report holds the files and how each file's logits
    compare with PyTorch on a few check inputs.
    """
    require_onnx()
    try:
        report = write_onnx_files(model.hf, model.tokenizer, folder, ExportOptions(int8=True))
    except UserError as e:
        raise UserError(f"{e} (or bench without the onnxruntime baselines: --no-onnx)") from None
    sessions = {ONNX_FP32: OrtModel(folder / MODEL_FILE), ONNX_INT8: OrtModel(folder / INT8_FILE),
                ONNX_INT8_TUNED: OrtModel(folder / INT8_FILE, disabled_optimizers=SLOW_FUSIONS)}
    return sessions, report
