"""``nimblebert serve`` under open-loop load on `mr`: does the adaptive knob hold a p99 target?

A FastBERT model is calibrated on mr's validation split (its ladder), then served by real server processes
(pinned to core 0 at one thread by ``/work/bin/core0`` when it exists) and driven by a real HTTP client in
this process (loopback only): open-loop Poisson arrivals of mr test sentences, each request's latency
counted from its *scheduled* send time, so a stalled client or server cannot hide queueing. Every load step
is bounded in time (``--step-seconds`` of arrivals, then at most ``--drain-seconds`` for the last answers).

Servers: ``accurate`` (knob fixed at the ladder's most accurate rung), ``fastest`` (fixed at its cheapest
rung), ``adaptive`` (the controller with ``--latency-target-ms``, admission control on), ``accurate-shed``
(fixed at the most accurate rung, with the same target and admission control: separates what the knob buys
from what shedding buys) and ``baseline`` (``serve_baseline.py``: plain transformers + FastAPI, one sentence
per call). Offered loads are multiples of the teacher's saturation throughput, measured first by a
closed-loop burst against the ``accurate`` server at speed 0 (the FastBERT teacher itself).

Per server and load: p50/p99 latency of the answered requests, goodput (answers within the target per
second), the 429 rate, accuracy of the answers against the test labels and their agreement with the full
model's predictions on the same sentences.

    python benchmarks/serve_mr.py --model /work/main/runs/fast --prepare-only   # calibrate a copy (core 1)
    flock /tmp/core0.lock /work/bin/dev python benchmarks/serve_mr.py --model /work/main/runs/fast --reuse --pin held
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import ROOT, environment

CORE0 = Path("/work/bin/core0")
LOADS = "0.25,0.5,0.75,1.0,1.25,1.5"
SERVERS = "accurate,fastest,adaptive,accurate-shed,baseline"


# ---- the HTTP client --------------------------------------------------------------------------------------
async def post(port: int, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One POST /predict on a fresh connection (HTTP/1.1, Connection: close); (0, {}, b"") on failure."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return 0, {}, b""
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, {}, b""
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, payload


async def open_loop(port: int, texts: list[str], rate: float, seconds: float, drain: float, seed: int) -> list[dict]:
    """Poisson arrivals at ``rate``/s for ``seconds``; each result has the text index, status, latency from the
    scheduled send time, the predicted label and the rung that answered."""
    rng = random.Random(seed)
    schedule, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        schedule.append((t, rng.randrange(len(texts))))
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    results: list[dict] = []

    async def one(at: float, i: int) -> None:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        body = json.dumps({"inputs": texts[i], "truncate": True}).encode()
        status, headers, payload = await post(port, body, timeout=seconds + drain)
        latency = loop.time() - (start + at)
        label = None
        if status == 200:
            try:
                label = json.loads(payload)[0]["label"]
            except (ValueError, KeyError, IndexError, TypeError):
                status = -1
        server_ms = headers.get("x-total-time", "")  # the server's own arrival-to-answer time (ms)
        results.append({"i": i, "status": status, "latency": latency, "label": label,
                        "server_s": int(server_ms) / 1000 if server_ms.isdigit() else None,
                        "rung": headers.get("x-nimblebert-rung"), "knobs": headers.get("x-nimblebert-knobs")})

    tasks = [asyncio.ensure_future(one(at, i)) for at, i in schedule]
    done, pending = await asyncio.wait(tasks, timeout=seconds + drain + 1) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    return results


async def closed_loop(port: int, texts: list[str], clients: int, seconds: float) -> float:
    """Saturation throughput: ``clients`` clients send back to back for ``seconds``; answers per second."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    count = 0

    async def client(k: int) -> None:
        nonlocal count
        i = k
        while loop.time() < end:
            status, _, _ = await post(port, json.dumps({"inputs": texts[i % len(texts)], "truncate": True}).encode(),
                                      timeout=30)
            if status == 200 and loop.time() < end:
                count += 1
            i += clients

    t0 = loop.time()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return count / (min(loop.time(), end) - t0)


# ---- servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process (under /work/bin/core0 when present), ready once /health answers 200."""

    def __init__(self, args: list[str], port: int, log: Path, pin: str = "core0") -> None:
        # "core0": each server waits for the core-0 lock; "held": this run already holds it (flock around the
        # whole script), so servers are only pinned; "no": not pinned.
        prefix = {"core0": [str(CORE0)] if CORE0.exists() else [],
                  "held": ["taskset", "-c", "0", "env", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1"]}.get(pin, [])
        self.log = log.open("w")
        self.port = port
        self.proc = subprocess.Popen(prefix + args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout  # long: /work/bin/core0 first waits for the core-0 lock
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> int:
        self.proc.terminate()  # SIGTERM: the graceful path
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9
        finally:
            self.log.close()


def server_command(kind: str, model: Path, ladder: dict, port: int, args: argparse.Namespace) -> list[str]:
    py = [sys.executable]
    if kind == "baseline":
        return py + [str(ROOT / "benchmarks" / "serve_baseline.py"), str(model), "--port", str(port),
                     "--threads", "1", "--max-length", str(args.max_length)]
    cmd = py + ["-m", "nimblebert", "serve", str(model), "--port", str(port), "--threads", "1",
                "--max-input-length", str(args.max_length), "--window-ms", str(args.window_ms)]
    rungs = ladder["rungs"]
    fixed = {"accurate": rungs[0]["knobs"], "accurate-shed": rungs[0]["knobs"], "fastest": rungs[-1]["knobs"],
             "teacher": {"speed": 0.0}}.get(kind)
    for name, value in (fixed or {}).items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    if kind in ("adaptive", "accurate-shed"):
        cmd += ["--latency-target-ms", str(args.target_ms)]
    return cmd


# ---- the run ---------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, as the server's controller computes it; None for no values."""
    from nimblebert.serve.controller import percentile as nearest_rank

    return nearest_rank(values, q) if values else None


def summarize(results: list[dict], rate: float, seconds: float, target_s: float, labels: list[str],
              gold: list[int], full: list[int]) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    server = [r["server_s"] for r in ok if r.get("server_s") is not None]
    index = {name: i for i, name in enumerate(labels)}
    pred = [index.get(r["label"], -1) for r in ok]
    n = len(results)
    rungs = [int(r["rung"]) for r in ok if r["rung"] not in (None, "")]
    return {
        "offered_per_s": rate, "sent": n, "answered": len(ok),
        "p50_ms": None if not lat else 1000 * percentile(lat, 50),
        "p99_ms": None if not lat else 1000 * percentile(lat, 99),
        "server_p99_ms": None if not server else 1000 * percentile(server, 99),
        "goodput_per_s": sum(1 for v in lat if v <= target_s) / seconds,
        "rate_429": sum(1 for r in results if r["status"] == 429) / n if n else 0.0,
        "failed": sum(1 for r in results if r["status"] not in (200, 429)),
        "accuracy": sum(p == gold[r["i"]] for p, r in zip(pred, ok, strict=True)) / len(ok) if ok else None,
        "agreement": sum(p == full[r["i"]] for p, r in zip(pred, ok, strict=True)) / len(ok) if ok else None,
        "mean_rung": sum(rungs) / len(rungs) if rungs else None,
        "knobs_seen": sorted({r["knobs"] for r in ok if r["knobs"]}),
    }


def prepare(args: argparse.Namespace, out: Path) -> tuple[Path, dict, dict]:
    """Copy the model folder (its ladder is written into the copy), calibrate it on validation, and predict the
    test split with the full model (for agreement). Returns the folder, its ladder and the test data."""
    import torch

    from nimblebert import load
    from nimblebert.data import encode, load_task, make_loader
    from nimblebert.inference import predict_loader
    from nimblebert.ladder import calibrate, load_ladder, save_ladder

    folder = out / "model"
    if not (folder / "config.json").exists():
        shutil.copytree(args.model, folder, ignore=shutil.ignore_patterns("ladder.json", "*.jsonl"))
    model = load(folder)
    task = load_task(args.data, label_names=model.label_names)
    ladder = load_ladder(folder) if args.reuse else None
    if ladder is None or ladder.meta.get("max_length") != args.max_length:
        val = encode(task.validation, model.tokenizer, args.max_length, task.has_pair)
        ladder = calibrate(model, val, meta={"data": args.data, "split": "validation", "max_length": args.max_length})
        save_ladder(folder, ladder)
    split = "test" if task.test is not None else "validation"
    rows = getattr(task, split)
    encoded = encode(rows, model.tokenizer, args.max_length, task.has_pair)
    loader = make_loader(encoded, model.tokenizer, 64, shuffle=False, bucket_by_length=True)
    with torch.inference_mode():
        full = predict_loader(model, loader, **model.check_knobs({}))
    test = {"split": split, "texts": list(rows["text"]), "gold": [int(v) for v in rows["label"]],
            "full": [int(v) for v in full.predicted], "labels": list(model.label_names)}
    return folder, ladder.to_json(), test


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "fast"), help="a FastBERT (or composed) model folder")
    p.add_argument("--data", default="mr")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--target-ms", type=float, default=100.0, help="p99 latency target")
    p.add_argument("--loads", default=LOADS, help="offered loads, × the teacher's saturation throughput")
    p.add_argument("--servers", default=SERVERS)
    p.add_argument("--step-seconds", type=float, default=10.0, help="seconds of arrivals per load step")
    p.add_argument("--drain-seconds", type=float, default=5.0, help="at most this long for the last answers")
    p.add_argument("--window-ms", type=float, default=500.0, help="the adaptive server's controller window")
    p.add_argument("--saturation-seconds", type=float, default=8.0)
    p.add_argument("--saturation", type=float, default=None, help="skip measuring: the teacher's answers/s")
    p.add_argument("--out", default=str(ROOT / "runs" / "serve-mr"))
    p.add_argument("--reuse", action="store_true", help="keep a calibrated copy in --out")
    p.add_argument("--pin", default="core0", choices=["core0", "held", "no"],
                   help="core0: run each server under /work/bin/core0; held: the caller holds the core-0 lock "
                        "(flock /tmp/core0.lock ...), pin the servers to core 0 with taskset; no: do not pin")
    p.add_argument("--prepare-only", action="store_true", help="calibrate the copy in --out and stop")
    p.add_argument("--docs", default=None, help="write the section here instead of docs/")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    folder, ladder, test = prepare(args, out)
    if args.prepare_only:
        return
    print(f"ladder: {len(ladder['rungs'])} rungs {[r['knobs'] for r in ladder['rungs']]}", file=sys.stderr)
    texts, target_s = test["texts"], args.target_ms / 1000

    saturation = args.saturation
    if saturation is None:
        port = free_port()
        server = Server(server_command("teacher", folder, ladder, port, args), port, out / "teacher.log", args.pin)
        try:
            server.wait_ready()
            asyncio.run(closed_loop(port, texts, 32, 2.0))  # warm-up
            saturation = asyncio.run(closed_loop(port, texts, 32, args.saturation_seconds))
        finally:
            server.stop()
    print(f"teacher saturation: {saturation:.1f} answers/s", file=sys.stderr)

    loads = [float(x) for x in args.loads.split(",")]
    runs: dict[str, list[dict]] = {}
    exits: dict[str, int] = {}
    for kind in args.servers.split(","):
        port = free_port()
        server = Server(server_command(kind, folder, ladder, port, args), port, out / f"{kind}.log", args.pin)
        try:
            server.wait_ready()
            asyncio.run(closed_loop(port, texts, 8, 1.0))  # warm-up
            runs[kind] = []
            for k, load in enumerate(loads):
                rate = load * saturation
                results = asyncio.run(open_loop(port, texts, rate, args.step_seconds, args.drain_seconds, seed=k))
                row = {"load": load, **summarize(results, rate, args.step_seconds, target_s, test["labels"],
                                                  test["gold"], test["full"])}
                runs[kind].append(row)
                print(f"{kind:>14} ×{load:<5} {rate:7.1f}/s  p50 {row['p50_ms']}  p99 {row['p99_ms']}  "
                      f"goodput {row['goodput_per_s']:.1f}/s  429 {row['rate_429']:.2%}  acc {row['accuracy']}",
                      file=sys.stderr)
                time.sleep(1.0)  # let the queue empty between steps
        finally:
            exits[kind] = server.stop()

    env = environment()
    pinned = args.pin == "held" or (args.pin == "core0" and CORE0.exists())
    env["server"] = ("one process per server, pinned to core 0 at 1 thread (/work/bin/core0)" if pinned
                     else "one process per server at 1 thread, not pinned")
    env["cpu"], env["isa"] = cpu_description()
    env["client"] = "this process (asyncio, fresh loopback connection per request)"
    minutes = (time.monotonic() - t_start) / 60
    result = {"model": args.model, "data": args.data, "split": test["split"], "examples": len(texts),
              "max_length": args.max_length, "target_ms": args.target_ms, "saturation_per_s": saturation,
              "ladder": ladder, "runs": runs, "exit_codes": exits, "step_seconds": args.step_seconds,
              "environment": env, "minutes": minutes, "command": common.command_line()}
    (out / "serve_mr.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    headline = headline_of(result)
    if args.docs:
        common.publish("serve_mr", md, result, headline, Path(args.docs))
    else:
        common.write_section("serve_mr", md, result, headline)
    print(md)


def cpu_description() -> tuple[str, str]:
    """The CPU model and its vector ISA, from /proc/cpuinfo (what int8 and fp32 speed depend on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"))
           if flag in flags]
    return model, ", ".join(isa) or "none of AVX2/AVX-512"


def fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(r: dict) -> str:
    env = r["environment"]
    cpu = f"{env.get('cpu', '?')} ({env.get('isa', '?')})"
    rungs = ", ".join(f"{' '.join(f'{k}={v}' for k, v in g['knobs'].items() if k != 'patience')} "
                      f"({100 * g['accuracy']:.1f}%, FLOPs ×{g['flops_speedup']:.2f})" for g in r["ladder"]["rungs"])
    lines = [f"## `nimblebert serve` under load (`{r['data']}`)", "",
             f"`{r['command']}` — {r['examples']} {r['split']} sentences, open-loop Poisson arrivals timed from the "
             f"scheduled send time, {r['step_seconds']:g} s per load step; p99 target {r['target_ms']:g} ms; "
             f"teacher saturation {r['saturation_per_s']:.1f} answers/s (closed loop, 32 clients). "
             f"CPU: {cpu}; server: {env['server']}; client: {env['client']}. {r['minutes']:.1f} min.", "",
             f"Ladder (calibrated on validation): {rungs}.", "",
             "| server | load × | offered /s | p50 ms | p99 ms | server p99 ms | goodput /s | 429 | accuracy "
             "| agreement | mean rung |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, rows in r["runs"].items():
        for row in rows:
            lines.append(f"| {kind} | {row['load']:g} | {row['offered_per_s']:.1f} | {fmt(row['p50_ms'])} | "
                         f"{fmt(row['p99_ms'])} | {fmt(row.get('server_p99_ms'))} | {row['goodput_per_s']:.1f} | "
                         f"{100 * row['rate_429']:.1f}% | "
                         f"{fmt(row['accuracy'], '.4f')} | {fmt(row['agreement'], '.4f')} | "
                         f"{fmt(row['mean_rung'] if kind == 'adaptive' else None, '.2f')} |")
    lines += ["", "Goodput: answers within the target per second of offered load. Accuracy and agreement (with the "
              "full model's prediction on the same sentence) are over the answered requests only. p50/p99: the "
              "client's latency from the scheduled send time; server p99: the server's own arrival-to-answer time "
              "(`x-total-time`; the baseline sends none), which leaves out the client and the connection. Mean "
              "rung: the adaptive server's ladder rung per answer (0 = most accurate)."]
    return "\n".join(lines)


def headline_of(r: dict) -> str:
    runs = r["runs"]
    top = max(row["load"] for rows in runs.values() for row in rows) if runs else 0
    parts = []
    for kind in ("adaptive", "accurate", "fastest", "baseline"):
        row = next((x for x in runs.get(kind, []) if x["load"] == top), None)
        if row:
            parts.append(f"{kind} p99 {fmt(row['p99_ms'], '.0f')} ms, goodput {row['goodput_per_s']:.0f}/s, "
                         f"accuracy {fmt(row['accuracy'], '.3f')}")
    return (f"**serve** (`{r['data']}`, p99 target {r['target_ms']:g} ms, {top:g}× the teacher's saturation): "
            + "; ".join(parts) + ".")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
