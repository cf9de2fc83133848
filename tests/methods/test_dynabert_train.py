"""DynaBERT through the real trainer and the CLI, on the toy task with tiny random BERTs."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import make_tokenizer, tiny_model
from transformers import AutoModelForSequenceClassification

import nimblebert
from nimblebert.cli.main import main
from nimblebert.data import encode, make_loader
from nimblebert.errors import UserError
from nimblebert.inference import metrics, predict_loader
from nimblebert.methods import get_method
from nimblebert.methods.dynabert import stages
from nimblebert.methods.finetune import cross_entropy_objective
from nimblebert.model import NimbleModel
from nimblebert.train.loop import StopTraining, train
from nimblebert.train.stages import Stage, TrainData, TrainOptions

POS = "good great fun best love funny smart beautiful moving".split()
NEG = "bad awful boring worst hate dull stupid ugly slow".split()
NEUTRAL = "the a movie film plot actor story is was and it this that script acting ending".split()
GRID = [(w, d) for d in (1.0, 0.5) for w in (1.0, 0.5, 0.25)]


def toy_rows(n: int, seed: int) -> dict[str, list]:
    """Neutral words with one or two sentiment words: an easy, learnable task."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 9))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if i % 2 else NEG))
        texts.append(" ".join(words))
        labels.append(i % 2)
    return {"text": texts, "label": labels}


@pytest.fixture(scope="module")
def toy() -> dict[str, datasets.Dataset]:
    tok = make_tokenizer()
    return {split: encode(datasets.Dataset.from_dict(toy_rows(n, seed)), tok, 24, False)
            for split, n, seed in (("train", 160, 0), ("validation", 48, 1))}


def options(out: Path, **kw) -> TrainOptions:
    kw = {"max_steps": 1, "batch_size": 16, "lr": 1e-3, "progress": False, "eval_every": 10_000,
          "save_every": 10_000, "log_every": 1, **kw}
    return TrainOptions(out=str(out), **kw)


@pytest.fixture(scope="module")
def teacher_hf(toy, tmp_path_factory) -> torch.nn.Module:
    """A tiny BERT fine-tuned on the toy task (the DynaBERT teacher): accurate and confident."""
    torch.manual_seed(0)
    model = NimbleModel(tiny_model(layers=4), make_tokenizer(), "finetune", {}, ["neg", "pos"])
    out = tmp_path_factory.mktemp("teacher")
    train(model, [Stage("finetune", cross_entropy_objective, lr=5e-3, warmup=0.0)], toy["train"], toy["validation"],
          options(out, max_steps=100))
    return model.hf


def dynabert_model(teacher_hf: torch.nn.Module, **cfg) -> NimbleModel:
    import copy

    model = NimbleModel(copy.deepcopy(teacher_hf), make_tokenizer(), "dynabert", cfg, ["neg", "pos"])
    get_method("dynabert").attach(model)
    return model


def accuracy(model: NimbleModel, encoded: datasets.Dataset, **knobs) -> float:
    loader = make_loader(encoded, model.tokenizer, 64, shuffle=False)
    return metrics(predict_loader(model, loader, **knobs), model.num_labels)["accuracy"]


def log_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_every_stage_runs_and_the_result_reloads(toy, teacher_hf, tmp_path) -> None:
    model = dynabert_model(teacher_hf, widths=[1.0, 0.5, 0.25], depths=[1.0, 0.5], phases=["width", "depth", "final"])
    batch = next(iter(make_loader(toy["validation"], model.tokenizer, 16, shuffle=False)))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    original = [p.detach().clone() for p in model.hf.parameters()]
    opts = options(tmp_path / "run")
    plan = stages(model, opts, data=TrainData(None, toy["train"], toy["validation"]))
    assert [s.name for s in plan] == ["dynabert-width", "dynabert-depth", "dynabert-final"]
    assert all(s.warmup == 0.0 and s.lr == opts.lr for s in plan)
    # Rewiring moved the weights but not the function: the full model still equals the teacher.
    assert any(not torch.equal(a, b) for a, b in zip(original, model.hf.parameters(), strict=True))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().infer(batch).logits, teacher_hf(**inputs).logits, atol=1e-5, rtol=0)

    train(model, plan, toy["train"], toy["validation"], opts)
    log = log_of(tmp_path / "run")
    losses = {r["stage"]: r for r in log if "loss" in r}
    assert set(losses) == {"dynabert-width", "dynabert-depth", "dynabert-final"}
    assert all(math.isfinite(r["loss"]) for r in losses.values())
    assert {k for k in losses["dynabert-width"] if k.startswith("w")} == {"w1_d1", "w0.5_d1", "w0.25_d1"}
    assert len([k for k in losses["dynabert-depth"] if k.startswith("w")]) == 6 and "kd" in losses["dynabert-depth"]
    assert "kd" not in losses["dynabert-final"]  # gold labels only
    assert not (tmp_path / "run" / "checkpoint").exists()  # the depth stage's teacher snapshot went with it

    loaded = nimblebert.load(tmp_path / "run")
    with torch.no_grad():
        for w, d in GRID:
            torch.testing.assert_close(model.eval().infer(batch, width=w, depth=d).logits,
                                       loaded.infer(batch, width=w, depth=d).logits, atol=1e-5, rtol=0)
        hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run").eval()
        torch.testing.assert_close(hf(**inputs).logits, loaded.infer(batch, width=1.0, depth=1.0).logits,
                                   atol=1e-5, rtol=0)


def test_augment_trains_both_distillation_stages_on_the_augmented_set(toy_data_dir: Path, teacher_hf, tmp_path,
                                                                      monkeypatch, capsys) -> None:
    """--augment (the official --data_aug): width and width × depth stages on the original + augmented rows,
    the final fine-tuning on the gold-labelled set alone; the set is cached and read back by a second run."""
    from nimblebert.data import load_task

    monkeypatch.setenv("NIMBLEBERT_HOME", str(tmp_path / "home"))  # the shared augmentation cache
    task = load_task(str(toy_data_dir))
    tok = make_tokenizer()
    data = TrainData(task, encode(task.train, tok, 24, False), encode(task.validation, tok, 24, False))
    cfg = {"widths": [1.0, 0.5], "depths": [1.0, 0.5], "phases": ["width", "depth", "final"], "augment": True,
           "aug_copies": 2}
    width, depth, final = stages(dynabert_model(teacher_hf, **cfg), options(tmp_path / "run"), data=data)
    aug = width.train_data
    assert depth.train_data is aug and final.train_data is None
    assert len(task.train) < len(aug) <= 3 * len(task.train)  # the 96 originals + up to 2 variants each
    originals = {tuple(r) for r in data.train["input_ids"]}
    rows = [tuple(r) for r in aug["input_ids"]]
    assert originals <= set(rows) and len(set(rows)) > len(originals)
    assert (tmp_path / "home" / "cache" / "tinybert" / "augment").is_dir()
    capsys.readouterr()

    again = stages(dynabert_model(teacher_hf, **cfg), options(tmp_path / "run2"), data=data)[0].train_data
    assert "read from the cache" in capsys.readouterr().err
    assert [tuple(r) for r in again["input_ids"]] == rows

    # Off by default (a deviation from the README, which trains on the augmented set: see the config).
    assert all(s.train_data is None for s in stages(dynabert_model(teacher_hf, phases=["width", "depth"]),
                                                    options(tmp_path / "run3"), data=data))


def test_continuing_a_dynabert_folder_keeps_its_wiring_depths_and_rule(toy, teacher_hf, tmp_path, capsys) -> None:
    """A later run from a DynaBERT folder (``--phases final`` after width + depth): no second rewiring (its
    sub-networks were trained on its order), the final stage covers the depths the folder trained, and a
    different depth rule is refused."""
    from nimblebert.model import from_base

    data = TrainData(None, toy["train"], toy["validation"])
    cfg = {"widths": [1.0, 0.5], "depths": [1.0, 0.5], "depth_rule": "last"}
    for phases in (["width"], ["width", "depth"]):
        first = dynabert_model(teacher_hf, phases=phases, **cfg)
        out = tmp_path / "-".join(phases)
        opts = options(out)
        train(first, stages(first, opts, data=data), toy["train"], toy["validation"], opts)

        model = from_base(str(out), ["neg", "pos"], "dynabert", {**cfg, "phases": ["final"]})
        before = {k: v.clone() for k, v in model.hf.state_dict().items()}
        capsys.readouterr()
        (final,) = stages(model, options(tmp_path / "final", model=str(out)), data=data)
        assert "already rewired" in capsys.readouterr().err
        assert all(torch.equal(before[k], v) for k, v in model.hf.state_dict().items())
        assert final.objective.depths == ([1.0, 0.5] if "depth" in phases else [1.0])
        assert final.objective.depth_rule == "last"

    model = from_base(str(out), ["neg", "pos"], "dynabert", {**cfg, "phases": ["final"], "depth_rule": "official"})
    with pytest.raises(UserError, match="trained with --depth-rule last"):
        stages(model, options(tmp_path / "other", model=str(out)), data=data)


def test_distillation_lowers_the_loss_and_teaches_the_small_sub_networks(toy, teacher_hf, tmp_path) -> None:
    torch.manual_seed(0)
    model = dynabert_model(teacher_hf, widths=[1.0, 0.5, 0.25], phases=["width"])
    before = accuracy(model, toy["validation"], width=0.25)
    opts = options(tmp_path / "run", max_steps=40)
    data = TrainData(None, toy["train"], toy["validation"])
    train(model, stages(model, opts, data=data), toy["train"], toy["validation"], opts)
    log = [r for r in log_of(tmp_path / "run") if "loss" in r]
    assert len(log) == 40

    def mean(key: str, rows: list[dict]) -> float:
        return sum(r[key] for r in rows) / len(rows)

    # The soft-CE part sits near its floor (the confident teacher's entropy) from the start on this easy
    # task; the hidden-state part is what the small widths have to learn.
    assert mean("loss", log[-8:]) < 0.85 * mean("loss", log[:8]), [r["loss"] for r in log]
    assert mean("hidden", log[-8:]) < 0.75 * mean("hidden", log[:8])
    assert mean("w0.25_d1", log[-8:]) < 0.75 * mean("w0.25_d1", log[:8])
    assert accuracy(model, toy["validation"]) >= 0.9  # the full model stays as good as the teacher
    assert accuracy(model, toy["validation"], width=0.25) >= max(before, 0.8)


def test_killed_run_resumes_to_the_same_weights(toy, teacher_hf, tmp_path) -> None:
    """The width × depth stage's teacher is the model as the stage started; a resumed run must find it.

    Without dropout: today's trainer does not give a resumed run the dropout masks of the uninterrupted
    one (iterating a DataLoader draws from the global RNG after it was restored), whatever the method.
    """
    import copy
    import shutil

    no_dropout = copy.deepcopy(teacher_hf)
    no_dropout.config.hidden_dropout_prob = no_dropout.config.attention_probs_dropout_prob = 0.0
    for module in no_dropout.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    cfg = {"widths": [1.0, 0.5], "depths": [1.0, 0.5]}
    data = TrainData(None, toy["train"], toy["validation"])
    model = dynabert_model(no_dropout, **cfg)
    opts = options(tmp_path / "full", max_steps=3)
    train(model, stages(model, opts, data=data), toy["train"], toy["validation"], opts)
    full = nimblebert.load(tmp_path / "full").state_dict()

    model = dynabert_model(no_dropout, **cfg)
    opts = options(tmp_path / "killed", max_steps=3)
    with pytest.raises(StopTraining):  # killed after the depth stage's second step
        train(model, stages(model, opts, data=data), toy["train"], toy["validation"], opts, stop_after=5)
    snapshot = tmp_path / "killed" / "checkpoint" / "dynabert-depth-teacher.safetensors"
    assert snapshot.exists()
    shutil.copytree(tmp_path / "killed", tmp_path / "lost")
    (tmp_path / "lost" / "checkpoint" / snapshot.name).unlink()
    for name in ("killed", "lost"):  # each in a fresh process: rebuilt from the folders on disk
        model = dynabert_model(no_dropout, **cfg)
        opts = options(tmp_path / name, max_steps=3, resume=True)
        train(model, stages(model, opts), toy["train"], toy["validation"], opts)  # no importance data needed
    resumed = nimblebert.load(tmp_path / "killed").state_dict()
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], atol=0, rtol=0, msg=k)
    # The control: without the snapshot the stage would distil from a moved teacher and end elsewhere.
    lost = nimblebert.load(tmp_path / "lost").state_dict()
    assert any(not torch.equal(full[k], lost[k]) for k in full)


def test_rewiring_needs_labelled_data(toy, teacher_hf, tmp_path, capsys) -> None:
    model = dynabert_model(teacher_hf)
    with pytest.raises(UserError, match="--importance-data"):
        stages(model, options(tmp_path / "run"))
    unlabelled = toy["validation"].remove_columns("labels")
    with pytest.raises(UserError, match="no labels"):
        stages(model, options(tmp_path / "run"), data=TrainData(None, None, unlabelled))
    capsys.readouterr()
    stages(dynabert_model(teacher_hf, importance_examples=20), options(tmp_path / "run"),
           data=TrainData(None, toy["train"], toy["validation"]))
    assert "on 20 validation examples" in capsys.readouterr().err
    plain = dynabert_model(teacher_hf, rewire=False)
    weights = [p.detach().clone() for p in plain.hf.parameters()]
    assert len(stages(plain, options(tmp_path / "run"))) == 2
    assert all(torch.equal(a, b) for a, b in zip(weights, plain.hf.parameters(), strict=True))


def test_a_separate_teacher_must_have_the_students_shape(toy, teacher_hf, tmp_path) -> None:
    folder = tmp_path / "teacher"
    NimbleModel(teacher_hf, make_tokenizer(), "finetune", {}, ["neg", "pos"]).save(folder)
    other = tmp_path / "other"
    NimbleModel(tiny_model(layers=2), make_tokenizer(), "finetune", {}, ["neg", "pos"]).save(other)
    student = dynabert_model(tiny_model(layers=4, seed=3), rewire=False, phases=["width"])
    student.save(tmp_path / "student")  # --model: where the student came from
    batch = next(iter(make_loader(toy["validation"], student.tokenizer, 8, shuffle=False)))
    plan = stages(student, options(tmp_path / "run", model=str(tmp_path / "student"), teacher=str(folder)))
    with torch.no_grad():  # the width stage distils --teacher, not the student's own starting weights
        target = plan[0].objective.teacher(student, batch).logits
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        torch.testing.assert_close(target, teacher_hf.eval()(**inputs).logits, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="same shape"):
        stages(student, options(tmp_path / "run", model=str(tmp_path / "student"), teacher=str(other)))
    # --teacher alone: the student starts as that teacher, which is then distilled as it is (no second copy).
    alone = stages(dynabert_model(teacher_hf, rewire=False), options(tmp_path / "run", teacher=str(folder)))
    assert [s.name for s in alone] == ["dynabert-width", "dynabert-depth"]


# ---- the command line ---------------------------------------------------------------------------------

def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimblebert", *args], capture_output=True, text=True, timeout=300)


def test_cli_train_evaluate_predict_export(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    teacher, dyna, sub = tmp_path / "teacher", tmp_path / "dyna", tmp_path / "sub"
    common = ["--data", str(toy_data_dir), "--max-length", "32", "--batch-size", "16", "--no-progress"]
    assert main(["train", "finetune", "--model", str(tiny_model_dir), "--out", str(teacher), "--max-steps", "4",
                 *common]) == 0
    assert main(["train", "dynabert", "--model", str(teacher), "--out", str(dyna), "--max-steps", "2",
                 "--importance-data", str(toy_data_dir), "--widths", "1", "0.5", "--depths", "1", "0.5", *common]) == 0
    capsys.readouterr()
    assert nimblebert.load(dyna).method_config["widths"] == [1.0, 0.5]

    assert main(["evaluate", str(dyna), "--data", str(toy_data_dir), "--max-length", "32", "--json",
                 "--width", "0.5", "--depth", "0.5"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["knobs"] == {"width": 0.5, "depth": 0.5} and half["mean_layers"] == 2.0
    assert main(["evaluate", str(dyna), "--data", str(toy_data_dir), "--max-length", "32", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["mean_layers"] == 3.0 and half["flops_per_sample"] < 0.5 * full["flops_per_sample"]

    texts = tmp_path / "in.jsonl"
    texts.write_text('{"text": "a good fun movie"}\n{"text": "an awful boring film"}\n')
    assert main(["predict", str(dyna), "--input", str(texts), "--width", "0.5", "--depth", "0.5"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(x["exit_layer"] == 2 and x["label"] in ("negative", "positive") for x in lines)

    assert main(["export", str(dyna), "--format", "hf", "--width", "0.5", "--depth", "0.5", "--out", str(sub)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exported_method"] == "dynabert" and report["reload_max_abs_diff"] <= 1e-5
    assert AutoModelForSequenceClassification.from_pretrained(sub).config.num_hidden_layers == 2

    proc = _run_cli("evaluate", str(dyna), "--data", str(toy_data_dir), "--width", "1.5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--width 1.5 is out of range" in lines[0], proc.stderr


def test_cli_refuses_a_bare_encoder_and_ranks_on_the_validation_split(tiny_model_dir: Path, toy_data_dir: Path,
                                                                 tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    tiny_model(layers=2).bert.save_pretrained(bare)
    make_tokenizer().save_pretrained(bare)
    common = ["--data", str(toy_data_dir), "--max-steps", "1", "--no-progress"]
    capsys.readouterr()
    assert main(["train", "dynabert", "--model", str(bare), "--out", str(tmp_path / "a"), *common]) == 2
    assert "bare encoder" in capsys.readouterr().err
    assert not (tmp_path / "a" / "config.json").exists()
    # The CLI hands the trainer's splits to the method: importance needs no extra flag.
    assert main(["train", "dynabert", "--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), *common]) == 0
    assert "validation examples" in capsys.readouterr().err
    assert (tmp_path / "b" / "config.json").exists()
