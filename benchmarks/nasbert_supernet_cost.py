"""What a NAS-BERT supernet step and a progressive-shrinking round cost at 1 thread (issue 18), before and after
the two changes that made them cheaper:

- a step with the teacher run at every step (as before) vs its block outputs read from the teacher cache;
- scoring block architectures (shrinking's and the search's block-loss lookup): each path run alone on the
  held-out rows as the loader batches them vs common path prefixes computed once on length-packed rows.

A fresh supernet on the mr teacher (a step's cost does not depend on the ops' weights), mr's training batches
(batch 32, bucketed by length as the trainer does) and mr's first validation rows. Timing only: run it under
/work/bin/core0. The scores of both scorers are compared (they must agree: the sharing is exact).

    /work/bin/core0 python benchmarks/nasbert_supernet_cost.py
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time

import common
from common import ROOT, environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "teacher-mr"))
    ap.add_argument("--data", default="mr")
    ap.add_argument("--steps", type=int, default=15, help="timed steps of each kind (after 3 warm-up steps)")
    ap.add_argument("--archs", type=int, default=256,
                    help="block architectures scored by each scorer: a sample of the largest parameter bin, as a "
                         "shrinking round draws them")
    ap.add_argument("--rows", type=int, default=8, help="held-out rows (the supernet's --shrink-rows)")
    ap.add_argument("--name", default="nasbert_supernet_cost")
    common.add_options(ap, bootstrap=False, threads_default=1)
    args = ap.parse_args()
    common.use_threads(args.threads)
    import torch

    from nimblebert.data import encode, load_task, make_loader
    from nimblebert.methods.nasbert.objective import (
        SupernetObjective,
        block_losses,
        config_of,
        held_out_batches,
        masked_mse,
        run_block,
        space_of,
        supernet_targets,
        teacher_blocks,
    )
    from nimblebert.model import NimbleModel, load
    from nimblebert.train.stages import TrainOptions

    started = time.time()
    teacher = load(args.teacher)
    model = NimbleModel(copy.deepcopy(teacher.hf), teacher.tokenizer, "nasbert", {}, teacher.label_names)
    model.method_spec.attach(model)
    space, cfg = space_of(model), config_of(model)
    task = load_task(args.data, label_names=teacher.label_names)
    train = encode(task.train, teacher.tokenizer, 64, task.has_pair)
    val = encode(task.validation, teacher.tokenizer, 64, task.has_pair)
    loader = make_loader(train, teacher.tokenizer, 32, shuffle=True, seed=0, bucket_by_length=True)
    batches = [b for _, b in zip(range(args.steps + 3), loader, strict=False)]

    t0 = time.perf_counter()
    targets = supernet_targets(model.hf, space, train, teacher.tokenizer, TrainOptions(out="unused", progress=False))
    cache_s = time.perf_counter() - t0  # 0 when the cache was already on disk (the training runs filled it)

    ops = model.extras["ops"]
    optimizer = torch.optim.AdamW(ops.parameters(), lr=5e-4)
    model.train()

    def steps(objective: SupernetObjective) -> list[float]:
        times = []
        for i, batch in enumerate(batches):
            torch.manual_seed(i)  # the same paths for both kinds of step
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            objective(model, batch)["loss"].backward()
            optimizer.step()
            if i >= 3:
                times.append(time.perf_counter() - t)
        return times

    online = steps(SupernetObjective(space, cfg, [], 10**9))
    cached = steps(SupernetObjective(space, cfg, [], 10**9, targets))

    # Scoring: the same rows, the same architectures of block 1: a seeded sample of the most populated parameter
    # bin, as a shrinking round draws its candidates (one bin at a time).
    state = model.extras["shrink"]
    biggest = max(range(state.bins), key=lambda b: int((state.bin == b).sum()))
    members = [state.archs[int(i)] for i in (state.bin == biggest).nonzero().squeeze(1)]
    archs = random.Random(0).sample(members, min(args.archs, len(members)))
    n = 0
    loose = held_out_batches(val, teacher.tokenizer, args.rows, 1, rows_per_batch=args.rows)  # one padded batch
    packed = held_out_batches(val, teacher.tokenizer, args.rows, 1)
    model.eval()
    with torch.no_grad():
        ys_loose = [teacher_blocks(model.encoder, b, space) for b in loose]
        ys_packed = [teacher_blocks(model.encoder, b, space) for b in packed]
        t = time.perf_counter()
        alone = []
        for a in archs:
            y, m = ys_loose[0], loose[0]["attention_mask"]
            alone.append(float(masked_mse(run_block(ops, n, a, y[n], m), y[n + 1], m)))
        alone_s = (time.perf_counter() - t) / len(archs)
    t = time.perf_counter()
    shared = block_losses(model, n, archs, ys_packed, [b["attention_mask"] for b in packed])
    shared_s = (time.perf_counter() - t) / len(archs)
    max_diff = max(abs(a - b) for a, b in zip(alone, shared.tolist(), strict=True))

    data = {
        "teacher": args.teacher, "space": {"sizes": list(space.hidden_sizes), "blocks": space.blocks,
                                          "slots": space.slots},
        "step_seconds": {"teacher_every_step": statistics.median(online), "teacher_cached": statistics.median(cached)},
        "teacher_cache_build_seconds": round(cache_s, 2),
        "score_seconds_per_arch": {"each_path_alone_padded": alone_s, "shared_prefixes_packed": shared_s},
        "score_rows": args.rows, "score_tokens": {"padded": int(sum(b["attention_mask"].numel() for b in loose)),
                                                  "packed": int(sum(b["attention_mask"].numel() for b in packed))},
        "score_max_abs_difference": max_diff, "archs_scored": len(archs), "steps_timed": len(online),
        "environment": environment(), "command": common.command_line(),
        "wall_seconds": round(time.time() - started, 1),
    }
    s = data["step_seconds"]
    text = "\n".join([
        "## NAS-BERT supernet cost at 1 thread", "",
        f"A supernet step on {args.data} (batch 32, median of {len(online)} steps, the same sampled paths) and the "
        f"scoring of block architectures ({len(archs)} random ones of block 1's largest parameter bin on the first "
        f"{args.rows} validation rows), before and after. {common.env_line(data['environment'])}", "",
        "| what | before | after | ratio |", "|---|---|---|---|",
        f"| supernet step (s): teacher run every step → its block outputs cached once | "
        f"{s['teacher_every_step']:.3f} | {s['teacher_cached']:.3f} | "
        f"×{s['teacher_every_step'] / s['teacher_cached']:.2f} |",
        f"| scoring one block architecture (ms): each path alone on one padded batch → shared prefixes on "
        f"length-packed rows | {1000 * alone_s:.1f} | {1000 * shared_s:.1f} | ×{alone_s / shared_s:.2f} |", "",
        f"Scores of the two scorers differ by at most {max_diff:.1e} (float rounding; sharing is exact). "
        f"Tokens scored {data['score_tokens']['padded']} padded → {data['score_tokens']['packed']} packed. The "
        f"teacher cache of mr's 2,800 training rows is built once ({cache_s:.0f} s here; 0 when already on disk).",
        "", f"Command (pinned): `{data['command']}`."]) + "\n"
    common.publish(args.name, text, data, None, common.docs_folder(args))
    print(text)
    print(json.dumps(data["step_seconds"]))


if __name__ == "__main__":
    main()
