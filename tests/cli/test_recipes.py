"""``train METHOD --recipe short``: the benchmarks' short recipe next to the official default; explicit flags win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nimblebert.cli.common import config_from_args
from nimblebert.cli.main import build_parser, main
from nimblebert.cli.train import training_epochs, training_eval_every, training_lr
from nimblebert.methods import get_method


def _parsed(method: str, *flags: str):
    args = build_parser().parse_args(["train", method, "--out", "o", "--data", "d", *flags])
    config_cls = get_method(method).config_cls
    return config_from_args(config_cls, args), training_epochs(args, config_cls)


def test_tinybert_official_is_the_default_and_short_is_the_benchmarks() -> None:
    official, epochs = _parsed("tinybert")
    assert (official.aug_copies, official.intermediate_epochs, official.general_epochs, epochs) == (20, 10.0, 3.0, 3.0)
    short, epochs = _parsed("tinybert", "--recipe", "short")
    assert (short.aug_copies, short.intermediate_epochs, short.general_epochs, epochs) == (1, 1.0, 1.0, 1.0)
    assert short.temperature == official.temperature  # what the recipe does not name stays official


def test_tinybert_joint_recipe_sets_the_stage_weight_rule_epochs_and_lr() -> None:
    """``--recipe joint``: one joint stage, prediction weight 5, N from the rows (target 8,400), 2 epochs at 1e-4;
    the official recipe and ``short`` keep lr 5e-5, and an explicit ``--lr`` wins."""
    args = build_parser().parse_args(["train", "tinybert", "--out", "o", "--data", "d", "--recipe", "joint"])
    cfg = config_from_args(get_method("tinybert").config_cls, args)
    assert (cfg.stage_list(), cfg.pred_weight, cfg.aug_target_rows, cfg.aug_copies) == (["joint"], 5.0, 8400, 20)
    assert (training_epochs(args, type(cfg)), training_lr(args, type(cfg)), training_eval_every(args, type(cfg))) \
        == (2.0, 1e-4, 50)
    for flags in ([], ["--recipe", "short"]):
        args = build_parser().parse_args(["train", "tinybert", "--out", "o", "--data", "d", *flags])
        cfg = config_from_args(type(cfg), args)
        assert (training_lr(args, type(cfg)), training_eval_every(args, type(cfg)), cfg.aug_target_rows,
                cfg.stages) == (5e-5, None, 0, "auto")
    args = build_parser().parse_args(["train", "tinybert", "--out", "o", "--data", "d", "--recipe", "joint",
                                      "--lr", "3e-5", "--aug-target-rows", "0", "--aug-copies", "4", "--eval-every",
                                      "7"])
    cfg = config_from_args(type(cfg), args)
    assert (training_lr(args, type(cfg)), training_eval_every(args, type(cfg)), cfg.aug_target_rows,
            cfg.aug_copies) == (3e-5, 7, 0, 4)
    args = build_parser().parse_args(["train", "finetune", "--out", "o", "--data", "d"])
    assert training_lr(args, get_method("finetune").config_cls) == 5e-5  # methods without recipes: the plain default


def test_explicit_flags_override_the_recipe_even_at_the_official_value() -> None:
    cfg, epochs = _parsed("tinybert", "--recipe", "short", "--aug-copies", "20", "--epochs", "2")
    assert (cfg.aug_copies, cfg.intermediate_epochs, epochs) == (20, 1.0, 2.0)
    cfg, epochs = _parsed("tinybert", "--intermediate-epochs", "4")
    assert (cfg.aug_copies, cfg.intermediate_epochs, epochs) == (20, 4.0, 3.0)


@pytest.mark.parametrize(("method", "official", "short"), [
    ("dynabert", {"width_epochs": 0.0, "depth_epochs": 0.0, "final_epochs": 0.0},
     {"width_epochs": 1.0, "depth_epochs": 1.0, "final_epochs": 1.0}),
    ("trbert", {"rl_epochs": 0.0, "joint_epochs": 0.0, "rollouts": 8, "joint_rollouts": 0},
     {"rl_epochs": 1.0, "joint_epochs": 1.0, "rollouts": 4, "joint_rollouts": 2}),
])
def test_dynabert_and_trbert_recipes(method: str, official: dict, short: dict) -> None:
    cfg, epochs = _parsed(method)
    assert {k: getattr(cfg, k) for k in official} == official and epochs == 3.0
    cfg, epochs = _parsed(method, "--recipe", "short")
    assert {k: getattr(cfg, k) for k in short} == short and epochs == 3.0


def test_methods_without_a_long_recipe_have_no_recipe_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "fastbert", "--out", "o", "--data", "d", "--recipe", "short"])
    assert e.value.code == 2 and "--recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "tinybert", "--out", "o", "--data", "d", "--recipe", "long"])


def test_help_says_which_recipe_is_the_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "tinybert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'official' (the default" in text and "short: --aug-copies 1" in text
    assert "(official: 20; --recipe short: 1)" in text
    assert ("joint: --stages joint, --pred-weight 5.0, --aug-target-rows 8400, --epochs 2.0, --lr 0.0001, "
            "--eval-every 50 (") in text
    assert "learning rate (official: 5e-05; --recipe joint: 0.0001)" in text


def test_short_dynabert_trains_one_epoch_per_stage(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    common = ["--data", str(toy_data_dir), "--batch-size", "16", "--max-length", "24", "--no-progress"]
    assert main(["train", "finetune", "--model", str(tiny_model_dir), "--out", str(tmp_path / "t"),
                 "--max-steps", "2", *common]) == 0
    capsys.readouterr()
    assert main(["train", "dynabert", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "d"),
                 "--recipe", "short", "--widths", "1.0", "0.5", "--depths", "1.0", "0.5", *common]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["recipe"] == "short"
    assert "dynabert: short recipe (explicit flags override it; see also --recipe official)" in captured.err
    plans = [x for x in captured.err.splitlines() if x.startswith("stage dynabert-")]
    # 96 rows / 16 per batch = 6 steps: one epoch per stage (the official recipe would run 3).
    assert plans and all(" rows × 1 epoch = 6 steps, about " in x for x in plans), captured.err
