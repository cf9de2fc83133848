"""ONNX: a static model as ``model.onnx`` (and ``model_int8.onnx``), checked against PyTorch.

The graph has inputs ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, dynamic batch and
sequence axes; ``token_type_ids`` only when the model's ``forward`` takes it) and one output, ``logits``
(float32, dynamic batch axis), at opset 17 (the first with ``LayerNormalization``).

Why the TorchScript exporter (``dynamo=False``): torch 2.13's default, torch.export-based exporter needs
the ``onnxscript`` package, which is not a dependency of nimblebert. The TorchScript exporter traces one
example batch; transformers' mask code has value-dependent branches, so the trace is made on a batch
*with* padding and the result is checked on batches of other sizes, lengths and padding (the check
fails loudly if a branch was baked in). It is deprecated upstream: when onnxscript becomes a dependency,
switch ``_export`` to ``dynamo=True`` with ``dynamic_shapes`` and keep the same check.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .registry import Exporter, ExportOptions, register_exporter

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
FP32_TOLERANCE = 1e-4  # max |ONNX - PyTorch| on the logits; float32 kernels differ by ~1e-6

# Texts for the check: different lengths, so batches carry padding (the traced mask path must hold).
CHECK_TEXTS = (
    "the movie was good",
    "a very boring film and the acting was not great but the story is fun , i think",
    "bad",
    "it was a beautiful , moving and smart film with the best ending",
    "slow",
)


def require_onnx() -> None:
    """A clear error instead of an ImportError when the optional ONNX packages are missing."""
    import importlib.util

    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not installed: pip install 'nimblebert[onnx]' "
                        "(or leave out the ONNX work: bench --no-onnx)")


class _Logits(nn.Module):
    """``model(**inputs).logits`` with positional inputs, as the exporter traces them."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def input_names(model: nn.Module) -> list[str]:
    """The graph inputs: ``token_type_ids`` only if ``forward`` takes it (an unused input would be
    pruned from the graph by the exporter anyway)."""
    params = inspect.signature(model.forward).parameters
    return [n for n in INPUTS if n in params]


def check_batches(tokenizer: Any, config: Any) -> list[dict[str, torch.Tensor]]:
    """A few padded batches of different sizes and lengths (one with text pairs) for the checks."""
    limit = getattr(config, "max_position_embeddings", 512) - 2  # RoBERTa's positions start at 2
    limit = max(8, min(48, limit))

    def enc(texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        out = tokenizer(list(texts), list(pairs) if pairs else None, padding=True, truncation=True,
                        max_length=limit, return_tensors="pt")
        batch = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
        batch["token_type_ids"] = out.get("token_type_ids", torch.zeros_like(out["input_ids"]))
        return batch

    return [
        enc(CHECK_TEXTS[:3]),  # the traced batch: padded, batch > 1
        enc(CHECK_TEXTS[3:4]),  # batch 1, no padding
        enc(CHECK_TEXTS),  # another size and length
        enc(CHECK_TEXTS[:2], CHECK_TEXTS[2:4]),  # pairs: token_type_ids = 1 on the second text (BERT)
    ]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's TracerWarnings and deprecation notice, and onnxruntime.quantization's advice on the
    root logger, are noise for a user of ``nimblebert export``: the numeric check says whether it worked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def export_onnx(model: nn.Module, path: Path, example: dict[str, torch.Tensor], opset: int = OPSET) -> None:
    """Write ``model`` (a transformers sequence classifier) as ONNX with dynamic batch and sequence axes.

    ``example`` must be a padded batch of more than one row (see the module docstring).
    """
    names = input_names(model)
    wrapper = _Logits(model, names).eval()
    was_training = model.training
    model.eval()
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                wrapper, tuple(example[n] for n in names), str(path), dynamo=False, opset_version=opset,
                input_names=names, output_names=["logits"], dynamic_axes=dynamic, do_constant_folding=True,
            )
    finally:
        # The exporter restores the *wrapper's* mode, which propagates to ``model``: put it back as it was.
        model.train(was_training)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization (QInt8 weights, activations quantized at run time) with onnxruntime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


# onnxruntime's graph fusions that made our graphs slower, measured (onnxruntime 1.32, Intel Xeon with AVX-512 and
# AMX, 1 thread): SkipLayerNormalization (a residual Add and LayerNormalization fused) took ~40 µs per call on a
# 20-token sentence where the LayerNormalization alone took ~8, so with the fusion off one int8 layer segment of a
# quarter-width model ran 180 -> 144 µs at batch 1 and 3.5 -> 2.4 ms at batch 32, and the int8 MiniLM teacher
# 2.07 -> 1.83 ms at batch 1 (same outputs up to float rounding; timed interleaved, onnxruntime's profiler for the
# per-node times).
SLOW_FUSIONS = ("SkipLayerNormFusion",)


def static_shapes(path: str | Path) -> int:
    """Rewrite the ONNX graph at ``path`` in place so that its reshapes need no shape arithmetic at run time; returns
    how many nodes were rewritten (0, the file untouched, where onnxruntime's shape inference cannot finish).

    The TorchScript exporter writes ``x.view(b, t, h, d)`` as Shape → Gather → Unsqueeze → Concat → Reshape, about
    ten small nodes per reshape, each a kernel call of ~1 µs that onnxruntime cannot fold away (the sizes are
    dynamic). With onnxruntime's symbolic shape inference, each Reshape's target becomes a constant: its fixed sizes,
    0 where the size is the input's own at that position (ONNX: copy it), -1 for at most one other; a Gather or Slice
    of a Shape whose sizes are all fixed becomes a constant; then what nothing reads is dropped. A reshape whose
    target cannot be written so keeps its arithmetic. Exact: the same values, fewer calls (a one-layer segment at
    batch 1: 152 → 134 µs, int8)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    # auto_merge: the position embeddings' slice ([:t] of a 512-row table) is a new symbol that the sum with the
    # token embeddings equates with the sequence length. Where inference stops short, onnxruntime saves the partial
    # graph as sym_shape_infer_temp.onnx plus ~50 MB of weight files under random names into the working directory
    # and raises: it runs in a directory of its own, and the graph is left as exported (the rewrite only saves time).
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # onnxruntime raises a bare Exception("Incomplete symbolic shape inference")
            inferred = None
        finally:
            os.chdir(here)
    if inferred is None:
        return 0
    g = inferred.graph
    dims: dict[str, list[int | str | None]] = {}
    for v in [*g.value_info, *g.input, *g.output]:
        if v.type.tensor_type.HasField("shape"):
            dims[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in v.type.tensor_type.shape.dim]
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    made = {o: n for n in g.node for o in n.output}
    added, kept, rewritten = [], [], 0
    for n in g.node:
        source = made.get(n.input[0]) if n.input else None
        if (n.op_type in ("Gather", "Slice") and source is not None and source.op_type == "Shape"
                and not source.attribute and all(i in consts for i in n.input[1:])):
            shape = dims.get(source.input[0])
            picked = None
            if shape is not None and n.op_type == "Gather":
                picked = np.asarray(shape, dtype=object)[consts[n.input[1]]]
            elif shape is not None and len(n.input) == 3:  # Slice(starts, ends) on axis 0
                picked = np.asarray(shape[int(consts[n.input[1]][0]):int(consts[n.input[2]][0])], dtype=object)
            if picked is not None and all(isinstance(x, int) and x > 0 for x in np.ravel(picked)):
                added.append(numpy_helper.from_array(np.asarray(picked.tolist(), dtype=np.int64), n.output[0]))
                rewritten += 1
                continue
        if (n.op_type == "Reshape" and n.input[1] not in consts
                and not any(a.name == "allowzero" and a.i for a in n.attribute)):
            src, out = dims.get(n.input[0]), dims.get(n.output[0])
            if src is not None and out is not None:
                target = [d if isinstance(d, int) and d > 0 else 0 if d is not None and i < len(src) and src[i] == d
                          else -1 for i, d in enumerate(out)]
                if target.count(-1) <= 1:
                    name = f"{n.output[0]}_static_shape"
                    added.append(numpy_helper.from_array(np.asarray(target, dtype=np.int64), name))
                    n.input[1] = name
                    rewritten += 1
        kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(added)
    while True:  # drop the shape arithmetic nothing reads now
        read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {i for n in g.node for i in n.input}
    live = [i for i in g.initializer if i.name in read]
    del g.initializer[:]
    g.initializer.extend(live)
    del g.value_info[:]  # the inferred shapes were for this rewrite; onnxruntime infers its own
    onnx.save(inferred, str(path))
    return rewritten


def ort_session(path: str | Path, threads: int | None = None, level: str = "all",
                disabled_optimizers: Sequence[str] = ()) -> Any:
    """An onnxruntime CPU session on ``threads`` (default: torch's) intra-op threads, one inter-op thread, no
    spinning between calls (spinning threads would steal the CPU from whatever is timed next in an interleaved
    benchmark), errors-only logging, at graph optimisation ``level`` (onnxruntime's default: "all"), without the
    graph optimizers named in ``disabled_optimizers``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers) or None)


class OrtModel:
    """An onnxruntime session called like a model: ``ort_model(batch) -> logits`` (a float32 tensor).

    Threads match torch's (``torch.get_num_threads()``) so that timings compare like with like; the
    intra-op pool does not spin between calls, since spinning threads would steal the CPU from whatever
    is timed next in an interleaved benchmark. ``disabled_optimizers``: onnxruntime graph optimizers left out
    (none by default: the session a user's one line of onnxruntime makes; :data:`SLOW_FUSIONS` for ours).
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 disabled_optimizers: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads, disabled_optimizers=disabled_optimizers)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {}
        for n in self.names:
            value = batch[n] if n in batch else torch.zeros_like(batch["input_ids"])
            feed[n] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


@torch.no_grad()
def compare(model: nn.Module, ort_model: OrtModel, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Max |logits difference| and argmax agreement of the ONNX model against PyTorch on ``batches``."""
    names = input_names(model)
    diff, agree, total = 0.0, 0, 0
    for b in batches:
        ref = model(**{n: b[n] for n in names}).logits.float()
        out = ort_model(b)
        diff = max(diff, float((out - ref).abs().max()))
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        total += ref.size(0)
    return {"max_abs_diff": diff, "argmax_agreement": agree / total, "examples": total}


def write_onnx_files(model: nn.Module, tokenizer: Any, folder: Path, options: ExportOptions) -> dict[str, Any]:
    """``model.onnx`` (and ``model_int8.onnx`` with ``options.int8``) in ``folder``, each compared with
    PyTorch. Raises :class:`UserError` when the float32 model disagrees by more than 1e-4."""
    require_onnx()
    folder.mkdir(parents=True, exist_ok=True)
    batches = check_batches(tokenizer, model.config)
    export_onnx(model, folder / MODEL_FILE, batches[0], options.opset)
    report: dict[str, Any] = {"opset": options.opset, "inputs": input_names(model), "outputs": ["logits"],
                              "files": {MODEL_FILE: (folder / MODEL_FILE).stat().st_size}}
    if options.check:
        report["fp32"] = compare(model, OrtModel(folder / MODEL_FILE), batches)
        if report["fp32"]["max_abs_diff"] > FP32_TOLERANCE:
            raise UserError(f"the exported ONNX model disagrees with PyTorch (max |logits diff| "
                            f"{report['fp32']['max_abs_diff']:.2e} > {FP32_TOLERANCE:g}); this model cannot be "
                            "exported faithfully with the TorchScript exporter: please report it")
    if options.int8:
        quantize_int8(folder / MODEL_FILE, folder / INT8_FILE)
        report["files"][INT8_FILE] = (folder / INT8_FILE).stat().st_size
        if options.check:
            # int8 changes the numbers by design; what matters to a user is whether the labels stay.
            report["int8"] = compare(model, OrtModel(folder / INT8_FILE), batches)
    return report


class CoreGraph(nn.Module):
    """A static model whose structure the core runs beyond ``model.hf`` (a searched NAS-BERT network: its chain of
    ops is no transformers module) as one traceable module: ``forward(input_ids, attention_mask, token_type_ids)``
    runs the core with the model's own plan. The trace is checked on batches of other sizes and padding like any
    export (:func:`write_onnx_files`)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.hf.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        return self.model.infer({"input_ids": input_ids, "attention_mask": attention_mask,
                                 "token_type_ids": token_type_ids})


def graph_of(model: Any) -> nn.Module:
    """What to trace: ``model.hf``, or the core (:class:`CoreGraph`) when a component that is neither static nor
    fixed is left (a materializer told ``traced`` returned the model as the core runs it)."""
    return CoreGraph(model) if any(not c.fixed and not c.spec.static for c in model.stack) else model.hf


def write(model: Any, folder: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``onnx`` format: the ONNX files, the tokenizer, and ``config.json`` (labels, nimblebert section)."""
    report = write_onnx_files(graph_of(model), model.tokenizer, folder, options)
    model.tokenizer.save_pretrained(folder)
    config = copy.deepcopy(model.hf.config)
    config.id2label = dict(enumerate(model.label_names))
    config.label2id = {name: i for i, name in enumerate(model.label_names)}
    config.nimblebert = {**model.nimblebert_config(), "format": "onnx"}
    config.save_pretrained(folder)
    (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


ONNX = register_exporter(Exporter(
    name="onnx",
    help="model.onnx for onnxruntime (dynamic batch and length), checked against PyTorch; --int8 also "
         "writes model_int8.onnx (dynamic int8 quantization)",
    write=write,
    supports_int8=True,
    extra={"traces_core": True},
))
