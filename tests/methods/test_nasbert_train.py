"""NAS-BERT through the real trainer and the CLI: supernet training with shrinking, resume, search, the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

import nimblebert
from nimblebert.cli.main import main
from nimblebert.data import encode, load_task
from nimblebert.methods import get_method
from nimblebert.model import NimbleModel, from_base
from nimblebert.train.loop import StopTraining, train
from nimblebert.train.stages import TrainData, TrainOptions

LABELS = ["negative", "positive"]
SUPERNET_FLAGS = ["--hidden-sizes", "8,16", "--bins", "3", "--shrink-every", "2", "--shrink-samples", "40",
                  "--shrink-keep", "3", "--shrink-batches", "1", "--dropout", "0"]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Supernet training writes this CPU's latency table (the bins' latency caps) and teacher caches under the
    data home: keep them in the test's folder."""
    monkeypatch.setenv("NIMBLEBERT_HOME", str(tmp_path / "home"))


@pytest.fixture
def teacher_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    NimbleModel(tiny_model(layers=2, seed=7), make_tokenizer(), "finetune", {}, LABELS).save(folder)
    return folder


def _setup(teacher: Path, data: Path, out: Path, cfg_extra: dict | None = None, **kw):
    task = load_task(str(data))
    cfg = {"hidden_sizes": "8,16", "bins": 3, "shrink_every": 2, "shrink_samples": 40, "shrink_keep": 3,
           "shrink_batches": 1, "dropout": 0.0, **(cfg_extra or {})}
    torch.manual_seed(0)  # the supernet's initialisation, as the CLI seeds it
    model = from_base(str(teacher), task.label_names, "nasbert", cfg)
    tok = model.tokenizer
    enc = {s: encode(getattr(task, s), tok, 24, task.has_pair) for s in ("train", "validation")}
    opts = TrainOptions(out=str(out), teacher=str(teacher), epochs=2, batch_size=16, max_length=24,
                        eval_every=10_000, save_every=10_000, progress=False, **kw)
    stages = get_method("nasbert").stages(model, opts, TrainData(task, enc["train"], enc["validation"]))
    return model, stages, enc, opts


def test_supernet_resume_reaches_the_same_weights_and_space(teacher_dir: Path, toy_data_dir: Path,
                                                            tmp_path: Path) -> None:
    model, stages, enc, opts = _setup(teacher_dir, toy_data_dir, tmp_path / "full")
    train(model, stages, enc["train"], enc["validation"], opts)
    full = nimblebert.load(tmp_path / "full")
    shrink = full.extras["shrink"]
    assert int(shrink.rounds) >= 2 and not bool(shrink.alive0.all())  # shrinking ran and removed some
    # The bins carry latency caps from the latency table training measured (and cached) on this CPU.
    from nimblebert.methods.nasbert.latency import block_latency
    from nimblebert.methods.nasbert.modules import assign_bins
    from nimblebert.methods.nasbert.objective import space_of

    cfg = full.method_config
    table = json.loads(Path(cfg["bin_latency_table"]).read_text())
    assert cfg["bin_latency_table"].startswith(str(tmp_path / "home")) and cfg["bin_latency_length"] > 0
    lat = torch.tensor([block_latency(table, space_of(full), a, 1, cfg["bin_latency_length"]) for a in shrink.archs])
    assert torch.equal(shrink.bin, assign_bins(shrink.params.double(), lat, 3))
    assert not torch.equal(shrink.bin, assign_bins(shrink.params.double(), None, 3))

    model, stages, enc, opts = _setup(teacher_dir, toy_data_dir, tmp_path / "killed")
    with pytest.raises(StopTraining):
        train(model, stages, enc["train"], enc["validation"], opts, stop_after=5)
    model, stages, enc, _ = _setup(teacher_dir, toy_data_dir, tmp_path / "killed")
    train(model, stages, enc["train"], enc["validation"], TrainOptions(**{**opts.__dict__, "resume": True}))
    resumed = nimblebert.load(tmp_path / "killed")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_no_latency_bins_keeps_parameter_bins_and_measures_nothing(teacher_dir: Path, toy_data_dir: Path,
                                                                  tmp_path: Path) -> None:
    from nimblebert.methods.nasbert.modules import assign_bins

    table = tmp_path / "lat.json"
    model, *_ = _setup(teacher_dir, toy_data_dir, tmp_path / "out", {"latency_bins": False,
                                                                      "latency_table": str(table)})
    shrink = model.extras["shrink"]
    assert torch.equal(shrink.bin, assign_bins(shrink.params.double(), None, 3))
    assert not table.exists() and "bin_latency_length" not in model.method_config
    model, *_ = _setup(teacher_dir, toy_data_dir, tmp_path / "out2", {"latency_table": str(table)})
    assert table.exists() and model.method_config["bin_latency_table"] == str(table)  # the path given is used


def test_cli_supernet_then_search_then_evaluate_and_predict(teacher_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    sn = tmp_path / "sn"
    from conftest import toy_rows

    unlabelled = tmp_path / "unlabelled.txt"  # other text than the task's: one text per line
    unlabelled.write_text("".join(r["text"] + "\n" for r in toy_rows(40, 9)))
    assert main(["train", "nasbert", "--teacher", str(teacher_dir), "--data", str(toy_data_dir), "--out", str(sn),
                 "--epochs", "2", "--batch-size", "16", "--max-length", "24", "--no-progress", *SUPERNET_FLAGS,
                 "--general-data", str(unlabelled)]) == 0
    summary = json.loads((sn / "train_summary.json").read_text())
    assert summary["train_rows"]["nasbert-supernet"] == 40
    capsys.readouterr()
    net = tmp_path / "net"
    table = tmp_path / "latency.json"
    rc = main(["search", str(sn), "--data", str(toy_data_dir), "--max-params", "3000", "--out", str(net),
               "--latency-table", str(table), "--lengths", "8", "16", "--repeats", "2", "--top", "3",
               "--general-epochs", "1", "--general-data", str(unlabelled), "--epochs", "1", "--batch-size", "16",
               "--max-length", "24", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] <= 3000 and report["arch"]
    assert len(report["candidates"]) <= 3
    assert table.exists() and json.loads(table.read_text())["cpu"]
    model = nimblebert.load(net)
    assert model.method_config["role"] == "net" and model.method_config["arch"] == report["arch"]
    teacher_emb = nimblebert.load(teacher_dir).hf.base_model.embeddings.state_dict()
    for k, v in model.hf.base_model.embeddings.state_dict().items():  # kept as they were (no --train-embeddings)
        torch.testing.assert_close(v, teacher_emb[k], rtol=0, atol=0, msg=k)
    assert report["validation"]["nasbert-prediction"]["accuracy"] >= 0
    assert main(["evaluate", str(net), "--data", str(toy_data_dir), "--max-length", "24", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["flops_per_sample"] > 0
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a good movie"}\n{"text": "boring and bad"}\n')
    assert main(["predict", str(net), "--max-length", "24", "--input", str(texts)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(x["label"] in LABELS for x in lines)


def test_cli_errors_are_one_line(teacher_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["search", str(teacher_dir), "--data", str(toy_data_dir), "--max-params", "100", "--out",
               str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a NAS-BERT supernet" in err and len(err.strip().splitlines()) == 1
    rc = main(["search", str(teacher_dir), "--data", str(toy_data_dir), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "give a budget" in err
    rc = main(["train", "nasbert", "--teacher", str(teacher_dir), "--data", str(toy_data_dir), "--out",
               str(tmp_path / "y"), "--hidden-sizes", "7"])
    err = capsys.readouterr().err
    assert rc == 2 and "multiple of the teacher's head size" in err
    base = tmp_path / "base"
    tiny_model(layers=2).save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    rc = main(["train", "nasbert", "--teacher", str(base), "--data", str(toy_data_dir), "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a fine-tuned classifier" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "config.json").exists()


def test_cli_search_trains_a_given_architecture(teacher_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--arch: a hand-designed baseline through the same distillation, no search; --init supernet needs block
    transfers (one clear line otherwise)."""
    sn = tmp_path / "sn"
    assert main(["train", "nasbert", "--teacher", str(teacher_dir), "--data", str(toy_data_dir), "--out", str(sn),
                 "--max-steps", "2", "--batch-size", "16", "--max-length", "24", "--no-progress",
                 *SUPERNET_FLAGS]) == 0
    common = ["--data", str(toy_data_dir), "--latency-table", str(tmp_path / "lat.json"), "--lengths", "8", "16",
              "--repeats", "1", "--general-epochs", "0", "--max-steps", "2", "--batch-size", "16", "--max-length",
              "24", "--no-progress"]
    capsys.readouterr()
    rc = main(["search", str(sn), "--arch", "16:mha,ffn,mha,ffn", "--init", "supernet", "--transfers", "size",
               "--out", str(tmp_path / "bad"), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "--transfers block" in err and len(err.strip().splitlines()) == 1
    rc = main(["search", str(sn), "--arch", "16:mha,ffn,mha,ffn", "--init", "random", "--transfers", "size",
               "--out", str(tmp_path / "hand"), *common])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["given_arch"] and report["arch"] == "16:mha,ffn,mha,ffn" and report["transfers"] == "size"
    model = nimblebert.load(tmp_path / "hand")
    assert [type(m).__name__ for m in model.extras["chain"].values()] == [
        "TransferOp", "MHAOp", "FFNOp", "MHAOp", "FFNOp", "TransferOp"]  # a plain stack: transfers at the ends only
