"""TinyBERT on small data: the official two task stages against one joint stage (issue 20, "a peer ahead").

TextBrewer-style one-stage distillation (hidden + attention + soft-logit losses together, lr 1e-4, 10 epochs) beat
our two stages (5 intermediate + 5 prediction epochs) on a 5-class task with a few hundred training documents.
This reproduces the setting on `mr` with ``--rows`` training sentences (a seeded, stratified sample of mr's
training split; validation and test are mr's whole splits, 400 and 800 sentences): a MiniLM-L6 teacher
fine-tuned on the same rows, then a ``--student-layers`` student (initialised from the teacher's layers g(m)) by
each recipe of ``--recipes``:

- ``joint``: ``--stages joint``, L_attn + L_hidn + L_pred together, lr 1e-4, 10 epochs, no augmentation (the peer's
  recipe inside nimblebert);
- ``two-5+5``: the issue's two stages without augmentation, 5 + 5 epochs (intermediate 5e-5 constant, prediction
  3e-5, the README's rates);
- ``two-5+5-lr1e-4``: the same at 1e-4 in both stages (is it the learning rate?);
- ``short``: ``--recipe short`` (N = 1 augmented copy, 1 intermediate + 1 prediction epoch, --lr 3e-5);
- more in :data:`RECIPES` (a longer prediction stage, joint with augmentation, joint for 3 epochs).

A peer trained outside nimblebert joins the table with ``--peer NAME=FOLDER`` (``textbrewer_peer.py`` writes the
folder's ``predictions.json``).

Every student and the teacher on the test split: accuracy, the paired difference from the teacher with its
bootstrap 95% interval, and from the ``--reference`` recipe; the validation accuracy (the best checkpoint's:
what a user would pick on) and the training time. ``--rows 0`` runs the same recipes on the whole of
mr, against its teacher ``runs/teacher-mr``. Nothing is timed for speed (the students' shapes are the same).

    python benchmarks/tinybert_small.py --rows 400     # runs/robust/tinybert-mr400/*, docs/tinybert_small.*
    python benchmarks/tinybert_small.py --rows 0 --student-layers 3 --recipes joint-1ep-noaug \\
        --extra s3=runs/s3 --reference s3 --name tinybert_small_full   # full mr, against the 3-layer runs/s3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import common
from common import ROOT, cli, environment, finished, points_ci

RECIPES: dict[str, list[str]] = {
    "short": ["--recipe", "short", "--lr", "3e-5"],
    "two-5+5": ["--no-augment", "--intermediate-epochs", "5", "--epochs", "5", "--lr", "3e-5"],
    "two-5+5-lr1e-4": ["--no-augment", "--intermediate-epochs", "5", "--intermediate-lr", "1e-4", "--epochs", "5",
                       "--lr", "1e-4"],
    "two-5+10-lr1e-4": ["--no-augment", "--intermediate-epochs", "5", "--intermediate-lr", "1e-4", "--epochs", "10",
                        "--lr", "1e-4"],
    "joint": ["--stages", "joint", "--no-augment", "--epochs", "10", "--lr", "1e-4"],
    "joint-aug": ["--stages", "joint", "--aug-copies", "1", "--epochs", "10", "--lr", "1e-4"],
    "joint-3ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "3", "--lr", "1e-4"],
    "joint-3ep-noaug": ["--stages", "joint", "--no-augment", "--epochs", "3", "--lr", "1e-4"],
    "joint-1ep-noaug": ["--stages", "joint", "--no-augment", "--epochs", "1", "--lr", "1e-4"],
}


def subset(rows: int, seed: int, out: Path) -> dict[str, int]:
    """A data folder with ``rows`` training rows of mr (stratified: the same share of each label, seeded) and mr's
    whole validation and test splits."""
    from nimblebert.data.builtin import data_home

    source = data_home() / "data" / "mr"
    train = [json.loads(line) for line in (source / "train.jsonl").read_text().splitlines() if line.strip()]
    by_label: dict[str, list[dict]] = {}
    for r in train:
        by_label.setdefault(r["label"], []).append(r)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        picked += group[: round(rows * len(group) / len(train))]
    rng.shuffle(picked)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked))
    sizes = {"train": len(picked)}
    for split in ("validation", "test"):
        text = (source / f"{split}.jsonl").read_text()
        (out / f"{split}.jsonl").write_text(text)
        sizes[split] = sum(1 for line in text.splitlines() if line.strip())
    return sizes


def summary_of(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "train_summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="training rows of mr (0 = all of mr)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the training sample")
    ap.add_argument("--teacher", help="fine-tuned teacher (default: trained on the same rows; runs/teacher-mr "
                                      "with --rows 0)")
    ap.add_argument("--teacher-epochs", default="5")
    ap.add_argument("--teacher-lr", default="5e-5")
    ap.add_argument("--teacher-batch-size", default="16")
    ap.add_argument("--student-layers", default="2")
    ap.add_argument("--recipes", default="joint,two-5+5,two-5+5-lr1e-4,short")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=FOLDER: a finished student to report too (e.g. s3=runs/s3)")
    ap.add_argument("--peer", action="append", default=[],
                    help="NAME=FOLDER: a peer's student whose FOLDER/predictions.json holds its validation and test "
                         "predictions (benchmarks/textbrewer_peer.py writes one)")
    ap.add_argument("--reference", default="two-5+5", help="the recipe every other is also paired against")
    ap.add_argument("--seeds", default="42", help="training seeds of the students, comma-separated")
    ap.add_argument("--max-length", default="64")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--runs", help="folder of the trained models (default runs/robust/tinybert-mr<rows>)")
    ap.add_argument("--name", default="tinybert_small")
    ap.add_argument("--docs", help="write the files here instead of docs/ (no docs/results.md or README update)")
    ap.add_argument("--reuse", action="store_true", help="keep finished models")
    ap.add_argument("--train-only", action="store_true",
                    help="train the recipes' students and stop (several runs in parallel, one report after)")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    common.use_threads(args.threads)
    os.chdir(ROOT)
    label = f"mr{args.rows}" if args.rows else "mr"
    runs = Path(args.runs or f"runs/robust/tinybert-{label}")
    runs.mkdir(parents=True, exist_ok=True)
    cli("data", "prepare", "mr")
    if args.rows:
        data = str(runs / "data")
        sizes = subset(args.rows, args.data_seed, Path(data))
    else:
        data, sizes = "mr", None
    teacher = args.teacher or (str(runs / "teacher") if args.rows else "runs/teacher-mr")
    common_args = ["--data", data, "--max-length", args.max_length]
    if not finished(teacher):
        cli("train", "finetune", "--model", "minilm-l6", "--out", teacher, "--overwrite", *common_args,
            "--epochs", args.teacher_epochs, "--lr", args.teacher_lr, "--batch-size", args.teacher_batch_size,
            "--no-progress", capture=False)

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    students: dict[str, list[str]] = {}
    commands: dict[str, str] = {}
    for recipe in recipes:
        for seed in seeds:
            out = str(runs / (recipe if len(seeds) == 1 else f"{recipe}-s{seed}"))
            train_args = ["--teacher", teacher, "--out", out, *common_args, "--student-layers", args.student_layers,
                          "--batch-size", args.batch_size, "--seed", seed, *RECIPES[recipe], "--no-progress"]
            commands[recipe] = "nimblebert train tinybert " + " ".join(train_args)
            if not (args.reuse and finished(out)):
                cli("train", "tinybert", *train_args, "--overwrite", capture=False)
            students.setdefault(recipe, []).append(out)
    if args.train_only:
        return
    for spec in args.extra:
        name, _, folder = spec.partition("=")
        students[name] = [folder]

    # ---- evaluation: validation (what picks) and test (what is reported), paired with the teacher --------
    import torch

    from nimblebert import load
    from nimblebert.data import encode, make_loader
    from nimblebert.inference import metrics, predict_loader

    base = common.teacher_baseline(teacher, data, int(args.max_length))
    val_enc = encode(base.task.validation, base.teacher.tokenizer, int(args.max_length), base.task.has_pair)
    val_loader = make_loader(val_enc, base.teacher.tokenizer, 64, shuffle=False, bucket_by_length=True)
    teacher_val = metrics(predict_loader(base.teacher, val_loader), base.teacher.num_labels)
    preds: dict[str, list[Any]] = {}
    rows: list[dict[str, Any]] = []
    for name, folders in students.items():
        for folder in folders:
            model = load(folder)
            p = predict_loader(model, base.loader)
            val = metrics(predict_loader(model, val_loader), model.num_labels)
            summary = summary_of(folder)
            stage_acc = {k: v.get("accuracy") for k, v in summary.get("stages", {}).items() if isinstance(v, dict)}
            rows.append({"recipe": name, "folder": folder, "seed": summary["options"].get("seed"),
                         "test": metrics(p, model.num_labels), "validation_accuracy": val["accuracy"],
                         "stage_validation_accuracy": stage_acc, "vs_teacher": base.versus(p, args.bootstrap),
                         "train_seconds": summary.get("train_seconds"), "train_rows": summary.get("train_rows"),
                         "layers": model.hf.config.num_hidden_layers})
            preds.setdefault(name, []).append(p)
    for spec in args.peer:  # a peer run outside nimblebert: its predictions, mapped to the teacher's label ids
        name, _, folder = spec.partition("=")
        peer = json.loads((Path(folder) / "predictions.json").read_text())
        to_ours = [base.teacher.label_names.index(n) for n in peer["label_names"]]
        test_pred = torch.tensor([to_ours[i] for i in peer["test"]])
        val_pred = torch.tensor([to_ours[i] for i in peer["validation"]])
        p = type(base.predictions)(torch.nn.functional.one_hot(test_pred, base.teacher.num_labels).float(),
                                   base.predictions.labels, base.predictions.layers, base.predictions.flops)
        val_labels = predict_loader(base.teacher, val_loader).labels
        rows.append({"recipe": name, "folder": folder, "seed": peer["options"].get("seed"), "peer": peer["peer"],
                     "test": metrics(p, base.teacher.num_labels),
                     "validation_accuracy": float((val_pred == val_labels).float().mean()),
                     "vs_teacher": base.versus(p, args.bootstrap), "train_seconds": peer.get("train_seconds"),
                     "train_rows": {"one stage": sizes["train"] if sizes else None},
                     "layers": peer["options"]["layers"]})
        preds.setdefault(name, []).append(p)
    ref = preds.get(args.reference, [None])[0]
    if ref is not None:
        ref_correct = (ref.predicted == ref.labels).numpy()
        for r, p in zip(rows, (p for ps in preds.values() for p in ps), strict=True):
            if r["recipe"] != args.reference:
                r["vs_reference"] = common.paired_bootstrap(ref_correct, (p.predicted == p.labels).numpy(),
                                                            args.bootstrap)

    env = environment()
    table = [f"| recipe | seed | validation acc. | test acc. | Δ vs teacher [95% CI] | Δ vs {args.reference} "
             "[95% CI] | train rows per stage | train s |", "|---|---|---|---|---|---|---|---|"]

    for r in rows:
        trows = ", ".join(f"{k} {v}" for k, v in (r["train_rows"] or {}).items())
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "—"
        table.append(f"| {r['recipe']} | {r['seed']} | {r['validation_accuracy']:.4f} | {r['test']['accuracy']:.4f} | "
                     f"{points_ci(r['vs_teacher'])} | {points_ci(r.get('vs_reference'))} | {trows} | {secs} |")
    best = max(rows, key=lambda r: (r["validation_accuracy"], -rows.index(r)))
    command = common.command_line()
    recipe_lines = "\n".join(f"- `{k}`: `{commands[k]}`" for k in recipes)
    what = (f"{sizes['train']} training sentences of mr (seeded stratified sample, data seed {args.data_seed}), mr's "
            f"{sizes['validation']} validation and {sizes['test']} test sentences" if sizes else "the whole of mr")
    # one title per section (results.md must not repeat a title): the row count tells the two runs apart
    scale = f"small data ({sizes['train']} rows of mr)" if sizes else "the whole of mr"
    md = f"""## TinyBERT on {scale}: two stages against one joint stage

`{command}` — {what}; teacher `{teacher}` (MiniLM-L6 fine-tuned on the same rows: {teacher_val['accuracy']:.4f}
validation, {base.metrics['accuracy']:.4f} test); {args.student_layers}-layer students at the teacher's width,
initialised from its layers, max length {args.max_length}, batch {args.batch_size}. Δ: paired bootstrap 95%
intervals in points on the {len(base.encoded)} test sentences ({args.bootstrap} resamples). Validation accuracy:
the kept checkpoint's, on the {len(val_enc)} validation sentences (what a user picks on); the validation-chosen
recipe is **{best['recipe']}** (seed {best['seed']}).

{recipe_lines}

{chr(10).join(table)}

{common.env_line(env)}
"""
    headline = (f"**TinyBERT on small data** (`{command}`): validation picks {best['recipe']}, "
                f"{best['test']['accuracy']:.4f} on test, {points_ci(best['vs_teacher'])} points vs its teacher.")
    result = {"data": data, "sizes": sizes, "teacher": teacher, "teacher_validation": teacher_val,
              "teacher_test": base.metrics, "recipes": {k: RECIPES.get(k) for k in students},
              "commands": commands, "rows": rows, "validation_chosen": best["recipe"], "environment": env,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    common.publish(args.name, md, result, headline, Path(os.path.abspath(args.docs)) if args.docs else None)
    print(md)


if __name__ == "__main__":
    main()
