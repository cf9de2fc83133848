"""``nimblebert serve``: an HTTP inference server that holds a latency target by turning the model's knobs.

The API is text-embeddings-inference's classification API (``POST /predict``, ``GET /health``, ``/info``,
``/metrics``), so existing TEI clients work unchanged; see :mod:`.api` for the shapes and status codes. A
model thread runs dynamic batches (:mod:`.batcher`), and a controller (:mod:`.controller`) moves the served
knob setting along the model's calibrated ladder (:mod:`nimblebert.ladder`) to keep the p99 latency under
``--latency-target-ms``, never below ``--accuracy-floor``, refusing load (429) that not even the fastest
allowed setting can serve in time.

Dependencies (the optional extra ``nimblebert[serve]``), chosen for being small, widely deployed and
actively maintained:

- **Starlette**: the ASGI toolkit FastAPI is built on, without FastAPI's pydantic layer that a four-route
  API with a hand-written, TEI-exact request parser does not need; its test client and routing are stable.
- **uvicorn**: the reference ASGI server; it owns the sockets, HTTP/1.1 keep-alive, and the graceful
  shutdown sequence (stop accepting, wait for in-flight requests, lifespan shutdown) that
  :class:`.app.GracefulServer` builds on.
- **prometheus_client**: the Prometheus project's own Python client (thread-safe metrics, the text format).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import ApiError, PredictRequest, parse_predict
from .controller import Controller, ControllerConfig

if TYPE_CHECKING:
    from ..ladder import Ladder
    from ..model import NimbleModel
    from .app import ServeOptions, Service

__all__ = ["ApiError", "Controller", "ControllerConfig", "PredictRequest", "build_service", "parse_predict"]


def build_service(model: NimbleModel, ladder: Ladder, options: ServeOptions, runner: Any = None,
                  window_s: float = 1.0, max_batch_tokens: int = 8192, max_batch_requests: int = 128,
                  max_queue: int = 512) -> Service:
    """The server's parts for ``model`` (or any ``runner`` with the model's tokenizer and labels), its
    ``ladder`` and ``options``: controller, batcher, metrics."""
    from .app import Service
    from .batcher import Batcher, ModelRunner
    from .metrics import Metrics

    runner = runner or ModelRunner(model)
    costs = [r.flops_per_sample for r in ladder.rungs]
    config = ControllerConfig(target_s=options.latency_target_s, window_s=window_s)
    controller = Controller(costs, ladder.floor_index(options.accuracy_floor), config, frozen=options.frozen)
    knobs = model.knobs()
    metrics = Metrics(runner.num_layers, [k.name for k in knobs])
    batcher = Batcher(runner, [dict(r.knobs) for r in ladder.rungs], controller, metrics,
                      max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests, max_queue=max_queue)
    return Service(model.tokenizer, list(model.label_names), batcher, ladder, metrics, options,
                   method=model.describe(), knobs=knobs)
