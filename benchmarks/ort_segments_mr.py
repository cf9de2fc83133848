"""onnxruntime in segments on `mr`: one int8 ONNX graph per layer, FastBERT's exit decided between the calls.

Issue 17 lists it as a candidate for int8 under composed models with the knobs live. For each FastBERT folder
given (a FastBERT model, a fixed-width DynaBERT → FastBERT, TinyBERT-3 → FastBERT), the folder is cut into
segments (:mod:`nimblebert.runtime.segments`: embeddings + layer 1 + branch 1, then layer + branch, the last layer
+ the head; and the model below the exits as one graph for speed 0), each quantized with onnxruntime's dynamic int8,
and run with the exit rule in Python between them; rows that leave are dropped at batch 32. Against, in the same
timed run: nimblebert's int8 core on the same folder at the same speeds (``--runtime int8``), onnxruntime's
dynamic int8 of the whole teacher, plain and after onnxruntime's transformer graph fusion (``onnxruntime-int8-fused``),
and plain transformers (the faster of eager / sdpa, the × baseline).

Accuracy on the mr test split per speed, for the float32 core, the int8 core and the int8 segments (exits re-checked
under int8, never assumed), paired with the float32 teacher; timing at batch 1 (p50, mean, p90) and batch 32 (per
sentence); the per-call overhead (every row leaving after layer 1 ÷ the full model; ideal 1/L) with where it goes
(segment 1 as a bare session.run; embeddings + layer 1 alone, the floor; interleaved and back to back); and the
session options (graph optimisation level, per-channel weights, io binding) measured on the first folder.

    python benchmarks/ort_segments_mr.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import ROOT, environment, finished, points_ci

FOLDERS = ("runs/fast", "runs/dyna-w50-fast", "runs/s3-fast")  # relative to the repository, as report.py trains them
ACC_SPEEDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TIME_SPEEDS = (0.0, 0.5, 0.7, 0.8, 0.9)
NEVER = 1e-9  # a speed at which no row leaves but every branch runs: the whole chain of segments
LEVELS = ("basic", "extended", "all")


class BoundRunner:
    """The segments with onnxruntime's io binding instead of ``session.run`` (measured as a session option)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def __call__(self, batch: dict[str, Any], speed: float) -> Any:
        import onnxruntime as ort

        from nimblebert.runtime.segments import SegmentOutput

        r = self.runner
        ids = np.ascontiguousarray(batch["input_ids"], dtype=np.int64)
        mask = np.ascontiguousarray(batch["attention_mask"], dtype=np.int64)
        tt = batch.get("token_type_ids")
        feed = {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids) if tt is None else np.ascontiguousarray(tt, dtype=np.int64)}
        n = len(r.segments)

        def call(sess: Any, inputs: dict[str, np.ndarray], outs: int) -> list[np.ndarray]:
            io = sess.io_binding()
            for name, value in inputs.items():
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
            for o in sess.get_outputs()[:outs]:
                io.bind_output(o.name)
            sess.run_with_iobinding(io)
            return io.copy_outputs_to_cpu()

        hidden, logits, entropy = call(r.segments[0], feed, 3)
        out = np.empty_like(logits)
        layers = np.full(ids.shape[0], n)
        rows = np.arange(ids.shape[0])
        for i in range(1, n):
            done = entropy <= speed
            if done.any():
                out[rows[done]] = logits[done]
                layers[rows[done]] = i
                if done.all():
                    return SegmentOutput(out, layers, [])
                live = ~done
                rows, hidden, mask = rows[live], hidden[live], mask[live]
                longest = int(mask.sum(1).max())
                hidden, mask = np.ascontiguousarray(hidden[:, :longest]), np.ascontiguousarray(mask[:, :longest])
            res = call(r.segments[i], {"hidden": hidden, "attention_mask": mask}, 3 if i < n - 1 else 1)
            if i == n - 1:
                out[rows] = res[0]
            else:
                hidden, logits, entropy = res
        return SegmentOutput(out, layers, [])


def layers_only_int8(segments: Any, folder: Path) -> Any:
    """The runtime's float32 segments quantized with the branches, pooler and classifier left in float32 (as the int8
    core leaves them): a session option measured against quantizing every product (the runtime's choice)."""
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nimblebert.runtime.segments import MANIFEST, SegmentRunner

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(segments.folder / MANIFEST, folder / MANIFEST)
    for src in segments.folder.glob("*.onnx"):
        if src.name.endswith("_int8.onnx"):
            continue
        graph = onnx.load(str(src)).graph
        exclude = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                   and any(part in n.name for part in ("/branches.", "/pooler/", "/classifier/"))]
        quantize_dynamic(str(src), str(folder / src.name.replace(".onnx", "_int8.onnx")), weight_type=QuantType.QInt8,
                         per_channel=True, nodes_to_exclude=exclude)
    return SegmentRunner(folder)


ONNX_INT8_FUSED = "onnxruntime-int8-fused"


def fused_teacher(hf_eager: Any, tokenizer: Any, folder: Path) -> tuple[Any, dict[str, int]]:
    """onnxruntime int8 of the teacher after onnxruntime's transformer graph fusion, as a user of onnxruntime's own
    tools would make it: the eager-attention export (the sdpa one leaves the attention unfused),
    ``onnxruntime.transformers.optimizer.optimize_model`` (model type "bert": EmbedLayerNormalization, Attention,
    SkipLayerNormalization, BiasGelu), then ``quantize_dynamic`` (QAttention, QEmbedLayerNormalization, int8
    products). Returns the session and the fused operators counted."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from nimblebert.export.onnx import OrtModel, _quiet, write_onnx_files
    from nimblebert.export.registry import ExportOptions

    write_onnx_files(hf_eager, tokenizer, folder, ExportOptions(int8=False))
    cfg = hf_eager.config
    with _quiet():
        fused = optimize_model(str(folder / "model.onnx"), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=0)
        fused.save_model_to_file(str(folder / "model_fused.onnx"))
        # shape inference cannot type the contrib operators' outputs: every tensor here is float32
        quantize_dynamic(str(folder / "model_fused.onnx"), str(folder / "model_fused_int8.onnx"),
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    return OrtModel(folder / "model_fused_int8.onnx"), stats


def first_layer_graph(model: Any, folder: Path) -> Any:
    """The floor of an exit after layer 1: embeddings + layer 1 and nothing else (no branch, no head), exported and
    quantized as the segments are, as an onnxruntime session."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nimblebert.export.onnx import _quiet, check_batches
    from nimblebert.runtime.segments import _export, session

    class FirstLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule: its weights are traced as initializers (quantizable), not constants

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            enc = self.model.encoder
            return enc.layer(enc.parts[0], enc.embed(ids, types), mask[:, None, None, :].bool())[0]

    folder.mkdir(parents=True, exist_ok=True)
    ex = check_batches(model.tokenizer, model.hf.config)[0]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    _export(FirstLayer().eval(), folder / "layer1.onnx", tuple(ex[n] for n in names), names, ["hidden_out"], 17)
    with _quiet():
        quantize_dynamic(str(folder / "layer1.onnx"), str(folder / "layer1_int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True)
    return session(folder / "layer1_int8.onnx")


def seg_contender(runner: Any, speed: float) -> Any:
    """A timing contender: the batch's tensors handed to onnxruntime as numpy, as ``OrtModel`` does."""
    return lambda b: runner({k: v.numpy() for k, v in b.items()}, speed)


def seg_predict(runner: Any, loader: Any, speed: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted, labels, layers) over ``loader`` in the dataset's order."""
    preds, labels, layers, index = [], [], [], []
    for batch in loader:
        out = runner({k: batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")
                      if k in batch}, speed)
        preds.append(out.logits.argmax(-1))
        layers.append(out.layers_run)
        labels.append(batch["labels"].numpy())
        index.append(batch["index"].numpy())
    order = np.argsort(np.concatenate(index))
    return (np.concatenate(preds)[order], np.concatenate(labels)[order], np.concatenate(layers)[order])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="runs/teacher-mr")
    ap.add_argument("--folders", nargs="+", default=list(FOLDERS))
    ap.add_argument("--max-length", type=int, default=64)
    common.add_options(ap, bootstrap=False, timing={1: 400, 32: 640}, rounds=2, threads_default=1)
    ap.add_argument("--acc-speeds", type=float, nargs="+", default=list(ACC_SPEEDS))
    ap.add_argument("--time-speeds", type=float, nargs="+", default=list(TIME_SPEEDS))
    ap.add_argument("--render", action="store_true",
                    help="redraw the section from docs/ort_segments_mr.json (what an earlier run measured)")
    opts = ap.parse_args()
    if opts.render:
        data = json.loads((common.DOCS / "ort_segments_mr.json").read_text())
        common.write_section("ort_segments_mr", render(data, common.section_command("ort_segments_mr") or "?"), data)
        return
    common.use_threads(opts.threads)
    t_start = time.time()
    opts.teacher = str(ROOT / opts.teacher)  # an absolute path stays as it is
    opts.folders = [str(ROOT / f) for f in opts.folders]
    for f in [opts.teacher, *opts.folders]:
        if not finished(f):
            raise SystemExit(f"{f} is missing")

    import torch

    from nimblebert import load
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import (
        add_speedups,
        hf_contender,
        latency_batches,
        measure_latency,
        nimble_contender,
        transformers_baselines,
    )
    from nimblebert.bench.onnx import ONNX_INT8, onnx_baselines
    from nimblebert.inference import predict_loader
    from nimblebert.runtime.segments import SegmentRunner, export_segments

    base = common.teacher_baseline(opts.teacher, "mr", opts.max_length)
    teacher = base.teacher
    tmp = Path(tempfile.mkdtemp(prefix="ort_segments_"))

    def pair(correct: np.ndarray) -> dict[str, float]:
        return common.paired_bootstrap(base.correct, correct)

    hf = transformers_baselines(opts.teacher)
    fns: dict[str, Any] = {name: hf_contender(m) for name, m in hf.items()}
    sessions, _ = onnx_baselines(teacher, tmp / "teacher")
    fns[ONNX_INT8] = sessions[ONNX_INT8]
    fns[ONNX_INT8_FUSED], fused_ops = fused_teacher(hf["transformers-eager"], teacher.tokenizer, tmp / "teacher-fused")
    baselines = {}
    for name in (ONNX_INT8, ONNX_INT8_FUSED):  # each onnxruntime teacher's accuracy on test, measured, paired
        correct, index = [], []
        for b in base.loader:
            logits = fns[name]({k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b})
            correct.append((logits.argmax(-1) == b["labels"]).numpy())
            index.append(b["index"].numpy())
        ok = np.concatenate(correct)[np.argsort(np.concatenate(index))]
        baselines[name] = {"accuracy": float(ok.mean()), "vs_teacher": pair(ok)}
    print(f"onnxruntime teachers: {baselines}; fused operators {fused_ops}", file=sys.stderr)

    folders: list[dict[str, Any]] = []
    exits: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    for folder in opts.folders:
        name = Path(folder).name
        m32, m8 = load(folder), load(folder, runtime="int8")
        t0 = time.time()
        mort = load(folder, runtime="ort-int8")  # the runtime as shipped: per-channel int8 segments, exported now
        export_s = time.time() - t0
        export_segments(m32, tmp / name / "pt", int8=True, per_channel=False)
        runners[name] = (mort, SegmentRunner(tmp / name / "pt"))
        folders.append({"folder": folder, "name": name, "layers": mort.segments.layers,
                        "load_and_export_s": round(export_s, 1)})
        for speed in opts.acc_speeds:
            entry: dict[str, Any] = {"folder": name, "speed": speed}
            for tag, m in (("core-fp32", m32), ("core-int8", m8), ("ort-int8", mort)):
                p = predict_loader(m, base.loader, speed=speed)
                correct = (p.predicted == p.labels).numpy()
                entry[tag] = {"accuracy": float(correct.mean()), "mean_layers": float(p.layers.float().mean()),
                              "vs_teacher": pair(correct)}
                if tag == "core-int8":
                    core8_layers = p.layers.numpy()
                if tag == "ort-int8":
                    entry[tag]["same_exit_as_core_int8"] = float((p.layers.numpy() == core8_layers).mean())
            pred, labels, layers = seg_predict(runners[name][1], base.loader, speed)
            correct = pred == labels
            entry["ort-int8-per-tensor"] = {"accuracy": float(correct.mean()), "mean_layers": float(layers.mean()),
                                            "vs_teacher": pair(correct),
                                            "same_exit_as_core_int8": float((layers == core8_layers).mean())}
            exits.append(entry)
            print(f"{name} speed {speed}: " + ", ".join(f"{k} {entry[k]['accuracy']:.4f}/{entry[k]['mean_layers']:.2f}"
                                                       for k in entry if isinstance(entry[k], dict)), file=sys.stderr)
        for speed in opts.time_speeds:
            fns[f"{name} · core int8 · speed {speed:g}"] = nimble_contender(m8, {"speed": speed})
            fns[f"{name} · ort-int8 segments · speed {speed:g}"] = nimble_contender(mort, {"speed": speed})

    lat = measure_latency(fns, teacher, base.encoded, examples={1: opts.b1_examples, 32: opts.b32_examples},
                          rounds=opts.rounds)
    add_speedups(lat)
    ort = {b: lat[f"batch{b}"][ONNX_INT8]["ms_per_sample"] for b in (1, 32)}
    timing = []
    for name, _ in fns.items():
        b1, b32 = lat["batch1"][name], lat["batch32"][name]
        timing.append({"name": name, "b1_p50_ms": b1["p50_ms"], "b1_mean_ms": round(common.mean_ms(b1, 1), 3),
                       "b1_p90_ms": b1["p90_ms"], "b1_speedup": b1["speedup"],
                       "b32_ms_per_sample": b32["ms_per_sample"], "b32_speedup": b32["speedup"],
                       "vs_onnxruntime_int8": {"b1": round(ort[1] / b1["ms_per_sample"], 3),
                                               "b32": round(ort[32] / b32["ms_per_sample"], 3)}})

    # ---- per-call overhead and session options on the first folder, batch 1 -----------------------------
    first = folders[0]["name"]
    m8 = load(opts.folders[0], runtime="int8")
    mort, per_tensor = runners[first]
    over_fns = {"core int8 · full (speed 0)": nimble_contender(m8, {"speed": 0.0}),
                "core int8 · exit after layer 1 (speed 1)": nimble_contender(m8, {"speed": 1.0}),
                "core int8 · every branch, no exit": nimble_contender(m8, {"speed": NEVER}),
                "ort segments · full graph (speed 0)": nimble_contender(mort, {"speed": 0.0}),
                "ort segments · exit after layer 1 (speed 1)": nimble_contender(mort, {"speed": 1.0}),
                "ort segments · every segment, no exit": nimble_contender(mort, {"speed": NEVER})}
    # Where an exit after layer 1 goes, on the same sentences: segment 1 (embeddings + layer 1 + branch 1 + its
    # entropy) as a bare session.run with nothing around it, and embeddings + layer 1 alone (the floor: no branch).
    seg1, floor = mort.segments.segments[0], first_layer_graph(load(opts.folders[0]), tmp / first / "floor")
    numpy_feed = lambda b: {k: v.numpy() for k, v in b.items()}  # noqa: E731
    parts = {"segment 1 session.run alone (no Python around it)": lambda b: seg1.run(None, numpy_feed(b)),
             "embeddings + layer 1 graph alone (the floor: no branch)": lambda b: floor.run(None, numpy_feed(b))}
    over_fns |= {f"ort segments · {k}": fn for k, fn in parts.items()}
    b1_batches = latency_batches(teacher, base.encoded, 1, opts.b1_examples)
    over = compare_latency(over_fns, b1_batches, 1, rounds=opts.rounds)
    # The same ort contenders each timed alone, back to back (as a server running one model calls it): interleaved,
    # every call starts with another model's weights in the cache, which costs a small graph proportionally more.
    alone = {k: compare_latency({k: fn}, b1_batches, 1, rounds=opts.rounds)[k]["p50_ms"]
             for k, fn in over_fns.items() if k.startswith("ort")}
    overhead = {}
    for tag in ("core int8", "ort segments"):
        full = over[[k for k in over if k.startswith(tag) and "speed 0" in k][0]]["p50_ms"]
        exit1 = over[f"{tag} · exit after layer 1 (speed 1)"]["p50_ms"]
        chain = over[f"{tag} · every {'branch' if tag == 'core int8' else 'segment'}, no exit"]["p50_ms"]
        overhead[tag] = {"full_p50_ms": full, "exit1_p50_ms": exit1, "chain_p50_ms": chain,
                         "exit1_over_full": round(exit1 / full, 4), "chain_over_full": round(chain / full, 4)}
    full_key = "ort segments · full graph (speed 0)"
    interleaved = {k: over[k]["p50_ms"] for k in alone}
    breakdown = {k.split(" · ", 1)[1]: {"interleaved_p50_ms": interleaved[k], "alone_p50_ms": alone[k],
                                         "interleaved_over_full": round(interleaved[k] / interleaved[full_key], 4),
                                         "alone_over_full": round(alone[k] / alone[full_key], 4)}
                 for k in alone}

    opt_fns: dict[str, Any] = {"per-tensor weights, level all, session.run": seg_contender(per_tensor, 0.8)}
    per_channel = mort.segments.folder
    for level in LEVELS:
        opt_fns[f"per-channel weights, level {level}, session.run"] = seg_contender(
            SegmentRunner(per_channel, level=level), 0.8)
    opt_fns["per-channel weights, level all, io binding"] = seg_contender(BoundRunner(mort.segments), 0.8)
    opt_fns["per-channel, branches and head left float32, level all"] = seg_contender(
        layers_only_int8(mort.segments, tmp / first / "layers-only"), 0.8)
    options = {}
    for bs in (1, 32):
        batches = latency_batches(teacher, base.encoded, bs, opts.b1_examples if bs == 1 else opts.b32_examples)
        res = compare_latency(opt_fns, batches, bs, rounds=opts.rounds)
        for k, v in res.items():
            options.setdefault(k, {})[f"b{bs}_ms_per_sample"] = v["ms_per_sample"]

    import onnxruntime

    env = {**environment(), "onnxruntime": onnxruntime.__version__, "minutes": round((time.time() - t_start) / 60, 1)}
    data = {"teacher": opts.teacher, "teacher_accuracy": base.metrics["accuracy"], "examples": len(base.encoded),
            "b1_examples": opts.b1_examples, "folders": folders, "exits": exits, "timing": timing, "latency": lat,
            "overhead": overhead, "overhead_breakdown": breakdown, "onnxruntime_teachers": baselines,
            "fused_operators": fused_ops,
            "overhead_folder": opts.folders[0], "session_options": options, "environment": env,
            "torch_version": torch.__version__}
    md = render(data, common.command_line())
    common.publish("ort_segments_mr", md, data, headline=None, docs=common.docs_folder(opts))  # docs/ when not given
    print(md)


def shown(path: str) -> str:
    """A folder as the section names it: relative to the repository when it is inside it (``runs/fast``)."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def render(data: dict[str, Any], command: str) -> str:
    env = data["environment"]
    t = ["| contender | b1 p50 ms | b1 mean ms | b1 p90 ms | b1 × | b32 ms/sentence | b32 × "
         "| × ORT int8 teacher b1 / b32 |", "|---|---|---|---|---|---|---|---|"]
    for r in data["timing"]:
        t.append(f"| {r['name']} | {r['b1_p50_ms']:.2f} | {r['b1_mean_ms']:.2f} | {r['b1_p90_ms']:.2f} | "
                 f"{r['b1_speedup']:.2f} | {r['b32_ms_per_sample']:.3f} | {r['b32_speedup']:.2f} | "
                 f"{r['vs_onnxruntime_int8']['b1']:.2f} / {r['vs_onnxruntime_int8']['b32']:.2f} |")
    tags = ("core-fp32", "core-int8", "ort-int8", "ort-int8-per-tensor")
    a = ["| folder | speed | " + " | ".join(f"{k}: acc. / layers / Δ [95% CI]" for k in tags)
         + " | same exit layer, ort-int8 vs core int8 |", "|---|---|" + "---|" * (len(tags) + 1)]
    for e in data["exits"]:
        cells = [f"{e[k]['accuracy']:.4f} / {e[k]['mean_layers']:.2f} / {points_ci(e[k]['vs_teacher'])}" for k in tags]
        a.append(f"| {e['folder']} | {e['speed']:g} | " + " | ".join(cells)
                 + f" | {e['ort-int8']['same_exit_as_core_int8']:.3f} |")
    o = ["| runtime | full model b1 p50 ms | exit after layer 1 | ratio (ideal 1/6 = 0.167) "
         "| every branch/segment, no exit | ratio |", "|---|---|---|---|---|---|"]
    for tag, v in data["overhead"].items():
        o.append(f"| {tag} | {v['full_p50_ms']:.2f} | {v['exit1_p50_ms']:.2f} | {v['exit1_over_full']:.3f} | "
                 f"{v['chain_p50_ms']:.2f} | {v['chain_over_full']:.3f} |")
    br = ["| ort segments, b1 | interleaved p50 ms | ÷ full | alone, back to back: p50 ms | ÷ full |",
          "|---|---|---|---|---|"]
    for k, v in data.get("overhead_breakdown", {}).items():
        br.append(f"| {k} | {v['interleaved_p50_ms']:.3f} | {v['interleaved_over_full']:.3f} | {v['alone_p50_ms']:.3f} "
                  f"| {v['alone_over_full']:.3f} |")
    tb = ["| onnxruntime int8 teacher | test accuracy | Δ from the float32 teacher [95% CI] |", "|---|---|---|"]
    for k, v in data.get("onnxruntime_teachers", {}).items():
        tb.append(f"| {k} | {v['accuracy']:.4f} | {points_ci(v['vs_teacher'])} |")
    fused = ", ".join(f"{k} {v}" for k, v in data.get("fused_operators", {}).items())
    s = ["| segments of the first folder at speed 0.8 (runner alone) | b1 ms (p50) | b32 ms/sentence |",
         "|---|---|---|"]
    for k, v in data["session_options"].items():
        s.append(f"| {k} | {v['b1_ms_per_sample']:.3f} | {v['b32_ms_per_sample']:.3f} |")
    folders = ", ".join(f"`{shown(f['folder'])}` ({f['layers']} layers)" for f in data["folders"])
    return f"""## onnxruntime in segments on `mr`: int8 per layer, exits between the calls (issue 17)

`{command}`. Folders: {folders}; teacher `{shown(data['teacher'])}` ({data['teacher_accuracy']:.4f} on the
{data['examples']} test sentences, max length 64).

Segments: embeddings + layer 1 + branch 1, each next layer + its branch, the last layer + the head, each one ONNX
graph (dynamic batch and sequence axes) quantized with onnxruntime's `quantize_dynamic` (int8 weights per output
channel unless said, activations at run time); the exit rule runs between the calls; at batch 32 the rows that
leave are dropped and the columns only they filled are cut. Speed 0 runs the model below the exits as one graph.
Core int8 = `nimblebert.load(folder, runtime="int8")`; ort-int8 = `nimblebert.load(folder, runtime="ort-int8")`,
the runtime as shipped (segments exported at load; timed through `nimblebert.inference.run`, as `evaluate`,
`predict` and `bench` call it).

Timing, every row interleaved in one run (3 warm-up batches, batch 1 over the first {data['b1_examples']} test
sentences, batch 32 length-bucketed, median batch time per sentence). × = speed-up over the faster plain
transformers teacher (eager / sdpa); headline at batch 1: p50; mean = throughput:

{chr(10).join(t)}

Accuracy on test per speed (exits re-checked under int8): accuracy / mean layers / paired difference from the
float32 teacher in points [bootstrap 95% CI]:

{chr(10).join(a)}

Per-call overhead at batch 1 on `{shown(data['overhead_folder'])}`: every sentence leaving after layer 1 (speed 1) and
every sentence running every branch without leaving, against the full model (speed 0):

{chr(10).join(o)}

Where an exit after layer 1 goes (same run, same sentences): segment 1 as a bare `session.run` with no Python
around it, and a graph of embeddings + layer 1 alone (the floor of an exit after layer 1: no branch, no head); each
also timed alone, back to back, as a server running one model calls it (interleaved, every call starts after another
model's weights went through the cache, which costs a small graph proportionally more):

{chr(10).join(br)}

onnxruntime int8 of the teacher, plain (`nimblebert export --format onnx --int8`: the sdpa export, unfused) and
fused (`{ONNX_INT8_FUSED}`: the eager export through onnxruntime's transformer optimizer, model type "bert":
{fused or "?"}, then the same `quantize_dynamic`), both timed in the table above:

{chr(10).join(tb)}

Session options (measured, same run): graph optimisation level, per-channel int8 weights, io binding, which
products are quantized (the runtime: per-channel, level all, session.run, every product):

{chr(10).join(s)}

CPU: {env.get('cpu_model', '?')}; ISA: {env.get('isa', '?')}; {env['threads']} thread(s), pinned to one core
(intra_op_num_threads=1, inter_op 1, no spinning); torch {env['torch']}; onnxruntime {env.get('onnxruntime', '?')};
{env['date']}; {env['minutes']} min.
"""


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
