"""Why narrow widths and early exits fall short of their FLOPs: where a float32 forward's time goes.

Issue 17 asks the measured speed-up ÷ FLOPs speed-up to be at least 0.9 on every float32 row; the efficiency
reports' lowest rows are DynaBERT's narrowest width (0.25). The FLOPs count matrix products only
(:mod:`nimblebert.core.flops`), so any work a width does not shrink shows up as a ratio below 1.
This script measures that work on one DynaBERT folder (no exits: ``--width`` alone), on the `mr` test sentences,
batch 1 and batch 32, one thread, every width interleaved in one run:

1. time per sentence and measured ÷ FLOPs speed-up, both against the same folder at width 1;
2. the time in the matrix products (torch.profiler self time of ``addmm`` / ``mm`` / ``bmm`` / the attention kernel,
   as a share of all operator self time, applied to the measured time) against the rest: LayerNorm, GELU, residual
   sums, views and copies, per-op dispatch; and the products' rate (GFLOP/s);
3. a candidate for that rest: the same forward under ``torch.compile`` (inductor, dynamic shapes), which fuses the
   element-wise ops into generated loops (``--no-compile`` skips it);
4. the exits apart from the width: a FastBERT folder (``--exits``, by default DynaBERT width 0.25 then FastBERT, the
   reports' lowest float32 rows) at each ``--speeds`` setting against the same folder at speed 0 (every layer), with
   the same split into products and the rest. Rows that leave early shrink the batch the later layers run on, so
   those layers' products run on fewer rows (batch 32) and every layer's per-op costs are paid by fewer sentences.

    python benchmarks/flops_gap.py --threads 1 --model runs/dyna --exits runs/dyna-w25-fast

``--docs DIR`` writes the section and JSON there instead of docs/ (a trial run).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch
from common import env_line, environment

# The operators that do the counted FLOPs (2 per multiply-add): the Linear products and the attention kernel
PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def product_share(fn: Any, batches: list[Any]) -> tuple[float, dict[str, float]]:
    """The products' share of all operator self time over one pass of ``fn`` on ``batches``, and the four largest
    other operators' shares (the profiler inflates small ops a little; the share is an estimate, say so)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            fn(b)
    events = [e for e in prof.key_averages() if "::" in e.key]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS)
    others = sorted((e for e in events if e.key not in PRODUCTS), key=lambda e: -e.self_cpu_time_total)[:4]
    return products / total, {e.key.removeprefix("aten::"): round(e.self_cpu_time_total / total, 4) for e in others}


def split_time(fn: Any, batches: list[Any], ms: float, flops: float) -> dict[str, Any]:
    """``ms`` (a measured time per sentence of ``fn`` doing ``flops`` per sentence) split into the products and the
    rest by :func:`product_share`, with the products' rate."""
    share, others = product_share(fn, batches)
    products_ms = share * ms
    return {"products_ms": round(products_ms, 4), "rest_ms": round(ms - products_ms, 4),
            "gflops": round(flops / (products_ms * 1e-3) / 1e9, 1), "rest_top": others}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/dyna", help="a DynaBERT folder (its --width knob is swept)")
    ap.add_argument("--widths", default="1,0.75,0.5,0.25")
    ap.add_argument("--data", default="mr")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile contenders")
    ap.add_argument("--exits", default="runs/dyna-w25-fast",
                    help="a FastBERT folder whose exits are measured against its own speed 0 ('' leaves them out)")
    ap.add_argument("--speeds", default="0.5,0.9", help="the --exits folder's speeds (speed 0 is the reference)")
    common.add_options(ap, bootstrap=False, timing={1: 100, 32: 320}, threads_default=1)
    opts = ap.parse_args()
    common.use_threads(opts.threads)
    t_start = time.time()

    from nimblebert import load
    from nimblebert.bench.latency import compare_latency
    from nimblebert.bench.measure import latency_batches, nimble_contender
    from nimblebert.core.flops import sample_flops
    from nimblebert.data import encode, load_task
    from nimblebert.inference import contributions, run

    model = load(common.in_repo(opts.model)).eval()
    widths = [float(w) for w in opts.widths.split(",")]
    if 1.0 not in widths:
        widths.insert(0, 1.0)  # the reference
    task = load_task(opts.data, label_names=model.label_names)
    split = "test" if task.test is not None else "validation"
    encoded = encode(getattr(task, split), model.tokenizer, opts.max_length, task.has_pair)

    knobs = {w: model.check_knobs({"width": w}) for w in widths}
    eager = {w: nimble_contender(model, knobs[w]) for w in widths}
    compiled: dict[float, Any] = {}
    if not opts.no_compile:
        # One compiled encoder (dynamic shapes: one graph set for every length and row count), called with each
        # width's plan, as ``run`` would call the eager one. Compiled before timing; its warm-up is not timed.
        encoder = torch.compile(model.encoder, dynamic=True)
        for w in widths:
            plan = contributions(model, {}, knobs[w]).plan

            def call(b: dict[str, torch.Tensor], plan: Any = plan) -> Any:
                return encoder(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), plan=plan)

            compiled[w] = call

    # The exits apart from the width: one FastBERT folder at each speed against its own speed 0 (every layer).
    fast = load(common.in_repo(opts.exits)).eval() if opts.exits else None
    speeds = [0.0, *(float(s) for s in opts.speeds.split(",") if float(s) != 0.0)] if fast is not None else []
    exit_knobs = {s: fast.check_knobs({"speed": s}) for s in speeds}
    exiting = {s: nimble_contender(fast, exit_knobs[s]) for s in speeds}

    rows: list[dict[str, Any]] = []
    exit_rows: list[dict[str, Any]] = []
    for bs, n in ((1, opts.b1_examples), (32, opts.b32_examples)):
        batches = latency_batches(model, encoded, bs, n)
        with torch.inference_mode():
            flops = {w: float(torch.cat([sample_flops(model.encoder, run(model, b, knobs[w]))
                                         for b in batches]).double().mean()) for w in widths}
            for w in compiled:  # compile every graph before the timing starts
                for b in batches[:3]:
                    compiled[w](b)
            exit_flops, layers = {}, {}
            for s in speeds:
                outs = [run(fast, b, exit_knobs[s]) for b in batches]
                exit_flops[s] = float(torch.cat([sample_flops(fast.encoder, o) for o in outs]).double().mean())
                layers[s] = float(torch.cat([o.layers_run.float() for o in outs]).mean())
        contenders = {**{f"eager {w:g}": fn for w, fn in eager.items()},
                      **{f"compiled {w:g}": fn for w, fn in compiled.items()},
                      **{f"exits {s:g}": fn for s, fn in exiting.items()}}
        lat = compare_latency(contenders, batches, bs, rounds=opts.rounds)
        ref = common.mean_ms(lat["eager 1"], bs)
        for w in widths:
            for mode in ("eager", "compiled") if w in compiled else ("eager",):
                ms = common.mean_ms(lat[f"{mode} {w:g}"], bs)  # batch 1: the mean, as FLOPs × is a mean
                row = {"batch": bs, "width": w, "mode": mode, "ms": round(ms, 4), "flops": flops[w],
                       "flops_x": round(flops[1.0] / flops[w], 3), "measured_x": round(ref / ms, 3)}
                row["ratio"] = round(row["measured_x"] / row["flops_x"], 3)
                if mode == "eager":
                    row.update(split_time(eager[w], batches, ms, flops[w]))
                rows.append(row)
        for s in speeds:
            ms = common.mean_ms(lat[f"exits {s:g}"], bs)
            row = {"batch": bs, "speed": s, "mean_layers": round(layers[s], 3), "ms": round(ms, 4),
                   "flops": exit_flops[s], "flops_x": round(exit_flops[0.0] / exit_flops[s], 3),
                   "measured_x": round(common.mean_ms(lat["exits 0"], bs) / ms, 3)}
            row["ratio"] = round(row["measured_x"] / row["flops_x"], 3)
            # The composed row as the reports count it: against --model at width 1 (the same run's "eager 1")
            row["vs_full_flops_x"] = round(flops[1.0] / exit_flops[s], 3)
            row["vs_full_measured_x"] = round(ref / ms, 3)
            row["vs_full_ratio"] = round(row["vs_full_measured_x"] / row["vs_full_flops_x"], 3)
            row.update(split_time(exiting[s], batches, ms, exit_flops[s]))
            exit_rows.append(row)

    env = {**environment(), "minutes": round((time.time() - t_start) / 60, 1)}
    data = {"model": opts.model, "data": opts.data, "max_length": opts.max_length, "b1_examples": opts.b1_examples,
            "b32_examples": opts.b32_examples, "rows": rows, "exits": opts.exits, "exit_rows": exit_rows,
            "environment": env}
    md = render(data, common.command_line())
    common.publish("flops_gap", md, data, headline=None, docs=common.docs_folder(opts))
    print(md)


def _rest(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in row.get("rest_top", {}).items())


def render(data: dict[str, Any], command: str) -> str:
    lines = [
        "## Why narrow widths and early exits fall short of their FLOPs (float32)",
        "",
        f"`{command}` — {data['model']} at each width (no exits), `{data['data']}` test sentences (max "
        f"{data['max_length']} tokens): batch 1 over {data['b1_examples']} (mean ms per sentence, as FLOPs × is a "
        f"mean), batch 32 over {data['b32_examples']} (median batch time per sentence); every row interleaved in one "
        "run. × and FLOPs × against the same folder at width 1, eager. Products: the matrix products' share of the "
        "operator self time (torch.profiler, a separate pass) applied to the measured time; rest: everything else "
        "(LayerNorm, GELU, residual sums, copies, dispatch). compiled: `torch.compile(encoder, dynamic=True)`.",
        "",
        "| batch | width | mode | ms / sentence | FLOPs × | measured × | measured ÷ FLOPs | products ms | "
        "products GFLOP/s | rest ms | largest rest (share of all op time) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        extra = (f"{r['products_ms']:.3f} | {r['gflops']:.0f} | {r['rest_ms']:.3f} | {_rest(r)}" if "products_ms" in r
                 else "— | — | — | —")
        lines.append(f"| {r['batch']} | {r['width']:g} | {r['mode']} | {r['ms']:.3f} | {r['flops_x']:.2f} | "
                     f"{r['measured_x']:.2f} | {r['ratio']:.2f} | {extra} |")
    if data.get("exit_rows"):
        lines += [
            "",
            f"The exits apart from the width: {data['exits']} at each speed against the same folder at speed 0 (every "
            "layer), eager, same sentences, interleaved with the rows above. Mean layers: the layers a sentence ran. "
            f"Composed: the same row against {data['model']} at width 1 (the first row of its batch size), as the "
            "efficiency reports count it.",
            "",
            "| batch | speed | mean layers | ms / sentence | FLOPs × | measured × | measured ÷ FLOPs | products ms | "
            "products GFLOP/s | rest ms | largest rest (share of all op time) | composed: FLOPs × / measured × / ÷ |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["exit_rows"]:
            lines.append(f"| {r['batch']} | {r['speed']:g} | {r['mean_layers']:.2f} | {r['ms']:.3f} | "
                         f"{r['flops_x']:.2f} | {r['measured_x']:.2f} | {r['ratio']:.2f} | {r['products_ms']:.3f} | "
                         f"{r['gflops']:.0f} | {r['rest_ms']:.3f} | {_rest(r)} | {r['vs_full_flops_x']:.2f} / "
                         f"{r['vs_full_measured_x']:.2f} / {r['vs_full_ratio']:.2f} |")
    lines += ["", env_line(data["environment"]) + " The process is pinned to one core."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
