"""int8 on `mr`: which int8 path is fastest on this CPU, what it costs in accuracy, and what a layer costs.

On the fine-tuned teacher (the 800 test sentences, max length 64), timed interleaved in one run, batch 1 and
batch 32: plain transformers (eager, sdpa), nimblebert's core in float32 and in int8 (``--runtime int8``),
torch's dynamic int8 Linear on the transformers model (``torch.ao.quantization.quantize_dynamic``, deprecated
in torch 2.13), torchao's replacement (``Int8DynamicActivationInt8WeightConfig``, eager; only when torchao
imports) and onnxruntime fp32 / dynamic int8 of the teacher. Each row's accuracy is measured on the test split
and paired with the float32 teacher (bootstrap 95% interval).

Then the per-call overhead: the batch-1 cost of a sentence that leaves after layer 1 (a FastBERT model at
speed 1: every row exits at its first branch) against the full model (speed 0), in float32 and int8. And,
when trained models are given, FastBERT's exits (accuracy, mean layers per speed) and DynaBERT's widths under
int8 against float32: quantization changes the numbers that the exit rule reads, so they are re-measured.

    python benchmarks/int8_mr.py --threads 1                      # runs/teacher-mr
    python benchmarks/int8_mr.py --threads 1 --fastbert runs/fast --dynabert runs/dyna

torchao is not a dependency (it is the measured loser and its import is noisy); for its row install it
aside and put it on the path: ``pip install --no-deps --target /tmp/torchao torchao==0.18.0`` and
``PYTHONPATH=/tmp/torchao``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import environment, finished, points_ci

SPEEDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
WIDTHS = (1.0, 0.75, 0.5, 0.25)


def torch_ao_int8(hf: Any) -> Any:
    """torch's own dynamic int8 Linear (fbgemm) on a copy of the transformers model."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the measurement is the point
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(hf), {torch.nn.Linear}, dtype=torch.qint8)


def torchao_int8(hf: Any) -> Any | None:
    """torchao's dynamic int8 activations × int8 weights on a copy of the transformers model, or None."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as e:  # not installed, or a build that does not import against this torch
        print(f"torchao row skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    model = copy.deepcopy(hf)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def paired(base: Any, correct: np.ndarray) -> dict[str, float]:
    return common.paired_bootstrap(base.correct, correct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="runs/teacher-mr")
    ap.add_argument("--fastbert", default=None, help="a trained FastBERT folder on mr (exits re-checked under int8)")
    ap.add_argument("--dynabert", default=None, help="a trained DynaBERT folder on mr (widths re-checked under int8)")
    ap.add_argument("--max-length", type=int, default=64)
    common.add_options(ap, bootstrap=False, timing={1: 800, 32: 800}, rounds=2, threads_default=1)
    ap.add_argument("--no-torchao", action="store_true", help="skip the torchao row even when it imports")
    opts = ap.parse_args()
    common.use_threads(opts.threads)
    teacher_dir = common.in_repo(opts.teacher)
    if not finished(teacher_dir):
        raise SystemExit(f"{teacher_dir} is missing: run benchmarks/finetune_mr.py first")
    t_start = time.time()

    import torch

    from nimblebert import load
    from nimblebert.bench.measure import (
        add_speedups,
        evaluate_logits,
        hf_contender,
        latency_batches,
        measure_latency,
        nimble_contender,
        transformers_baselines,
    )
    from nimblebert.bench.onnx import onnx_baselines
    from nimblebert.inference import predict_loader

    base = common.teacher_baseline(teacher_dir, "mr", opts.max_length)
    teacher = base.teacher
    int8 = load(teacher_dir, runtime="int8")
    print(f"teacher test accuracy {base.metrics['accuracy']:.4f} on {len(base.encoded)} sentences", file=sys.stderr)

    # ---- every contender on the teacher --------------------------------------------------------------
    hf = transformers_baselines(teacher_dir)
    fns: dict[str, Any] = {name: hf_contender(m) for name, m in hf.items()}
    fns["nimblebert-fp32"] = nimble_contender(teacher, {})
    fns["nimblebert-int8"] = nimble_contender(int8, {})
    fns["torch-ao-dynamic-int8"] = hf_contender(torch_ao_int8(hf["transformers-sdpa"]))
    if not opts.no_torchao and (ao := torchao_int8(hf["transformers-sdpa"])) is not None:
        fns["torchao-int8"] = hf_contender(ao)
    onnx_dir = Path(tempfile.mkdtemp(prefix="int8_mr_onnx_"))
    sessions, _ = onnx_baselines(teacher, onnx_dir)
    fns.update(sessions)

    rows: dict[str, dict[str, Any]] = {}
    for name, fn in fns.items():
        if name == "nimblebert-fp32":
            preds = base.predictions
        elif name == "nimblebert-int8":
            preds = predict_loader(int8, base.loader)
        else:
            preds = None
        if preds is not None:
            acc = float((preds.predicted == preds.labels).float().mean())
            correct = (preds.predicted == preds.labels).numpy()
            agree = base.agreement(preds)
        else:
            m = evaluate_logits(fn, teacher, base.loader)
            acc = m["accuracy"]
            # evaluate_logits returns metrics only: re-run for the paired comparison.
            logits, index = [], []
            with torch.inference_mode():
                for batch in base.loader:
                    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                    logits.append(torch.as_tensor(fn(inputs)).float())
                    index.append(batch["index"])
            pred = torch.cat(logits)[torch.argsort(torch.cat(index))].argmax(-1)
            correct = (pred == base.predictions.labels).numpy()
            agree = float((pred == base.predictions.predicted).float().mean())
        rows[name] = {"name": name, "accuracy": acc, "vs_teacher": paired(base, correct),
                      "agreement_with_teacher": agree}
        print(f"{name}: accuracy {acc:.4f}", file=sys.stderr)

    lat = measure_latency(fns, teacher, base.encoded, examples={1: opts.b1_examples, 32: opts.b32_examples},
                          rounds=opts.rounds)
    add_speedups(lat)
    for name, row in rows.items():
        b1, b32 = lat["batch1"][name], lat["batch32"][name]
        row.update(b1_p50_ms=b1["p50_ms"], b1_mean_ms=round(common.mean_ms(b1, 1), 3), b1_p90_ms=b1["p90_ms"],
                   b1_speedup=b1["speedup"], b32_ms_per_sample=b32["ms_per_sample"], b32_speedup=b32["speedup"])
    faster = {f"b{b}": min((n for n in rows if n.startswith("transformers-")),
                           key=lambda n, t=f"batch{b}": lat[t][n]["ms_per_sample"]) for b in (1, 32)}
    ort = rows["onnxruntime-int8"]
    for row in rows.values():
        row["vs_onnxruntime_int8"] = {"b1": round(ort["b1_p50_ms"] / row["b1_p50_ms"], 3),
                                      "b32": round(ort["b32_ms_per_sample"] / row["b32_ms_per_sample"], 3)}

    # ---- per-call overhead: a row that leaves after layer 1 against the full model, batch 1 ------------
    fast_dir = common.in_repo(opts.fastbert)
    trained_fast = bool(fast_dir) and finished(fast_dir)
    if trained_fast:
        fast32, fast8 = load(fast_dir), load(fast_dir, runtime="int8")
    else:  # timing only: untrained branches cost what trained ones do
        from nimblebert.methods.fastbert import FastBertConfig
        from nimblebert.model import from_base
        from nimblebert.runtime import apply_runtime

        fast32 = from_base(teacher_dir, teacher.label_names, "fastbert", FastBertConfig()).eval()
        fast8 = apply_runtime(copy.deepcopy(fast32), "int8")
    overhead_fns = {}
    for tag, m in (("fp32", fast32), ("int8", fast8)):
        overhead_fns[f"{tag} full (speed 0)"] = nimble_contender(m, {"speed": 0.0})
        overhead_fns[f"{tag} exit after layer 1 (speed 1)"] = nimble_contender(m, {"speed": 1.0})
    batches = latency_batches(teacher, base.encoded, 1, opts.b1_examples)
    from nimblebert.bench.latency import compare_latency

    over = compare_latency(overhead_fns, batches, 1, rounds=opts.rounds)
    overhead = {tag: {"full_p50_ms": over[f"{tag} full (speed 0)"]["p50_ms"],
                      "exit1_p50_ms": over[f"{tag} exit after layer 1 (speed 1)"]["p50_ms"]}
                for tag in ("fp32", "int8")}
    for v in overhead.values():
        v["exit1_over_full"] = round(v["exit1_p50_ms"] / v["full_p50_ms"], 4)

    # ---- exits and widths re-checked under int8 (accuracy and layers, no timing) ----------------------
    exits = []
    if trained_fast:
        for speed in SPEEDS:
            for tag, m in (("fp32", fast32), ("int8", fast8)):
                p = predict_loader(m, base.loader, speed=speed)
                correct = (p.predicted == p.labels).numpy()
                exits.append({"speed": speed, "runtime": tag, "accuracy": float(correct.mean()),
                              "mean_layers": float(p.layers.float().mean()), "vs_teacher": paired(base, correct)})
    widths = []
    dyna_dir = common.in_repo(opts.dynabert)
    if dyna_dir and finished(dyna_dir):
        d32, d8 = load(dyna_dir), load(dyna_dir, runtime="int8")
        for width in WIDTHS:
            for tag, m in (("fp32", d32), ("int8", d8)):
                p = predict_loader(m, base.loader, width=width)
                correct = (p.predicted == p.labels).numpy()
                widths.append({"width": width, "runtime": tag, "accuracy": float(correct.mean()),
                               "vs_teacher": paired(base, correct)})

    env = {**environment(), "minutes": round((time.time() - t_start) / 60, 1)}
    data = {"teacher": opts.teacher, "examples": len(base.encoded), "teacher_accuracy": base.metrics["accuracy"],
            "baseline": faster, "rows": list(rows.values()), "latency": lat, "overhead": overhead,
            "overhead_fastbert": fast_dir if trained_fast else "untrained branches on the teacher (timing only)",
            "exits": exits, "widths": widths, "environment": env}
    md = render(data, common.command_line())
    common.publish("int8_mr", md, data, headline=None, docs=common.docs_folder(opts))  # docs/ when not given
    print(md)


def render(data: dict[str, Any], command: str) -> str:
    env = data["environment"]
    cpu = env.get("cpu", {})
    lines = ["| contender | accuracy | vs fp32 teacher, points [95% CI] | agreement | b1 p50 ms | b1 mean ms "
             "| b1 p90 ms | b1 × | b32 ms/sentence | b32 × | vs onnxruntime-int8 b1 / b32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {points_ci(r['vs_teacher'])} | "
                     f"{r['agreement_with_teacher']:.4f} | {r['b1_p50_ms']:.2f} | {r['b1_mean_ms']:.2f} | "
                     f"{r['b1_p90_ms']:.2f} | {r['b1_speedup']:.2f} | "
                     f"{r['b32_ms_per_sample']:.3f} | {r['b32_speedup']:.2f} | "
                     f"{r['vs_onnxruntime_int8']['b1']:.2f} / {r['vs_onnxruntime_int8']['b32']:.2f} |")
    over = ["| runtime | full model, b1 p50 ms | exit after layer 1, b1 p50 ms | ratio (ideal ≈ 1/6 = 0.167) |",
            "|---|---|---|---|"]
    for tag, v in data["overhead"].items():
        over.append(f"| {tag} | {v['full_p50_ms']:.2f} | {v['exit1_p50_ms']:.2f} | {v['exit1_over_full']:.3f} |")
    parts = [f"""## int8 kernels on `mr`: which int8 path, at what accuracy

`{command}`. Teacher `{data['teacher']}`, test accuracy {data['teacher_accuracy']:.4f} on {data['examples']}
sentences (max length 64). × = speed-up over the faster plain transformers model in the same run (batch 1:
p50 latency; batch 32: per sentence). Accuracy differences are paired with the float32 teacher on the same
sentences (bootstrap 95% interval, points). Headline latency at batch 1: the p50 (median); mean = throughput.

{chr(10).join(lines)}

Per-call overhead: one sentence at a time, a FastBERT model ({data['overhead_fastbert']}) at speed 0 (the full
model, no branch) and at speed 1 (every sentence leaves at its first branch, after layer 1):

{chr(10).join(over)}
"""]
    if data["exits"]:
        ex = ["| speed | fp32 accuracy | fp32 mean layers | int8 accuracy | int8 mean layers "
              "| int8 vs teacher [95% CI] |",
              "|---|---|---|---|---|---|"]
        by = {(e["speed"], e["runtime"]): e for e in data["exits"]}
        for s in sorted({e["speed"] for e in data["exits"]}):
            a, b = by[(s, "fp32")], by[(s, "int8")]
            ex.append(f"| {s:g} | {a['accuracy']:.4f} | {a['mean_layers']:.2f} | {b['accuracy']:.4f} | "
                      f"{b['mean_layers']:.2f} | {points_ci(b['vs_teacher'])} |")
        parts.append("FastBERT's exits under int8 (same branches and thresholds, re-measured):\n\n"
                     + "\n".join(ex) + "\n")
    if data["widths"]:
        wx = ["| width | fp32 accuracy | int8 accuracy | int8 vs teacher [95% CI] |", "|---|---|---|---|"]
        by = {(e["width"], e["runtime"]): e for e in data["widths"]}
        for w in sorted({e["width"] for e in data["widths"]}, reverse=True):
            wx.append(f"| {w:g} | {by[(w, 'fp32')]['accuracy']:.4f} | {by[(w, 'int8')]['accuracy']:.4f} | "
                      f"{points_ci(by[(w, 'int8')]['vs_teacher'])} |")
        parts.append("DynaBERT's widths under int8 (each width's int8 weights packed once, on first use):\n\n"
                     + "\n".join(wx) + "\n")
    parts.append(f"CPU: {cpu.get('model', '?')}; ISA: {', '.join(cpu.get('isa', [])) or '?'}; {env['threads']} "
                 f"thread(s), pinned to one core; torch {env['torch']}; {env['date']}; {env['minutes']} min.\n")
    return "\n".join(parts)


if __name__ == "__main__":
    main()
