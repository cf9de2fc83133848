"""Helpers shared by the benchmark scripts: run the CLI, record the environment, write docs sections.

Each benchmark writes ``docs/sections/<name>.md`` (its table and the command that reproduces it) and a
JSON file of everything it measured; ``docs/results.md`` is rebuilt from the sections in a fixed order.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SECTIONS = DOCS / "sections"
ORDER = ["finetune_mr", "fastbert_mr", "fastbert_chnsenti"]


def cli(*args: str, capture: bool = True) -> str:
    """Run ``python -m nimblebert ARGS``; stderr (progress) passes through; returns stdout."""
    cmd = [sys.executable, "-m", "nimblebert", *args]
    print("$ nimblebert " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): nimblebert {' '.join(args)}")
    return proc.stdout or ""


def cli_json(*args: str) -> dict:
    return json.loads(cli(*args).strip().splitlines()[-1])


def finished(folder: str | Path) -> bool:
    return (Path(folder) / "config.json").exists()


def environment() -> dict:
    import torch

    from nimblebert.bench.latency import environment as env

    return {**env(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def paired_bootstrap(a: list[int], b: list[int], reps: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (b − a) over paired 0/1 correctness and its bootstrap 95% interval."""
    n = len(a)
    diffs = [bi - ai for ai, bi in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return sum(diffs) / n, means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def write_section(name: str, markdown: str, data: dict) -> None:
    SECTIONS.mkdir(parents=True, exist_ok=True)
    (SECTIONS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    (DOCS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    rebuild_results()


def rebuild_results() -> None:
    parts = ["# nimblebert — measured results\n",
             "Every figure below was produced by the script named in its section, on the machine described "
             "there. Speed-ups are ratios against the plain transformers model measured in the same run.\n"]
    names = [n for n in ORDER if (SECTIONS / f"{n}.md").exists()]
    names += sorted(p.stem for p in SECTIONS.glob("*.md") if p.stem not in ORDER)
    for n in names:
        parts.append((SECTIONS / f"{n}.md").read_text())
    (DOCS / "results.md").write_text("\n".join(parts))
