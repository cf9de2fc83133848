"""``nimblebert serve DIR``: a TEI-compatible HTTP server whose knob follows the load (see :mod:`nimblebert.serve`).

Without ``ladder.json`` in the folder (``nimblebert calibrate DIR --data ...`` writes it) the server does not
calibrate by itself: it serves the knobs' defaults and says so. A knob flag (``--speed 0.3``) freezes the
setting.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_knob_flags, knob_values, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP inference server (text-embeddings-inference's /predict API) that "
                                     "holds a latency target by moving along the model's calibrated ladder")
    p.add_argument("model", help="a model folder written by nimblebert (calibrated with `nimblebert calibrate` "
                                 "for the knob to move)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=positive(int, "--port"), default=8080)
    p.add_argument("--threads", type=positive(int, "--threads"), default=None,
                   help="torch threads for the model (default: torch's choice)")
    p.add_argument("--latency-target-ms", type=positive(float, "--latency-target-ms"), default=None,
                   help="p99 latency to hold: the knob steps faster as it nears it and the server answers 429 "
                        "when even the fastest allowed setting would miss it (default: no target, fixed setting)")
    p.add_argument("--accuracy-floor", type=float, default=None,
                   help="never use a ladder rung whose calibrated accuracy is below this (0..1)")
    p.add_argument("--max-input-length", type=positive(int, "--max-input-length"), default=None,
                   help="tokens per input (default: the calibration's --max-length, else 128)")
    p.add_argument("--max-client-batch-size", type=positive(int, "--max-client-batch-size"), default=32,
                   help="inputs per request (413 beyond)")
    p.add_argument("--max-batch-tokens", type=positive(int, "--max-batch-tokens"), default=8192,
                   help="padded tokens (rows × longest row) per model batch")
    p.add_argument("--max-batch-requests", type=positive(int, "--max-batch-requests"), default=128)
    p.add_argument("--max-concurrent-requests", type=positive(int, "--max-concurrent-requests"), default=512,
                   help="sequences waiting at most; more get 429 at once")
    p.add_argument("--deadline-ms", type=positive(float, "--deadline-ms"), default=None,
                   help="a request not started within this is dropped (429); default 10× the target, else 10 s")
    p.add_argument("--window-ms", type=positive(float, "--window-ms"), default=1000.0,
                   help="controller window: at most one knob step per window")
    p.add_argument("--payload-limit", type=positive(int, "--payload-limit"), default=2_000_000,
                   help="request body bytes at most (413 beyond)")
    p.add_argument("--drain-seconds", type=positive(float, "--drain-seconds", allow_zero=True), default=0.0,
                   help="on SIGTERM, answer 503 this long before closing the listening socket")
    add_knob_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError

    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(f"nimblebert serve needs the serve extra ({e.name} is missing): "
                        "pip install 'nimblebert[serve]'") from None
    import torch

    from ..ladder import Ladder, Rung, default_ladder, load_ladder
    from ..model import load
    from ..serve import build_service
    from ..serve.app import GracefulServer, ServeOptions

    if args.accuracy_floor is not None and not 0 <= args.accuracy_floor <= 1:
        raise UserError(f"--accuracy-floor must be in [0, 1], got {args.accuracy_floor}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.model).is_dir():
        raise UserError(f"{args.model} is not a model folder")
    check_address(args.host, args.port)
    model = load(args.model)
    fixed = knob_values(args)
    ladder = load_ladder(args.model)
    say = sys.stderr.write
    if fixed:
        knobs = model.check_knobs(fixed)
        match = [r for r in (ladder.settings or ladder.rungs) if r.knobs == knobs] if ladder else []
        ladder = Ladder(rungs=[match[0] if match else Rung(knobs, float("nan"), 1.0, float("nan"), float("nan"),
                                                          1.0)], meta={"calibrated": bool(match)})
        say(f"serve: knobs fixed at {knobs}: the controller does not move\n")
    elif ladder is None:
        ladder = default_ladder(model)
        if model.knobs():
            say(f"serve: {args.model} has no ladder.json: serving the knobs' defaults "
                f"{ladder.rungs[0].knobs}; run `nimblebert calibrate {args.model} --data NAME` for the knob to "
                "follow the load\n")
    elif args.accuracy_floor is not None and ladder.rungs[0].accuracy < args.accuracy_floor:
        raise UserError(f"--accuracy-floor {args.accuracy_floor} is above the most accurate rung's calibrated "
                        f"accuracy ({ladder.rungs[0].accuracy:.4f})")
    positions = int(getattr(model.hf.config, "max_position_embeddings", 512) or 512)
    max_len = args.max_input_length or int(ladder.meta.get("max_length") or 128)
    if max_len > positions:
        raise UserError(f"--max-input-length {max_len} is over the model's {positions} positions")
    target = args.latency_target_ms / 1000 if args.latency_target_ms else None
    deadline = args.deadline_ms / 1000 if args.deadline_ms else (10 * target if target else 10.0)
    options = ServeOptions(max_input_length=max_len, max_client_batch_size=args.max_client_batch_size,
                           max_body_bytes=args.payload_limit, deadline_s=deadline,
                           accuracy_floor=args.accuracy_floor, latency_target_s=target, frozen=bool(fixed),
                           model_id=str(args.model), extra_info={"threads": torch.get_num_threads()})
    service = build_service(model, ladder, options, window_s=args.window_ms / 1000,
                            max_batch_tokens=args.max_batch_tokens, max_batch_requests=args.max_batch_requests,
                            max_queue=args.max_concurrent_requests)
    server = GracefulServer(service, args.host, args.port, drain_s=args.drain_seconds)
    say(f"serve: {model.method} model {args.model} on http://{args.host}:{args.port} "
        f"({len(ladder.rungs)} rung{'s' if len(ladder.rungs) != 1 else ''}, floor rung {service.floor}, "
        f"target {args.latency_target_ms or 'none'} ms, {torch.get_num_threads()} threads)\n")
    sys.stderr.flush()
    server.run()
    if service.batcher.failed is not None:
        raise UserError(f"the model failed to start: {service.batcher.failed}")
    say("serve: stopped\n")
    return 0


def check_address(host: str, port: int) -> None:
    """Fail fast, in one line, when the address cannot be listened on (uvicorn would log and exit 1 only after
    the model has loaded)."""
    import socket

    from ..errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None
