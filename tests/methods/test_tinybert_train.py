"""TinyBERT through the real trainer: stages and schedules, a static result, the teacher run once per example,
resume, general distillation on a text file, the student from a given model, and the CLI's errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_config, tiny_model
from transformers import AutoModelForSequenceClassification, BertModel

import nimblebert
from nimblebert.cli.main import main
from nimblebert.data import encode, load_task, make_loader
from nimblebert.distill.texts import chunk_texts
from nimblebert.errors import UserError
from nimblebert.io import load_tensors
from nimblebert.methods.tinybert import stages
from nimblebert.methods.tinybert.objective import PROJECTION
from nimblebert.model import EXTRAS_FILE, NimbleModel, from_base
from nimblebert.train.loop import StopTraining, checkpoint_file, train
from nimblebert.train.stages import TrainData, TrainOptions

LABELS = ["negative", "positive"]


@pytest.fixture
def teacher_dir(tmp_path: Path) -> Path:
    """A 'fine-tuned' 4-layer teacher folder (a nimblebert finetune folder with a classifier)."""
    folder = tmp_path / "teacher"
    NimbleModel(tiny_model(layers=4, seed=7), make_tokenizer(), "finetune", {}, LABELS).save(folder)
    return folder


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """A 'pre-trained' 4-layer BERT with no classifier (what general distillation learns from)."""
    folder = tmp_path / "base"
    torch.manual_seed(8)
    BertModel(tiny_config(layers=4)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def options(tmp_path: Path, name: str, teacher: Path, **kw) -> TrainOptions:
    kw = {"epochs": 1, "batch_size": 16, "max_length": 24, "progress": False, "eval_every": 10_000,
          "save_every": 10_000, "log_every": 1, **kw}
    return TrainOptions(out=str(tmp_path / name), teacher=str(teacher), **kw)


def task_data(folder: Path) -> TrainData:
    """What ``nimblebert train`` hands ``stages``: the task (raw texts) and its encoded splits."""
    task = load_task(str(folder), label_names=LABELS)
    train_enc, val_enc = encoded(make_tokenizer(), folder)
    return TrainData(task, train_enc, val_enc)


def config(tmp_path: Path, **kw) -> dict:
    return {"student_layers": 2, "aug_copies": 2, "cache_dir": str(tmp_path / "cache"), **kw}


def encoded(tokenizer, data: Path):
    task = load_task(str(data), label_names=LABELS)
    return encode(task.train, tokenizer, 24, False), encode(task.validation, tokenizer, 24, False)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def count_rows(module: torch.nn.Module) -> list[int]:
    seen = [0]
    module.register_forward_hook(lambda m, i, o: seen.__setitem__(0, seen[0] + o.shape[0]))
    return seen


def test_two_task_stages_static_result_and_teacher_run_once(tmp_path, teacher_dir, toy_data_dir) -> None:
    model = from_base(str(teacher_dir), LABELS, "tinybert", config(tmp_path))
    teacher = model.hf
    teacher_rows = count_rows(teacher.bert.embeddings.word_embeddings)  # called on every path (core: embed)
    opts = options(tmp_path, "tiny", teacher_dir, lr=1e-3)
    inter, pred = stages(model, opts, task_data(toy_data_dir))

    # The student replaced the teacher in the model; the teacher is out of the state dict.
    assert model.hf is not teacher and model.hf.config.num_hidden_layers == 2
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert (inter.name, inter.schedule, inter.warmup, inter.select, inter.lr, inter.epochs) == \
        ("intermediate", "constant", 0.0, "last", 5e-5, 10.0)  # the official step 1: constant LR, last kept
    assert (pred.name, pred.schedule, pred.warmup, pred.select, pred.lr) == ("prediction", "linear", 0.1, "best", 1e-3)
    aug = inter.train_data
    assert pred.train_data is aug and len(aug) > 96  # both on the augmented set (96 originals + variants)
    assert teacher_rows[0] == len(aug)  # teacher outputs computed once, in stages()

    # One projection shared by the embeddings and every layer (official fit_dense): applied M+1 times a step.
    fit = model.extras[PROJECTION]
    assert [type(m) for m in model.extras.values()] == [torch.nn.Linear]
    calls = count_rows(fit)
    batch = next(iter(make_loader(aug, model.tokenizer, 8, shuffle=False)))
    parts = inter.objective(model, batch)
    assert set(parts) == {"loss", "attn", "hidden"} and calls[0] == 3 * 8
    assert set(pred.objective(model, batch)) == {"loss", "pred"}
    trainable = {id(p) for p in inter.trainable(model)}
    assert {id(p) for p in fit.parameters()} <= trainable and {id(p) for p in model.hf.parameters()} <= trainable
    assert not trainable & {id(p) for p in teacher.parameters()}

    train_enc, val_enc = encoded(model.tokenizer, toy_data_dir)
    inter.epochs = 2
    head, layers = snapshot(model.hf.classifier), snapshot(model.hf.bert.encoder)
    train(model, [inter], train_enc, val_enc, opts)
    assert same(head, snapshot(model.hf.classifier))  # stage 1 has no prediction loss: the head is untouched
    assert not same(layers, snapshot(model.hf.bert.encoder))
    log = [json.loads(x) for x in (tmp_path / "tiny" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert {r["lr"] for r in steps} == {5e-5} and all("pred" not in r for r in steps)

    pred.epochs = 2
    opts.overwrite = True
    train(model, [pred], train_enc, val_enc, opts)
    assert not same(head, snapshot(model.hf.classifier))
    assert PROJECTION not in model.extras  # discarded when the prediction stage started
    assert teacher_rows[0] == len(aug)  # 4 epochs over the set, 2 stages: the teacher never ran again
    log = [json.loads(x) for x in (tmp_path / "tiny" / "train_log.jsonl").read_text().splitlines()]
    assert all(set(r) >= {"pred"} and "attn" not in r and math.isfinite(r["loss"]) for r in log if "loss" in r)

    # The result is a plain transformers classifier: loads alone, same predictions as nimblebert.load.
    out = tmp_path / "tiny"
    assert not (out / EXTRAS_FILE).exists()
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    loaded = nimblebert.load(out)
    assert loaded.method == "tinybert" and loaded.method_spec.static and plain.config.num_hidden_layers == 2
    batch = next(iter(make_loader(val_enc, model.tokenizer, 16, shuffle=False)))
    with torch.no_grad():
        a = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"]).logits
        b = loaded.infer(batch).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_run_killed_in_the_prediction_stage_resumes_to_the_same_weights(tmp_path, teacher_dir, toy_data_dir):
    # The student has dropout on (copied from the teacher's config), so the restored RNG state matters too.
    def run(name: str, stop_after: int | None = None, resume: bool = False) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = from_base(str(teacher_dir), LABELS, "tinybert", config(tmp_path, aug_copies=1))
        opts = options(tmp_path, name, teacher_dir, max_steps=3, resume=resume)
        plan = stages(model, opts, task_data(toy_data_dir))
        train_enc, val_enc = encoded(model.tokenizer, toy_data_dir)
        train(model, plan, train_enc, val_enc, opts, stop_after=stop_after)
        return snapshot(model)

    full = run("full")
    with pytest.raises(StopTraining):
        run("killed", stop_after=4)  # 3 intermediate steps, 1 prediction step: the projection is gone
    ckpt = tmp_path / "killed" / "checkpoint"
    weights = checkpoint_file(ckpt, json.loads((ckpt / "state.json").read_text()), "model")
    assert not any(PROJECTION in k for k in load_tensors(weights))
    resumed = run("killed", resume=True)
    assert same(full, resumed)


def test_general_distillation_on_a_text_file(tmp_path, base_dir, teacher_dir, toy_data_dir) -> None:
    words = "good bad movie film plot story actor fun dull great".split()
    long = " ".join(words * 10)  # 100 words: cut into pieces that fit --max-length
    texts = tmp_path / "corpus.txt"
    texts.write_text("\n".join(["the movie was good", "", "a dull boring plot", long]) + "\n")
    tokenizer = make_tokenizer()
    pieces = chunk_texts([long], tokenizer, 24)
    assert len(pieces) == 5 and " ".join(pieces) == long
    assert all(len(tokenizer(p)["input_ids"]) <= 24 for p in pieces)

    # A pre-trained teacher (no classifier) is its own general teacher; no task data is needed.
    model = from_base(str(base_dir), LABELS, "tinybert",
                      config(tmp_path, stages="general", general_data=str(texts), general_epochs=2))
    opts = options(tmp_path, "general", base_dir)
    (general,) = stages(model, opts)  # no task data needed
    assert (general.name, general.schedule, general.select) == ("general", "linear", "last")
    assert len(general.train_data) == 2 + 5 and "labels" not in general.train_data.column_names
    train_enc, val_enc = encoded(model.tokenizer, toy_data_dir)
    before = snapshot(model.hf)
    train(model, [general], train_enc, val_enc, opts)
    assert not same(before, snapshot(model.hf))
    log = [json.loads(x) for x in (tmp_path / "general" / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["attn"]) and math.isfinite(r["hidden"]) for r in log if "loss" in r)
    # With no prediction stage the projection is kept, and a task run from this student continues with it.
    saved = load_tensors(tmp_path / "general" / EXTRAS_FILE)
    assert set(saved) == {f"{PROJECTION}.weight", f"{PROJECTION}.bias"}
    task_model = from_base(str(tmp_path / "general"), LABELS, "tinybert", config(tmp_path, augment=False))
    task_opts = options(tmp_path, "task", teacher_dir, model=str(tmp_path / "general"))
    stages(task_model, task_opts, task_data(toy_data_dir))
    assert torch.equal(task_model.extras[PROJECTION].weight, saved[f"{PROJECTION}.weight"])
    assert task_model.method_config["student_init_used"] == "model"

    # A fine-tuned teacher's general teacher is the base it was fine-tuned from (its train_summary.json).
    (teacher_dir / "train_summary.json").write_text(json.dumps({"options": {"model": str(base_dir)}}))
    model = from_base(str(teacher_dir), LABELS, "tinybert",
                      config(tmp_path, stages="general,intermediate", general_data=str(texts), augment=False))
    plan = stages(model, options(tmp_path, "both", teacher_dir), task_data(toy_data_dir))
    assert [s.name for s in plan] == ["general", "intermediate"]


def test_student_from_a_given_small_model(tmp_path, teacher_dir, toy_data_dir) -> None:
    small_dir = tmp_path / "small"
    small = tiny_model(layers=2, seed=11)
    small.save_pretrained(small_dir)
    make_tokenizer().save_pretrained(small_dir)
    model = from_base(str(small_dir), LABELS, "tinybert", config(tmp_path, student_layers=0, augment=False))
    opts = options(tmp_path, "s", teacher_dir, model=str(small_dir))
    stages(model, opts, task_data(toy_data_dir))
    assert same(snapshot(model.hf.bert.encoder), snapshot(small.bert.encoder))  # the given weights, kept
    with pytest.raises(UserError, match="contradicts the student"):
        stages(from_base(str(small_dir), LABELS, "tinybert", config(tmp_path, student_layers=1)), opts,
               task_data(toy_data_dir))


def test_task_distillation_needs_a_fine_tuned_teacher_and_the_texts(tmp_path, base_dir, teacher_dir,
                                                                   toy_data_dir) -> None:
    model = from_base(str(base_dir), LABELS, "tinybert", config(tmp_path))
    with pytest.raises(UserError, match="no trained classifier"):
        stages(model, options(tmp_path, "x", base_dir), task_data(toy_data_dir))
    with pytest.raises(UserError, match="need the training texts"):
        stages(from_base(str(teacher_dir), LABELS, "tinybert", config(tmp_path)), options(tmp_path, "y", teacher_dir))


def test_cli_errors_and_general_run(tmp_path, teacher_dir, base_dir, toy_data_dir, capsys) -> None:
    out = tmp_path / "bad"
    common = ["--data", str(toy_data_dir), "--max-length", "24", "--no-progress", "--cache-dir", str(tmp_path / "c")]
    assert main(["train", "tinybert", "--teacher", str(teacher_dir), "--out", str(out), *common,
                 "--student-heads", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--student-heads 4" in err[0] and not (out / "config.json").exists()
    assert main(["train", "tinybert", "--teacher", str(teacher_dir), "--out", str(out), *common,
                 "--student-layers", "3"]) == 2
    assert "multiple of" in capsys.readouterr().err

    texts = tmp_path / "corpus.txt"
    texts.write_text("the movie was good\na dull boring plot\n")
    general = tmp_path / "general"
    assert main(["train", "tinybert", "--teacher", str(base_dir), "--out", str(general), *common, "--stages",
                 "general", "--general-data", str(texts), "--max-steps", "2", "--batch-size", "2"]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(general).config.num_hidden_layers == 2


def test_cli_task_distillation(tmp_path, teacher_dir, toy_data_dir) -> None:
    out = tmp_path / "tiny"
    assert main(["train", "tinybert", "--teacher", str(teacher_dir), "--data", str(toy_data_dir), "--out", str(out),
                 "--max-length", "24", "--no-progress", "--cache-dir", str(tmp_path / "c"), "--max-steps", "2",
                 "--aug-copies", "1"]) == 0
    assert not (out / EXTRAS_FILE).exists()
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 2


def test_a_random_student_learns_the_task_from_the_teacher_alone(tmp_path, toy_data_dir) -> None:
    """End to end on an easy toy task: a 2-layer student initialised at random, with no gold label in its
    losses, ends close to its fine-tuned teacher after the two task stages."""
    tokenizer = make_tokenizer()
    train_enc, val_enc = encoded(tokenizer, toy_data_dir)
    teacher = NimbleModel(tiny_model(layers=4, seed=7), tokenizer, "finetune", {}, LABELS)
    t_opts = TrainOptions(out=str(tmp_path / "teacher"), max_steps=60, batch_size=16, lr=2e-3, progress=False,
                          eval_every=10_000, save_every=10_000)
    from nimblebert.methods import get_method

    assert train(teacher, get_method("finetune").stages(teacher, t_opts), train_enc, val_enc,
                 t_opts)["stages"]["finetune"]["accuracy"] >= 0.9
    model = from_base(str(tmp_path / "teacher"), LABELS, "tinybert",
                      config(tmp_path, student_init="random", intermediate_lr=1e-3))
    opts = options(tmp_path, "tiny", tmp_path / "teacher", max_steps=60, lr=1e-3)
    summary = train(model, stages(model, opts, task_data(toy_data_dir)), train_enc, val_enc, opts)
    assert summary["stages"]["prediction"]["accuracy"] >= 0.8
    batch = next(iter(make_loader(val_enc, tokenizer, 32, shuffle=False)))
    with torch.no_grad():
        agree = (model.eval().infer(batch).logits.argmax(-1) == teacher.eval().infer(batch).logits.argmax(-1))
    assert float(agree.float().mean()) >= 0.8


def test_joint_stage_sums_the_layer_and_prediction_losses(tmp_path, teacher_dir, toy_data_dir, capsys) -> None:
    """``--stages joint``: one task stage at --lr that trains the layers and the classifier together on
    L_attn + L_hidn + L_pred, the teacher run once; the result still loads as a plain transformers classifier."""
    model = from_base(str(teacher_dir), LABELS, "tinybert", config(tmp_path, stages="joint", augment=False))
    teacher_rows = count_rows(model.hf.bert.embeddings)
    opts = options(tmp_path, "joint", teacher_dir, lr=1e-3, epochs=2)
    capsys.readouterr()
    (joint,) = stages(model, opts, task_data(toy_data_dir))
    # The plan, said before the teacher's pass: rows, epochs and steps of each stage.
    assert "tinybert: 96 training rows at batch 16: joint 2 epochs = 12 steps." in capsys.readouterr().err
    assert (joint.name, joint.schedule, joint.select, joint.lr, joint.epochs) == ("joint", "linear", "best", 1e-3, 2)
    batch = next(iter(make_loader(joint.train_data, model.tokenizer, 8, shuffle=False)))
    parts = joint.objective(model, batch)
    assert set(parts) == {"loss", "attn", "hidden", "pred"}
    torch.testing.assert_close(parts["loss"].detach(), parts["attn"] + parts["hidden"] + parts["pred"])

    train_enc, val_enc = encoded(model.tokenizer, toy_data_dir)
    head, layers = snapshot(model.hf.classifier), snapshot(model.hf.bert.encoder)
    rows_before = teacher_rows[0]
    train(model, [joint], train_enc, val_enc, opts)
    assert not same(head, snapshot(model.hf.classifier)) and not same(layers, snapshot(model.hf.bert.encoder))
    assert teacher_rows[0] == rows_before  # two epochs, every target from the cache
    log = [json.loads(x) for x in (tmp_path / "joint" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all({"attn", "hidden", "pred"} <= set(r) and math.isfinite(r["loss"]) for r in steps)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "joint")
    assert plain.config.num_hidden_layers == 2
    batch = next(iter(make_loader(val_enc, model.tokenizer, 16, shuffle=False)))
    with torch.no_grad():
        a = plain.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"]).logits
        b = nimblebert.load(tmp_path / "joint").infer(batch).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_pred_weight_scales_only_the_prediction_loss_of_the_joint_stage(tmp_path, teacher_dir, toy_data_dir) -> None:
    """``--pred-weight w``: the joint stage minimises L_attn + L_hidn + w·L_pred; the logged parts stay unweighted,
    so a run at w = 4 and one at w = 1 log the same parts on the same batch and weights, and only the sum differs."""
    batch = None
    parts = {}
    for w in (1.0, 4.0):
        model = from_base(str(teacher_dir), LABELS, "tinybert",
                          config(tmp_path, stages="joint", augment=False, pred_weight=w))
        torch.manual_seed(0)  # the same fresh projection in both runs
        (joint,) = stages(model, options(tmp_path, f"w{w}", teacher_dir), task_data(toy_data_dir))
        if batch is None:
            batch = next(iter(make_loader(joint.train_data, model.tokenizer, 8, shuffle=False)))
        with torch.no_grad():
            parts[w] = joint.objective(model.eval(), batch)
    one, four = parts[1.0], parts[4.0]
    for k in ("attn", "hidden", "pred"):
        torch.testing.assert_close(one[k], four[k])
    assert float(one["pred"]) > 0
    torch.testing.assert_close(four["loss"], four["attn"] + four["hidden"] + 4 * four["pred"])
    with pytest.raises(UserError, match="--pred-weight"):
        from_base(str(teacher_dir), LABELS, "tinybert", config(tmp_path, stages="joint", pred_weight=0.0))


def test_aug_target_rows_picks_n_from_the_number_of_training_rows(tmp_path, teacher_dir, toy_data_dir,
                                                                  capsys) -> None:
    """``--aug-target-rows T`` (``--recipe joint``): the stage augments with N = round(T / R) - 1 copies (capped by
    --aug-copies), announced with the rule; the set has the original rows plus at most N variants each."""
    n_rows = len(load_task(str(toy_data_dir), label_names=LABELS).train)  # 96
    model = from_base(str(teacher_dir), LABELS, "tinybert",
                      config(tmp_path, stages="joint", aug_copies=20, aug_target_rows=3 * n_rows))
    capsys.readouterr()
    (joint,) = stages(model, options(tmp_path, "rule", teacher_dir), task_data(toy_data_dir))
    err = capsys.readouterr().err
    assert f"({n_rows} + augmented copies, N = 2, from --aug-target-rows {3 * n_rows})" in err
    assert n_rows < len(joint.train_data) <= 3 * n_rows
    # The folder keeps the rule and the cap as given, not the N it resolved to.
    assert (model.method_config["aug_target_rows"], model.method_config["aug_copies"]) == (3 * n_rows, 20)
