"""Per-call overhead at batch 1: what a sentence costs that does not scale with the layers run.

At ten times the teacher's speed a batch-1 call has about 2 ms in all, so what every call pays whatever the
depth (the runner, the embeddings, the head, a FastBERT branch, the exit decision) decides whether 10x is
possible. On the `mr` test sentences (max length 64), one sentence at a time, 1 thread:

1. **Breakdown**: each piece of a FastBERT pass timed alone on the same sentences (embeddings, one
   Transformer layer, one branch, the exit decision and row removal, the head, the runner's own work), in
   float32 and int8.
2. **Exit after layer 1 vs the full model**: a FastBERT model at speed 1 (every sentence leaves at its first
   branch) against speed 0 (the full model, no branch), float32 and int8; the ideal ratio is 1/L (1/6). Also
   FastBERT on DynaBERT at width 0.5 when given (``--dyna-fast``).
3. **The teacher** at batch 1 and batch 32 in nimblebert (float32, int8) against plain transformers (eager,
   sdpa), interleaved in the same run.

    python benchmarks/overhead.py --threads 1 --fast /work/main/runs/fast --dyna-fast /work/main/runs/dyna-fast \
        --teacher /work/main/runs/teacher-mr

``--profile`` also prints torch.profiler's operator table for the exit-after-layer-1 pass (not saved).
``--docs DIR`` writes the section and JSON there instead of docs/ (a trial run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch
from common import env_line, environment, in_repo


def timed(fn: Any, inputs: list[Any], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median and mean ms of ``fn(x)`` over ``inputs`` × ``rounds`` (after ``warmup`` calls)."""
    for x in inputs[:warmup]:
        fn(x)
    ts = []
    for _ in range(rounds):
        for x in inputs:
            t0 = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t0)
    return {"p50_ms": round(statistics.median(ts) * 1e3, 4), "mean_ms": round(statistics.fmean(ts) * 1e3, 4)}


def aten_ops(fn: Any, x: Any) -> int:
    """How many operator calls (``aten::`` and quantized kernels, nested ones included) one call of ``fn(x)``
    dispatches: a count that, unlike a time, does not drift with the machine's load."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    return sum(e.count for e in prof.key_averages() if "::" in e.key)


def breakdown(model: Any, batches: list[dict[str, torch.Tensor]], rounds: int) -> dict[str, dict[str, float]]:
    """Each piece of a FastBERT exit-after-layer-1 pass timed alone on the same sentences (batch 1)."""
    from nimblebert.core.encoder import LoopState
    from nimblebert.inference import contributions, run
    from nimblebert.methods.fastbert.modules import normalized_entropy

    enc = model.encoder
    branches = model.extras["branches"]
    knobs = model.check_knobs({"speed": 1.0})
    # Inputs each piece sees: the embeddings' and the first layer's outputs of every sentence.
    prepared = []
    for b in batches:
        h0 = enc.embed(b["input_ids"], b.get("token_type_ids"))
        state = LoopState(h0, b["attention_mask"], enc.num_labels)
        h1, _ = enc.layer(enc.parts[0], h0, state.attn_mask, pack=state.pack)
        prepared.append((b, h0, h1, state.attn_mask, branches[0](h1, b["attention_mask"], state.attn_mask)))

    def loop_state(x: Any) -> None:
        s = LoopState(x[1], x[0]["attention_mask"], enc.num_labels)
        s.attn_mask  # noqa: B018 (the masks are built on first use)

    def exit_decision(x: Any) -> None:
        s = LoopState(x[2], x[0]["attention_mask"], enc.num_labels)
        s.step, s.layer = 1, 0
        s.finish(normalized_entropy(x[4]) <= 1.0, x[4])

    pieces = {
        "whole pass (speed 1)": lambda x: run(model, x[0], knobs),
        "whole pass (speed 0)": lambda x: run(model, x[0], model.check_knobs({"speed": 0.0})),
        "runner: knobs + contributions": lambda x: (model.check_knobs({"speed": 1.0}),
                                                    contributions(model, x[0], knobs)),
        "embeddings": lambda x: enc.embed(x[0]["input_ids"], x[0].get("token_type_ids")),
        "loop state + masks": loop_state,
        "one layer": lambda x: enc.layer(enc.parts[0], x[1], x[3]),
        "branch (layer 1)": lambda x: branches[0](x[2], x[0]["attention_mask"], x[3]),
        "exit decision + row removal": exit_decision,
        "head (pooler + classifier)": lambda x: enc.classify(x[2]),
    }
    with torch.inference_mode():
        return {name: timed(fn, prepared, rounds) for name, fn in pieces.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", default="runs/fast", help="a FastBERT folder on the teacher")
    ap.add_argument("--dyna-fast", default="", help="a FastBERT-on-DynaBERT folder (timed at width 0.5)")
    ap.add_argument("--teacher", default="runs/teacher-mr")
    ap.add_argument("--data", default="mr")
    ap.add_argument("--max-length", type=int, default=64)
    common.add_options(ap, bootstrap=False, timing={1: 100, 32: 320}, threads_default=1)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's table of the speed-1 pass")
    ap.add_argument("--no-teacher", action="store_true",
                    help="skip part 3 (a quicker trial): print parts 1-2 as JSON (also to --save); no section")
    ap.add_argument("--save", type=Path, default=None, help="with --no-teacher: write parts 1-2 as JSON here")
    ap.add_argument("--before", type=Path, default=None,
                    help="a --save file of this script run on the code before a change: shown beside this run")
    ap.add_argument("--before-label", default="before", help="what --before was run on (e.g. a commit)")
    opts = ap.parse_args()
    common.use_threads(opts.threads)
    t_start = time.time()
    fast_dir, dyna_fast_dir, teacher_dir = (in_repo(p) for p in (opts.fast, opts.dyna_fast, opts.teacher))

    from nimblebert import load
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import hf_contender, latency_batches, nimble_contender, transformers_baselines
    from nimblebert.data import encode, load_task
    from nimblebert.runtime.onednn import bf16_supported

    # Parts 1 and 3 in float32 and int8; part 2 (exit after layer 1 vs full) also in bf16-onednn where oneDNN has it
    fast = {rt: load(fast_dir, runtime=rt).eval() for rt in ("fp32", "int8")}
    exit_runtimes = ("fp32", "int8", *(("bf16-onednn",) if bf16_supported() else ()))
    task = load_task(opts.data, label_names=fast["fp32"].label_names)
    split = "test" if task.test is not None else "validation"
    encoded = encode(getattr(task, split), fast["fp32"].tokenizer, opts.max_length, task.has_pair)
    b1 = latency_batches(fast["fp32"], encoded, 1, opts.b1_examples)

    # 1. breakdown
    parts = {rt: breakdown(m, b1, opts.rounds) for rt, m in fast.items()}

    # 2. exit after layer 1 vs the full model, interleaved
    fns: dict[str, Any] = {}
    models = [("fast", {**fast, **{rt: load(fast_dir, runtime=rt).eval() for rt in exit_runtimes
                                   if rt not in fast}}, {})]
    if opts.dyna_fast:
        models.append(("dyna-fast w0.5", {rt: load(dyna_fast_dir, runtime=rt).eval() for rt in exit_runtimes},
                       {"width": 0.5}))
    for tag, ms, extra in models:
        for rt, m in ms.items():
            fns[f"{tag} {rt} full"] = nimble_contender(m, {**extra, "speed": 0.0})
            fns[f"{tag} {rt} exit1"] = nimble_contender(m, {**extra, "speed": 1.0})
    over = compare_latency(fns, b1, 1, rounds=opts.rounds)  # interleaved: each call after the others' (cold caches)
    with torch.inference_mode():  # consecutive: every sentence through one contender, then the next (warm caches)
        warm = {name: timed(fn, b1, opts.rounds) for name, fn in fns.items()}
        ops = {name: aten_ops(fn, b1[0]) for name, fn in fns.items()}
    exits = []
    for tag, ms, _ in models:
        for rt in ms:
            full, ex = f"{tag} {rt} full", f"{tag} {rt} exit1"
            layers = ms[rt].encoder.num_layers
            exits.append({"model": tag, "runtime": rt, "layers": layers, "ideal": round(1 / layers, 4),
                          "full_p50_ms": over[full]["p50_ms"], "exit1_p50_ms": over[ex]["p50_ms"],
                          "ratio": round(over[ex]["p50_ms"] / over[full]["p50_ms"], 4),
                          "warm_full_p50_ms": warm[full]["p50_ms"], "warm_exit1_p50_ms": warm[ex]["p50_ms"],
                          "warm_ratio": round(warm[ex]["p50_ms"] / warm[full]["p50_ms"], 4),
                          "full_ops": ops[full], "exit1_ops": ops[ex]})

    if opts.profile:
        from torch.profiler import ProfilerActivity, profile

        for rt, m in fast.items():
            fn = nimble_contender(m, {"speed": 1.0})
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for b in b1:
                    fn(b)
            print(f"== {rt}, exit after layer 1, {len(b1)} calls ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    if opts.no_teacher:
        partial = {"breakdown": parts, "exits": exits, "environment": environment()}
        if opts.save:
            opts.save.write_text(json.dumps(partial, indent=1) + "\n")
        print(json.dumps(partial, indent=1))
        return
    # 3. the teacher against plain transformers, batch 1 and 32
    teacher = {rt: load(teacher_dir, runtime=rt).eval() for rt in ("fp32", "int8")}
    plain = transformers_baselines(teacher_dir)
    contenders: dict[str, Any] = {name: hf_contender(hf) for name, hf in plain.items()}
    contenders.update({f"nimblebert-{rt}": nimble_contender(m, {}) for rt, m in teacher.items()})
    lat = {}
    for bs, n in ((1, opts.b1_examples), (32, opts.b32_examples)):
        batches = latency_batches(teacher["fp32"], encoded, bs, n)
        lat[f"batch{bs}"] = compare_latency(contenders, batches, bs, rounds=opts.rounds)
        base = min(v["ms_per_sample"] for k, v in lat[f"batch{bs}"].items() if k.startswith("transformers-"))
        for v in lat[f"batch{bs}"].values():
            v["speedup"] = round(base / v["ms_per_sample"], 3)

    env = {**environment(), "minutes": round((time.time() - t_start) / 60, 1)}
    data = {"fast": opts.fast, "dyna_fast": opts.dyna_fast, "teacher": opts.teacher, "data": opts.data,
            "b1_examples": len(b1), "breakdown": parts, "exits": exits, "teacher_latency": lat, "environment": env}
    if opts.before:
        data["before"] = {"label": opts.before_label, **json.loads(opts.before.read_text())}
    md = render(data, common.command_line())
    common.publish("overhead", md, data, headline=None, docs=common.docs_folder(opts))  # docs/ when not given
    print(md)


def render(data: dict[str, Any], command: str) -> str:
    bd = data["breakdown"]
    lines = [
        "## Per-call overhead at batch 1",
        "",
        f"`{command}`. {data['b1_examples']} `{data['data']}` test sentences one at a time; median (p50) ms unless "
        "said; interleaved contenders in one run.",
        "",
        f"What each piece of a FastBERT pass ({data['fast']}, attention branches) costs alone on the same sentences "
        "(batch 1, p50 ms):",
        "",
    ]
    before = data.get("before")
    if before:
        bb = before["breakdown"]
        lines += [f"| piece | fp32 | int8 | fp32, {before['label']} | int8, {before['label']} |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {bd['fp32'][name]['p50_ms']:.3f} | {bd['int8'][name]['p50_ms']:.3f} | "
                  f"{bb['fp32'][name]['p50_ms']:.3f} | {bb['int8'][name]['p50_ms']:.3f} |" for name in bd["fp32"]]
    else:
        lines += ["| piece | fp32 | int8 |", "|---|---|---|"]
        lines += [f"| {name} | {bd['fp32'][name]['p50_ms']:.3f} | {bd['int8'][name]['p50_ms']:.3f} |"
                  for name in bd["fp32"]]
    lines += ["", "A sentence that leaves after layer 1 (speed 1) against the full model (speed 0). *Interleaved*: "
              "the contenders take turns sentence by sentence (each call finds the caches filled by the others, as "
              "int8_mr measured); *warm*: all sentences through one contender, then the next (a server's steady "
              "state). Ops: operator calls dispatched by one call (a count that does not drift with load).", "",
              "| code | model | runtime | full ms | exit after layer 1 ms | ratio | warm full ms | warm exit ms "
              "| warm ratio | ideal 1/L | ops full / exit |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = [("this run", data["exits"])] + ([(before["label"], before["exits"])] if before else [])
    lines += [f"| {code} | {e['model']} | {e['runtime']} | {e['full_p50_ms']:.2f} | {e['exit1_p50_ms']:.2f} "
              f"| {e['ratio']:.3f} | {e['warm_full_p50_ms']:.2f} | {e['warm_exit1_p50_ms']:.2f} "
              f"| {e['warm_ratio']:.3f} | {e['ideal']:.3f} | {e['full_ops']} / {e['exit1_ops']} |"
              for code, exits in runs for e in exits]
    if before:
        lines += ["", f"*{before['label']}*: the same script on the code before this change, run just before this "
                  f"run on the same core ({before['environment'].get('date', '')}); compare ratios and op counts, "
                  "absolute times drift."]
    lines += ["", f"The teacher ({data['teacher']}) against plain transformers; × = speed-up over the faster "
              "transformers contender (batch 1: p50; batch 32: per sentence):", "",
              "| contender | b1 p50 ms | b1 mean ms | b1 p90 ms | b1 × | b32 ms/sentence | b32 × |",
              "|---|---|---|---|---|---|---|"]
    t1, t32 = data["teacher_latency"]["batch1"], data["teacher_latency"]["batch32"]
    for name in t1:
        a, b = t1[name], t32[name]
        lines.append(f"| {name} | {a['p50_ms']:.2f} | {1e3 / a['samples_per_s']:.2f} | {a['p90_ms']:.2f} | "
                     f"{a['speedup']:.2f} | {b['ms_per_sample']:.3f} | {b['speedup']:.2f} |")
    lines += ["", env_line(data["environment"]) + " The process is pinned to one core."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
