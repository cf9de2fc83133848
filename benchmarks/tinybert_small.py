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
- more in :data:`RECIPES`: issue 20's candidates for one recipe that wins on both scales: ``joint-pw5`` (the joint
  stage with ``--pred-weight 5``: the attention loss on pre-softmax scores drowns the prediction loss at 1),
  ``joint-pred`` (a joint stage, then a prediction stage), joint with N = 1 augmentation, and on the whole of mr
  ``joint-aug-1ep``, ``joint-pw5-aug-1ep`` (N = 1, one epoch: half the steps of ``--recipe short``),
  ``joint-pw5-aug-2ep`` (the same steps); the paper's own answer to small data, never measured here before: the
  ``official`` recipe (no flags: N = 20, 10 intermediate + 3 prediction epochs), and the joint stage on N = 20 or 5
  augmented copies (``joint-pw5-aug20-2ep``, ``joint-pw5-aug5-3ep``); ``recipe-joint`` is ``--recipe joint``, the
  documented option that came out of them (on 400 rows the training of ``joint-pw5-aug20-2ep``, validated every 50
  steps instead of once per epoch; on the whole of mr its rule picks N = 2).

Every recipe runs for each of ``--seeds`` (``NAME@42`` or ``NAME@42+43``: only those); seed 42's folder is
``runs/robust/tinybert-mr<rows>/NAME``, another seed's ``NAME-s<seed>``. ``--textbrewer PYTHON`` trains the peer
(``textbrewer_peer.py``, in an interpreter that has TextBrewer) for every seed; a peer trained elsewhere joins with
``--peer NAME=FOLDER`` (the folder's ``predictions.json``), a finished student with ``--extra NAME=FOLDER``
(repeat a name for its seeds).

Every student and the teacher on the test split: accuracy, the paired difference from the teacher with its
bootstrap 95% interval, and from the ``--reference`` recipe of the same seed; per recipe the mean over seeds (the
interval of the per-sentence correctness averaged over seeds); the validation accuracy (the best checkpoint's:
what a user would pick on), the steps per stage and the training time. ``--rows 0`` runs the same recipes on the
whole of mr, against its teacher ``runs/teacher-mr``. Nothing is timed for speed (the students' shapes are the
same).

    python benchmarks/tinybert_small.py --rows 400 --seeds 42,43,44 --reference textbrewer \\
        --recipes joint,joint-pw5,short@42 --textbrewer /work/tb-venv/bin/python   # docs/tinybert_small.*
    python benchmarks/tinybert_small.py --rows 0 --student-layers 3 --seeds 42,43 --recipes joint-pw5-aug-1ep \\
        --extra s3=runs/s3 --extra s3=runs/seed43/s3 --reference s3 --name tinybert_small_full   # full mr
    python benchmarks/tinybert_small.py --rows 0 --student-layers 3 --seeds 42,43,44,45 \\
        --recipes recipe-joint,recipe-joint-4ep,short --textbrewer /work/tb-venv/bin/python \\
        --reference textbrewer,short --name tinybert_small_full   # full mr against the peer (its 3-layer student)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
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
    # issue 20's last item: candidates for one recipe that wins on 400 rows and on the whole of mr
    "joint-pred": ["--stages", "joint,prediction", "--no-augment", "--epochs", "5", "--lr", "1e-4"],
    "joint-aug-5ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "5", "--lr", "1e-4"],
    "joint-pw5": ["--stages", "joint", "--no-augment", "--epochs", "10", "--lr", "1e-4", "--pred-weight", "5"],
    "joint-aug-1ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "1", "--lr", "1e-4"],
    "joint-pred-aug-1ep": ["--stages", "joint,prediction", "--aug-copies", "1", "--epochs", "1", "--lr", "1e-4"],
    "joint-aug-2ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "2", "--lr", "1e-4"],
    "joint-pw5-aug-2ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "2", "--lr", "1e-4",
                          "--pred-weight", "5"],
    "joint-pw5-aug-1ep": ["--stages", "joint", "--aug-copies", "1", "--epochs", "1", "--lr", "1e-4",
                          "--pred-weight", "5"],
    # the paper's answer to small data, never measured before on 400 rows: the official recipe (no flags: N = 20
    # augmented copies, 10 intermediate + 3 prediction epochs), and the joint stage on N = 20 / 5 augmented copies
    # (21x / 6x the rows, so a few epochs)
    "official": [],
    "joint-pw5-aug20-2ep": ["--stages", "joint", "--aug-copies", "20", "--epochs", "2", "--lr", "1e-4",
                            "--pred-weight", "5"],
    "joint-pw5-aug20-3ep": ["--stages", "joint", "--aug-copies", "20", "--epochs", "3", "--lr", "1e-4",
                            "--pred-weight", "5"],
    "joint-pw5-aug5-3ep": ["--stages", "joint", "--aug-copies", "5", "--epochs", "3", "--lr", "1e-4",
                           "--pred-weight", "5"],
    # the documented option that came out of these: the joint stage, weight 5, lr 1e-4, 2 epochs, N from the rows
    # (--aug-target-rows 8400), validation every 50 steps: on 400 rows N = 20, on the whole of mr N = 2
    "recipe-joint": ["--recipe", "joint"],
    # the same with the peer's step count on the whole of mr (4 epochs of N = 2: 1012 steps, the peer's 880)
    "recipe-joint-4ep": ["--recipe", "joint", "--epochs", "4"],
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
    texts = {"train": "".join(json.dumps(r) + "\n" for r in picked)}
    texts |= {split: (source / f"{split}.jsonl").read_text() for split in ("validation", "test")}
    sizes = {}
    for split, text in texts.items():
        path = out / f"{split}.jsonl"
        if not path.is_file() or path.read_text() != text:  # unchanged files stay untouched (a run may be reading)
            path.write_text(text)
        sizes[split] = sum(1 for line in text.splitlines() if line.strip())
    return sizes


def summary_of(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "train_summary.json").read_text())


def steps_of(folder: str | Path) -> dict[str, int]:
    """Optimizer steps per stage, from the run's ``train_log.jsonl`` (its last logged step of each stage): the
    cost measure that does not depend on what else the shared cores ran."""
    steps: dict[str, int] = {}
    for line in (Path(folder) / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if "stage" in r and "step" in r:
            steps[r["stage"]] = max(steps.get(r["stage"], 0), int(r["step"]))
    return steps


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
    ap.add_argument("--recipes", default="joint,two-5+5,two-5+5-lr1e-4,short",
                    help="recipes of RECIPES, comma-separated; NAME@42 or NAME@42+43 runs only those seeds")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=FOLDER: a finished student to report too (e.g. s3=runs/s3)")
    ap.add_argument("--peer", action="append", default=[],
                    help="NAME=FOLDER: a peer's student whose FOLDER/predictions.json holds its validation and test "
                         "predictions (benchmarks/textbrewer_peer.py writes one)")
    ap.add_argument("--textbrewer", metavar="PYTHON",
                    help="an interpreter that has TextBrewer (e.g. /work/tb-venv/bin/python): train the peer "
                         "(textbrewer_peer.py) for every seed and report it as 'textbrewer'")
    ap.add_argument("--peer-seeds", help="the seeds --textbrewer trains (default: --seeds; on the whole of mr a peer "
                                         "run takes half an hour at 1 thread)")
    ap.add_argument("--reference", default="two-5+5",
                    help="the recipe(s) every other is also paired against, comma-separated (the first one's "
                         "interval is the headline's)")
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
    from nimblebert.data.builtin import data_home
    if args.rows:
        data = str(runs / "data")
        sizes = subset(args.rows, args.data_seed, Path(data))
    else:
        data, sizes = "mr", None
    # the peer reads the split files themselves (a built-in name means nothing to it)
    peer_data = data if args.rows else str(data_home() / "data" / "mr")
    teacher = args.teacher or (str(runs / "teacher") if args.rows else "runs/teacher-mr")
    common_args = ["--data", data, "--max-length", args.max_length]
    if not finished(teacher):
        cli("train", "finetune", "--model", "minilm-l6", "--out", teacher, "--overwrite", *common_args,
            "--epochs", args.teacher_epochs, "--lr", args.teacher_lr, "--batch-size", args.teacher_batch_size,
            "--no-progress", capture=False)

    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    # "joint" runs every --seeds; "short@42" (or "short@42+43") only the seeds named: the candidates that lost on
    # their first seed need not run three times
    recipe_seeds = {spec.partition("@")[0]: spec.partition("@")[2].split("+") if "@" in spec else seeds
                    for spec in (r.strip() for r in args.recipes.split(",")) if spec}
    recipes = list(recipe_seeds)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    students: dict[str, list[str]] = {}
    commands: dict[str, str] = {}
    for recipe in recipes:
        for seed in recipe_seeds[recipe]:
            out = str(seed_folder(runs, recipe, seed))
            train_args = ["--teacher", teacher, "--out", out, *common_args, "--student-layers", args.student_layers,
                          "--batch-size", args.batch_size, "--seed", seed, *RECIPES[recipe], "--no-progress"]
            commands.setdefault(recipe, "nimblebert train tinybert " + " ".join(train_args))
            if not (args.reuse and finished(out)):
                cli("train", "tinybert", *train_args, "--overwrite", capture=False)
            students.setdefault(recipe, []).append(out)
    peers = [tuple(spec.partition("=")[::2]) for spec in args.peer]
    if args.textbrewer:  # the real peer, one student per seed, in its own interpreter (TextBrewer is no dependency)
        peer_seeds = [s.strip() for s in (args.peer_seeds or args.seeds).split(",") if s.strip()]
        for seed in peer_seeds:
            out = seed_folder(runs, "textbrewer", seed)
            if not (args.reuse and (out / "predictions.json").is_file()):
                subprocess.run([args.textbrewer, str(ROOT / "benchmarks" / "textbrewer_peer.py"), "--data", peer_data,
                                "--teacher", teacher, "--out", str(out), "--layers", args.student_layers,
                                "--seed", seed, "--max-length", args.max_length, "--batch-size", args.batch_size],
                               check=True)
            peers.append(("textbrewer", str(out)))
        commands["textbrewer"] = (f"{args.textbrewer} benchmarks/textbrewer_peer.py --data {peer_data} "
                                  f"--teacher {teacher} --out {seed_folder(runs, 'textbrewer', peer_seeds[0])} "
                                  f"--layers {args.student_layers} --seed {peer_seeds[0]} "
                                  f"--max-length {args.max_length} --batch-size {args.batch_size}")
    if args.train_only:
        return
    for spec in args.extra:
        name, _, folder = spec.partition("=")
        students.setdefault(name, []).append(folder)

    # ---- evaluation: validation (what picks) and test (what is reported), paired with the teacher --------
    import numpy as np
    import torch

    from nimblebert import load
    from nimblebert.data import encode, make_loader
    from nimblebert.inference import metrics, predict_loader

    base = common.teacher_baseline(teacher, data, int(args.max_length))
    val_enc = encode(base.task.validation, base.teacher.tokenizer, int(args.max_length), base.task.has_pair)
    val_loader = make_loader(val_enc, base.teacher.tokenizer, 64, shuffle=False, bucket_by_length=True)
    teacher_val = metrics(predict_loader(base.teacher, val_loader), base.teacher.num_labels)
    rows: list[dict[str, Any]] = []
    correct: list[np.ndarray] = []  # per row: 0/1 correctness on the test split, in the split's order
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
                         "train_steps": steps_of(folder), "layers": model.hf.config.num_hidden_layers})
            correct.append((p.predicted == p.labels).numpy())
    val_labels = predict_loader(base.teacher, val_loader).labels
    peer_train = base.task.train  # the peer trains on the data's training rows, no augmentation
    for name, folder in peers:  # a peer run outside nimblebert: its predictions, mapped to the teacher's label ids
        peer = json.loads((Path(folder) / "predictions.json").read_text())
        to_ours = [base.teacher.label_names.index(n) for n in peer["label_names"]]
        test_pred = torch.tensor([to_ours[i] for i in peer["test"]])
        val_pred = torch.tensor([to_ours[i] for i in peer["validation"]])
        p = type(base.predictions)(torch.nn.functional.one_hot(test_pred, base.teacher.num_labels).float(),
                                   base.predictions.labels, base.predictions.layers, base.predictions.flops)
        rows.append({"recipe": name, "folder": folder, "seed": peer["options"].get("seed"), "peer": peer["peer"],
                     "test": metrics(p, base.teacher.num_labels),
                     "validation_accuracy": float((val_pred == val_labels).float().mean()),
                     "vs_teacher": base.versus(p, args.bootstrap), "train_seconds": peer.get("train_seconds"),
                     "train_rows": {"one stage": len(peer_train)},
                     "train_steps": {"one stage": peer["options"]["epochs"] * -(-len(peer_train) // peer["options"][
                         "batch_size"])} if peer_train else {},
                     "layers": peer["options"]["layers"]})
        correct.append((p.predicted == p.labels).numpy())
    # Δ vs each reference recipe run with the same seed (the same seed's data order and initial projection)
    refs = [x.strip() for x in args.reference.split(",") if x.strip()]
    for ref in refs:
        reference = {str(r["seed"]): c for r, c in zip(rows, correct, strict=True) if r["recipe"] == ref}
        for r, c in zip(rows, correct, strict=True):
            if reference and r["recipe"] != ref:
                ref_seed = str(r["seed"]) if str(r["seed"]) in reference else next(iter(reference))
                r.setdefault("vs_references", {})[ref] = common.paired_bootstrap(reference[ref_seed], c,
                                                                                 args.bootstrap)
                if ref == refs[0]:  # the first reference keeps the fields published before there were several
                    r["vs_reference"], r["reference_seed"] = r["vs_references"][ref], ref_seed
    groups = aggregate(rows, correct, base.correct, refs, args.bootstrap)

    env = environment()
    ref_heads = "".join(f" Δ vs {ref} (same seed) [95% CI] |" for ref in refs)
    table = [f"| recipe | seed | validation acc. | test acc. | Δ vs teacher [95% CI] |{ref_heads} "
             "train rows per stage | steps per stage | train s |",
             "|---|---|---|---|---|" + "---|" * len(refs) + "---|---|---|"]
    for r in rows:
        trows = ", ".join(f"{k} {v}" for k, v in (r["train_rows"] or {}).items())
        steps = " + ".join(str(v) for v in r["train_steps"].values()) or "—"
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "—"
        table.append(f"| {r['recipe']} | {r['seed']} | {r['validation_accuracy']:.4f} | {r['test']['accuracy']:.4f} | "
                     f"{points_ci(r['vs_teacher'])} | "
                     + "".join(f"{points_ci(r.get('vs_references', {}).get(ref))} | " for ref in refs)
                     + f"{trows} | {steps} | "
                     f"{secs} |")
    means = ["| recipe | seeds | mean validation acc. | mean test acc. (min–max) | Δ vs teacher [95% CI] |"
             + "".join(f" Δ vs {ref} [95% CI] |" for ref in refs) + " mean train s |",
             "|---|---|---|---|---|" + "---|" * len(refs) + "---|"]
    for name, g in groups.items():
        secs = f"{g['train_seconds']:.0f}" if g["train_seconds"] else "—"
        means.append(f"| {name} | {', '.join(str(s) for s in g['seeds'])} | {g['validation_accuracy']:.4f} | "
                     f"{g['test_accuracy']:.4f} ({g['test_min']:.4f}–{g['test_max']:.4f}) | "
                     f"{points_ci(g['vs_teacher'])} | "
                     + "".join(f"{points_ci(g.get('vs_references', {}).get(ref))} | " for ref in refs) + f"{secs} |")
    ours = {k: g for k, g in groups.items() if not g["peer"]}
    best = max(ours, key=lambda k: ours[k]["validation_accuracy"])
    command = common.command_line()
    recipe_lines = "\n".join(f"- `{k}`: `{commands[k]}`" for k in [*recipes, "textbrewer"] if k in commands)
    what = (f"{sizes['train']} training sentences of mr (seeded stratified sample, data seed {args.data_seed}), mr's "
            f"{sizes['validation']} validation and {sizes['test']} test sentences" if sizes else "the whole of mr")
    # one title per section (results.md must not repeat a title): the row count tells the two runs apart
    scale = f"small data ({sizes['train']} rows of mr)" if sizes else "the whole of mr"
    md = f"""## TinyBERT on {scale}: recipes over seeds

`{command}` — {what}; teacher `{teacher}` (MiniLM-L6 fine-tuned on the same rows: {teacher_val['accuracy']:.4f}
validation, {base.metrics['accuracy']:.4f} test); {args.student_layers}-layer students at the teacher's width,
initialised from its layers, max length {args.max_length}, batch {args.batch_size}, training seeds
{', '.join(seeds)} (each recipe's command below is its first seed's; the others change only `--seed` and `--out`).
Validation accuracy: the kept checkpoint's, on the {len(val_enc)} validation sentences (what a user picks on).
Test: {len(base.encoded)} sentences. Δ: paired bootstrap 95% intervals in points ({args.bootstrap} resamples); in
the table of means, of the per-sentence correctness averaged over each recipe's seeds. Train s: wall time of
each run at 1 thread under whatever else the 2 shared cores ran then (not comparable between runs; the steps
per stage are: a TextBrewer step also runs the 6-layer teacher, which ours read from a cache). The
validation-chosen recipe (highest mean validation accuracy, peers aside) is **{best}**.

{recipe_lines}

{chr(10).join(means)}

Every run:

{chr(10).join(table)}

{common.env_line(env)}
"""
    g = groups[best]
    headline = (f"**TinyBERT on {scale}** (`{command}`): validation picks {best}, mean test "
                f"{g['test_accuracy']:.4f} over seeds {', '.join(str(s) for s in g['seeds'])}, "
                f"{points_ci(g['vs_teacher'])} points vs its teacher"
                + (f", {points_ci(g.get('vs_reference'))} vs {refs[0]}" if g.get("vs_reference") else "")
                + ".")
    result = {"data": data, "sizes": sizes, "teacher": teacher, "teacher_validation": teacher_val,
              "teacher_test": base.metrics, "seeds": seeds, "recipes": {k: RECIPES.get(k) for k in students},
              "commands": commands, "rows": rows, "means": groups, "validation_chosen": best, "environment": env,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    common.publish(args.name, md, result, headline, Path(os.path.abspath(args.docs)) if args.docs else None)
    print(md)


def seed_folder(runs: Path, recipe: str, seed: str) -> Path:
    """A recipe's run for one seed: seed 42 keeps the recipe's plain name (the runs published before seeds were
    added), any other seed gets ``-s<seed>``."""
    return runs / (recipe if seed == "42" else f"{recipe}-s{seed}")


def aggregate(rows: list[dict[str, Any]], correct: list[Any], teacher_correct: Any, reference: str | list[str],
              reps: int) -> dict[str, dict[str, Any]]:
    """Per recipe, over its seeds: mean validation and test accuracy, the test range, and the paired bootstrap
    interval of the mean over seeds (each test sentence's correctness averaged over the recipe's seeds) against
    the teacher and against each reference recipe's own mean over seeds (the first one also as ``vs_reference``)."""
    import numpy as np

    refs = [reference] if isinstance(reference, str) else list(reference)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(r["recipe"], []).append(i)
    mean_correct = {k: np.mean([correct[i] for i in idx], axis=0) for k, idx in by.items()}
    out: dict[str, dict[str, Any]] = {}
    for k, idx in by.items():
        tests = [rows[i]["test"]["accuracy"] for i in idx]
        secs = [rows[i]["train_seconds"] for i in idx if rows[i]["train_seconds"]]
        g = {"seeds": [rows[i]["seed"] for i in idx], "peer": any("peer" in rows[i] for i in idx),
             "validation_accuracy": float(np.mean([rows[i]["validation_accuracy"] for i in idx])),
             "test_accuracy": float(np.mean(tests)), "test_min": min(tests), "test_max": max(tests),
             "vs_teacher": common.paired_bootstrap(teacher_correct, mean_correct[k], reps),
             "train_seconds": float(np.mean(secs)) if secs else None}
        for ref in refs:
            if ref in mean_correct and k != ref:
                g.setdefault("vs_references", {})[ref] = common.paired_bootstrap(mean_correct[ref], mean_correct[k],
                                                                                  reps)
        if refs[0] in g.get("vs_references", {}):  # the first reference: the field published before
            g["vs_reference"] = g["vs_references"][refs[0]]
        out[k] = g
    return out


if __name__ == "__main__":
    main()
