"""onnxruntime in segments: the encoder as one ONNX graph per layer, FastBERT's exit decided between the calls.

The whole-model ONNX export (:mod:`nimblebert.export.onnx`) runs fastest under onnxruntime's int8 kernels but
fixes every knob. Cut at the exits instead, each layer is a graph of its own, and the exit rule (Liu et al., ACL
2020, "Adaptive inference": a row leaves when the normalized entropy of its branch is ≤ ``speed``) runs in Python
between them, so ``speed`` stays live:

- segment 0: embeddings + layer 1 + branch 1 → hidden (b, t, d), branch logits (b, C), normalized entropy (b,);
- segment i (0 < i < L-1): layer i+1 + branch i+1 → the same three outputs;
- segment L-1: the last layer + the model's own head → logits (b, C);
- ``full``: the model below the exits (no branch), for speed 0 (FastBERT's "normal mode").

Every graph has dynamic batch and sequence axes. At batch > 1 the rows that leave are dropped and the columns
that only they filled are cut, so the next segment runs on the smaller tensors (as the core does:
``LoopState.finish``). A width fixed at export (a DynaBERT sub-network) is in the weights: each layer is traced
at the heads and FFN neurons the core runs for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.encoder import EncoderOutput, Step
from ..errors import UserError
from ..methods.fastbert.policy import branch_flops

MANIFEST = "segments.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Segment(nn.Module):
    """One traceable segment of a FastBERT model (see the module docstring): ``forward(x, attention_mask[,
    token_type_ids])`` where ``x`` is ``input_ids`` for the first segment and hidden states for the others."""

    def __init__(self, model: Any, index: int, branch: nn.Module | None) -> None:
        super().__init__()
        self.model, self.index, self.branch = model, index, branch
        self.first = index == 0
        self.last = branch is None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> Any:
        enc = self.model.encoder
        if self.first:
            x = enc.embed(x, token_type_ids)  # (b, t, d)
        mask4d = attention_mask[:, None, None, :].bool()  # (b, 1, 1, t), always given: the graph has one path
        x, _ = enc.layer(enc.parts[self.index], x, mask4d)
        if self.last:
            return enc.classify(x)  # (b, C)
        logits = self.branch(x, attention_mask, mask4d)  # (b, C)
        # FastBERT's normalized entropy, written with log_softmax (entr has no ONNX symbolic): the same value.
        entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1) / math.log(logits.size(-1))
        return x, logits, entropy.clamp(0.0, 1.0)


class _Full(nn.Module):
    """The model below the exits, as the core runs it with no hook (speed 0)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.model.encoder
        x = enc.embed(input_ids, token_type_ids)
        mask4d = attention_mask[:, None, None, :].bool()
        for p in enc.parts:
            x, _ = enc.layer(p, x, mask4d)
        return enc.classify(x)


def _export(module: nn.Module, path: Path, example: tuple[torch.Tensor, ...], inputs: Sequence[str],
            outputs: Sequence[str], opset: int) -> None:
    from ..export.onnx import _quiet

    dynamic: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in inputs}
    for n in outputs:
        dynamic[n] = {0: "batch", 1: "sequence"} if n == "hidden_out" else {0: "batch"}
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=dynamic, do_constant_folding=True)


def export_segments(model: Any, folder: Path, int8: bool = True, per_channel: bool = True,
                    opset: int = 17) -> dict[str, Any]:
    """Write the segments of ``model`` (a :class:`~nimblebert.model.NimbleModel` in float32, checked with
    :func:`check_fit`) into ``folder``: ``seg{i}.onnx`` per layer when it has FastBERT exits, ``full.onnx`` always,
    each also as ``*_int8.onnx`` with ``int8`` (onnxruntime's ``quantize_dynamic``: int8 weights, per output channel
    with ``per_channel``, activations quantized at run time), and the manifest. Returns the manifest.

    Per-channel weights by default: on mr they kept the int8 core's accuracy and exits where per-tensor weights lost
    about a point on FastBERT (more rows stayed longer), at the same speed. Every matrix product is quantized, the
    branches' and the head's too: leaving those in float32 (as the int8 core does) was no faster at batch 1 and
    slower at batch 32, at the same accuracy (benchmarks/ort_segments_mr.py)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..export.onnx import _quiet, check_batches, static_shapes

    branches = list(model.extras["branches"]) if "branches" in model.extras else []
    model.eval()
    for branch in branches:  # FastBERT's folded branch matrices made now, so that the trace holds them as constants
        fold = getattr(branch, "_folded", None)
        if fold is not None and branch.pooling == "first":
            fold()
    folder.mkdir(parents=True, exist_ok=True)
    example = check_batches(model.tokenizer, model.hf.config)[0]  # padded, batch > 1: the mask path is traced
    ids, mask, types = example["input_ids"], example["attention_mask"], example["token_type_ids"]
    first_inputs = ["input_ids", "attention_mask", "token_type_ids"]
    enc = model.encoder
    files: list[str] = []
    with torch.no_grad():
        hidden = enc.embed(ids, types)
        for i in range(enc.num_layers if branches else 0):
            last = i == enc.num_layers - 1
            seg = _Segment(model, i, None if last else branches[i]).eval()
            outputs = ["logits"] if last else ["hidden_out", "branch_logits", "entropy"]
            args, names = ((ids, mask, types), first_inputs) if i == 0 else ((hidden, mask), ["hidden",
                                                                                                "attention_mask"])
            _export(seg, folder / f"seg{i}.onnx", args, names, outputs, opset)
            files.append(f"seg{i}.onnx")
            if not last:
                hidden = enc.layer(enc.parts[i], hidden, mask[:, None, None, :].bool())[0]
        _export(_Full(model).eval(), folder / "full.onnx", (ids, mask, types), first_inputs, ["logits"], opset)
        files.append("full.onnx")
    for name in files:  # constant reshape targets, before quantizing (exact: see static_shapes)
        static_shapes(folder / name)
    if int8:
        for name in list(files):
            with _quiet():
                quantize_dynamic(str(folder / name), str(folder / name.replace(".onnx", "_int8.onnx")),
                                 weight_type=QuantType.QInt8, per_channel=per_channel)
    manifest = {"layers": enc.num_layers, "heads": enc.num_heads, "ffn": enc.ffn_size, "branches": len(branches),
                "int8": int8, "per_channel": per_channel, "opset": opset}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def session(path: str | Path, threads: int | None = None, level: str = "all") -> Any:
    """An onnxruntime session as ``OrtModel``'s (:func:`~nimblebert.export.onnx.ort_session`), at graph optimisation
    ``level`` ("all" measured fastest at batch 1 on our CPU: benchmarks/ort_segments_mr.py), without the fusions that
    measured slower (:data:`~nimblebert.export.onnx.SLOW_FUSIONS`)."""
    from ..export.onnx import SLOW_FUSIONS, ort_session

    return ort_session(path, threads, level, disabled_optimizers=SLOW_FUSIONS)


def _direct(sess: Any) -> Any:
    """``feed -> outputs`` of an onnxruntime session, through its compiled ``run`` when this onnxruntime has one
    (``InferenceSession._sess``, onnxruntime 1.32): the public ``run`` checks the feed's names against the graph
    on every call (~6 µs, 5 % of a one-layer segment at batch 1); our feeds are built here, for these graphs."""
    names = [o.name for o in sess.get_outputs()]
    inner = getattr(getattr(sess, "_sess", None), "run", None)
    if inner is None:  # another onnxruntime: its public call
        return lambda feed: sess.run(names, feed)
    return lambda feed: inner(names, feed, None)


@dataclass
class SegmentOutput:
    logits: np.ndarray  # (B, C)
    layers_run: np.ndarray  # (B,)
    steps: list[tuple[int, np.ndarray, np.ndarray]]  # (layer, original rows, their attention mask) per layer run


class SegmentRunner:
    """Runs a segmented folder (:func:`export_segments`) with FastBERT's exit rule between the segments."""

    def __init__(self, folder: str | Path, int8: bool = True, threads: int | None = None,
                 level: str = "all") -> None:
        self.folder = folder = Path(folder)
        suffix = "_int8.onnx" if int8 else ".onnx"
        manifest = json.loads((folder / MANIFEST).read_text())
        self.layers, self.branches = int(manifest["layers"]), int(manifest["branches"])
        # the width each layer runs at, for the FLOPs (a manifest written before they were recorded: None, then the
        # loaded model's own)
        self.heads: int | None = manifest.get("heads")
        self.ffn: int | None = manifest.get("ffn")
        self.segments = [session(folder / f"seg{i}{suffix}", threads, level)
                         for i in range(self.layers if self.branches else 0)]
        self.full = session(folder / f"full{suffix}", threads, level)
        self.types = "token_type_ids" in {x.name for x in self.full.get_inputs()}
        # Each graph's run, called with its output names: a segment of a small model at batch 1 takes ~0.1 ms, and
        # the Python around it is what separates it from the whole-model graph (see :func:`_direct`).
        self._seg = [_direct(s) for s in self.segments]
        self._full = _direct(self.full)

    def __call__(self, batch: dict[str, Any], speed: float = 0.0, patience: int = 0) -> SegmentOutput:
        """``batch``: numpy (or array-like) ``input_ids``, ``attention_mask`` (padding on the right) and optional
        ``token_type_ids``; ``speed`` ∈ [0, 1], FastBERT's uncertainty threshold, and/or ``patience`` ≥ 1, PABEE's
        rule (a row leaves once its branch prediction has repeated ``patience`` times; as the core's ``ExitHook``);
        neither: no branch runs."""
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        mask = np.asarray(batch["attention_mask"], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.types:
            tt = batch.get("token_type_ids")
            feed["token_type_ids"] = np.zeros_like(ids) if tt is None else np.asarray(tt, dtype=np.int64)
        n, size = self.layers, ids.shape[0]
        rows = np.arange(size)
        if (speed <= 0 and patience <= 0) or not self.segments:  # normal mode: the model as one graph, no branch
            logits = self._full(feed)[0]
            return SegmentOutput(logits, np.full(size, n), [(i, rows, mask) for i in range(n)])
        steps = [(0, rows, mask)]
        hidden, logits, entropy = self._seg[0](feed)
        if patience <= 0 and bool((entropy <= speed).all()):  # every row leaves after layer 1 (usual at batch 1)
            return SegmentOutput(logits, np.ones(size, dtype=np.int64), steps)
        layers = np.full(size, n)
        out = np.empty_like(logits)
        previous = np.full(ids.shape[0], -1)  # PABEE: last branch prediction and repeat count, per live row
        count = np.zeros(ids.shape[0], dtype=np.int64)
        for i in range(1, n):
            done = entropy <= speed if speed > 0 else np.zeros(len(rows), dtype=bool)
            if patience > 0:
                pred = logits.argmax(-1)
                count = np.where(pred == previous, count + 1, 0)
                previous = pred
                done |= count >= patience
            if done.any():
                out[rows[done]] = logits[done]
                layers[rows[done]] = i
                if done.all():
                    return SegmentOutput(out, layers, steps)
                live = ~done
                rows, hidden, mask = rows[live], hidden[live], mask[live]
                previous, count = previous[live], count[live]
                longest = int(mask.sum(1).max())
                if longest < mask.shape[1]:  # padding on the right: columns only the leavers filled go too
                    hidden, mask = hidden[:, :longest], mask[:, :longest]
            steps.append((i, rows, mask))
            res = self._seg[i]({"hidden": hidden, "attention_mask": mask})
            if i == n - 1:
                out[rows] = res[0]
            else:
                hidden, logits, entropy = res
        return SegmentOutput(out, layers, steps)


# ---- the ``ort-int8`` runtime: a loaded model's inference through the segments ---------------------------------

SEGMENTS_DIR = "ort-int8"  # where ``nimblebert export --format ort-int8`` stores the segments inside a model folder


def structure_knobs(model: Any) -> tuple[str, ...]:
    """The live knobs that a materializer fixes into smaller weights (DynaBERT's ``width`` and ``depth``): on this
    runtime each setting of them gets graphs of its own (:class:`LiveStructure`)."""
    return tuple(k.name for c in model.stack if not c.fixed and c.spec.materialize is not None for k in c.spec.knobs)


def check_fit(model: Any) -> None:
    """Refuse, with the fix, a model the segments cannot run faithfully: one with live knobs other than FastBERT's
    ``speed`` and ``patience`` and the structure knobs a materializer fixes (TR-BERT's token cuts, a NAS-BERT op
    chain), or whose structure at its default knobs is not a plain stack of BERT layers."""
    from ..export.static import to_static
    from ..inference import contributions

    structure = structure_knobs(model)
    live = {k.name for k in model.knobs()} - {"speed", "patience"} - set(structure)
    if live:
        raise UserError(f"--runtime ort-int8 runs FastBERT's exits and DynaBERT's structure; this {model.describe()} "
                        f"model has live {', '.join(sorted(live))}: use --runtime int8")
    if structure:  # the structure at its defaults, as the graphs will hold it
        try:
            model = to_static(model, keep_modules=True)
        except UserError as e:  # e.g. a NAS-BERT supernet: no network until an architecture is chosen
            raise UserError(f"--runtime ort-int8 cannot run this {model.describe()} model ({e}); use --runtime "
                            "int8") from None
    ids = torch.ones(1, 2, dtype=torch.long)
    knobs = model.check_knobs({"speed": 0.0} if "speed" in {k.name for k in model.knobs()} else {})
    parts = contributions(model, {"input_ids": ids, "attention_mask": ids}, knobs)
    if (parts.plan is not None and not parts.plan.is_full(model.encoder.num_layers)) or parts.hooks or parts.head:
        raise UserError(f"--runtime ort-int8 cannot run this {model.describe()} model (its structure is not a plain "
                        "stack of BERT layers at inference); use --runtime int8")


def _exported(model: Any, int8: bool = True, threads: int | None = None) -> SegmentRunner:
    """``model``'s segments, exported now into a temporary folder (a few seconds per layer) that lives as long as
    the runner."""
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="nimblebert-ort-")
    export_segments(model, Path(tmp.name))
    runner = SegmentRunner(tmp.name, int8=int8, threads=threads)
    runner.tmp = tmp  # type: ignore[attr-defined]  # removed with the runner
    return runner


class LiveStructure:
    """The segments of a model whose structure is a knob (DynaBERT's width, depth): one set of graphs per structure,
    the sub-network materialized as the export does it (``nimblebert export --width``) and exported on first use, so
    the structure knobs stay live on this runtime beside FastBERT's ``speed``. The default setting's graphs are
    made at once (or are those stored by ``nimblebert export --format ort-int8``: ``default``); each other structure
    costs a few seconds per layer the first time it is asked for. Knob values that build the same network (widths
    round to whole heads and neurons) share its graphs. Every graph runs on the threads torch had when this was
    made."""

    def __init__(self, model: Any, int8: bool = True, default: SegmentRunner | None = None) -> None:
        self.model, self.int8 = model, int8
        self.threads = torch.get_num_threads()
        self.names = structure_knobs(model)
        self.runners: dict[tuple[Any, ...], SegmentRunner] = {}  # knob values -> graphs
        self._built: dict[tuple[int, int, int], SegmentRunner] = {}  # (layers, heads, FFN width) -> graphs
        if default is not None:
            self.runners[self._key(model.check_knobs({}))] = default
        else:
            self.at(model.check_knobs({}))

    def _key(self, knobs: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(knobs[n] for n in self.names)

    def at(self, knobs: dict[str, Any]) -> SegmentRunner:
        """The segments of the structure that ``knobs`` (checked) select."""
        key = self._key(knobs)
        runner = self.runners.get(key)
        if runner is None:
            from ..export.static import to_static

            static = to_static(self.model, dict(zip(self.names, key, strict=True)), keep_modules=True)
            check_fit(static)
            enc = static.encoder
            shape = (enc.num_layers, enc.num_heads, enc.ffn_size)
            runner = self._built.get(shape)
            if runner is None:
                runner = self._built[shape] = _exported(static, self.int8, self.threads)
            if len(self.runners) >= 64:  # a client sweeping many values: keep the memo of values small
                self.runners.clear()
            self.runners[key] = runner
        return runner

    def keep_only(self, settings: Sequence[dict[str, Any]]) -> None:
        """Drop the graphs of every structure not among ``settings`` (knob values; missing ones at their defaults):
        a process that tried many widths and will serve a few frees the others (made again if asked for)."""
        wanted = {self._key(self.model.check_knobs(dict(s))) for s in settings}
        self.runners = {k: r for k, r in self.runners.items() if k in wanted}
        kept = {id(r) for r in self.runners.values()}
        self._built = {k: r for k, r in self._built.items() if id(r) in kept}


def attach(model: Any) -> None:
    """Give ``model`` (float32, checked) its onnxruntime segments as ``model.segments``: those stored in its folder
    by ``nimblebert export --format ort-int8`` when there are, else exported now into a temporary folder (a few
    seconds per layer), which lives as long as the model; a live structure's per setting (:class:`LiveStructure`,
    its default setting's from the folder when stored there)."""
    check_fit(model)
    if next(model.parameters()).device.type != "cpu":
        raise UserError("--runtime ort-int8 runs on the CPU; load the model on the CPU or use --runtime fp32")
    folder = Path(model.source or "") / SEGMENTS_DIR
    stored = SegmentRunner(folder) if model.source and (folder / MANIFEST).exists() else None
    runner: SegmentRunner | LiveStructure
    if structure_knobs(model):
        runner = LiveStructure(model, default=stored)
    elif stored is not None:
        runner = stored
    else:
        runner = _exported(model)
    object.__setattr__(model, "segments", runner)


def run(model: Any, batch: dict[str, Any], knobs: dict[str, Any]) -> Any:
    """One inference pass of ``model`` on its segments at ``knobs`` (checked): an
    :class:`~nimblebert.core.encoder.EncoderOutput` with the logits, each row's exit layer and the steps that ran
    (so FLOPs are counted as for the core)."""
    speed, patience = float(knobs.get("speed", 0.0) or 0.0), int(knobs.get("patience", 0) or 0)
    # Token ids and masks never need grad: ``numpy()`` shares their memory (one call, not three, per input).
    feed = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in batch.items()
            if k in INPUTS and v is not None}
    if "attention_mask" not in feed:
        feed["attention_mask"] = np.ones_like(feed["input_ids"])
    runner = model.segments
    if isinstance(runner, LiveStructure):
        runner = runner.at(knobs)
    res = runner(feed, speed, patience)
    enc = model.encoder
    heads, ffn, n = runner.heads or enc.num_heads, runner.ffn or enc.ffn_size, runner.layers
    steps = [Step(i, torch.from_numpy(rows), torch.from_numpy(mask.sum(1)), heads, ffn) for i, rows, mask in res.steps]
    out = EncoderOutput(logits=torch.from_numpy(res.logits), layers_run=torch.from_numpy(res.layers_run), steps=steps)
    if len(res.steps) == n:  # some rows ran every layer, then the head (counted by sample_flops)
        out.extras["head_rows"] = torch.from_numpy(np.flatnonzero(res.layers_run == n))
    if (speed > 0 or patience > 0) and runner.segments:
        out.add_flops(lambda: branch_flops(model, out))
    return out
