"""``Stage.epoch_data``: a training set rebuilt at the start of every epoch (SSA's per-epoch probing), seen by the
loop, checked for size, and read from its cache by a resumed run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nimblebert.data import encode, load_task
from nimblebert.methods import get_method
from nimblebert.model import from_base
from nimblebert.train.loop import StopTraining, train
from nimblebert.train.stages import TrainOptions


def _setup(model_dir: Path, data_dir: Path, out: Path, calls: list, size_of=None, **kw):
    task = load_task(str(data_dir))
    model = from_base(str(model_dir), task.label_names)
    enc = {s: encode(getattr(task, s), model.tokenizer, 32, False) for s in ("train", "validation")}
    opts = TrainOptions(out=str(out), epochs=3, batch_size=8, lr=1e-3, save_every=2, progress=False, **kw)
    stage = get_method("finetune").stages(model, opts)[0]
    stage.select = "last"
    seen = []  # the labels of every row the objective trains on, in order
    plain = stage.objective

    def objective(model, batch):
        seen.append(batch["labels"].tolist())
        return plain(model, batch)

    def epoch_data(model, epoch: int, cache: Path):
        cached = cache / f"{epoch}.done"
        calls.append((epoch, cached.exists(), model.training))
        n = size_of(epoch) if size_of else len(enc["train"])
        # epoch e trains on rows whose label is e % 2 only: a set the loop cannot have built itself
        rows = enc["train"].filter(lambda r: r["labels"] == epoch % 2)
        rows = rows.select([i % len(rows) for i in range(n)])
        cache.mkdir(parents=True, exist_ok=True)
        cached.touch()
        return rows

    stage.objective, stage.epoch_data = objective, epoch_data
    return model, [stage], enc, opts, seen


def test_each_epoch_trains_on_its_own_set(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    calls: list = []
    model, stages, enc, opts, seen = _setup(tiny_model_dir, toy_data_dir, tmp_path / "run", calls)
    train(model, stages, enc["train"], enc["validation"], opts)
    assert [c[0] for c in calls] == [0, 1, 2]
    per_epoch = len(seen) // 3
    for epoch in range(3):
        labels = {x for batch in seen[epoch * per_epoch:(epoch + 1) * per_epoch] for x in batch}
        assert labels == {epoch % 2}


def test_epoch_set_of_another_size_is_refused(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    n = len(load_task(str(toy_data_dir)).train)
    model, stages, enc, opts, _ = _setup(tiny_model_dir, toy_data_dir, tmp_path / "run", [],
                                         size_of=lambda e: n if e == 0 else n - 1)
    with pytest.raises(ValueError, match="epoch 1 has"):
        train(model, stages, enc["train"], enc["validation"], opts)


def test_resumed_run_asks_again_for_the_cached_epoch(tiny_model_dir: Path, toy_data_dir: Path,
                                                     tmp_path: Path) -> None:
    calls: list = []
    model, stages, enc, opts, _ = _setup(tiny_model_dir, toy_data_dir, tmp_path / "full", calls)
    train(model, stages, enc["train"], enc["validation"], opts)
    full = {k: v.clone() for k, v in model.state_dict().items()}

    killed: list = []
    model, stages, enc, opts, _ = _setup(tiny_model_dir, toy_data_dir, tmp_path / "killed", killed)
    per_epoch = math.ceil(len(enc["train"]) / 8)
    with pytest.raises(StopTraining):
        train(model, stages, enc["train"], enc["validation"], opts, stop_after=per_epoch + 1)  # inside epoch 1
    resumed: list = []
    model, stages, enc, opts, _ = _setup(tiny_model_dir, toy_data_dir, tmp_path / "killed", resumed, resume=True)
    train(model, stages, enc["train"], enc["validation"], opts)
    assert resumed[0][:2] == (1, True)  # epoch 1 again, from its cache
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, full[k], atol=0, rtol=0, msg=k)
