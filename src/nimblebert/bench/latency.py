"""Latency, measured honestly: warm-up first, many repeats, median and p90, threads recorded.

Several contenders are timed **interleaved** (round-robin over the same inputs), so that the drift of a
shared machine hits all of them alike; quote ratios between contenders of the same run, not absolute
times across runs (DESIGN: "Speed is measured, not assumed").
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

# The instruction-set extensions that decide float32 and int8 matrix-product speed (int8 needs VNNI or AMX to be
# several times faster than float32), as /proc/cpuinfo names them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """The CPU model and its relevant ISA flags (Linux /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def compare_latency(
    contenders: dict[str, Callable[[Any], Any]],
    batches: Sequence[Any],
    batch_size: int,
    warmup: int = 3,
    rounds: int = 3,
    block: int = 1,
) -> dict[str, dict[str, float]]:
    """Time each contender on every batch, interleaved, for ``rounds`` passes.

    The contenders take turns ``block`` consecutive batches at a time (1: batch by batch). A turn's first call
    finds the caches filled by the contender before it: at batch 1 a ~1 ms model timed right after a 20 ms one pays
    0.2–0.3 ms for it (benchmarks/ort_segments_mr.py measured it), which a server running that model alone never
    pays. Blocks of several batches time the steady state of each model while keeping the interleaving that lets a
    shared machine's drift hit every contender alike.

    Returns per contender: ``p50_ms`` / ``p90_ms`` per batch, ``ms_per_sample`` (median batch time ÷
    batch size) and ``samples_per_s``.
    """
    if block < 1:
        raise ValueError(f"block must be at least 1, not {block}")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch.inference_mode():
        for fn in contenders.values():  # warm-up: allocator, thread pool, lazy init
            for b in batches[:warmup]:
                fn(b)
        _sync()
        for _ in range(rounds):
            for start in range(0, len(batches), block):
                for name, fn in contenders.items():
                    for b in batches[start:start + block]:
                        t0 = time.perf_counter()
                        fn(b)
                        _sync()
                        times[name].append(time.perf_counter() - t0)
    result = {}
    for name, ts in times.items():
        p50 = statistics.median(ts) * 1e3
        result[name] = {
            "p50_ms": round(p50, 3),
            "p90_ms": round(percentile(ts, 0.9) * 1e3, 3),
            "ms_per_sample": round(p50 / batch_size, 4),
            "samples_per_s": round(batch_size * len(ts) / sum(ts), 2),
        }
    return result
