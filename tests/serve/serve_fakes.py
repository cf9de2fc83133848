"""Fakes and helpers for the serve tests: a deterministic fake model, a server on a thread, an HTTP client."""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from typing import Any

import torch
from conftest import make_tokenizer, tiny_model

from nimblebert.ladder import Ladder, Rung
from nimblebert.methods import get_method
from nimblebert.model import NimbleModel
from nimblebert.serve.app import GracefulServer, ServeOptions, Service
from nimblebert.serve.batcher import Batcher
from nimblebert.serve.controller import Controller, ControllerConfig
from nimblebert.serve.metrics import Metrics

LABELS = ["negative", "positive"]
LN3 = math.log(3.0)


class FakeRunner:
    """Logits [0, ln 3] (positive, p = 0.75) when the text holds "good", else [ln 3, 0]; exit layer = rung
    knob ``speed`` × 10 + 1; sleeps ``delay`` seconds per batch (to hold requests in flight)."""

    num_layers = 4

    def __init__(self, good_id: int, delay: float = 0.0) -> None:
        self.good_id = good_id
        self.delay = delay
        self.batches: list[tuple[int, dict]] = []
        self.started = threading.Event()

    def run(self, rows: list[dict[str, list[int]]], knobs: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        self.started.set()
        if self.delay:
            time.sleep(self.delay)
        self.batches.append((len(rows), dict(knobs)))
        logits = [[0.0, LN3] if self.good_id in r["input_ids"] else [LN3, 0.0] for r in rows]
        return torch.tensor(logits), [int(knobs.get("speed", 0) * 10) + 1] * len(rows)


def ladder(n: int = 3) -> Ladder:
    """``n`` rungs: speed 0, 0.1, ...; accuracy 0.9, 0.85, ...; cost 1, 0.8, ..."""
    rungs = [Rung({"speed": round(0.1 * i, 1)}, 0.9 - 0.05 * i, 1.0 - 0.02 * i, 4 - i, 1000 * (1 - 0.2 * i),
                  1 / (1 - 0.2 * i)) for i in range(n)]
    return Ladder(rungs=rungs, settings=list(rungs), meta={"max_length": 16})


def fake_service(delay: float = 0.0, target_s: float | None = None, max_queue: int = 512, deadline_s: float = 10.0,
                 window_s: float = 1.0, accuracy_floor: float | None = None, **options: Any) -> Service:
    tokenizer = make_tokenizer()
    good = tokenizer.convert_tokens_to_ids("good")
    lad = ladder()
    opts = ServeOptions(max_input_length=16, deadline_s=deadline_s, latency_target_s=target_s,
                        accuracy_floor=accuracy_floor, model_id="fake", **options)
    controller = Controller([r.flops_per_sample for r in lad.rungs], lad.floor_index(accuracy_floor),
                            ControllerConfig(target_s=target_s, window_s=window_s))
    runner = FakeRunner(good, delay)
    metrics = Metrics(runner.num_layers, ["speed"])
    batcher = Batcher(runner, [r.knobs for r in lad.rungs], controller, metrics, max_batch_tokens=256,
                      max_queue=max_queue)
    return Service(tokenizer, LABELS, batcher, lad, metrics, opts, method="fake")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on a thread (loopback, a free port)."""

    def __init__(self, service: Service, drain_s: float = 0.0) -> None:
        self.service = service
        self.port = free_port()
        self.server = GracefulServer(service, "127.0.0.1", self.port, drain_s=drain_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.server.started and self.service.batcher.ready.is_set():
                runner = self.service.batcher.runner
                if isinstance(runner, FakeRunner):  # forget the warm-up batches
                    runner.batches.clear()
                    runner.started.clear()
                return self
            time.sleep(0.02)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout: float = 20) -> None:
        self.server.begin_shutdown()
        self.server.server.should_exit = True
        self.thread.join(timeout)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def predict(self, payload: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self.request("POST", "/predict", json.dumps(payload))
        return status, headers, json.loads(raw) if raw else None


def tiny_fastbert(confident: bool = True, layers: int = 4) -> NimbleModel:
    """A tiny random FastBERT with cheap linear branches. Random branches are near-uniform (no row would ever
    exit); ``confident`` scales each branch's output so that confidences spread over rows and layers, while
    ``confident=False`` zeroes them: every branch says 50/50 and no speed below 1 lets a row leave."""
    model = NimbleModel(tiny_model(layers=layers), make_tokenizer(), "fastbert", {"branch": "linear"},
                        ["negative", "positive"])
    get_method("fastbert").attach(model)
    with torch.no_grad():
        for i, branch in enumerate(model.extras["branches"]):
            factor = 15.0 * (i + 1) if confident else 0.0
            branch.out.weight.mul_(factor)
            branch.out.bias.mul_(factor)
    return model.eval()

