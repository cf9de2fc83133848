"""TinyBERT on `mr`: small students distilled from the fine-tuned MiniLM-L6 teacher, with ablations.

Students: 3 and 2 layers at the teacher's width (384, FFN 1536, 12 heads; initialised from the teacher's
layers g(m) = 2m and 3m, embeddings and head), and a narrow 3 × 192 (FFN 768, 12 heads of 16; initialised at
random: a narrower student cannot copy the teacher's matrices, and we do not invent a projection). Each gets
TinyBERT's full recipe: general distillation (GD) on unlabelled text from the pre-trained MiniLM-L6, then
intermediate-layer and prediction-layer distillation from the fine-tuned teacher on the augmented training set.
Ablations on the 3-layer student: fine-tuned directly (no distillation, the same initialisation), logits-only
distillation (the prediction stage alone, same augmented data), TinyBERT without augmentation, TinyBERT
without GD.

For every model on the test split: accuracy, its paired difference from the teacher on the same sentences with
a bootstrap 95% interval, FLOPs, and latency at batch 1 and 32 measured by ``nimblebert bench`` against the
plain transformers teacher in the same run. Writes ``docs/<name>.json`` and the Markdown section.

The default settings are cut to finish in about 40 minutes on 2 CPU cores (estimated, not yet measured: the
machine was busy), and say so in the output: N = 1 augmented copy per sentence (paper: 20), one epoch of each
distillation stage (README: 10 intermediate + 3 prediction), GD for one epoch over mr's 2,800 training
sentences (paper: 3 epochs over 2.5B words of Wikipedia). The teacher's outputs are cached, so it runs once per
sentence for the whole benchmark (per layer map).

    python benchmarks/finetune_mr.py          # first: the teacher, runs/teacher-mr
    python benchmarks/tinybert_mr.py          # trains runs/tinybert-mr/*, writes docs/tinybert_mr.*
    python benchmarks/tinybert_mr.py --reuse  # keep the models already trained
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import ROOT, cli, environment, finished, points_ci


def summary_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "train_summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mr", help="mr, or a data folder")
    ap.add_argument("--teacher", help="fine-tuned teacher folder (default runs/teacher-<data>)")
    ap.add_argument("--general-teacher", default="",
                    help="pre-trained teacher of general distillation (default: the base the teacher was "
                         "fine-tuned from, read from its train_summary.json: minilm-l6)")
    ap.add_argument("--general-data", help="unlabelled text of general distillation (default: the --data "
                                           "training texts, labels unused)")
    ap.add_argument("--runs", help="folder for the trained models (default runs/tinybert-<data>)")
    ap.add_argument("--name", help="results name (default tinybert_<data>)")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--seed", default="42")
    ap.add_argument("--aug-copies", default="1", help="N augmented copies per sentence (paper: 20)")
    ap.add_argument("--general-epochs", default="1", help="GD epochs (official: 3, on Wikipedia)")
    ap.add_argument("--intermediate-epochs", default="1", help="intermediate-layer epochs (README: 10)")
    ap.add_argument("--epochs", default="1", help="prediction-layer epochs (README: 3); also the logits-only row")
    ap.add_argument("--lr", default="3e-5", help="prediction-layer learning rate (README: 3e-5)")
    ap.add_argument("--finetune-epochs", default="3", help="epochs of the fine-tuned-directly row (as the teacher)")
    ap.add_argument("--finetune-lr", default="5e-5", help="its learning rate (as the teacher)")
    ap.add_argument("--narrow-hidden", default="192", help="hidden size of the narrow 3-layer student")
    ap.add_argument("--max-steps", help="optimizer steps per stage for every training (smoke tests only)")
    common.add_options(ap, reuse="reuse finished models instead of training again", timing={1: 100, 32: 640})
    args = ap.parse_args()
    # Paths the user gave are taken from the current folder; the defaults live under the repository.
    data, tag, teacher_dir = common.task_paths(args)
    runs = Path(os.path.abspath(args.runs) if args.runs else f"runs/tinybert-{tag}")
    name = args.name or f"tinybert_{tag}"
    docs = common.docs_folder(args) or common.DOCS
    general_data = (os.path.abspath(args.general_data) if args.general_data and Path(args.general_data).exists()
                    else args.general_data or data)
    general_teacher = (os.path.abspath(args.general_teacher) if args.general_teacher
                       and Path(args.general_teacher).exists() else args.general_teacher)

    from nimblebert import load
    from nimblebert.data import builtin_names, load_task
    from nimblebert.inference import predict_loader
    from nimblebert.methods.tinybert import TinyBertConfig, build_student
    from nimblebert.model import NimbleModel

    common.use_threads(args.threads)
    os.chdir(ROOT)
    sizes = json.loads(cli("data", "prepare", data).strip().splitlines()[-1]) if data in builtin_names() else None
    if not finished(teacher_dir):
        raise SystemExit(f"no teacher in {teacher_dir}: run benchmarks/finetune_mr.py first (or pass --teacher)")
    runs.mkdir(parents=True, exist_ok=True)
    cache = runs / "cache"  # augmented sets and teacher outputs: shared by every run below, deleted with runs/
    common_args = ["--data", data, "--max-length", args.max_length, "--batch-size", args.batch_size,
                   "--seed", args.seed, "--overwrite", *(["--max-steps", args.max_steps] if args.max_steps else [])]
    tiny_args = ["--cache-dir", str(cache)]
    task_args = ["--stages", "intermediate,prediction", "--intermediate-epochs", args.intermediate_epochs,
                 "--epochs", args.epochs, "--lr", args.lr, "--aug-copies", args.aug_copies]
    commands: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}

    def train(out: str, method: str, *extra: str) -> None:
        folder = runs / out
        command = ["train", method, "--out", str(folder), *common_args, *extra]
        commands[out] = command
        if not (args.reuse and finished(folder)):
            start = time.time()
            cli(*command, capture=False)
            print(f"{out}: {(time.time() - start) / 60:.1f} min", file=sys.stderr, flush=True)
        seconds[out] = summary_of(folder)["train_seconds"]

    # ---- general distillation, once per student shape (the official general TinyBERT) ------------------
    students = {"3l": ["--student-layers", "3"], "2l": ["--student-layers", "2"],
                "3x192": ["--student-layers", "3", "--student-hidden", args.narrow_hidden]}
    general = ["--stages", "general", "--general-data", general_data, "--general-epochs", args.general_epochs,
               *(["--general-teacher", general_teacher] if general_teacher else [])]
    for key, shape in students.items():
        train(f"general-{key}", "tinybert", "--teacher", teacher_dir, *shape, *general, *tiny_args)

    # ---- task distillation from each general student: intermediate, then prediction layer -----------------
    for key in students:
        train(f"tinybert-{key}", "tinybert", "--model", str(runs / f"general-{key}"), "--teacher", teacher_dir,
              *task_args, *tiny_args)
    # ---- ablations on the 3-layer student ---------------------------------------------------------------
    train("tinybert-3l-no-aug", "tinybert", "--model", str(runs / "general-3l"), "--teacher", teacher_dir,
          *task_args, "--no-augment", *tiny_args)
    train("tinybert-3l-no-gd", "tinybert", "--teacher", teacher_dir, *students["3l"], *task_args, *tiny_args)
    train("kd-3l-logits", "tinybert", "--teacher", teacher_dir, *students["3l"], "--stages", "prediction",
          "--epochs", args.epochs, "--lr", args.lr, "--aug-copies", args.aug_copies, *tiny_args)
    init = runs / "init-3l"  # the student the others start from, before any training: teacher layers 2, 4, 6
    if not (args.reuse and finished(init)):
        teacher = load(teacher_dir)
        student = build_student(teacher.hf, TinyBertConfig(student_layers=3), "teacher", seed=int(args.seed))
        NimbleModel(student, teacher.tokenizer, "finetune", {}, teacher.label_names).save(init)
    train("finetune-3l", "finetune", "--model", str(init), "--epochs", args.finetune_epochs,
          "--lr", args.finetune_lr)

    rows_spec = [  # (folder, label ({shape}: layers × hidden), what it is)
        ("tinybert-3l", "TinyBERT {shape}", "GD + intermediate + prediction, augmented"),
        ("tinybert-2l", "TinyBERT {shape}", "GD + intermediate + prediction, augmented"),
        ("tinybert-3x192", "TinyBERT {shape}", "random init; GD + intermediate + prediction, augmented"),
        ("finetune-3l", "{shape} fine-tuned directly", "the teacher's layers 2, 4, 6; cross-entropy, no distillation"),
        ("kd-3l-logits", "{shape} logits-only KD", "prediction-layer distillation only, augmented"),
        ("tinybert-3l-no-aug", "TinyBERT {shape} without augmentation", "GD + intermediate + prediction"),
        ("tinybert-3l-no-gd", "TinyBERT {shape} without GD", "intermediate + prediction, augmented"),
    ]
    # Full rows: the GD time belongs to them too.
    for key in students:
        seconds[f"tinybert-{key}"] += seconds[f"general-{key}"]
    seconds["tinybert-3l-no-aug"] += seconds["general-3l"]

    # ---- accuracy, FLOPs and latency against the plain transformers teacher, one run --------------------------
    bench_dir = runs / "bench"
    models = [teacher_dir, *(str(runs / f) for f, _, _ in rows_spec)]
    cli("bench", *models, "--data", data, "--max-length", args.max_length, "--out", str(bench_dir), "--no-onnx",
        "--b1-examples", str(args.b1_examples), "--b32-examples", str(args.b32_examples), "--rounds", str(args.rounds),
        *(["--threads", str(args.threads)] if args.threads else []))
    bench = {r["name"]: r for r in map(json.loads, (bench_dir / "results.jsonl").read_text().splitlines())}
    meta = json.loads((bench_dir / "meta.json").read_text())

    # ---- paired differences from the teacher on the same test sentences ---------------------------------------
    baseline = common.teacher_baseline(teacher_dir, data, int(args.max_length))
    teacher, split, encoded, loader = baseline.teacher, baseline.split, baseline.encoded, baseline.loader
    teacher_row = bench[Path(teacher_dir).name]
    t_cfg = teacher.hf.config
    rows = [{"model": Path(teacher_dir).name, "label": f"teacher ({t_cfg.num_hidden_layers}×{t_cfg.hidden_size})",
             "what": "fine-tuned", "shape": f"{t_cfg.num_hidden_layers}×{t_cfg.hidden_size}",
             "accuracy": teacher_row["accuracy"], "vs_teacher": None, "agreement_with_teacher": 1.0,
             "params_m": teacher_row["params_m"], "flops_per_sample": teacher_row["flops_per_sample"],
             "flops_speedup": 1.0, "b1_speedup": teacher_row["b1_speedup"], "b32_speedup": teacher_row["b32_speedup"],
             "train_seconds": None}]
    for folder, label, what in rows_spec:
        model = load(runs / folder)
        preds = predict_loader(model, loader)
        b = bench[folder]
        cfg = model.hf.config
        shape = f"{cfg.num_hidden_layers}×{cfg.hidden_size}"
        rows.append({"model": folder, "label": label.format(shape=shape), "what": what, "shape": shape,
                     "accuracy": float((preds.predicted == preds.labels).float().mean()),
                     "vs_teacher": baseline.versus(preds, args.bootstrap),
                     "agreement_with_teacher": baseline.agreement(preds),
                     "params_m": b["params_m"], "flops_per_sample": b["flops_per_sample"],
                     "flops_speedup": b["flops_speedup"], "b1_speedup": b["b1_speedup"],
                     "b32_speedup": b["b32_speedup"], "train_seconds": seconds[folder]})
        print(f"{rows[-1]['label']}: accuracy {rows[-1]['accuracy']:.4f}", file=sys.stderr, flush=True)

    # ---- the section ------------------------------------------------------------------------------------------
    def minutes(r: dict[str, Any]) -> str:
        return "—" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f}"

    def line(r: dict[str, Any]) -> str:
        return (f"| {r['label']} | {r['accuracy']:.4f} | {points_ci(r['vs_teacher'])} | "
                f"{r['agreement_with_teacher']:.3f} | {r['params_m']:.1f} | {r['flops_per_sample'] / 1e6:.0f} | "
                f"{r['flops_speedup']:.2f} | "
                f"{r['b1_speedup']:.2f} | {r['b32_speedup']:.2f} | {minutes(r)} |")

    head = ["| model | accuracy | Δ vs teacher [95% CI] (points) | agrees with teacher | params M | MFLOPs | "
            "FLOPs × | b1 × | b32 × | training min |", "|---|---|---|---|---|---|---|---|---|---|"]
    main_rows = [r for r in rows if r["model"] in (Path(teacher_dir).name, "tinybert-3l", "tinybert-2l",
                                                    "tinybert-3x192")]
    ablation = [r for r in rows if r["model"].startswith(("tinybert-3l", "finetune-3l", "kd-3l"))]
    env = environment()
    n_train = len(load_task(data, splits=("train",)).train) if sizes is None else sizes["train"]
    gd_teacher = general_teacher or summary_of(Path(teacher_dir))["options"].get("model")
    gd_text = (f"`{tag}`'s {n_train} training sentences (labels unused)" if general_data == data
               else f"`{general_data}`")
    command = "python benchmarks/tinybert_mr.py" + ("" if data == "mr" else f" --data {data}")
    md = f"""## TinyBERT on `{tag}`: smaller students distilled layer by layer

`{command}` — teacher `{teacher_dir}` ({rows[0]['shape']}, fine-tuned; accuracy {rows[0]['accuracy']:.4f} on
the {len(encoded)} {split} sentences).

Settings, cut to fit about 40 minutes on 2 CPU cores, far below the paper's (so these rows say what a short
TinyBERT run gives, not what TinyBERT can give):
- general distillation (GD): {args.general_epochs} epoch over {gd_text} from the pre-trained `{gd_teacher}`,
  lr 5e-5 with 10% warm-up (paper: 3 epochs over Wikipedia's 2.5B words);
- augmentation: N = {args.aug_copies} copy per sentence (paper: 20), p = 0.4, K = 15; candidates are the nearest
  whole words in the teacher's input-embedding space (MiniLM-L6 has no masked-LM head; words of several pieces
  are kept);
- intermediate-layer distillation: {args.intermediate_epochs} epoch at a constant 5e-5 (README: 10 epochs);
  prediction-layer distillation: {args.epochs} epoch at {args.lr} with 10% warm-up, best validation kept (README: 3);
- batch {args.batch_size}, max {args.max_length} tokens, seed {args.seed}; the teacher's outputs are cached
  (it runs once per sentence and layer map for the whole benchmark);
- the {rows[1]['shape']} and {rows[2]['shape']} students start from the teacher's layers (g(m) = 2m and 3m),
  embeddings and head; the {rows[3]['shape']} student starts at random (it cannot copy the teacher's matrices);
- Δ: accuracy difference from the teacher on the same sentences, paired bootstrap 95% interval
  ({args.bootstrap} resamples). ×: speed-up over the faster plain transformers teacher (eager/sdpa) measured by
  `nimblebert bench` in the same run (batch 1 over {args.b1_examples} sentences, batch 32 over
  {args.b32_examples}, median of {args.rounds} passes); FLOPs × from the analytic count.

{chr(10).join(head + [line(r) for r in main_rows])}

Ablations on the {rows[1]['shape']} student (same initialisation, same data and epochs unless said):

| model | what | accuracy | Δ vs teacher [95% CI] (points) | training min |
|---|---|---|---|---|
""" + "\n".join(f"| {r['label']} | {r['what']} | {r['accuracy']:.4f} | {points_ci(r['vs_teacher'])} | {minutes(r)} |"
                for r in ablation) + f"""

{common.env_line(env)}
"""
    best = rows[1]
    v = best["vs_teacher"]
    headline = (f"**TinyBERT** (`{command}`) on `{tag}`: a 3-layer student (from the teacher's layers, "
                f"{best['params_m']:.1f}M parameters) reaches {best['accuracy']:.4f} vs the teacher's "
                f"{rows[0]['accuracy']:.4f} (Δ {100 * v['diff']:+.2f} points, 95% CI [{100 * v['low']:+.2f}, "
                f"{100 * v['high']:+.2f}]), {best['b1_speedup']:.2f}× faster at batch 1 and {best['b32_speedup']:.2f}× "
                f"at batch 32 (FLOPs {best['flops_speedup']:.2f}×), after a short run (N = {args.aug_copies}, "
                "1 epoch per stage).")
    result = {"data": data, "split": split, "examples": len(encoded), "sizes": sizes, "teacher": teacher_dir,
              "settings": vars(args), "commands": {k: "nimblebert " + " ".join(c) for k, c in commands.items()},
              "train_seconds": seconds, "rows": rows, "bench": list(bench.values()), "bench_meta": meta,
              "environment": env}
    common.publish(name, md, result, headline, docs if args.docs else None)
    print(md)
    print(headline)


if __name__ == "__main__":
    main()
