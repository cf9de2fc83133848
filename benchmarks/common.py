"""Helpers shared by the benchmark scripts: run the CLI, record the environment, write docs sections.

Each benchmark writes ``docs/sections/<name>.md`` (its table and the command that reproduces it) and a
JSON file of everything it measured; ``docs/results.md`` is rebuilt from the sections in a fixed order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("nimblebert") is None:  # not installed: run from the source tree (also for the CLI)
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
if not sys.stderr.isatty():  # a log file or CI: no per-load progress bars from transformers (read at its import)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
DOCS = ROOT / "docs"
SECTIONS = DOCS / "sections"
# The report first, then what explains its speed (kernels, segments, overhead, the FLOPs gap, start-up, serving), then
# the methods one by one.
ORDER = ["efficiency_mr", "efficiency", "int8_mr", "ort_segments_mr", "overhead", "flops_gap", "startup", "serve_mr",
         "finetune_mr", "compose_mr", "report_mr", "fastbert_mr", "fastbert_chnsenti", "fastbert_uncertain",
         "tinybert_mr", "tinybert_small", "dynabert_mr", "dynabert_mr_last", "trbert_mr_long", "trbert_knobs", "ssa",
         "nasbert_mr", "nasbert"]
# Methods whose many runs (recipe variants, seeds) would crowd the README: it shows only this run's headline for
# the method (the first word of a section's name); docs/results.md keeps every run. DynaBERT: the recipe that met
# issue 5's targets.
README_FEATURED = {"dynabert": "dynabert_mr_final5"}
# The efficiency report (benchmarks/report.py) is the one source of truth: once published, the README's results block
# shows its table alone (per dataset), not one line of prose per benchmark; docs/results.md keeps every section.
README_ONLY = "efficiency"


def command_line() -> str:
    """The command that reproduces this run as the section should quote it: the script and the options it
    was given, less what :func:`quoted_command` leaves out."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return quoted_command(shlex.join(["python", str(shown), *sys.argv[1:]]))  # '' stays visible


def quoted_command(command: str) -> str:
    """``command`` less ``--reuse`` (which only skips finished training, not what was measured) and ``--docs DIR``
    (where the files were written: a path on the machine that ran it, which no reader has). Renderers apply it to
    the commands stored in older JSON too."""
    args, skip = [], False
    for a in shlex.split(command):
        if skip:
            skip = False
        elif a == "--docs":
            skip = True  # its value follows
        elif a != "--reuse" and not a.startswith("--docs="):
            args.append(a)
    return shlex.join(args)


DOCS_HELP = "write the files here instead of docs/ (no docs/results.md or README update)"


def add_options(ap: Any, *, reuse: str | None = None, threads: str | None = None, threads_default: int | None = None,
                bootstrap: bool = True, timing: dict[int, int] | None = None, rounds: int = 3) -> None:
    """The options every benchmark shares, worded once: ``--docs``, ``--threads``, ``--reuse`` (with ``reuse``, its
    help), ``--bootstrap`` and, with ``timing`` ({batch size: examples timed}), ``--b1-examples``,
    ``--b<N>-examples`` and ``--rounds``."""
    ap.add_argument("--docs", help=DOCS_HELP)
    if threads is None:
        threads = (f"CPU threads (default {threads_default})" if threads_default is not None
                   else "CPU threads of the training commands and of the timing (default: torch's)")
    ap.add_argument("--threads", type=int, default=threads_default, help=threads)
    if reuse is not None:
        ap.add_argument("--reuse", action="store_true", help=reuse)
    if bootstrap:
        ap.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples of every paired interval")
    for batch, examples in (timing or {}).items():
        ap.add_argument(f"--b{batch}-examples", type=int, default=examples,
                        help=f"sentences timed at batch {batch}")
    if timing:
        ap.add_argument("--rounds", type=int, default=rounds, help="timed passes; the median is reported")


def docs_folder(args: Any) -> Path | None:
    """``--docs`` taken from the current folder, or None (the repository's docs/, results page and README): what
    :func:`publish` takes."""
    return Path(os.path.abspath(args.docs)) if args.docs else None


def task_paths(args: Any) -> tuple[str, str, str]:
    """``(data, tag, teacher)`` of a method benchmark: ``--data`` (a built-in name, or a folder taken from the
    current folder), its short tag, and ``--teacher`` or ``runs/teacher-<tag>`` (default paths live under the
    repository, which the scripts chdir to)."""
    data = os.path.abspath(args.data) if Path(args.data).exists() else args.data
    tag = Path(data).name if Path(data).exists() else data
    return data, tag, os.path.abspath(args.teacher) if args.teacher else f"runs/teacher-{tag}"


def cli(*args: str, capture: bool = True) -> str:
    """Run ``python -m nimblebert ARGS``; stderr (progress) passes through; returns stdout."""
    cmd = [sys.executable, "-m", "nimblebert", *args]
    print("$ nimblebert " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): nimblebert {' '.join(args)}")
    return proc.stdout or ""


def use_threads(threads: int | None) -> None:
    """Run this process's torch and every ``nimblebert`` command it starts (training, export, bench) on
    ``threads`` CPU threads. ``torch.set_num_threads`` alone does not reach the subprocesses of :func:`cli`; the
    environment variable does. Two runs sharing the 2-core machine at 1 thread each do not make each other's
    OpenMP threads wait (at 2 threads each, a measured 4× slower step)."""
    if not threads:
        return
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def cli_json(*args: str) -> dict:
    return json.loads(cli(*args).strip().splitlines()[-1])


def points_ci(v: dict[str, float] | None) -> str:
    """A paired difference with its bootstrap 95% interval, in points (``{diff, low, high}`` as fractions), or —."""
    return "—" if v is None else f"{100 * v['diff']:+.2f} [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}]"


def in_repo(path: str) -> str:
    """``path`` as the scripts take it on the command line: relative to the repository root (where the commands in
    the sections run from), an absolute path as it is, an empty one (an option left out) empty."""
    return str(ROOT / path) if path else path


def finished(folder: str | Path) -> bool:
    return (Path(folder) / "config.json").exists()


def train_flags(out: str | Path) -> list[str]:
    """The flag a grid's ``nimblebert train`` command gets for ``out``: ``--resume`` where a killed run left its
    checkpoint (a grid at 128 tokens trains for hours per seed: a killed report continues where it stopped, to the
    same weights), else ``--overwrite`` (a folder left by an older, finished run is trained again)."""
    from nimblebert.train.loop import has_checkpoint

    return ["--resume"] if has_checkpoint(out) else ["--overwrite"]


def mean_ms(entry: dict[str, float], batch: int) -> float:
    """Mean milliseconds per sentence of a latency entry: at batch 1 from its throughput (the mean over the calls),
    at larger batches the median batch time per sentence."""
    return 1000.0 / entry["samples_per_s"] if batch == 1 else entry["ms_per_sample"]


def plain_mean_ms(batch1: dict[str, dict[str, float]]) -> float:
    """The faster plain transformers contender's mean batch-1 time (ms; from its throughput) in a latency table."""
    return min(mean_ms(v, 1) for k, v in batch1.items() if k.startswith("transformers-"))


def cpu() -> dict[str, str]:
    """The CPU's model name and the instruction sets int8, bfloat16 and fp32 speed depend on (from /proc/cpuinfo)."""
    from nimblebert.bench.latency import cpu_info

    info = cpu_info()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {"cpu_model": info["model"], "isa": ", ".join(f for f in wanted if f in info["isa"]) or "no AVX2"}


def env_line(env: dict) -> str:
    """The one sentence every section ends with: the CPU (model and the ISA int8 speed depends on), threads, torch,
    date. The CPU is read here when ``env`` (e.g. from ``evaluate --json``) does not name it."""
    cpu_info = {**cpu(), **{k: env[k] for k in ("cpu_model", "isa") if k in env}}
    date = env.get("date") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Environment: {cpu_info['cpu_model']} ({cpu_info['isa']}), {env.get('threads')} thread(s), "
            f"{env.get('cpu_count')} CPUs, torch {env.get('torch')}, {date}.")


def environment() -> dict:
    import torch

    from nimblebert.bench.latency import environment as env

    return {**env(), **cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def paired_bootstrap(teacher: np.ndarray, other: np.ndarray, reps: int = 10000, seed: int = 0) -> dict[str, float]:
    """Accuracy difference (other − teacher) over paired 0/1 correctness on the same examples, with its
    bootstrap 95% interval. The same resamples (same seed) serve every setting, so intervals are comparable."""
    diffs = other.astype(np.float64) - teacher.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, len(diffs), size=(reps, len(diffs)))
    means = diffs[idx].mean(axis=1)
    return {"diff": float(diffs.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5))}


@dataclass
class Baseline:
    """The teacher (or full model) on a benchmark's evaluation split: what every setting is paired against.

    ``split`` is the task's test split, or its validation split when it has none; ``loader`` runs the split in
    length-bucketed batches, ``predictions`` and ``metrics`` are the teacher's on it."""

    teacher: Any  # NimbleModel
    task: Any  # Task
    split: str
    encoded: Any  # the encoded split (datasets.Dataset)
    loader: Any
    predictions: Any  # inference.Predictions
    metrics: dict[str, Any]

    @property
    def correct(self) -> np.ndarray:
        return (self.predictions.predicted == self.predictions.labels).numpy()

    def versus(self, preds: Any, reps: int = 10000) -> dict[str, float]:
        """``preds``' accuracy difference from the teacher on the same examples, with its bootstrap interval."""
        return paired_bootstrap(self.correct, (preds.predicted == preds.labels).numpy(), reps)

    def agreement(self, preds: Any) -> float:
        """Share of examples on which ``preds`` predicts the teacher's label."""
        return float((preds.predicted == self.predictions.predicted).float().mean())


def teacher_baseline(teacher_dir: str, data: str, max_length: int, batch_size: int = 64) -> Baseline:
    """Load ``teacher_dir``, encode the evaluation split of ``data`` with its tokenizer and label names (the
    students share both), and predict it."""
    from nimblebert import load
    from nimblebert.data import encode, load_task, make_loader
    from nimblebert.inference import metrics, predict_loader

    teacher = load(teacher_dir)
    task = load_task(data, label_names=teacher.label_names)
    split = "test" if task.test is not None else "validation"
    encoded = encode(getattr(task, split), teacher.tokenizer, max_length, task.has_pair)
    loader = make_loader(encoded, teacher.tokenizer, batch_size, shuffle=False, bucket_by_length=True)
    base = predict_loader(teacher, loader)
    return Baseline(teacher, task, split, encoded, loader, base, metrics(base, teacher.num_labels))


def publish(name: str, markdown: str, data: dict, headline: str, docs: Path | None = None) -> None:
    """Write a benchmark's results: into docs/ (section, README headline), or only into ``docs`` when given
    (a demo or a trial run must not overwrite the published figures)."""
    if docs is None:
        write_section(name, markdown, data, headline)
        return
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (docs / f"{name}.md").write_text(markdown)


def portable(markdown: str) -> str:
    """Paths under this checkout written as a reader's checkout has them: ``/work/main/runs/fast`` → ``runs/fast``
    (the commands ran from the repository root, where the relative path is the same folder)."""
    return markdown.replace(f"{ROOT}/", "")


def write_section(name: str, markdown: str, data: dict, headline: str | None = None) -> None:
    """Write one benchmark's section (and its short headline for the README), then rebuild the docs. A section of
    that name in the history goes: the new run replaces it."""
    SECTIONS.mkdir(parents=True, exist_ok=True)
    for old in (HISTORY / f"{name}.md", HISTORY / f"{name}.headline.md"):
        old.unlink(missing_ok=True)
    (SECTIONS / f"{name}.md").write_text(portable(markdown).rstrip() + "\n")
    if headline is not None:
        (SECTIONS / f"{name}.headline.md").write_text(portable(headline).rstrip() + "\n")
    (DOCS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    rebuild_results()


def section_command(name: str, docs: Path | None = None) -> str | None:
    """The command a published section quotes (its first `python benchmarks/...` in backticks), or None."""
    section = (docs or DOCS) / "sections" / f"{name}.md"
    found = re.search(r"`(python benchmarks/[^`]*)`", section.read_text()) if section.exists() else None
    return found.group(1) if found else None


def _section_rank(name: str) -> tuple[int, bool, str]:
    """Where a section goes in docs/results.md: in :data:`ORDER`, a variant run (``dynabert_mr_lr5e5``) right
    after the entry its name extends (``dynabert_mr``), other names at the end, alphabetically."""
    for i in sorted(range(len(ORDER)), key=lambda j: -len(ORDER[j])):  # the longest matching entry
        if name == ORDER[i] or name.startswith(ORDER[i] + "_"):
            return i, name != ORDER[i], name
    return len(ORDER), True, name


def readme_sections(names: list[str]) -> list[str]:
    """The sections whose headlines the README shows: the efficiency report's alone once it is published
    (:data:`README_ONLY`); before that all of them, except that a method in :data:`README_FEATURED` shows only its
    featured run (when that run has been published)."""
    only = [n for n in names if n.split("_")[0] == README_ONLY]
    if only:
        return only

    def shown(name: str) -> bool:
        featured = README_FEATURED.get(name.split("_")[0])
        return featured is None or featured not in names or name == featured
    return [n for n in names if shown(n)]


HISTORY = SECTIONS / "history"  # sections moved out of the results: earlier runs, kept for the record
HISTORY_INTRO = ("# nimblebert — earlier runs\n",
                 "Runs kept for the record, not the current figures (those are in [results.md](results.md)): recipe "
                 "explorations and reports measured with models or teachers that later runs replaced. Each section "
                 "still names the script and the machine that produced it.\n",
                 "The `chnsenti` section here was measured with a teacher in `runs/teacher-chnsenti` since replaced, "
                 "stopped while its validation accuracy was still rising: 1 epoch at 64 tokens (0.6866 on test). "
                 "Today's teacher there, which every current `chnsenti` figure uses, is the 10-epoch fine-tune at 128 "
                 "tokens that keeps its best epoch on validation (0.7431 on test; 2 epochs gave 0.7235, 5 gave "
                 "0.7477).\n")


def teacher_note() -> str:
    """The history's note on the teacher: sections there quoting another accuracy for `runs/teacher-mr` than the
    current one (read from docs/finetune_mr.json, which trained it) were measured with an earlier teacher."""
    try:
        ft = json.loads((DOCS / "finetune_mr.json").read_text())
        test, val = ft["test"], ft["validation"]
    except (OSError, KeyError, ValueError):
        return ""
    return (f"A section here that quotes another accuracy for `{test['model']}` than today's {test['accuracy']:.4f} "
            f"(test) / {val['accuracy']:.4f} (validation) was measured with an earlier teacher in that folder, since "
            "replaced: now one teacher per dataset, trained once, serves every benchmark.\n")


def _section_names(folder: Path) -> list[str]:
    stems = [p.name[: -len(".md")] for p in folder.glob("*.md") if not p.name.endswith(".headline.md")]
    return sorted(stems, key=_section_rank)


def rebuild_results() -> None:
    parts = ["# nimblebert — measured results\n",
             "Every figure below was produced by the script named in its section, on the machine described "
             "there. Speed-ups are ratios against the plain transformers model measured in the same run. Earlier "
             "runs are in [history.md](history.md).\n"]
    names = _section_names(SECTIONS)
    for n in names:
        parts.append((SECTIONS / f"{n}.md").read_text())
    (DOCS / "results.md").write_text(portable("\n".join(parts)))
    old = _section_names(HISTORY) if HISTORY.is_dir() else []
    if old:
        sections = [(HISTORY / f"{n}.md").read_text() for n in old]
        (DOCS / "history.md").write_text(portable("\n".join([*HISTORY_INTRO, teacher_note(), *sections])))
    # The README shows each benchmark's headline between its markers.
    headlines = [(SECTIONS / f"{n}.headline.md").read_text() for n in readme_sections(names)
                 if (SECTIONS / f"{n}.headline.md").exists()]
    readme = ROOT / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- results:start -->\n", "<!-- results:end -->"
    if start in text and end in text and headlines:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + portable("\n".join(headlines)) + rest[rest.index(end):])
