"""A latency table of NAS-BERT's ops, measured on the machine at hand (Xu et al. 2021, §3.4: "the latency of each
op measured in advance on the target device"), and the latency of an architecture predicted from it.

Each op of the space (every kind at every hidden size, and every hidden transfer the search can need) is timed
on random inputs at each (batch size, sequence length) of a grid: warm-up, then the median of ``repeats`` calls,
on the threads torch has now. The ops are called in turn (round robin), not each many times in a row: in a
network every op finds the caches full of the previous op's weights, and at batch 1 — where an op's time is mostly
reading its weights — ops timed alone on hot caches predicted random networks 38-47 % too fast (mean |error| at
lengths 27 and 64), round robin 20-24 % (``PROTOCOL`` 1 and 2; ``benchmarks/nasbert_latency_protocol.py``,
docs/nasbert/latency_protocol.json). What remains is mostly the core loop's own per-op work, which the sum omits.

The fixed part of a forward pass (embeddings, the loop's set-up, the
classification head) is timed as an empty chain of the model itself. An architecture's predicted latency is that
fixed part plus the sum of its ops' latencies, interpolated linearly in the sequence length. Summing ignores what
happens between ops (on a CPU a small share; on a GPU kernel launches would break it — METHODS.md §6 pitfalls),
which is why search reports predicted vs measured latency of the chosen model.

The table is cached as JSON with the CPU it was measured on (model name, ISA flags, threads, torch); a table
from another CPU or thread count is measured anew.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...core.ops import OpSpec, build_op
from ...core.plan import Plan
from ...io import write_json
from .space import Arch, BlockArch, Space, arch_specs

if TYPE_CHECKING:
    from ...model import NimbleModel

PROTOCOL = 2  # how the table is measured (see the module docstring); a table of another protocol is measured anew
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_identity() -> dict[str, Any]:
    """What a latency table is valid for: the CPU model and ISA (from /proc/cpuinfo), threads, torch."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine()}


def op_name(spec: OpSpec) -> str:
    return f"{spec.kind}_{spec.hidden}_{spec.width}"


def space_ops(space: Space) -> list[OpSpec]:
    """Every op the space can put in a searched network, transfers included (teacher ↔ h, h → h' and, for block
    transfers, h → h and teacher → teacher)."""
    from .space import LAYER_KINDS

    d = space.teacher_hidden
    specs = [space.spec(k, h) for h in space.hidden_sizes for k in LAYER_KINDS]
    specs += [OpSpec("linear", d, h) for h in space.hidden_sizes] + [OpSpec("linear", h, d) for h in space.hidden_sizes]
    specs += [OpSpec("linear", a, b) for a in space.hidden_sizes for b in space.hidden_sizes]
    return specs + [OpSpec("linear", d, d)]


def _median_ms(fn: Any, repeats: int, warmup: int = 2) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure_table(model: NimbleModel, space: Space, lengths: list[int], batches: list[int], repeats: int = 20,
                  progress: bool = True) -> dict[str, Any]:
    """Time every op of ``space`` and the model's fixed part at every (batch, length)."""
    torch.manual_seed(0)
    entries: dict[str, dict[str, list[float]]] = {}
    fixed: dict[str, list[float]] = {}
    specs = space_ops(space)
    started = time.time()
    for b in batches:
        key = f"b{b}"
        entries[key] = {}
        fixed[key] = []
        for t in lengths:
            ids = torch.randint(5, model.hf.config.vocab_size, (b, t))
            fixed[key].append(_median_ms(lambda ids=ids: model.encoder(ids, plan=Plan(ops=())), repeats))
        ops = [build_op(spec, 0.0).eval() for spec in specs]
        rows: list[list[float]] = [[] for _ in specs]
        for t in lengths:
            inputs = [(torch.randn(b, t, spec.hidden), torch.ones(b, t, dtype=torch.long)) for spec in specs]
            times: list[list[float]] = [[] for _ in specs]
            with torch.inference_mode():
                for r in range(2 + repeats):  # round robin: each op after a different one, as in a chain
                    for i, (op, (x, mask)) in enumerate(zip(ops, inputs, strict=True)):
                        start = time.perf_counter()
                        op(x, mask, None)
                        if r >= 2:
                            times[i].append((time.perf_counter() - start) * 1000.0)
            for i in range(len(specs)):
                rows[i].append(statistics.median(times[i]))
        for spec, row in zip(specs, rows, strict=True):
            entries[key][op_name(spec)] = row
        if progress:
            sys.stderr.write(f"nasbert: latency table, batch {b}: {len(specs)} ops × {len(lengths)} lengths "
                             f"({time.time() - started:.0f} s so far)\n")
    return {"cpu": cpu_identity(), "protocol": PROTOCOL, "lengths": lengths, "batches": batches, "repeats": repeats,
            "space": {"teacher_hidden": space.teacher_hidden, "sizes": list(space.hidden_sizes),
                      "head_dim": space.head_dim}, "fixed_ms": fixed, "ops_ms": entries,
            "measure_seconds": round(time.time() - started, 1)}


def table_matches(table: dict[str, Any], space: Space, lengths: list[int], batches: list[int]) -> bool:
    """Whether a cached table is for this CPU, these threads, this space and covers the grid asked for."""
    mine, theirs = cpu_identity(), table.get("cpu", {})
    same_cpu = all(mine[k] == theirs.get(k) for k in ("model", "isa", "threads", "machine"))
    s = table.get("space", {})
    same_space = (s.get("teacher_hidden") == space.teacher_hidden and s.get("sizes") == list(space.hidden_sizes)
                  and s.get("head_dim") == space.head_dim)
    names = {op_name(s) for s in space_ops(space)}
    has_ops = all(names <= set(table.get("ops_ms", {}).get(f"b{b}", {})) for b in batches)  # older tables lack some
    return table.get("protocol") == PROTOCOL and same_cpu and same_space and has_ops \
        and set(lengths) <= set(table.get("lengths", [])) and set(batches) <= set(table.get("batches", []))


def load_or_measure(path: Path, model: NimbleModel, space: Space, lengths: list[int], batches: list[int],
                    repeats: int, progress: bool = True) -> dict[str, Any]:
    """The cached table at ``path`` when it is valid here, else a new one measured and written there."""
    if path.is_file():
        try:
            table = json.loads(path.read_text())
        except ValueError:
            table = {}
        if table_matches(table, space, lengths, batches):
            return table
        if progress:
            sys.stderr.write(f"nasbert: {path} was measured on another CPU, thread count or space; measuring anew\n")
    table = measure_table(model, space, lengths, batches, repeats, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table)
    return table


def default_table_path(space: Space) -> Path:
    """$NIMBLEBERT_HOME/cache/nasbert/latency-<cpu>-t<threads>-<teacher size>.json: one per machine and space."""
    from ...data import data_home

    cpu = cpu_identity()
    slug = "".join(c if c.isalnum() else "-" for c in cpu["model"]).strip("-")[:40]
    sizes = "-".join(map(str, space.hidden_sizes))
    name = f"latency-{slug}-t{cpu['threads']}-d{space.teacher_hidden}-{sizes}.json"
    return Path(data_home()) / "cache" / "nasbert" / name


def interpolate(values: list[float], lengths: list[int], t: float) -> float:
    """Linear in the sequence length between grid points (extended linearly beyond them)."""
    if len(lengths) == 1:
        return values[0] * t / lengths[0]
    i = 0
    while i < len(lengths) - 2 and t > lengths[i + 1]:
        i += 1
    t0, t1 = lengths[i], lengths[i + 1]
    return values[i] + (values[i + 1] - values[i]) * (t - t0) / (t1 - t0)


def op_latency(table: dict[str, Any], spec: OpSpec, batch: int, length: float) -> float:
    return interpolate(table["ops_ms"][f"b{batch}"][op_name(spec)], table["lengths"], length)


def fixed_latency(table: dict[str, Any], batch: int, length: float) -> float:
    return interpolate(table["fixed_ms"][f"b{batch}"], table["lengths"], length)


def predict_latency(table: dict[str, Any], space: Space, arch: Arch, batch: int, length: float) -> float:
    """Predicted ms of a searched network's forward pass: the fixed part plus the sum of its ops."""
    return fixed_latency(table, batch, length) + sum(op_latency(table, s, batch, length)
                                                     for s in arch_specs(arch, space))


def block_latency(table: dict[str, Any], space: Space, arch: BlockArch, batch: int, length: float) -> float:
    """Predicted ms of one block architecture as the bins' latency caps see it (:func:`.modules.assign_bins`): its
    ops plus the transfer into its size from the teacher's (the one a block with ops always pays in a network with
    block transfers); an identity block costs nothing (its transfers fold into the next one)."""
    hidden, kinds = arch
    if not kinds:
        return 0.0
    specs = [OpSpec("linear", space.teacher_hidden, hidden), *(space.spec(k, hidden) for k in kinds)]
    return sum(op_latency(table, s, batch, length) for s in specs)


def measure_model(model: NimbleModel, batch: int, length: int, repeats: int = 30) -> float:
    """Measured median ms of ``model.infer`` on random ids of (batch, length), no padding."""
    torch.manual_seed(0)
    ids = torch.randint(5, model.hf.config.vocab_size, (batch, length))
    was = model.training
    model.eval()
    ms = _median_ms(lambda: model.infer({"input_ids": ids, "attention_mask": torch.ones_like(ids)}), repeats, 3)
    model.train(was)
    return ms


__all__ = ["block_latency", "cpu_identity", "default_table_path", "load_or_measure", "measure_model", "predict_latency"]
