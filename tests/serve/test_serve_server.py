"""The server's life: requests in flight finish on shutdown, late or abandoned requests never run, overload
answers 429 at once; the real ``nimblebert serve`` process exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from serve_fakes import ServerThread, fake_service, free_port, tiny_fastbert


@pytest.fixture
def fastbert_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fast"
    tiny_fastbert().save(folder)
    return folder


def metric(server: ServerThread, outcome: str) -> float:
    text = server.request("GET", "/metrics")[2].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith(f'nimblebert_request_total{{outcome="{outcome}"}}'))
    return float(line.split()[-1])


def in_threads(server: ServerThread, n: int, payload: dict) -> tuple[list[threading.Thread], list]:
    results: list = []

    def go() -> None:
        results.append(server.predict(payload)[0])

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_shutdown_drains_requests_in_flight() -> None:
    service = fake_service(delay=0.4)
    server = ServerThread(service, drain_s=0.5).__enter__()
    threads, results = in_threads(server, 3, {"inputs": "good"})
    assert service.batcher.runner.started.wait(10)
    deadline = time.monotonic() + 10
    while service.batcher.queued_rows < 2 and time.monotonic() < deadline:  # one running, two queued
        time.sleep(0.01)
    server.server.begin_shutdown()  # what SIGTERM calls
    # Draining: health and new requests answer 503 while the listening socket is still open ...
    assert server.request("GET", "/health")[0] == 503
    assert server.predict({"inputs": "good"})[0] == 503
    for t in threads:
        t.join(20)
    # ... and every request that was in flight got its answer.
    assert results == [200, 200, 200]
    server.thread.join(20)
    assert not server.thread.is_alive() and not service.batcher.thread.is_alive()


def test_requests_past_their_deadline_are_dropped_not_run() -> None:
    service = fake_service(delay=0.5, deadline_s=0.2)
    with ServerThread(service) as server:
        threads, results = in_threads(server, 1, {"inputs": "good"})
        assert service.batcher.runner.started.wait(10)
        time.sleep(0.05)
        status, headers, body = server.predict({"inputs": "bad"})  # waits behind a 0.5 s batch: past 0.2 s
        for t in threads:
            t.join(10)
        assert results == [200] and status == 429 and body["error_type"] == "Overloaded"
        assert "retry-after" in headers and metric(server, "dropped_deadline") == 1
        assert [n for n, _ in service.batcher.runner.batches] == [1]  # only the first request ran


def test_a_disconnected_client_is_never_run() -> None:
    service = fake_service(delay=0.5)
    with ServerThread(service) as server:
        threads, results = in_threads(server, 1, {"inputs": "good"})
        assert service.batcher.runner.started.wait(10)
        body = json.dumps({"inputs": "bad"}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.1)  # queued behind the running batch; then the client leaves
        for t in threads:
            t.join(10)
        deadline = time.monotonic() + 5
        while metric(server, "dropped_disconnect") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(server, "dropped_disconnect") == 1 and results == [200]
        assert len(service.batcher.runner.batches) == 1  # only the first request's batch


def test_a_full_queue_answers_429_at_once() -> None:
    service = fake_service(delay=0.5, max_queue=2)
    with ServerThread(service) as server:
        threads, results = in_threads(server, 1, {"inputs": "good"})
        assert service.batcher.runner.started.wait(10)
        time.sleep(0.05)
        threads2, results2 = in_threads(server, 1, {"inputs": [["good"], ["bad"]]})  # fills the queue
        time.sleep(0.1)
        t0 = time.monotonic()
        status, headers, body = server.predict({"inputs": "good"})
        assert status == 429 and headers["retry-after"] == "1" and time.monotonic() - t0 < 0.3
        for t in threads + threads2:
            t.join(10)
        assert results == [200] and results2 == [200] and metric(server, "overloaded") == 1


def test_cli_serves_a_calibrated_model_and_exits_0_on_sigterm(fastbert_folder: Path, toy_data_dir: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """``nimblebert serve`` run by the CLI's main() on this (main) thread, a client thread, and a real SIGTERM to
    this process: the server's handler drains and main() returns 0 (a subprocess would pay the imports again)."""
    from nimblebert.cli.main import main

    assert main(["calibrate", str(fastbert_folder), "--data", str(toy_data_dir), "--max-length", "16"]) == 0
    assert (fastbert_folder / "ladder.json").exists()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict = {}

    def client() -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            body = json.dumps({"inputs": [["good film"], ["bad"]]}).encode()
            req = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                seen["answer"], seen["rung"] = json.loads(resp.read()), resp.headers["x-nimblebert-rung"]
            seen["info"] = json.loads(urllib.request.urlopen(url + "/info", timeout=5).read())["nimblebert"]
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client)
    thread.start()
    code = main(["serve", str(fastbert_folder), "--port", str(port), "--latency-target-ms", "200"])
    thread.join(10)
    err = capsys.readouterr().err
    assert code == 0 and "serve: stopped" in err
    assert seen["rung"] == "0" and len(seen["answer"]) == 2
    assert {p["label"] for p in seen["answer"][0]} == {"negative", "positive"}
    info = seen["info"]
    assert info["method"] == "fastbert" and info["ladder_calibrated"] and info["latency_target_ms"] == 200


def test_cli_bad_input_is_one_line_and_exit_2(fastbert_folder: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from nimblebert.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            (["serve", str(tmp_path / "nowhere")], "not a model folder"),
            (["serve", str(fastbert_folder), "--port", str(port)], "cannot listen"),
            (["serve", str(fastbert_folder), "--port", str(free_port()), "--accuracy-floor", "1.5"], "accuracy-floor"),
            (["serve", str(fastbert_folder), "--port", str(free_port()), "--speed", "2"], "out of range"),
            (["calibrate", str(tmp_path / "nowhere"), "--data", "mr"], "not a local model folder"),
        ]
        capsys.readouterr()
        for argv, words in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0], (argv, err)
    (fastbert_folder / "ladder.json").write_text("{not json")
    assert main(["serve", str(fastbert_folder), "--port", str(free_port())]) == 2
    assert "not a valid ladder" in capsys.readouterr().err


def test_a_model_that_cannot_run_stops_the_server() -> None:
    service = fake_service()

    def broken(rows, knobs):
        raise RuntimeError("no kernel for this")

    service.batcher.runner.run = broken
    server = ServerThread(service)
    server.thread.start()
    server.thread.join(20)
    assert not server.thread.is_alive() and "no kernel" in str(service.batcher.failed)
