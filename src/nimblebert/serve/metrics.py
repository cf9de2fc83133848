"""Prometheus metrics, in the style of text-embeddings-inference's ``te_*`` family, prefixed ``nimblebert_``.

Each server owns its registry (not the process-global one), so several servers can live in one process
(tests) and ``/metrics`` shows only what this server counts.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 1 ms to 30 s: CPU inference of one short sentence is ~1-10 ms, a loaded queue seconds.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    """Every metric the server exports; methods are called from the event loop and the model thread
    (prometheus_client's metrics are thread-safe)."""

    def __init__(self, num_layers: int, knob_names: list[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nimblebert_request", "Requests by outcome (success, validation, empty, "
                                "overloaded, dropped_deadline, dropped_disconnect, unhealthy)", ["outcome"],
                                registry=r)
        self.request_duration = Histogram("nimblebert_request_duration_seconds", "Arrival to answer",
                                          buckets=TIME_BUCKETS, registry=r)
        self.queue_duration = Histogram("nimblebert_request_queue_duration_seconds", "Arrival to batch start",
                                        buckets=TIME_BUCKETS, registry=r)
        self.inference_duration = Histogram("nimblebert_request_inference_duration_seconds",
                                            "The forward pass of the request's batch", buckets=TIME_BUCKETS,
                                            registry=r)
        self.batch_size = Histogram("nimblebert_batch_size", "Rows per batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("nimblebert_batch_tokens", "Padded tokens per batch (rows × longest row)",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.queue_size = Gauge("nimblebert_queue_size", "Sequences waiting for a batch", registry=r)
        self.rung = Gauge("nimblebert_ladder_rung", "Current ladder rung (0 = most accurate)", registry=r)
        self.knob = Gauge("nimblebert_knob", "Current value of each numeric knob", ["knob"], registry=r)
        self.steps = Counter("nimblebert_controller_steps", "Controller steps", ["direction"], registry=r)
        self.exit_layer = Histogram("nimblebert_exit_layer", "Layer each sequence left at",
                                    buckets=tuple(range(1, num_layers + 1)), registry=r)
        for outcome in ("success", "validation", "empty", "overloaded", "dropped_deadline", "dropped_disconnect",
                        "unhealthy", "backend"):
            self.requests.labels(outcome)  # present at 0 from the start, so rates work on a fresh server
        for direction in ("faster", "slower"):
            self.steps.labels(direction)
        self.knob_names = knob_names

    def outcome(self, name: str) -> None:
        self.requests.labels(name).inc()

    def setting(self, rung: int, knobs: dict[str, Any]) -> None:
        self.rung.set(rung)
        for name, value in knobs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.knob.labels(name).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
