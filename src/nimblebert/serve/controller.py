"""The knob controller: moves the served setting along the ladder to hold a p99 latency target.

Rung 0 is the most accurate setting, the last allowed rung (``floor``) the cheapest one that still meets
``--accuracy-floor``. Time is cut into windows; at the end of each window the controller looks at the
window's p99 request latency and at the queue delay it predicts for the requests waiting now, and takes
at most one step:

- faster (one rung down the ladder) when either nears the target (``step_up_at`` × target);
- back toward accuracy only after ``slack_windows`` windows in a row well under the target
  (``step_down_below`` × target) *and* when the more accurate rung, at the measured cost ratio, would keep
  the model thread below ``max_utilization``: without that check a server near capacity would step back,
  overload, step forward, and oscillate (hysteresis by a band and by time, as thermostats do);
- never past the floor. A frozen controller (a knob given on the command line) never moves.

Admission control (:meth:`Controller.admit`): when even the cheapest allowed rung would not clear the work
already queued plus the new request within the target, the request is refused (HTTP 429) instead of
joining a queue that can only grow.

The controller takes the time as an argument everywhere (no clock of its own), so tests drive it with a
simulated clock and a deterministic fake model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class ControllerConfig:
    """The controller's settings; the defaults are what ``nimblebert serve`` uses."""

    target_s: float | None = None  # p99 latency target; None: no stepping, no shedding by prediction
    window_s: float = 1.0
    step_up_at: float = 0.8  # step faster when p99 or the predicted queue delay reaches this × target
    step_down_below: float = 0.5  # a window is slack when both stay under this × target
    slack_windows: int = 3  # slack windows in a row before stepping back toward accuracy
    max_utilization: float = 0.8  # step back only if the model thread would stay below this busy fraction
    decay: float = 0.05  # weight of the newest batch in the per-rung cost fit (about the last 20 batches count)
    # Admit while the predicted work ahead (the batch in flight + the queue + the request) fits in this × target.
    # A request is answered when its whole batch ends, and that batch also holds what arrives after it until
    # the batch starts: its latency is about the work ahead plus its batch's time, each bounded by the work
    # admitted, so admitting up to half the target keeps the worst case near the target.
    admit_at: float = 0.5


class CostFit:
    """Batch time ≈ overhead + per_token × padded tokens, fitted by exponentially weighted least squares.

    A batch pays a fixed cost (Python, dispatch, the head) besides its tokens: a per-token figure alone, taken
    from the small batches of a quiet server, would overstate what a large batch costs and shed load that could
    be served. Until the batches differ in size enough to separate the two, the fit is per-token only."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, tokens: float, seconds: float) -> None:
        keep = 1 - self.decay if self.n else 0.0
        self.n = keep * self.n + 1
        self.sx = keep * self.sx + tokens
        self.sy = keep * self.sy + seconds
        self.sxx = keep * self.sxx + tokens * tokens
        self.sxy = keep * self.sxy + tokens * seconds

    @property
    def measured(self) -> bool:
        return self.n > 0

    def solve(self) -> tuple[float, float]:
        """(overhead seconds, seconds per token)."""
        mx, my = self.sx / self.n, self.sy / self.n
        var = self.sxx / self.n - mx * mx
        if var > 0.01 * mx * mx:  # sizes spread by more than 10% (std/mean): the two parts can be told apart
            slope = (self.sxy / self.n - mx * my) / var
            overhead = my - slope * mx
            if slope > 0 and overhead >= 0:
                return overhead, slope
        return 0.0, (self.sy / self.sx if self.sx > 0 else 0.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Controller:
    """Picks the rung each batch runs at.

    Args:
        costs: the relative cost of each rung (FLOPs per sample from the ladder; rung 0 first). Used to
            estimate a rung's time per token before the server has run it.
        floor: the last rung allowed (the accuracy floor).
        config: see :class:`ControllerConfig`.
        frozen: never move (a knob was fixed by the user).
        start: the rung to start at (default the most accurate).
    """

    def __init__(self, costs: Sequence[float], floor: int | None = None, config: ControllerConfig | None = None,
                 frozen: bool = False, start: int = 0, now: float = 0.0) -> None:
        if not costs:
            raise ValueError("a controller needs at least one rung")
        self.costs = [c if c == c and c > 0 else 1.0 for c in costs]  # NaN (uncalibrated) counts as 1
        self.floor = len(costs) - 1 if floor is None else max(0, min(floor, len(costs) - 1))
        self.config = config or ControllerConfig()
        self.frozen = frozen
        self.index = min(start, self.floor)
        self.window_start = now
        self.latencies: list[float] = []
        self.busy = 0.0  # seconds the model thread ran batches in this window
        self.slack = 0
        self.steps = {"faster": 0, "slower": 0}
        self.fits = [CostFit(self.config.decay) for _ in costs]
        self.last_p99 = math.nan
        self.last_pressure = 0.0

    # ---- what the server tells it -------------------------------------------------------------
    def observe_request(self, latency_s: float) -> None:
        """A request finished (successfully) after ``latency_s`` from arrival."""
        self.latencies.append(latency_s)

    def observe_batch(self, rung: int, padded_tokens: int, seconds: float) -> None:
        """A batch of ``padded_tokens`` (rows × longest row) ran at ``rung`` in ``seconds``."""
        self.busy += seconds
        if padded_tokens > 0:
            self.fits[rung].add(padded_tokens, seconds)

    # ---- estimates ------------------------------------------------------------------------------
    def cost_model(self, rung: int) -> tuple[float, float] | None:
        """(overhead s, s per padded token) at ``rung``: fitted, else the nearest fitted rung's with the
        per-token part scaled by the ladder's cost ratio; None before any batch ran."""
        if self.fits[rung].measured:
            return self.fits[rung].solve()
        measured = [i for i, f in enumerate(self.fits) if f.measured]
        if not measured:
            return None
        near = min(measured, key=lambda i: abs(i - rung))
        overhead, per_token = self.fits[near].solve()
        return overhead, per_token * self.costs[rung] / self.costs[near]

    def cost_per_token(self, rung: int) -> float | None:
        model = self.cost_model(rung)
        return None if model is None else model[1]

    def predicted_delay(self, queued_tokens: int, rung: int | None = None) -> float:
        """Seconds to run ``queued_tokens`` padded tokens as one batch at ``rung`` (default: the current one)."""
        model = self.cost_model(self.index if rung is None else rung)
        if model is None or queued_tokens <= 0:
            return 0.0
        return model[0] + model[1] * queued_tokens

    def admit(self, queued_tokens: int, new_tokens: int, busy_s: float = 0.0) -> bool:
        """Whether a request of ``new_tokens`` may join a queue holding ``queued_tokens`` while the model thread
        is busy for ``busy_s`` more seconds (the batch in flight): refused only when even the cheapest allowed
        rung (the current one, if frozen) could not finish it within the target."""
        target = self.config.target_s
        if target is None:
            return True
        rung = self.index if self.frozen else self.floor
        return busy_s + self.predicted_delay(queued_tokens + new_tokens, rung) <= self.config.admit_at * target

    # ---- the decision ----------------------------------------------------------------------------
    def tick(self, now: float, queued_tokens: int = 0) -> int:
        """Close the window if it is over and take at most one step: +1 (faster), -1 (more accurate) or 0."""
        cfg = self.config
        if now - self.window_start < cfg.window_s:
            return 0
        elapsed = max(now - self.window_start, 1e-9)
        p99 = percentile(self.latencies, 99)
        utilization = self.busy / elapsed
        self.window_start, self.latencies, self.busy = now, [], 0.0
        self.last_p99 = p99
        if self.frozen or cfg.target_s is None:
            return 0
        observed = 0.0 if math.isnan(p99) else p99
        pressure = max(observed, self.predicted_delay(queued_tokens)) / cfg.target_s
        self.last_pressure = pressure
        if pressure >= cfg.step_up_at:
            self.slack = 0
            if self.index < self.floor:
                self.index += 1
                self.steps["faster"] += 1
                return 1
            return 0
        if pressure >= cfg.step_down_below or self.index == 0:
            self.slack = 0
            return 0
        self.slack += 1
        if self.slack < cfg.slack_windows:
            return 0
        # Would the more accurate rung keep up? Its cost relative to this one, from measurements where
        # there are some, else from the ladder.
        here, there = self.cost_per_token(self.index), self.cost_per_token(self.index - 1)
        ratio = there / here if here and there else self.costs[self.index - 1] / self.costs[self.index]
        if utilization * ratio >= cfg.max_utilization:
            return 0
        self.slack = 0
        self.index -= 1
        self.steps["slower"] += 1
        return -1
