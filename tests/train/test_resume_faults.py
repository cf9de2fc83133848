"""Resume under faults: a tiny two-stage training (FastBERT: fine-tune, then self-distillation) is SIGKILLed
several times — at random moments and in the middle of checkpoint writes — and continued with ``--resume``
each time; its final weights must equal, bit for bit, those of a run that was never interrupted.

The test-only hook ``NIMBLEBERT_TEST_CHECKPOINT_PAUSE`` makes the trainer say on stderr when a checkpoint is
half written (its weights and optimizer files written, ``state.json`` not yet) and wait there, so that a kill
can land exactly in the window that a non-atomic checkpoint would get wrong.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import make_tokenizer, tiny_model, toy_rows

from nimblebert.cli.main import main
from nimblebert.io import load_tensors
from nimblebert.train.loop import CHECKPOINT_DIR, PAUSE_ENV, PAUSE_MARK


def _setup(root: Path) -> tuple[Path, Path]:
    import csv

    base = root / "base"
    tiny_model(layers=2).save_pretrained(base)  # dropout 0.1: the RNG state matters to the result
    make_tokenizer().save_pretrained(base)
    data = root / "toy"
    data.mkdir()
    for split, n, seed in (("train", 48, 1), ("validation", 16, 2)):
        with (data / f"{split}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(toy_rows(n, seed))
    return base, data


def _argv(base: Path, data: Path, out: Path) -> list[str]:
    # 6 steps per epoch × 3 epochs × 2 stages, a checkpoint after every step, validation every 4 steps.
    return ["train", "fastbert", "--model", str(base), "--data", str(data), "--out", str(out), "--epochs", "3",
            "--batch-size", "8", "--max-length", "24", "--lr", "1e-3", "--save-every", "1", "--eval-every", "4",
            "--no-progress", "--branch", "mlp"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = load_tensors(folder / "model.safetensors")
    if (folder / "nimblebert.safetensors").exists():
        out.update({f"extras.{k}": v for k, v in load_tensors(folder / "nimblebert.safetensors").items()})
    return out


def _killed_run(argv: list[str], markers: int, delay: float | None, env: dict[str, str]) -> str:
    """Start the CLI; after ``markers`` half-written checkpoints, SIGKILL it at once (``delay`` None: mid-write)
    or ``delay`` seconds later (wherever it then is). Returns how it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "nimblebert", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(PAUSE_MARK):
            seen += 1
            if seen == markers:
                if delay:
                    time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed mid-write" if delay is None else f"killed {delay:.2f} s after a write"
    proc.wait()
    return f"exited {proc.returncode}"


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    base, data = _setup(tmp_path)
    reference = tmp_path / "reference"
    assert main(_argv(base, data, reference)) == 0

    faulted = tmp_path / "faulted"
    env = {**os.environ, PAUSE_ENV: "0.05", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"),
                                                     os.environ.get("PYTHONPATH")) if p)}
    rng = random.Random(20)
    history = []
    for i in range(4):
        resume = ["--resume"] if i else []
        delay = None if i % 2 == 0 else rng.uniform(0.0, 0.2)  # kills 1 and 3 mid-write, 2 and 4 anywhere
        history.append(_killed_run([*_argv(base, data, faulted), *resume], rng.randint(2, 4), delay, env))
        assert history[-1].startswith("killed"), history
        assert not (faulted / "config.json").exists(), "a killed run left a folder that looks finished"
        assert (faulted / CHECKPOINT_DIR / "state.json").exists()
    state = json.loads((faulted / CHECKPOINT_DIR / "state.json").read_text())
    assert state["global_step"] > 0, state
    assert main([*_argv(base, data, faulted), "--resume"]) == 0, history
    assert not (faulted / CHECKPOINT_DIR).exists()

    want, got = _weights(reference), _weights(faulted)
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f"{len(different)} tensors differ after {history}: {different[:3]}"
