"""compare_latency's schedule: every contender sees every batch in every round, interleaved batch by batch or in
blocks of consecutive batches (a turn's first call pays for the caches the contender before it filled)."""

from __future__ import annotations

import pytest

from nimblebert.bench.latency import compare_latency


def schedule(block: int, batches: int = 5, rounds: int = 2) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    contenders = {name: (lambda b, name=name: calls.append((name, b))) for name in ("a", "b")}
    result = compare_latency(contenders, list(range(batches)), batch_size=1, warmup=1, rounds=rounds, block=block)
    assert set(result) == {"a", "b"} and all(r["p50_ms"] >= 0 for r in result.values())
    return calls[2:]  # after the warm-up call of each


def test_batch_by_batch_alternates_the_contenders() -> None:
    calls = schedule(block=1)
    assert calls[:6] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert len(calls) == 2 * 5 * 2


def test_blocks_run_consecutive_batches_per_turn_and_time_each_call() -> None:
    calls = schedule(block=3)
    # round 1: a runs batches 0-2, then b runs them; then the last partial block 3-4; round 2 the same
    first_round = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 3), ("b", 4)]
    assert calls == first_round * 2
    assert sorted(calls) == sorted(schedule(block=1))  # the same calls, only their order changes


def test_block_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block"):
        compare_latency({"a": lambda b: None}, [0], batch_size=1, block=0)
