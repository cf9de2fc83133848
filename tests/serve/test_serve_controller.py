"""The knob controller against a deterministic fake model in simulated time.

The fake model: one model thread, batches of whatever is queued (up to a token budget), each batch taking
``OVERHEAD + padded tokens × PER_TOKEN × COST[rung]`` seconds. Arrivals are Poisson (seeded), offered as a
step in load; the controller ticks between batches and every 50 ms while idle, as the real model thread does.
"""

from __future__ import annotations

import random
from collections import deque

from nimblebert.serve.controller import Controller, ControllerConfig, percentile

COST = [1.0, 0.75, 0.55, 0.4, 0.3]  # relative cost per token of each rung, most accurate first
PER_TOKEN = 0.0005  # seconds per padded token at rung 0
OVERHEAD = 0.002  # seconds per batch
TOKENS = 20  # padded tokens per request
MAX_BATCH_TOKENS = 2048
TARGET = 0.1  # p99 target, seconds


def arrivals(phases: list[tuple[float, float]], seed: int = 0) -> list[float]:
    """Poisson arrival times for consecutive (duration s, rate /s) phases."""
    rng, out, start = random.Random(seed), [], 0.0
    for duration, rate in phases:
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= start + duration:
                break
            out.append(t)
        start += duration
    return out


def simulate(ctrl: Controller, times: list[float], end: float) -> dict:
    """Run the fake server; returns per-window rungs, served (finish, latency, rung) and the shed count."""
    queue: deque[float] = deque()
    now, i, shed = 0.0, 0, 0
    served: list[tuple[float, float, int]] = []
    rungs: list[int] = []  # rung at every controller tick that closed a window

    def tick() -> None:
        before = ctrl.window_start
        ctrl.tick(now, len(queue) * TOKENS)
        if ctrl.window_start != before:
            rungs.append(ctrl.index)

    while now < end:
        while i < len(times) and times[i] <= now:
            # An arrival during the last batch saw the model thread busy until now (the batch's end).
            if ctrl.admit(len(queue) * TOKENS, TOKENS, busy_s=now - times[i]):
                queue.append(times[i])
            else:
                shed += 1
            i += 1
        tick()
        if not queue:  # idle: wait for the next arrival, ticking every 50 ms
            now = min(times[i] if i < len(times) else end, now + 0.05)
            continue
        batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH_TOKENS // TOKENS))]
        rung = ctrl.index
        seconds = OVERHEAD + len(batch) * TOKENS * PER_TOKEN * COST[rung]
        now += seconds
        ctrl.observe_batch(rung, len(batch) * TOKENS, seconds)
        for arrival in batch:
            ctrl.observe_request(now - arrival)
            served.append((now, now - arrival, rung))
    return {"rungs": rungs, "served": served, "shed": shed}


def p99_between(served, start: float, stop: float) -> float:
    return percentile([lat for t, lat, _ in served if start <= t < stop], 99)


def make(floor: int | None = None, frozen: bool = False) -> Controller:
    costs = [c * 1000 for c in COST]  # the ladder's FLOPs per sample
    return Controller(costs, floor, ControllerConfig(target_s=TARGET, window_s=1.0), frozen=frozen)


# Capacity at rung r ≈ 1 / (TOKENS × PER_TOKEN × COST[r]) = 100, 133, 182, 250, 333 requests/s.
LOW, HIGH = 30.0, 200.0


def test_load_step_converges_without_oscillating_and_returns_to_the_most_accurate() -> None:
    ctrl = make()
    times = arrivals([(10, LOW), (40, HIGH), (40, LOW)])
    sim = simulate(ctrl, times, 90)
    rungs = sim["rungs"]  # rungs[k]: the rung after the window that ended at about k + 1 seconds
    assert all(r == 0 for r in rungs[:9])  # light load: the most accurate setting
    # The step at t=10 s: within 5 windows the controller reaches a rung that carries 200/s (rung 3 or 4) ...
    settled = rungs[15:49]
    assert min(settled) >= 3, rungs[10:50]
    # ... and then stays there with at most one step of oscillation, holding the target.
    assert max(settled) - min(settled) <= 1, settled
    assert p99_between(sim["served"], 16, 50) <= TARGET
    # Load drops at t=50 s: back to the most accurate setting, step by step, and it stays there.
    assert rungs[-1] == 0 and all(r == 0 for r in rungs[-15:]), rungs[50:]
    assert ctrl.steps["faster"] <= 5 and ctrl.steps["slower"] <= 5
    assert sim["shed"] < 0.02 * len(times)  # only while the queue of the step's first windows drains


def test_accuracy_floor_is_never_crossed_and_excess_load_is_shed() -> None:
    ctrl = make(floor=2)  # rung 2 carries ~182/s: 300/s cannot be served
    sim = simulate(ctrl, arrivals([(30, 300.0)], seed=1), 30)
    assert max(sim["rungs"]) == 2 and max(r for _, _, r in sim["served"]) <= 2
    assert sim["shed"] > 0.2 * len(arrivals([(30, 300.0)], seed=1))
    # what is admitted is served in time: the queue does not grow
    assert p99_between(sim["served"], 5, 30) <= 1.5 * TARGET


def test_frozen_controller_never_moves_and_sheds_at_its_own_rung() -> None:
    ctrl = make(frozen=True)
    sim = simulate(ctrl, arrivals([(20, HIGH)], seed=2), 20)
    assert set(sim["rungs"]) == {0} and ctrl.steps == {"faster": 0, "slower": 0}
    assert sim["shed"] > 0 and p99_between(sim["served"], 5, 20) <= 1.5 * TARGET


def test_without_a_target_nothing_moves_or_is_shed() -> None:
    ctrl = Controller([1.0, 0.5], None, ControllerConfig(target_s=None))
    sim = simulate(ctrl, arrivals([(5, HIGH)], seed=3), 5)
    assert set(sim["rungs"]) == {0} and sim["shed"] == 0


def test_cost_estimates_scale_by_the_ladder_until_measured() -> None:
    ctrl = make()
    assert ctrl.cost_per_token(3) is None and ctrl.admit(10**9, 1) is True  # nothing measured: admit
    ctrl.observe_batch(0, 100, 0.05)
    assert abs(ctrl.cost_per_token(0) - 0.0005) < 1e-12
    assert abs(ctrl.cost_per_token(4) - 0.0005 * 0.3) < 1e-12
    assert abs(ctrl.predicted_delay(1000, 4) - 0.15) < 1e-9


def test_cost_fit_separates_the_per_batch_overhead_from_the_per_token_cost() -> None:
    ctrl = make()
    for tokens in (20, 40, 200, 20, 400, 60):
        ctrl.observe_batch(1, tokens, OVERHEAD + tokens * PER_TOKEN * COST[1])
    overhead, per_token = ctrl.cost_model(1)
    assert abs(overhead - OVERHEAD) < 1e-9 and abs(per_token - PER_TOKEN * COST[1]) < 1e-12
    # An unmeasured rung keeps the overhead and scales the per-token part by the ladder's costs.
    overhead4, per_token4 = ctrl.cost_model(4)
    assert abs(overhead4 - OVERHEAD) < 1e-9 and abs(per_token4 - PER_TOKEN * COST[4]) < 1e-12
    # A quiet server (batches of one request) must not be taken for a slow one: 400 tokens ≈ one batch of 400.
    assert abs(ctrl.predicted_delay(400, 1) - (OVERHEAD + 400 * PER_TOKEN * COST[1])) < 1e-9
