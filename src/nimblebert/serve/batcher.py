"""Dynamic batching on a model thread: a bounded queue, admission control, batches by padded tokens.

The event loop (HTTP) calls :meth:`Batcher.submit` with a :class:`Job` (one request's tokenized sequences)
and awaits its callback; one model thread takes jobs in arrival order into a batch while the batch's
padded size (rows × longest row) stays within ``max_batch_tokens``: on a CPU every pad token costs as much
as a real one, so a count-only limit would let one long text multiply the cost of a whole batch.

Before a batch runs, jobs whose client disconnected or whose deadline has passed are dropped (answered
429, counted as ``dropped_*``): running them would only delay the others. Inside the forward pass rows
that exit early (FastBERT) leave the batch, so they do not wait for the slowest (the core does this).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .api import ApiError
from .controller import Controller
from .metrics import Metrics


@dataclass
class JobResult:
    logits: list[list[float]]  # per sequence
    exit_layers: list[int]
    rung: int
    knobs: dict[str, Any]
    queue_s: float
    inference_s: float


@dataclass
class Job:
    """One request's sequences, waiting for a batch. ``done`` is called once, from the model thread, with a
    :class:`JobResult` or an :class:`ApiError`."""

    rows: list[dict[str, list[int]]]  # input_ids, token_type_ids per sequence (unpadded)
    arrival: float
    deadline: float
    done: Callable[[JobResult | ApiError], None]
    max_rung: int | None = None  # the request's cap: no rung beyond this one
    cancelled: bool = False  # set by the event loop when the client went away
    max_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_len = max(len(r["input_ids"]) for r in self.rows)

    @property
    def padded_tokens(self) -> int:
        return self.max_len * len(self.rows)


class Runner(Protocol):
    """Runs a batch: ``run(rows, knobs)`` → (logits (n, C), exit layer per row)."""

    num_layers: int

    def run(self, rows: list[dict[str, list[int]]], knobs: dict[str, Any]) -> tuple[torch.Tensor, list[int]]: ...


class ModelRunner:
    """A :class:`~nimblebert.model.NimbleModel` as a :class:`Runner` (padding with the project's Collator)."""

    def __init__(self, model: Any) -> None:
        from ..data import Collator

        self.model = model.eval()
        self.collate = Collator(model.tokenizer)
        self.num_layers = int(model.hf.config.num_hidden_layers)

    @torch.inference_mode()
    def run(self, rows: list[dict[str, list[int]]], knobs: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        batch = self.collate(rows)
        out = self.model.infer(batch, **knobs)
        return out.logits.float(), [int(v) for v in out.layers_run]


def _overloaded(message: str) -> ApiError:
    return ApiError(429, "Overloaded", message, {"Retry-After": "1"})


class Batcher:
    """The queue and the model thread. ``settings[i]`` is the knobs of ladder rung ``i``."""

    def __init__(self, runner: Runner, settings: list[dict[str, Any]], controller: Controller,
                 metrics: Metrics | None = None, max_batch_tokens: int = 8192, max_batch_requests: int = 128,
                 max_queue: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        self.runner = runner
        self.settings = settings
        self.controller = controller
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_queue = max_queue
        self.clock = clock
        self.queue: deque[Job] = deque()
        self.queued_rows = 0
        self.queued_tokens = 0
        self.cond = threading.Condition()
        self.accepting = True
        self.stopping = False
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nimblebert-model", daemon=True)
        self.batches = 0
        self.running: tuple[float, int, int] | None = None  # (start, rung, padded tokens) of the batch in flight
        self.failed: BaseException | None = None
        self.on_failure: Callable[[], None] | None = None  # called from the model thread if warm-up fails

    # ---- the event loop's side --------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise :class:`ApiError` (503 while not accepting, 429 when overloaded)."""
        with self.cond:
            if not self.accepting or not self.ready.is_set():
                raise ApiError(503, "Unhealthy", "the server is not ready (loading or shutting down)")
            if self.queued_rows + len(job.rows) > self.max_queue:
                raise _overloaded(f"the queue is full ({self.queued_rows} sequences waiting; --max-queue "
                                  f"{self.max_queue}): retry later")
            if not self.controller.admit(self.queued_tokens, job.padded_tokens, self._busy_for()):
                raise _overloaded("the latency target cannot be met even at the fastest allowed setting: "
                                  "retry later")
            self.queue.append(job)
            self.queued_rows += len(job.rows)
            self.queued_tokens += job.padded_tokens
            if self.metrics:
                self.metrics.queue_size.set(self.queued_rows)
            self.cond.notify()

    def _busy_for(self) -> float:
        """Seconds the batch in flight should still take (0 when idle), from the controller's cost estimate."""
        if self.running is None:
            return 0.0
        started, rung, tokens = self.running
        return max(0.0, started + self.controller.predicted_delay(tokens, rung) - self.clock())

    def stop_accepting(self) -> None:
        with self.cond:
            self.accepting = False

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the model thread."""
        with self.cond:
            self.accepting = False
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # ---- the model thread -------------------------------------------------------------------------
    def _take(self) -> list[Job]:
        """Jobs for the next batch, oldest first, within the padded-token and request limits (the first job
        always goes, even when it alone is over the limit). Called with the lock held."""
        jobs: list[Job] = []
        rows = width = 0
        while self.queue:
            job = self.queue[0]
            new_width = max(width, job.max_len)
            if jobs and (new_width * (rows + len(job.rows)) > self.max_batch_tokens
                         or len(jobs) >= self.max_batch_requests):
                break
            self.queue.popleft()
            self.queued_rows -= len(job.rows)
            self.queued_tokens -= job.padded_tokens
            jobs.append(job)
            rows, width = rows + len(job.rows), new_width
        if self.metrics:
            self.metrics.queue_size.set(self.queued_rows)
        return jobs

    def _loop(self) -> None:
        try:
            self._warm_up()
        except BaseException as e:  # noqa: BLE001  (reported by /health; the server cannot serve)
            self.failed = e
            if self.on_failure is not None:
                self.on_failure()
            return
        self.ready.set()
        tick = min(0.05, self.controller.config.window_s / 4)
        while True:
            with self.cond:
                if not self.queue and not self.stopping:
                    self.cond.wait(tick)
                self._tick()
                if not self.queue:
                    if self.stopping:
                        return
                    continue
                jobs = self._take()
            self._run(jobs)

    def _tick(self) -> None:
        step = self.controller.tick(self.clock(), self.queued_tokens)
        if step and self.metrics:
            self.metrics.steps.labels("faster" if step > 0 else "slower").inc()
            self.metrics.setting(self.controller.index, self.settings[self.controller.index])

    def _warm_up(self) -> None:
        # The first forward pass pays for lazy initialisation (allocator, kernels): not a client's request.
        rows = [{"input_ids": [0] * 8, "token_type_ids": [0] * 8}]
        for knobs in {repr(s): s for s in (self.settings[0], self.settings[-1])}.values():
            self.runner.run(rows, knobs)
        if self.metrics:
            self.metrics.setting(self.controller.index, self.settings[self.controller.index])

    def _run(self, jobs: list[Job]) -> None:
        now = self.clock()
        live = []
        for job in jobs:
            if job.cancelled:
                self._finish(job, ApiError(499, "Dropped", "the client disconnected"), "dropped_disconnect")
            elif now > job.deadline:
                self._finish(job, _overloaded("the request waited past its deadline (--deadline-ms) before it "
                                              "could run"), "dropped_deadline")
            else:
                live.append(job)
        if not live:
            return
        rung = self.controller.index
        for job in live:
            if job.max_rung is not None:
                rung = min(rung, job.max_rung)
        knobs = self.settings[rung]
        rows = [r for job in live for r in job.rows]
        width = max(job.max_len for job in live)
        start = self.clock()
        self.running = (start, rung, width * len(rows))
        try:
            logits, exits = self.runner.run(rows, knobs)
        except Exception as e:  # noqa: BLE001  (a model failure answers the batch, it does not kill the thread)
            for job in live:
                self._finish(job, ApiError(500, "Backend", f"inference failed: {type(e).__name__}: {e}"), "backend")
            return
        finally:
            self.running = None
        end = self.clock()
        self.batches += 1
        self.controller.observe_batch(rung, width * len(rows), end - start)
        if self.metrics:
            self.metrics.batch_size.observe(len(rows))
            self.metrics.batch_tokens.observe(width * len(rows))
            for layer in exits:
                self.metrics.exit_layer.observe(layer)
        values = logits.tolist()
        i = 0
        for job in live:
            n = len(job.rows)
            result = JobResult(values[i:i + n], exits[i:i + n], rung, knobs, start - job.arrival, end - start)
            i += n
            self.controller.observe_request(end - job.arrival)
            if self.metrics:
                self.metrics.queue_duration.observe(start - job.arrival)
                self.metrics.inference_duration.observe(end - start)
            self._finish(job, result, None)

    def _finish(self, job: Job, result: JobResult | ApiError, outcome: str | None) -> None:
        if outcome and self.metrics:
            self.metrics.outcome(outcome)
        try:
            job.done(result)
        except Exception:  # noqa: BLE001  (a closed event loop must not stop the model thread)
            pass
