"""benchmarks/serve_mr.py's bookkeeping on hand-made client results: goodput, 429 rate, accuracy and agreement
over the answered requests, and the section it renders. Nothing is served or timed."""

from __future__ import annotations

import pytest
from conftest import benchmarks_on_path


@pytest.fixture(scope="module")
def serve_mr():
    with benchmarks_on_path():
        import serve_mr

        yield serve_mr


def test_summary_counts_goodput_sheds_and_accuracy_of_answers_only(serve_mr) -> None:
    labels, gold, full = ["negative", "positive"], [0, 1, 1, 0], [0, 1, 0, 0]
    results = [
        {"i": 0, "status": 200, "latency": 0.05, "label": "negative", "rung": "0", "knobs": "speed=0.5",
         "server_s": 0.03},
        {"i": 1, "status": 200, "latency": 0.20, "label": "negative", "rung": "2", "knobs": "speed=0.9"},
        {"i": 2, "status": 429, "latency": 0.001, "label": None, "rung": None, "knobs": None},
        {"i": 3, "status": 0, "latency": 9.0, "label": None, "rung": None, "knobs": None},
    ]
    row = serve_mr.summarize(results, rate=4.0, seconds=2.0, target_s=0.1, labels=labels, gold=gold, full=full)
    assert row["answered"] == 2 and row["sent"] == 4 and row["failed"] == 1
    assert row["goodput_per_s"] == 0.5  # one answer within 100 ms, over 2 s
    assert row["rate_429"] == 0.25 and row["accuracy"] == 0.5 and row["agreement"] == 0.5
    assert row["mean_rung"] == 1.0 and row["knobs_seen"] == ["speed=0.5", "speed=0.9"]
    assert row["p50_ms"] == pytest.approx(50) and row["p99_ms"] == pytest.approx(200)
    empty = serve_mr.summarize([], 1.0, 1.0, 0.1, labels, gold, full)
    assert empty["p99_ms"] is None and empty["accuracy"] is None and empty["rate_429"] == 0.0

    result = {"data": "mr", "command": "python benchmarks/serve_mr.py", "examples": 4, "split": "test",
              "step_seconds": 2.0, "target_ms": 100.0, "saturation_per_s": 4.0, "minutes": 1.0,
              "environment": {"cpu": "AMD EPYC", "isa": "AVX-512", "server": "pinned", "client": "here"},
              "ladder": {"rungs": [{"knobs": {"speed": 0.5, "patience": 0}, "accuracy": 0.81, "flops_speedup": 1.7}]},
              "runs": {"adaptive": [{"load": 1.5, **row}], "baseline": [{"load": 1.5, **empty}]}}
    md = serve_mr.markdown(result)
    assert "| adaptive | 1.5 | 4.0 | 50.0 | 200.0 | 30.0 | 0.5 | 25.0% | 0.5000 | 0.5000 | 1.00 |" in md
    assert "| baseline | 1.5 | 1.0 | – | – |" in md and "AMD EPYC (AVX-512)" in md
    assert "adaptive p99 200 ms" in serve_mr.headline_of(result)
