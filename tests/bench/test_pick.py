"""Pareto frontier and ``nimblebert pick`` on hand-written results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nimblebert.bench.pareto import pareto_front, pick, plot_pareto, run_command
from nimblebert.cli.main import main
from nimblebert.errors import UserError

ROWS = [
    {"name": "teacher", "method": "finetune", "path": "runs/teacher", "knobs": {}, "accuracy": 0.80,
     "b1_ms": 10.0, "b32_ms_per_sample": 3.0, "b1_speedup": 1.0, "b32_speedup": 1.0},
    {"name": "fast speed=0.3", "method": "fastbert", "path": "runs/fast", "knobs": {"speed": 0.3, "patience": 0},
     "accuracy": 0.79, "b1_ms": 5.0, "b32_ms_per_sample": 2.0, "b1_speedup": 2.0, "b32_speedup": 1.5},
    {"name": "fast speed=0.6", "method": "fastbert", "path": "runs/fast", "knobs": {"speed": 0.6, "patience": 0},
     "accuracy": 0.74, "b1_ms": 3.0, "b32_ms_per_sample": 1.0, "b1_speedup": 3.3, "b32_speedup": 3.0},
    {"name": "slow and bad", "method": "fastbert", "path": "runs/x", "knobs": {}, "accuracy": 0.70,
     "b1_ms": 12.0, "b32_ms_per_sample": 4.0, "b1_speedup": 0.8, "b32_speedup": 0.75},
    {"name": "onnxruntime-int8", "method": "onnxruntime", "runtime": "onnxruntime", "path": "runs/teacher",
     "static": True, "accuracy": 0.78, "b1_ms": 4.0, "b32_ms_per_sample": 2.5, "b1_speedup": 2.5,
     "b32_speedup": 1.2},
    {"name": "transformers-eager", "method": "transformers", "runtime": "transformers", "path": "runs/teacher",
     "static": True, "accuracy": 0.80, "b1_ms": 11.0, "b32_ms_per_sample": 3.1},  # no speed-up: skipped in plots
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder


def names(indices: list[int]) -> list[str]:
    return [ROWS[i]["name"] for i in indices]


def test_pareto_front() -> None:
    assert names(pareto_front(ROWS, "b1_speedup")) == ["teacher", "fast speed=0.3", "onnxruntime-int8",
                                                      "fast speed=0.6"]
    assert names(pareto_front(ROWS, "b32_speedup")) == ["teacher", "fast speed=0.3", "fast speed=0.6"]
    tie = [{"accuracy": 0.8, "s": 1.0}, {"accuracy": 0.8, "s": 1.0}, {"accuracy": 0.9, "s": 0.5}]
    assert pareto_front(tie, "s") == [2, 0]  # exact duplicates: the first is kept


def test_pick_within_budgets() -> None:
    assert pick(ROWS, max_latency_ms=6)["name"] == "fast speed=0.3"  # most accurate within 6 ms
    assert pick(ROWS, max_latency_ms=4)["name"] == "onnxruntime-int8"
    assert pick(ROWS, min_accuracy=0.78)["name"] == "onnxruntime-int8"  # fastest at >= 0.78
    assert pick(ROWS, min_accuracy=0.78, batch=32)["name"] == "fast speed=0.3"  # per-sentence batch-32 times
    both = pick(ROWS, max_latency_ms=4.5, min_accuracy=0.7)
    assert both["name"] == "onnxruntime-int8" and both["latency_ms"] == 4.0
    assert pick(ROWS, max_latency_ms=10)["name"] == "teacher"  # ties on accuracy: the faster one
    with pytest.raises(UserError, match="closest is 'fast speed=0.6'"):
        pick(ROWS, max_latency_ms=1)
    with pytest.raises(UserError, match="closest is 'teacher'"):
        pick(ROWS, min_accuracy=0.9)
    with pytest.raises(UserError, match="give a budget"):
        pick(ROWS)


def test_run_commands() -> None:
    assert run_command(ROWS[1]) == "nimblebert predict runs/fast --speed 0.3"
    assert run_command(ROWS[0]) == "nimblebert predict runs/teacher"
    assert run_command(ROWS[4]).startswith("nimblebert export runs/teacher --format onnx --int8 --out ")
    assert run_command({**ROWS[4], "static": False}).count("--teacher-only") == 1
    assert run_command(ROWS[5]).startswith("nimblebert predict runs/teacher")


def test_pick_cli(results: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pick", str(results), "--max-latency-ms", "6"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["name"] == "fast speed=0.3" and best["command"] == "nimblebert predict runs/fast --speed 0.3"
    assert main(["pick", str(results / "results.jsonl"), "--min-accuracy", "0.78", "--batch", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "fast speed=0.3"

    assert main(["pick", str(results), "--max-latency-ms", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fast speed=0.6" in err[0] and "3 ms" in err[0]
    assert main(["pick", str(results.parent / "nothing"), "--max-latency-ms", "1"]) == 2
    assert "nimblebert bench" in capsys.readouterr().err
    assert main(["pick", str(results), "--min-accuracy", "85"]) == 2
    assert "fraction" in capsys.readouterr().err


def test_chart_from_rows(tmp_path: Path) -> None:
    plot_pareto(ROWS, tmp_path / "pareto.png", title="hand-written")
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
