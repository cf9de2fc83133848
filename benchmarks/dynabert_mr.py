"""DynaBERT on `mr`: train one width- and depth-adaptive model from the fine-tuned teacher, then measure the
grid of sub-networks (Hou et al., NeurIPS 2020).

Steps, all through the CLI: ``nimblebert train dynabert`` from ``runs/teacher-mr`` (rewiring by importance
on the validation split, then the width stage and the width × depth stage), ``nimblebert export --format hf``
of every (width, depth) of the grid, and one ``nimblebert bench`` that times, interleaved on the same test
sentences, the plain transformers teacher (the baseline), every exported sub-network and the dynamic model
at every (width, depth) (``--sweep``). Per setting the section reports accuracy with the paired bootstrap 95%
interval of its difference from the teacher on the same sentences, parameters (of the sub-network, and of
the exported folder), FLOPs, and the measured speed-ups at batch 1 and 32.

Why two speed-ups per setting: a plain transformers 5 BERT cannot hold fewer attention heads of the same
size (``prune_heads`` is gone and the Q/K/V width follows ``hidden_size``), so the exported folders keep the
attention projections at full size with the dropped heads zeroed (FFN and depth *are* physically smaller);
the dynamic model runs the kept heads alone. Both give the same predictions.

Budget (2 CPU cores): one training step of the width stage is a teacher forward plus forward + backward of
the 4 widths, about 8–9 full-model forwards; one step of the width × depth stage runs 12 sub-networks, about
18. On MiniLM-L6 with 64 tokens and batch 32 that is roughly 7 s and 14 s per step, i.e. about 10 and 21
minutes per epoch of `mr` (88 steps). The defaults (1 epoch each, ~35 min with the measurements) are cheap;
the official recipe is 3 epochs each (``--width-epochs 3 --depth-epochs 3``, ~1.5 h), and ``--max-steps``
caps every stage for a quick look.

    python benchmarks/finetune_mr.py                   # first: the teacher, runs/teacher-mr
    python benchmarks/dynabert_mr.py                   # trains runs/dynabert-mr, writes docs/dynabert_mr.*
    python benchmarks/dynabert_mr.py --reuse           # keep an already trained model and its exports
    python benchmarks/dynabert_mr.py --width-epochs 3 --depth-epochs 3   # the official number of epochs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import common
from common import ROOT, cli, environment, finished

WIDTHS = "1,0.75,0.5,0.25"
DEPTHS = "1,0.75,0.5"


def sub_network_params(model: Any, width: float, depth: float) -> int:
    """Parameters the sub-network really uses: embeddings, pooler and classifier, plus the kept layers at
    the kept heads / FFN neurons (what a head-pruning runtime would hold)."""
    from nimblebert.core.plan import depth_layers
    from nimblebert.core.slicing import width_sizes

    enc = model.encoder
    d = model.hf.config.hidden_size

    def layer(heads: int, ffn: int) -> int:
        n = heads * enc.head_dim
        return 3 * (d * n + n) + (n * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d

    total = sum(p.numel() for p in model.hf.parameters())
    rest = total - enc.num_layers * layer(enc.num_heads, enc.ffn_size)
    heads, ffn = width_sizes(enc.num_heads, enc.ffn_size, width)
    return rest + len(depth_layers(enc.num_layers, depth)) * layer(heads, ffn)


def tinybert_students(docs: Path) -> list[dict[str, Any]]:
    """The TinyBERT students the TinyBERT benchmark published (``docs/tinybert_mr.json``; their own teacher and
    run): label, FLOPs and measured batch-32 speed-ups, accuracy difference from their teacher. Ablations
    are left out."""
    path = docs / "tinybert_mr.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    return [{"label": r["label"], "flops_speedup": r["flops_speedup"], "b32_speedup": r["b32_speedup"],
             "b1_speedup": r["b1_speedup"], "delta": r["vs_teacher"]["diff"]}
            for r in rows if r["label"].startswith("TinyBERT") and r.get("vs_teacher") and "without" not in r["label"]]


def plot(rows: list[dict[str, Any]], tiny: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy difference from the teacher against the measured batch-32 speed-up: the dynamic model and
    the exported folders, one point per (width, depth), the FLOPs speed-up for reference, and the TinyBERT
    students of the TinyBERT benchmark (each against its own teacher, hence differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, marker, label in (("dyn_b32_speedup", "o", "DynaBERT, dynamic model (kept heads only), batch 32"),
                               ("exp_b32_speedup", "s", "DynaBERT, exported transformers folder, batch 32"),
                               ("flops_speedup", "x", "DynaBERT, FLOPs")):
        ax.plot([r[key] for r in rows], [100 * r["vs_teacher"]["diff"] for r in rows], marker, label=label,
                alpha=0.8)
    for r in rows:
        ax.annotate(f"{r['width']:g}/{r['depth']:g}", (r["dyn_b32_speedup"], 100 * r["vs_teacher"]["diff"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    # A failed student (TinyBERT 3×192 from random weights: -30 points) would squash the chart: such points
    # sit on its lower edge, labelled with their value.
    floor = min([100 * r["vs_teacher"]["diff"] for r in rows] + [-5.0]) - 3
    if tiny:
        ax.plot([t["b32_speedup"] for t in tiny], [max(100 * t["delta"], floor) for t in tiny], "^", color="black",
                label="TinyBERT students (docs/tinybert_mr.json), batch 32")
        for t in tiny:
            text = t["label"].replace("TinyBERT ", "") + ("" if 100 * t["delta"] >= floor else
                                                          f" ({100 * t['delta']:+.1f}, off the chart)")
            ax.annotate(text, (t["b32_speedup"], max(100 * t["delta"], floor)), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_ylim(floor - 0.5, 2.5)
    ax.axhline(0, color="grey", linestyle=":", label="teacher")
    ax.set_xlabel("speed-up over the plain transformers teacher (×); labels: width/depth")
    ax.set_ylabel("accuracy − teacher's (points)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mr", help="mr, or a data folder")
    ap.add_argument("--teacher", help="fine-tuned teacher folder (default runs/teacher-<data>)")
    ap.add_argument("--out", help="DynaBERT model folder (default runs/dynabert-<data>); exports go to <out>-exports/")
    ap.add_argument("--name", help="results name (default dynabert_<data>): docs/<name>.json, .png, section")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--lr", default="2e-5", help="learning rate of every stage (official: 2e-5)")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--seed", default="42")
    ap.add_argument("--width-epochs", default="1", help="epochs of the width stage (official: 3)")
    ap.add_argument("--depth-epochs", default="1", help="epochs of the width × depth stage (official: 3)")
    ap.add_argument("--final-epochs", default="0",
                    help="> 0 adds the optional final fine-tuning of every sub-network for this many epochs")
    ap.add_argument("--depth-rule", default="official", choices=["official", "last"],
                    help="layers kept per depth: official floor(i/m_d) (drops the last layer) or 'last' (ours: "
                         "mirrored, the last layer always runs)")
    ap.add_argument("--aug-copies", type=int, default=0,
                    help="> 0 trains the width and width × depth stages on TinyBERT's augmented set with this many "
                         "variants per sentence (the official --data_aug, N = 20); 0 = the training set as it is")
    ap.add_argument("--eval-every", type=int,
                    help="evaluate every sub-network on validation every this many steps and keep the best summed "
                         "accuracy (official: 50; default: once per epoch)")
    ap.add_argument("--max-steps", help="cap every stage at this many optimizer steps (a quick look)")
    ap.add_argument("--widths", default=WIDTHS, help="widths trained and measured")
    ap.add_argument("--depths", default=DEPTHS, help="depths trained and measured")
    ap.add_argument("--importance-split", default="validation", choices=["validation", "train"],
                    help="labelled split for head/neuron importance (official: the dev set)")
    common.add_options(ap, reuse="reuse a finished --out and finished exports", timing={1: 100, 32: 640},
                       threads="CPU threads of the training command and of every timed contender (default: torch's)")
    args = ap.parse_args()
    # Paths the user gave are taken from the current folder; the defaults live under the repository.
    data, tag, teacher_dir = common.task_paths(args)
    out = os.path.abspath(args.out) if args.out else f"runs/dynabert-{tag}"
    exports_dir = f"{out}-exports"
    name = args.name or f"dynabert_{tag}"
    docs = common.docs_folder(args) or common.DOCS
    widths = [float(w) for w in args.widths.split(",") if w.strip()]
    depths = [float(d) for d in args.depths.split(",") if d.strip()]
    grid = [(w, d) for d in sorted(depths, reverse=True) for w in sorted(widths, reverse=True)]

    from nimblebert import load
    from nimblebert.core.plan import depth_layers
    from nimblebert.data import builtin_names
    from nimblebert.inference import metrics, predict_loader

    common.use_threads(args.threads)
    os.chdir(ROOT)
    sizes = json.loads(cli("data", "prepare", data).strip().splitlines()[-1]) if data in builtin_names() else None
    if not finished(teacher_dir):
        raise SystemExit(f"no teacher in {teacher_dir}: run benchmarks/finetune_mr.py first (or pass --teacher)")

    # ---- train -----------------------------------------------------------------------------------------
    phases = ["width", "depth"] + (["final"] if float(args.final_epochs) > 0 else [])
    train_args = ["--model", teacher_dir, "--data", data, "--importance-data", data,
                  "--importance-split", args.importance_split, "--out", out, "--max-length", args.max_length,
                  "--lr", args.lr, "--batch-size", args.batch_size, "--seed", args.seed,
                  "--widths", *[f"{w:g}" for w in widths], "--depths", *[f"{d:g}" for d in depths],
                  "--phases", *phases, "--width-epochs", args.width_epochs, "--depth-epochs", args.depth_epochs,
                  "--depth-rule", args.depth_rule]
    if "final" in phases:
        train_args += ["--final-epochs", args.final_epochs]
    if args.aug_copies > 0:
        train_args += ["--augment", "--aug-copies", str(args.aug_copies)]
    if args.max_steps:
        train_args += ["--max-steps", args.max_steps]
    if args.eval_every:
        train_args += ["--eval-every", str(args.eval_every)]
    if not (args.reuse and finished(out)):
        cli("train", "dynabert", *train_args, "--overwrite", capture=False)
    summary = json.loads((Path(out) / "train_summary.json").read_text())

    # ---- export every sub-network as a plain transformers folder ----------------------------------------
    exports = {}
    for w, d in grid:
        folder = f"{exports_dir}/w{w:g}-d{d:g}"
        exports[w, d] = folder
        if not (args.reuse and finished(folder)):
            cli("export", out, "--format", "hf", "--width", f"{w:g}", "--depth", f"{d:g}", "--out", folder)

    # ---- accuracy per example, paired with the teacher on the same sentences ---------------------------
    dyn = load(out)
    baseline = common.teacher_baseline(teacher_dir, data, int(args.max_length))
    split, encoded, loader, base_metrics = baseline.split, baseline.encoded, baseline.loader, baseline.metrics
    per_setting: dict[tuple[float, float], dict[str, Any]] = {}
    for w, d in grid:
        exported = load(exports[w, d])
        pe = predict_loader(exported, loader)
        pd = predict_loader(dyn, loader, width=w, depth=d)
        per_setting[w, d] = {
            "vs_teacher": baseline.versus(pe, args.bootstrap),
            "agreement_with_teacher": baseline.agreement(pe),
            "export_agrees_with_dynamic": float((pe.predicted == pd.predicted).float().mean()),
            "export_max_abs_logit_diff": float((pe.logits - pd.logits).abs().max()),
            "sub_network_params_m": sub_network_params(dyn, w, d) / 1e6,
            "exported_params_m": sum(p.numel() for p in exported.hf.parameters()) / 1e6,
        }
        print(f"width {w:g} depth {d:g}: accuracy {metrics(pe, dyn.num_labels)['accuracy']:.4f}", file=sys.stderr)

    # ---- one bench run: teacher baseline, exported folders, the dynamic model at every setting ----------
    bench_dir = f"{out}-bench"
    bench_args = ["bench", teacher_dir, out, *exports.values(), "--data", data, "--split", split,
                  "--max-length", args.max_length, "--out", bench_dir, "--no-onnx", "--rounds", str(args.rounds),
                  "--b1-examples", str(args.b1_examples), "--b32-examples", str(args.b32_examples),
                  "--sweep", "width=" + ",".join(f"{w:g}" for w in widths),
                  "--sweep", "depth=" + ",".join(f"{d:g}" for d in depths)]
    if args.threads:
        bench_args += ["--threads", str(args.threads)]
    cli(*bench_args)
    bench_rows = [json.loads(x) for x in (Path(bench_dir) / "results.jsonl").read_text().splitlines()]

    def bench_row(path: str, knobs: dict[str, float] | None = None) -> dict[str, Any]:
        for r in bench_rows:
            if r.get("path") == path and r.get("runtime") == "nimblebert" and (knobs is None or r["knobs"] == knobs):
                return r
        raise SystemExit(f"bench wrote no row for {path} {knobs or ''}")

    teacher_row = bench_row(teacher_dir)
    rows = []
    for w, d in grid:
        dyn_row, exp_row = bench_row(out, {"width": w, "depth": d}), bench_row(exports[w, d])
        flops_speedup = teacher_row["flops_per_sample"] / dyn_row["flops_per_sample"]
        rows.append({
            "width": w, "depth": d, "accuracy": exp_row["accuracy"], "macro_f1": exp_row["macro_f1"],
            "dynamic_accuracy": dyn_row["accuracy"], "layers": dyn_row["mean_layers"],
            "flops_per_sample": dyn_row["flops_per_sample"], "flops_speedup": flops_speedup,
            "exported_flops_per_sample": exp_row["flops_per_sample"],
            "dyn_b1_speedup": dyn_row["b1_speedup"], "dyn_b32_speedup": dyn_row["b32_speedup"],
            "exp_b1_speedup": exp_row["b1_speedup"], "exp_b32_speedup": exp_row["b32_speedup"],
            "dyn_b32_over_flops": dyn_row["b32_speedup"] / flops_speedup,
            "exp_b32_over_flops": exp_row["b32_speedup"] / flops_speedup,
            "exp_b1_ms": exp_row["b1_ms"], "exp_b32_ms_per_sample": exp_row["b32_ms_per_sample"],
            "exported_size_mb": exp_row["size_mb"], **per_setting[w, d]})

    # ---- table, plot, JSON ------------------------------------------------------------------------------
    env = environment()
    table = ["| width | depth | accuracy | Δ vs teacher [95% CI] (points) | params M (sub-net / exported) | MFLOPs | "
             "FLOPs × | b1 × dyn / exp | b32 × dyn / exp | b32 × ÷ FLOPs × dyn / exp |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_teacher"]
        table.append(f"| {r['width']:g} | {r['depth']:g} | {r['accuracy']:.4f} | {100 * v['diff']:+.2f} "
                     f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] | {r['sub_network_params_m']:.2f} / "
                     f"{r['exported_params_m']:.2f} | {r['flops_per_sample'] / 1e6:.3g} | {r['flops_speedup']:.2f} | "
                     f"{r['dyn_b1_speedup']:.2f} / {r['exp_b1_speedup']:.2f} | {r['dyn_b32_speedup']:.2f} / "
                     f"{r['exp_b32_speedup']:.2f} | {r['dyn_b32_over_flops']:.2f} / {r['exp_b32_over_flops']:.2f} |")
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / f"{name}.png"
    tiny = tinybert_students(common.DOCS)
    equal = []
    for t in tiny:  # the DynaBERT settings within 5 % of each student's FLOPs
        same = [r for r in rows if abs(r["flops_speedup"] / t["flops_speedup"] - 1) <= 0.05]
        cells = "; ".join(f"w{r['width']:g} d{r['depth']:g}: {100 * r['vs_teacher']['diff']:+.2f} points, "
                          f"{r['exp_b32_speedup']:.2f}×" for r in same) or "none within 5 % of its FLOPs"
        equal.append(f"| {t['label']} | {t['flops_speedup']:.2f} | {100 * t['delta']:+.2f} | "
                     f"{t['b32_speedup']:.2f} | {cells} |")
    tiny_md = (f"""
Against the TinyBERT students of equal FLOPs (`{common.section_command('tinybert_mr') or 'benchmarks/tinybert_mr.py'}`,
docs/tinybert_mr.json: a short TinyBERT run with its own teacher and timing run, so differences from each
teacher and speed-ups over each run's own plain transformers teacher are compared; both in the plot):

| TinyBERT student | FLOPs × | Δ vs its teacher (points) | b32 × | DynaBERT at equal FLOPs (Δ, exported b32 ×) |
|---|---|---|---|---|
{chr(10).join(equal)}
""" if tiny else "")
    plot(rows, tiny, png, f"DynaBERT on {tag}: accuracy vs speed-up ({len(encoded)} {split} "
                                              "sentences)")
    stage_seconds = summary["train_seconds"]
    worst_export = max(r["export_max_abs_logit_diff"] for r in rows)
    command = common.command_line()
    epochs = f"width stage {args.width_epochs} epoch(s), width × depth stage {args.depth_epochs} epoch(s)" + (
        f", final fine-tuning {args.final_epochs}" if "final" in phases else "") + (
        f", at most {args.max_steps} steps per stage" if args.max_steps else "")
    n_layers = baseline.teacher.encoder.num_layers
    kept = "; ".join(f"{d:g}: {', '.join(str(i + 1) for i in depth_layers(n_layers, d, args.depth_rule))}"
                     for d in sorted(depths, reverse=True) if d < 1)
    rule = ("official rule floor(i/m_d)" if args.depth_rule == "official" else
            "rule 'last' (ours: the official pattern mirrored so the last layer runs)")
    title = "" if args.depth_rule == "official" else ", last layer kept"
    augmentation = "no data augmentation" if args.aug_copies <= 0 else (
        f"both stages on TinyBERT's augmented set ({summary.get('train_rows', {}).get('dynabert-width', '?')} rows: "
        f"the training sentences + up to {args.aug_copies} variants each, embedding-neighbour words; the official "
        "--data_aug uses N = 20)")
    if args.aug_copies > 0:
        title += ", augmented data"
    if float(args.lr) != 2e-5:  # the official rate; another one is part of what the section measures
        title += f", lr {args.lr}"
    if "final" in phases:
        title += f", final fine-tuning {args.final_epochs} epoch(s)"
    if args.eval_every:
        title += f", selection every {args.eval_every} steps"
    if args.seed != ap.get_default("seed"):  # a run with another seed repeats a recipe: say so
        title += f", seed {args.seed}"
    selection = (f"evaluated every {args.eval_every} steps (official: 50)" if args.eval_every
                 else "evaluated once per epoch (official: every 50 steps)")
    md = f"""## DynaBERT on `{tag}`: the width × depth grid{title}

`{command}` — teacher `{teacher_dir}` (accuracy {base_metrics['accuracy']:.4f} on the {len(encoded)} {split}
sentences), one DynaBERT model `{os.path.relpath(out, ROOT)}` trained from it.

- Training: rewiring by head/neuron importance on the {args.importance_split} split, then {epochs}; lr {args.lr},
  batch {args.batch_size}, max {args.max_length} tokens, {augmentation}; {stage_seconds / 60:.1f} min.
  Layers run at each depth ({rule}; 1-based, of {n_layers}): {kept}.
  Each stage keeps its checkpoint with the best summed validation accuracy over its sub-networks (official),
  {selection}.
- accuracy and Δ: the exported transformers folder at that setting, against the teacher on the same sentences,
  with the paired bootstrap 95% interval ({args.bootstrap} resamples). Exported and dynamic predictions agree
  (max |logit difference| {worst_export:.1e}).
- params: what the sub-network uses / what the exported folder holds (its attention keeps full-size
  projections with the dropped heads zeroed: a plain transformers 5 BERT cannot have fewer heads of the
  same size; FFN and depth are physically smaller).
- ×: speed-up over the faster plain transformers teacher (eager/sdpa), timed interleaved in the same
  `nimblebert bench` run; dyn = the dynamic model at that setting (kept heads only), exp = the exported folder
  (run by nimblebert's core); batch 1 over {args.b1_examples} sentences, batch 32 over {args.b32_examples}
  (bucketed by length), median of {args.rounds} passes. The last column (the issue's target: ≥ 0.8 for
  every exported model) should stay near 1.

{chr(10).join(table)}
{tiny_md}
![accuracy vs speed-up]({png.name})

{common.env_line(env)}
"""
    lossless = [r for r in rows if r["vs_teacher"]["low"] <= 0 <= r["vs_teacher"]["high"] and
                (r["width"], r["depth"]) != (1.0, 1.0)]
    best = max(lossless, key=lambda r: r["dyn_b32_speedup"], default=None)
    if best is None:
        claim = "every smaller sub-network is significantly below the teacher (95% interval of the difference < 0)."
    else:
        v = best["vs_teacher"]
        claim = (f"the fastest sub-network not significantly below the teacher (95% interval of the difference "
                 f"contains 0) is width {best['width']:g} × depth {best['depth']:g} "
                 f"({best['accuracy']:.4f} vs {base_metrics['accuracy']:.4f}, Δ {100 * v['diff']:+.2f} points, "
                 f"95% CI [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}]) with {best['sub_network_params_m']:.1f} M "
                 f"parameters in use, {best['dyn_b32_speedup']:.2f}× faster at batch 32 and "
                 f"{best['dyn_b1_speedup']:.2f}× at batch 1 (FLOPs {best['flops_speedup']:.2f}×).")
    headline = f"**DynaBERT** (`{command}`) on `{tag}`: {claim}"
    result = {"data": data, "split": split, "examples": len(encoded), "sizes": sizes, "teacher": teacher_dir,
              "depth_rule": args.depth_rule,
              "model": out, "exports": {f"{w:g},{d:g}": f for (w, d), f in exports.items()},
              "train_command": "nimblebert train dynabert " + " ".join(train_args),
              "bench_command": "nimblebert " + " ".join(bench_args), "train": summary,
              "teacher_metrics": base_metrics, "teacher_bench": teacher_row, "settings": rows,
              "bench_rows": bench_rows, "environment": env}
    common.publish(name, md, result, headline, docs if args.docs else None)
    print(md)
    print(headline)


if __name__ == "__main__":
    main()
