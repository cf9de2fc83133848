"""The HTTP side: routes, tokenization, the answer, and a uvicorn server that shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..ladder import Ladder
from .api import ApiError, parse_predict, predictions
from .batcher import Batcher, Job, JobResult
from .metrics import Metrics


@dataclass
class ServeOptions:
    """Limits and policies of one server (the CLI's flags)."""

    max_input_length: int = 128  # tokens per sequence; longer ones are cut (truncate) or refused (413)
    max_client_batch_size: int = 32  # TEI's default
    max_body_bytes: int = 2_000_000  # TEI's default payload limit
    deadline_s: float = 10.0  # a request not started within this is dropped
    accuracy_floor: float | None = None
    latency_target_s: float | None = None
    frozen: bool = False
    model_id: str = ""
    extra_info: dict[str, Any] = field(default_factory=dict)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


OUTCOME = {400: "empty", 413: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}


class Service:
    """What the routes share: the model's tokenizer and labels, the batcher, the ladder, the metrics."""

    def __init__(self, tokenizer: Any, labels: list[str], batcher: Batcher, ladder: Ladder, metrics: Metrics,
                 options: ServeOptions, method: str = "", knobs: tuple = ()) -> None:
        self.tokenizer = tokenizer
        self.labels = labels
        self.batcher = batcher
        self.ladder = ladder
        self.metrics = metrics
        self.options = options
        self.method = method
        self.knobs = knobs
        self.draining = False
        self.floor = ladder.floor_index(options.accuracy_floor)

    # ---- tokenization (in a worker thread: a 2 MB text must not stall the event loop) ----------------
    def encode(self, sequences: list[tuple[str, str | None]], truncate: bool) -> list[dict[str, list[int]]]:
        limit = self.options.max_input_length
        rows = []
        for text, pair in sequences:
            try:
                enc = self.tokenizer(text, pair, truncation=True if truncate else False,
                                     max_length=limit if truncate else None)
            except Exception as e:  # noqa: BLE001  (TEI's "Tokenizer" error: the input, not the server)
                raise ApiError(422, "Tokenizer", f"the tokenizer refused an input: {str(e)[:200]}") from None
            ids = list(enc["input_ids"])
            if len(ids) > limit:
                raise ApiError(413, "Validation", f"an input has {len(ids)} tokens; the limit is {limit} "
                                                  "(send \"truncate\": true to cut it)")
            types = enc.get("token_type_ids") or [0] * len(ids)
            rows.append({"input_ids": ids, "token_type_ids": list(types)})
        return rows

    def max_rung_for(self, accuracy_floor: float | None) -> int:
        rung = self.floor
        if accuracy_floor is not None:
            rung = min(rung, self.ladder.floor_index(accuracy_floor))
        return rung

    # ---- routes ---------------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        arrival = time.monotonic()
        try:
            return await self._predict(request, arrival)
        except ApiError as e:
            self.metrics.outcome(OUTCOME.get(e.status, "validation"))
            return error_response(e)

    async def _predict(self, request: Request, arrival: float) -> Response:
        if self.draining or not self.batcher.ready.is_set():
            raise ApiError(503, "Unhealthy", "the server is not ready (loading or shutting down)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.options.max_body_bytes:
            raise ApiError(413, "Validation", f"body is {declared} bytes; the limit is {self.options.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # stop reading as soon as the limit is passed
            body += chunk
            if len(body) > self.options.max_body_bytes:
                raise ApiError(413, "Validation", f"body is over the limit of {self.options.max_body_bytes} bytes")
        parsed = parse_predict(bytes(body), self.options.max_body_bytes, self.options.max_client_batch_size)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, self.encode, parsed.sequences, parsed.truncate)
        future: asyncio.Future = loop.create_future()

        def done(result: JobResult | ApiError) -> None:  # from the model thread
            def settle() -> None:
                if not future.done():
                    future.set_result(result)
            loop.call_soon_threadsafe(settle)

        job = Job(rows, arrival, arrival + self.options.deadline_s, done, self.max_rung_for(parsed.accuracy_floor))
        self.batcher.submit(job)
        # Wait for the answer, or for the client to go away (then the job is never run).
        disconnect = asyncio.ensure_future(self._disconnected(request))
        try:
            await asyncio.wait({future, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
        if not future.done():
            job.cancelled = True
            return Response(status_code=499)  # nobody reads it
        result = future.result()
        if isinstance(result, ApiError):
            if result.status == 499:
                return Response(status_code=499)
            raise result
        return self._answer(parsed.batch, parsed.raw_scores, rows, result, arrival)

    @staticmethod
    async def _disconnected(request: Request) -> None:
        # With the body read, the server's receive() returns only when the connection is gone.
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    def _answer(self, batch: bool, raw: bool, rows: list, result: JobResult, arrival: float) -> Response:
        out = []
        for logits in result.logits:
            scores = logits if raw else _softmax(logits)
            out.append(predictions(scores, self.labels))
        total = time.monotonic() - arrival
        self.metrics.outcome("success")
        self.metrics.request_duration.observe(total)
        knobs = ",".join(f"{k}={v}" for k, v in result.knobs.items())
        headers = {
            "x-compute-type": "cpu",
            "x-compute-tokens": str(sum(len(r["input_ids"]) for r in rows)),
            "x-total-time": str(int(total * 1000)),
            "x-queue-time": str(int(result.queue_s * 1000)),
            "x-inference-time": str(int(result.inference_s * 1000)),
            "x-nimblebert-knobs": knobs,
            "x-nimblebert-rung": str(result.rung),
            "x-nimblebert-exit-layer": ",".join(str(v) for v in result.exit_layers),
        }
        return JSONResponse(out if batch else out[0], headers=headers)

    async def health(self, request: Request) -> Response:
        if self.batcher.failed is not None:
            return error_response(ApiError(503, "Unhealthy", f"the model failed to start: {self.batcher.failed}"))
        if self.draining or not self.batcher.ready.is_set():
            return error_response(ApiError(503, "Unhealthy", "loading" if not self.draining else "shutting down"))
        return Response(status_code=200)

    async def info(self, request: Request) -> Response:
        c = self.batcher.controller
        rung = c.index
        info = {
            "model_id": self.options.model_id,
            "model_type": {"classifier": {"id2label": {str(i): n for i, n in enumerate(self.labels)},
                                          "label2id": {n: i for i, n in enumerate(self.labels)}}},
            "max_concurrent_requests": self.batcher.max_queue,
            "max_input_length": self.options.max_input_length,
            "max_batch_tokens": self.batcher.max_batch_tokens,
            "max_batch_requests": self.batcher.max_batch_requests,
            "max_client_batch_size": self.options.max_client_batch_size,
            "auto_truncate": False,
            "version": __version__,
            "nimblebert": {
                "method": self.method,
                "knobs": [{"name": k.name, "default": k.default, "help": k.help} for k in self.knobs],
                "setting": self.batcher.settings[rung],
                "rung": rung,
                "frozen": c.frozen,
                "latency_target_ms": None if c.config.target_s is None else c.config.target_s * 1000,
                "accuracy_floor": self.options.accuracy_floor,
                "floor_rung": c.floor,
                "ladder": [_finite(r.__dict__) for r in self.ladder.rungs],
                "ladder_calibrated": self.ladder.meta.get("calibrated", True),
                "window_p99_ms": None if math.isnan(c.last_p99) else c.last_p99 * 1000,
                "steps": dict(c.steps),
                **self.options.extra_info,
            },
        }
        return JSONResponse(info)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: uncalibrated figures become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def create_app(service: Service) -> Starlette:
    """The ASGI app. Its lifespan starts the model thread (``/health`` is 503 until its warm-up batch has
    run) and, at shutdown, lets it finish what is queued."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service.batcher.start()
        yield
        service.draining = True
        await asyncio.get_running_loop().run_in_executor(None, service.batcher.stop)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = "Validation" if status in (404, 405) else "Backend"
        return JSONResponse({"error": getattr(exc, "detail", "not found"), "error_type": kind}, status_code=status)

    async def internal(request: Request, exc: Exception) -> Response:
        # Last resort, so that even a bug answers in the documented shape; the tests hold that no input gets here.
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "error_type": "Backend"},
                            status_code=500)

    routes = [
        Route("/predict", service.predict, methods=["POST"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/info", service.info, methods=["GET"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found,
                                                                           Exception: internal})


class GracefulServer:
    """uvicorn's server, with a shutdown that is graceful to clients and ends with exit code 0.

    On SIGTERM/SIGINT: ``/health`` and new requests answer 503 at once; after ``drain_s`` (time for a load
    balancer to notice) uvicorn stops accepting connections and waits for the requests in flight; then the
    model thread finishes its queue. uvicorn's own handlers would re-raise the signal after shutting down
    (so the exit code would say "killed by SIGTERM"); these do not.
    """

    def __init__(self, service: Service, host: str, port: int, drain_s: float = 0.0, log_level: str = "warning",
                 graceful_timeout_s: float = 30.0) -> None:
        import uvicorn

        self.service = service
        self.drain_s = drain_s
        config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=graceful_timeout_s, lifespan="on")
        outer = self

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                sigs = (signal.SIGINT, signal.SIGTERM)
                previous = {s: signal.signal(s, lambda sig, frame: outer.begin_shutdown()) for s in sigs}
                try:
                    yield
                finally:
                    for s, handler in previous.items():
                        signal.signal(s, handler)

        self.server = _Server(config)
        # A model that cannot run its warm-up batch cannot serve: stop rather than answer 503 forever.
        service.batcher.on_failure = lambda: setattr(self.server, "should_exit", True)

    def begin_shutdown(self) -> None:
        """Start draining (idempotent; a second call ends the drain wait at once)."""
        if self.service.draining:
            self.server.should_exit = True
            return
        self.service.draining = True
        self.service.batcher.stop_accepting()
        if self.drain_s > 0:
            threading.Timer(self.drain_s, lambda: setattr(self.server, "should_exit", True)).start()
        else:
            self.server.should_exit = True

    def run(self) -> None:
        self.server.run()

    @property
    def started(self) -> bool:
        return bool(self.server.started)
