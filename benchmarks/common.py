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
ORDER = ["finetune_mr", "report_mr", "fastbert_mr", "fastbert_chnsenti", "tinybert_mr", "dynabert_mr"]


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


def write_section(name: str, markdown: str, data: dict, headline: str | None = None) -> None:
    """Write one benchmark's section (and its short headline for the README), then rebuild the docs."""
    SECTIONS.mkdir(parents=True, exist_ok=True)
    (SECTIONS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    if headline is not None:
        (SECTIONS / f"{name}.headline.md").write_text(headline.rstrip() + "\n")
    (DOCS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    rebuild_results()


def rebuild_results() -> None:
    parts = ["# nimblebert — measured results\n",
             "Every figure below was produced by the script named in its section, on the machine described "
             "there. Speed-ups are ratios against the plain transformers model measured in the same run.\n"]
    stems = sorted(p.name[: -len(".md")] for p in SECTIONS.glob("*.md") if not p.name.endswith(".headline.md"))
    names = [n for n in ORDER if n in stems] + [n for n in stems if n not in ORDER]
    for n in names:
        parts.append((SECTIONS / f"{n}.md").read_text())
    (DOCS / "results.md").write_text("\n".join(parts))
    # The README shows each benchmark's headline between its markers.
    headlines = [(SECTIONS / f"{n}.headline.md").read_text() for n in names if (SECTIONS / f"{n}.headline.md").exists()]
    readme = ROOT / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- results:start -->\n", "<!-- results:end -->"
    if start in text and end in text and headlines:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + "\n".join(headlines) + rest[rest.index(end):])
