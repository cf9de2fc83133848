"""The trainer: resume continues to the same weights, the log and the output folder contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nimblebert.data import encode, load_task
from nimblebert.errors import UserError
from nimblebert.methods import get_method
from nimblebert.model import from_base, load
from nimblebert.train.loop import StopTraining, check_output_folder, train
from nimblebert.train.stages import TrainOptions


def _setup(model_dir: Path, data_dir: Path, out: Path, **kw):
    task = load_task(str(data_dir))
    model = from_base(str(model_dir), task.label_names)
    model.hf.config.hidden_dropout_prob = 0.1  # dropout on, so that the restored RNG state matters too
    enc = {s: encode(getattr(task, s), model.tokenizer, 32, False) for s in ("train", "validation")}
    opts = TrainOptions(out=str(out), epochs=2, batch_size=8, lr=1e-3, save_every=4, eval_every=5,
                        progress=False, **kw)
    return model, get_method("finetune").stages(model, opts), enc, opts


def test_resume_reaches_the_same_weights(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    model, stages, enc, opts = _setup(tiny_model_dir, toy_data_dir, tmp_path / "full")
    stages[0].select = "last"  # compare the final weights (a best checkpoint before the kill would hide a drift)
    train(model, stages, enc["train"], enc["validation"], opts)
    full = load(tmp_path / "full")

    model, stages, enc, opts = _setup(tiny_model_dir, toy_data_dir, tmp_path / "killed")
    stages[0].select = "last"
    with pytest.raises(StopTraining):
        train(model, stages, enc["train"], enc["validation"], opts, stop_after=9)
    assert not (tmp_path / "killed" / "config.json").exists()  # does not look finished
    assert (tmp_path / "killed" / "checkpoint" / "state.json").exists()
    # A fresh process: rebuild everything from the folder on disk.
    model, stages, enc, _ = _setup(tiny_model_dir, toy_data_dir, tmp_path / "killed")
    stages[0].select = "last"
    opts_resume = TrainOptions(**{**opts.__dict__, "resume": True})
    train(model, stages, enc["train"], enc["validation"], opts_resume)
    resumed = load(tmp_path / "killed")

    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert not (tmp_path / "killed" / "checkpoint").exists()


def test_log_summary_and_training_learns(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    model, stages, enc, opts = _setup(tiny_model_dir, toy_data_dir, tmp_path / "run")
    opts.epochs = 8
    stages[0].epochs = 8
    summary = train(model, stages, enc["train"], enc["validation"], opts)
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines) and any(x.get("event") == "eval" for x in lines)
    assert lines[-1]["event"] == "done"
    assert summary["stages"]["finetune"]["accuracy"] > 0.8  # the toy task is easy
    assert summary["train_rows"] == {"finetune": len(enc["train"])}  # what each stage trained on


def test_output_folder_rules(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "done"
    model, stages, enc, opts = _setup(tiny_model_dir, toy_data_dir, out)
    stages[0].max_steps = 2
    train(model, stages, enc["train"], enc["validation"], opts)
    with pytest.raises(UserError, match="already holds a finished model"):
        check_output_folder(TrainOptions(out=str(out)))
    with pytest.raises(UserError, match="nothing to resume"):
        check_output_folder(TrainOptions(out=str(tmp_path / "empty"), resume=True))
    check_output_folder(TrainOptions(out=str(out), overwrite=True))


def test_max_steps_flag_bounds_every_stage(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    model, stages, enc, opts = _setup(tiny_model_dir, toy_data_dir, tmp_path / "short", max_steps=3)
    train(model, stages, enc["train"], enc["validation"], opts)
    steps = [json.loads(x).get("step") for x in (tmp_path / "short" / "train_log.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3
