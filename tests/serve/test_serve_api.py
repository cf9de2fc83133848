"""The HTTP API against a real uvicorn server on a thread (a deterministic fake model): TEI-shaped golden
requests and answers, the extra routes, and a fuzz of malformed bodies that never gets a 500 or kills it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from serve_fakes import ServerThread, fake_service

from nimblebert.serve.api import ApiError, parse_predict

GOLDEN = json.loads((Path(__file__).parent / "golden_predict.json").read_text())


@pytest.fixture(scope="module")
def server():
    with ServerThread(fake_service()) as s:
        yield s


def close(got, want) -> bool:
    """Equal, with floats compared to 1e-6 and only the keys ``want`` names in dicts."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and close(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, float):
        return isinstance(got, (int, float)) and abs(got - want) < 1e-6
    return got == want


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_golden_requests_get_tei_shaped_answers(server, case) -> None:
    status, headers, body = server.predict(case["request"])
    assert status == case["status"], body
    assert close(body, case["response"]), body
    if status == 200:
        assert headers["x-nimblebert-knobs"] == "speed=0.0" and headers["x-nimblebert-rung"] == "0"
        assert int(headers["x-compute-tokens"]) > 0 and int(headers["x-total-time"]) >= 0
        assert headers["x-nimblebert-exit-layer"].split(",")[0] == "1"
    else:
        assert set(body) == {"error", "error_type"} and body["error"]


def test_health_info_metrics(server) -> None:
    assert server.request("GET", "/health")[0] == 200
    status, _, raw = server.request("GET", "/info")
    info = json.loads(raw)
    assert status == 200 and info["model_type"]["classifier"]["id2label"] == {"0": "negative", "1": "positive"}
    assert info["max_client_batch_size"] == 32 and info["nimblebert"]["setting"] == {"speed": 0.0}
    assert [r["knobs"]["speed"] for r in info["nimblebert"]["ladder"]] == [0.0, 0.1, 0.2]
    server.predict({"inputs": "good"})
    status, headers, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    success = [line for line in text.splitlines() if line.startswith('nimblebert_request_total{outcome="success"}')]
    assert success and float(success[0].split()[-1]) >= 1
    for name in ("nimblebert_request_duration_seconds_bucket", "nimblebert_request_queue_duration_seconds_count",
                 "nimblebert_batch_tokens_count", "nimblebert_queue_size", 'nimblebert_knob{knob="speed"}',
                 "nimblebert_exit_layer_bucket", 'nimblebert_controller_steps_total{direction="faster"}'):
        assert name in text, name
    status, _, raw = server.request("GET", "/nowhere")
    assert status == 404 and json.loads(raw)["error_type"] == "Validation"
    assert server.request("GET", "/predict")[0] == 405


def test_per_request_accuracy_floor_caps_the_rung() -> None:
    service = fake_service()
    service.batcher.controller.index = 2  # as if the controller had stepped to the cheapest rung
    with ServerThread(service) as s:
        assert s.predict({"inputs": "good"})[1]["x-nimblebert-knobs"] == "speed=0.2"
        # rung 1 has accuracy 0.85: a request that needs 0.86 is served by rung 0
        assert s.predict({"inputs": "good", "accuracy_floor": 0.86})[1]["x-nimblebert-knobs"] == "speed=0.0"
        assert s.predict({"inputs": "good", "accuracy_floor": 0.85})[1]["x-nimblebert-knobs"] == "speed=0.1"
        assert s.predict({"inputs": "good", "accuracy_floor": 2})[0] == 422


MALFORMED: list[bytes] = [
    b"", b"{", b"}", b"null", b"true", b"42", b'"good"', b"[]", b"{}", b'{"inputs": null}', b'{"inputs": 5}',
    b'{"inputs": {"text": "good"}}', b'{"inputs": [1, 2]}', b'{"inputs": [["a", "b", "c"]]}', b'{"inputs": [[]]}',
    b'{"inputs": [["good"], "bad"]}', b'{"inputs": [[1]]}', b'{"inputs": [null]}', b'{"inputs": ""}',
    b'{"inputs": "   "}', b'{"inputs": [""]}', b'{"inputs": "good", "truncate": "yes"}',
    b'{"inputs": "good", "raw_scores": 1}', b'{"inputs": "good", "accuracy_floor": "high"}',
    b'{"inputs": "good", "accuracy_floor": NaN}', b'{"inputs": "good", "accuracy_floor": true}',
    b'{"inputs": "\xff\xfe good"}', b"\xff\xfe\x00\x01", b'{"inputs": "\\ud800"}', b'{"inputs": "a\\u0000b"}',
    b'{"inputs": "good"} trailing', b'{"inputs": "good",}', b"[" * 100_000 + b"]" * 100_000,
    b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"inputs": 1e999999}', b"\x00" * 1000,
    json.dumps({"inputs": [["good"]] * 5000}).encode(),  # thousands of inputs
    json.dumps({"inputs": "good " * 120_000}).encode(),  # a huge string (0.6 MB) without truncate
    json.dumps({"inputs": "good " * 120_000, "truncate": True}).encode(),  # ... with truncate: answered
    json.dumps({"inputs": "x" * 2_100_000}).encode(),  # over the body limit
    json.dumps({"inputs": "\U0001f600" * 1000}).encode(), json.dumps({"inputs": ["\u00e9t\u00e9", "\u4e2d"]}).encode(),
]


def test_parser_raises_only_api_errors() -> None:
    for body in MALFORMED:
        try:
            parse_predict(body, 2_000_000, 32)
        except ApiError as e:
            assert 400 <= e.status < 500


def test_fuzz_never_500_and_server_survives(server) -> None:
    statuses = []
    for body in MALFORMED:
        status, _, raw = server.request("POST", "/predict", body)
        assert status < 500, (body[:80], status, raw[:200])
        if status != 200:
            parsed = json.loads(raw)
            assert set(parsed) == {"error", "error_type"}, parsed
        statuses.append(status)
    assert {400, 413, 422} <= set(statuses) and 200 in statuses
    # Random mutations of valid bodies: bytes flipped, cut, duplicated.
    rng = random.Random(0)
    valid = [b'{"inputs": "a good movie", "truncate": true}', b'{"inputs": [["good"], ["bad", "film"]]}']
    for _ in range(150):
        body = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            op, at = rng.randrange(3), rng.randrange(len(body))
            if op == 0:
                body[at] = rng.randrange(256)
            elif op == 1:
                del body[at:at + rng.randint(1, 5)]
            else:
                body[at:at] = body[at:at + rng.randint(1, 8)]
        status, _, raw = server.request("POST", "/predict", bytes(body))
        assert status < 500, (bytes(body), status, raw[:200])
    # Wrong methods and content types, headers that lie about the length
    assert server.request("POST", "/predict", b'{"inputs": "good"}', {"Content-Type": "text/plain"})[0] == 200
    assert server.request("POST", "/predict", None, {"Content-Length": "99999999"}, timeout=5)[0] == 413
    assert server.request("GET", "/health")[0] == 200
    assert server.predict({"inputs": "good"})[0] == 200
