"""Benchmark rows -> JSONL, CSV, a Markdown table and the Pareto chart (``pareto.png``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write

COLUMNS = [
    ("name", "model"), ("method", "method"), ("knobs", "knobs"), ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"), ("mean_layers", "layers"), ("flops_per_sample", "MFLOPs/sample"),
    ("flops_speedup", "FLOPs ×"), ("b1_ms", "b1 p50 ms"), ("b1_p90_ms", "b1 p90 ms"), ("b1_speedup", "b1 ×"),
    ("b32_ms_per_sample", "b32 ms/sample"), ("b32_samples_per_s", "b32 samples/s"), ("b32_speedup", "b32 ×"),
    ("params_m", "params M"), ("size_mb", "size MB"), ("pareto", "frontier"),
]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key == "flops_per_sample":
        return f"{value / 1e6:.0f}" if value >= 1e8 else f"{value / 1e6:.3g}"
    if key == "knobs":
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
    if key == "pareto":
        return ", ".join(value) or "—"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("accuracy", "macro_f1") else f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def mark_frontier(rows: list[dict[str, Any]]) -> None:
    """Set ``row["pareto"]`` to the batch sizes ("b1", "b32") at which the row is on the accuracy /
    measured speed-up frontier, in place."""
    from .pareto import pareto_front

    for r in rows:
        r["pareto"] = []
    for tag, key in (("b1", "b1_speedup"), ("b32", "b32_speedup")):
        for i in pareto_front(rows, key):
            rows[i]["pareto"].append(tag)


def write_results(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], chart: bool = True) -> None:
    """``results.jsonl`` (every field), ``results.csv`` and ``results.md`` (the table's columns) and, with
    ``chart``, ``pareto.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    mark_frontier(rows)
    atomic_write(out / "results.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[k for k, _ in COLUMNS], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(r.get(k)) if k in ("knobs", "pareto") else r.get(k) for k, _ in COLUMNS})
    atomic_write(out / "results.csv", lambda p: p.write_text(buf.getvalue()))
    env = meta.get("environment", {})
    text = (f"Data: {meta.get('data')} ({meta.get('split')}, {meta.get('examples')} examples). "
            f"Latency: median of interleaved repeats; batch 1 over {meta.get('b1_examples')} sentences "
            f"({meta.get('b1_block', 1)} in a row per turn), "
            f"batch 32 over {meta.get('b32_examples')} (bucketed by length); × = speed-up over the faster "
            f"plain transformers model (sdpa/eager) of the first model, measured in the same run; onnxruntime "
            f"rows run that model exported to ONNX (fp32, and int8 by dynamic quantization), accuracy measured. "
            f"Size = weight files on disk; frontier = on the accuracy / speed-up Pareto frontier at that batch "
            f"size. torch {env.get('torch')}, {env.get('threads')} threads, {env.get('processor')}.\n\n")
    figure = ""
    if chart:
        from .pareto import plot_pareto

        plot_pareto(rows, out / "pareto.png", title=f"{meta.get('data')} ({meta.get('split')}): accuracy vs "
                                                   f"measured speed-up")
        figure = "\n![accuracy against measured speed-up](pareto.png)\n"
    atomic_write(out / "results.md", lambda p: p.write_text(text + markdown_table(rows) + figure))
