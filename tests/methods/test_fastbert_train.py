"""FastBERT through the real trainer and the CLI, on an easy toy task with a tiny random BERT."""

from __future__ import annotations

import json
import math
import random

import datasets
import pytest
import torch
from conftest import WORDS, tiny_model
from transformers import BertTokenizerFast

import nimblebert
from nimblebert.cli.main import main
from nimblebert.data import encode, make_loader
from nimblebert.io import load_tensors
from nimblebert.methods import get_method
from nimblebert.methods.fastbert import normalized_entropy
from nimblebert.methods.fastbert.objective import stages
from nimblebert.model import NimbleModel
from nimblebert.train.loop import train
from nimblebert.train.stages import TrainOptions

POS = "good great fun best love funny smart beautiful moving".split()
NEG = "bad awful boring worst hate dull stupid ugly slow".split()
NEUTRAL = "the a movie film plot actor story is was and it this that script acting ending".split()


@pytest.fixture
def words() -> BertTokenizerFast:
    """conftest's ``words`` maps every word to [UNK] under transformers 5 (its ``vocab_file``
    argument is ignored), which makes every toy text identical; this one really knows the words."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer("a good movie")["input_ids"]
    return tokenizer


def toy_rows(n: int, seed: int) -> dict[str, list]:
    """Sentences of neutral words with one or two sentiment words: an easy, learnable task."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 9))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}


def toy_data(tokenizer, n_train: int = 192, n_val: int = 48):
    train_ds = datasets.Dataset.from_dict(toy_rows(n_train, 0))
    val_ds = datasets.Dataset.from_dict(toy_rows(n_val, 1))
    return encode(train_ds, tokenizer, 24, False), encode(val_ds, tokenizer, 24, False)


def fastbert_model(tokenizer, layers: int = 3, **cfg) -> NimbleModel:
    model = NimbleModel(tiny_model(layers=layers), tokenizer, "fastbert", cfg, ["neg", "pos"])
    get_method("fastbert").attach(model)
    return model


def options(tmp_path, name: str, **kw) -> TrainOptions:
    kw = {"max_steps": 2, "batch_size": 16, "lr": 1e-3, "progress": False, "eval_every": 10_000,
          "save_every": 10_000, "log_every": 1, **kw}
    return TrainOptions(out=str(tmp_path / name), **kw)


def first_batch(encoded, tokenizer, size: int) -> dict[str, torch.Tensor]:
    batch = next(iter(make_loader(encoded, tokenizer, size, shuffle=False)))
    batch.pop("index")
    return batch


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_training_step_per_stage_gives_a_finite_loss(tmp_path, words) -> None:
    model = fastbert_model(words, finetune="yes")
    train_enc, val_enc = toy_data(words, 32, 16)
    opts = options(tmp_path, "run", max_steps=1)
    plan = stages(model, opts)
    assert [s.name for s in plan] == ["finetune", "distill"]
    assert plan[1].lr == pytest.approx(10 * plan[0].lr)  # stage 2 at 10× the fine-tuning rate
    train(model, plan, train_enc, val_enc, opts)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = {r["stage"]: r["loss"] for r in log if "loss" in r}
    assert set(losses) == {"finetune", "distill"} and all(math.isfinite(v) for v in losses.values())
    loaded = nimblebert.load(tmp_path / "run")
    batch = first_batch(val_enc, words, 4)
    with torch.no_grad():
        for speed in (0.0, 0.5, 1.0):
            a, b = model.eval().infer(batch, speed=speed), loaded.infer(batch, speed=speed)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
            assert torch.equal(a.layers_run, b.layers_run)


def test_two_stages_train_the_teacher_then_distil_it_into_confident_students(tmp_path, words):
    torch.manual_seed(0)
    model = fastbert_model(words, finetune="yes")
    train_enc, val_enc = toy_data(words)
    opts = options(tmp_path, "s1", max_steps=80, lr=2e-3)
    finetune, distill = stages(model, opts)

    students_before = snapshot(model.extras)
    train(model, [finetune], train_enc, val_enc, opts)
    assert same(students_before, snapshot(model.extras))  # stage 1 leaves the students alone
    teacher_after_stage1 = snapshot(model.hf)

    train(model, [distill], train_enc, val_enc, options(tmp_path, "s2", max_steps=80, lr=2e-3))
    assert same(teacher_after_stage1, snapshot(model.hf))  # backbone and teacher bit-identical
    assert not same(students_before, snapshot(model.extras))
    saved = load_tensors(tmp_path / "s2" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in teacher_after_stage1.items() if k in saved)

    # The students learnt the stage-1 teacher: they agree with it, they are confident (the
    # "uncertainty ≈ 1 everywhere, speed does nothing" symptom of distilling a fresh head is absent),
    # and exiting early costs little accuracy.
    model.eval()
    batch = first_batch(val_enc, words, 48)
    labels = batch.pop("labels")
    with torch.no_grad():
        out = model.encoder(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
        teacher_pred = out.logits.argmax(-1)
        first = model.extras["branches"][0](out.hidden_states[1], batch["attention_mask"])
        fast = model.infer(batch, speed=0.5)
    assert float((teacher_pred == labels).float().mean()) >= 0.9  # the toy task is learnt
    assert float((first.argmax(-1) == teacher_pred).float().mean()) >= 0.8
    assert float(normalized_entropy(first).mean()) < 0.7
    assert float(fast.layers_run.float().mean()) < 3
    assert float((fast.logits.argmax(-1) == labels).float().mean()) >= 0.8


def test_stage1_is_skipped_for_a_finetuned_folder(tmp_path, words) -> None:
    teacher = NimbleModel(tiny_model(layers=3), words, "finetune", {}, ["neg", "pos"])
    teacher.save(tmp_path / "teacher")
    tiny_model(layers=3).save_pretrained(tmp_path / "plain")  # a transformers folder: no nimblebert section
    words.save_pretrained(tmp_path / "plain")

    def names(spec: str, **cfg) -> list[str]:
        model = nimblebert.model.from_base(spec, ["neg", "pos"], "fastbert", cfg)
        return [s.name for s in stages(model, options(tmp_path, "x", model=spec))]

    assert names(str(tmp_path / "teacher")) == ["distill"]
    assert names(str(tmp_path / "plain")) == ["finetune", "distill"]
    assert names(str(tmp_path / "plain"), finetune="no") == ["distill"]
    assert names(str(tmp_path / "teacher"), finetune="yes") == ["finetune", "distill"]
    # Starting from the fine-tuned folder, its classifier is the teacher head.
    model = nimblebert.model.from_base(str(tmp_path / "teacher"), ["neg", "pos"], "fastbert", {})
    assert same(snapshot(model.hf.classifier), snapshot(teacher.hf.classifier))


def test_stage2_can_distil_on_unlabelled_text(tmp_path, words) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(t) + "\n" for t in toy_rows(20, 7)["text"]))
    model = fastbert_model(words, finetune="no", distill_data=str(texts))
    (distill,) = stages(model, options(tmp_path, "u"))
    assert len(distill.train_data) == 20 and "labels" not in distill.train_data.column_names
    train_enc, val_enc = toy_data(words, 32, 16)
    before = snapshot(model.extras)
    train(model, [distill], train_enc, val_enc, options(tmp_path, "u"))
    assert not same(before, snapshot(model.extras))
    with pytest.raises(nimblebert.errors.UserError, match="does not exist"):
        stages(fastbert_model(words, distill_data=str(tmp_path / "missing.jsonl")),
               options(tmp_path, "m"))


def test_cli_train_evaluate_predict_bench(tmp_path, words, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split, (n, seed) in {"train": (48, 0), "validation": (16, 1), "test": (16, 2)}.items():
        rows = toy_rows(n, seed)
        datasets.Dataset.from_dict({"text": rows["text"], "label": [("neg", "pos")[y] for y in rows["label"]]}
                                   ).to_csv(str(data / f"{split}.csv"), index=False)
    teacher = NimbleModel(tiny_model(layers=3), words, "finetune", {}, ["neg", "pos"])
    teacher.save(tmp_path / "teacher")
    out = tmp_path / "fast"
    common = ["--data", str(data), "--max-length", "24"]
    assert main(["train", "fastbert", "--model", str(tmp_path / "teacher"), "--out", str(out), *common,
                 "--max-steps", "2", "--batch-size", "8", "--no-progress", "--branch", "mlp"]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(out), *common, "--speed", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mean_layers"] == 1.0 and result["knobs"] == {"speed": 1.0, "patience": 0}
    assert main(["evaluate", str(out), *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_layers"] == 3.0  # default speed 0: the teacher

    texts = tmp_path / "in.jsonl"
    texts.write_text('"a good movie"\n{"text": "an awful plot"}\n')
    assert main(["predict", str(out), "--input", str(texts), "--speed", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["exit_layer"] for x in lines] == [1, 1] and all(x["label"] in ("neg", "pos") for x in lines)
    assert main(["predict", str(out), "--input", str(texts), "--patience", "5"]) == 0
    assert [json.loads(x)["exit_layer"] for x in capsys.readouterr().out.splitlines()] == [3, 3]

    assert main(["evaluate", str(out), *common, "--speed", "1.5"]) == 2
    assert "--speed 1.5 is out of range" in capsys.readouterr().err

    assert main(["bench", str(out), *common, "--out", str(tmp_path / "bench"), "--sweep", "speed=0,1",
                 "--rounds", "1", "--b1-examples", "2", "--b32-examples", "16"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    fast_rows = {r["knobs"]["speed"]: r for r in rows if r["method"] == "fastbert"}
    assert fast_rows[1.0]["mean_layers"] == 1.0 and fast_rows[1.0]["flops_speedup"] > 1
