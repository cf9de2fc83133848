"""Accuracy, FLOPs and latency of models on one dataset, against the plain transformers model.

Used by ``nimblebert evaluate --latency``, ``nimblebert bench`` and the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from ..data import make_loader
from ..model import NimbleModel
from .latency import compare_latency

HF_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def latency_batches(model: NimbleModel, encoded: Any, batch_size: int, limit: int) -> list[dict[str, torch.Tensor]]:
    """Up to ``limit`` examples as batches of ``batch_size``, bucketed by length (as evaluation runs)."""
    if limit < len(encoded):
        encoded = encoded.select(range(limit))
    loader = make_loader(encoded, model.tokenizer, batch_size, shuffle=False, bucket_by_length=batch_size > 1)
    return [{k: v for k, v in b.items() if k in HF_INPUTS} for b in loader]


def transformers_baselines(folder: str) -> dict[str, torch.nn.Module]:
    """The plain transformers model from ``folder`` with eager and with sdpa attention."""
    return {
        f"transformers-{impl}": AutoModelForSequenceClassification.from_pretrained(
            folder, attn_implementation=impl).eval()
        for impl in ("sdpa", "eager")
    }


def measure_latency(
    contenders: dict[str, Callable[[dict[str, torch.Tensor]], Any]],
    model: NimbleModel,
    encoded: Any,
    batch_sizes: tuple[int, ...] = (1, 32),
    examples: dict[int, int] | None = None,
    rounds: int = 3,
    blocks: dict[int, int] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Latency of each contender at each batch size on the same inputs, interleaved (``blocks``: {batch size:
    consecutive batches per contender's turn}, 1 where not given; see :func:`compare_latency`).

    Returns ``{f"batch{b}": {contender: {p50_ms, p90_ms, ms_per_sample, samples_per_s}}}``.
    """
    examples = examples or {1: 100, 32: 640}
    result = {}
    for bs in batch_sizes:
        batches = latency_batches(model, encoded, bs, examples.get(bs, 20 * bs))
        result[f"batch{bs}"] = compare_latency(contenders, batches, bs, rounds=rounds, block=(blocks or {}).get(bs, 1))
    return result


def nimble_contender(model: NimbleModel, knobs: dict[str, Any]) -> Callable[[dict[str, torch.Tensor]], Any]:
    from ..inference import run

    checked = model.check_knobs(knobs)
    return lambda b: run(model, b, checked)


def hf_contender(hf: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], Any]:
    return lambda b: hf(**b).logits


def add_speedups(latency: dict[str, dict[str, dict[str, float]]], baseline: str | None = None) -> None:
    """Add ``speedup`` (baseline ms per sample ÷ contender's) to every entry, in place.

    The baseline is the faster of the plain transformers contenders unless named.
    """
    for table in latency.values():
        names = [baseline] if baseline else [n for n in table if n.startswith("transformers-")]
        if not names:
            continue
        base = min(table[n]["ms_per_sample"] for n in names)
        for entry in table.values():
            entry["speedup"] = round(base / entry["ms_per_sample"], 3)


def full_model_flops(model: NimbleModel, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample FLOPs (B,) of the whole model (every layer at full width, every real token, the head),
    counted as :mod:`nimblebert.core.flops` counts what a plan ran."""
    from ..core.flops import head_flops, layer_flops

    enc = model.encoder
    lengths = attention_mask.sum(dim=1).double().cpu()
    per_layer = layer_flops(lengths, model.hf.config.hidden_size, enc.num_heads, enc.head_dim, enc.ffn_size)
    return enc.num_layers * per_layer + head_flops(enc)


@torch.inference_mode()
def evaluate_logits(
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], model: NimbleModel, loader: Any
) -> dict[str, float]:
    """The ``evaluate --json`` metrics of any logits function of the full model (a plain transformers
    model, an onnxruntime session) over ``loader``: accuracy and macro-F1 measured on its own outputs;
    layers and FLOPs those of the whole ``model`` it was made from."""
    from ..inference import Predictions, metrics

    parts: dict[str, list[torch.Tensor]] = {"logits": [], "labels": [], "flops": [], "index": []}
    for batch in loader:
        inputs = {k: v for k, v in batch.items() if k in HF_INPUTS}
        parts["logits"].append(torch.as_tensor(fn(inputs)).float().cpu())
        parts["flops"].append(full_model_flops(model, batch["attention_mask"]))
        parts["index"].append(batch["index"])
        if "labels" in batch:
            parts["labels"].append(batch["labels"])
    order = torch.argsort(torch.cat(parts["index"]))
    logits = torch.cat(parts["logits"])[order]
    labels = torch.cat(parts["labels"])[order] if parts["labels"] else None
    layers = torch.full((logits.size(0),), model.encoder.num_layers)
    return metrics(Predictions(logits, labels, layers, torch.cat(parts["flops"])[order]), model.num_labels)


def weights_size_mb(folder: str | os.PathLike | None, files: tuple[str, ...] = ()) -> float | None:
    """Size on disk of a model's weights in MB (10^6 bytes): ``files`` if given, else every
    ``*.safetensors`` in ``folder`` (shards and a method's extras included; the tokenizer is not)."""
    if folder is None:
        return None
    paths = [Path(folder) / f for f in files] if files else sorted(Path(folder).glob("*.safetensors"))
    sizes = [p.stat().st_size for p in paths if p.exists()]
    return round(sum(sizes) / 1e6, 2) if sizes else None
