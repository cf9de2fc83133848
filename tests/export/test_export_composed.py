"""One command to deploy a composed model: ``export --format nimble --int8`` with width fixed and exits live, and
the one line every format prints about which knobs were fixed at export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

import nimblebert
from nimblebert.cli.main import main
from nimblebert.model import Component, NimbleModel

LABELS = ["negative", "positive"]


@pytest.fixture
def dyna_fast(tmp_path: Path) -> Path:
    """DynaBERT then FastBERT on a tiny model 64 wide (so that the int8 runtime quantizes its layers)."""
    torch.manual_seed(0)
    model = NimbleModel(tiny_model(layers=2, hidden=64, ffn=128), make_tokenizer(), label_names=LABELS,
                        stack=[Component("finetune", {}), Component("dynabert", {}), Component("fastbert", {})])
    model.attach_all()
    model.save(tmp_path / "dyna-fast")
    return tmp_path / "dyna-fast"


def export(capsys: pytest.CaptureFixture, *argv: str) -> tuple[dict, str]:
    assert main(["export", *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.strip().splitlines()[-1]


def test_nimble_int8_export_of_a_composed_folder_keeps_exits_live(dyna_fast: Path, tmp_path: Path, toy_data_dir: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "deploy"
    report, line = export(capsys, str(dyna_fast), "--format", "nimble", "--int8", "--width", "0.5", "--out", str(out))
    assert report["fixed_knobs"] == {"width": 0.5, "depth": 1.0} and report["live_knobs"] == ["speed", "patience"]
    assert line == "nimble export (int8 runtime at load): fixed at export: width=0.5, depth=1; still live: speed, " \
                   "patience"
    model = nimblebert.load(out)
    assert model.runtime == "int8" and model.encoder.num_heads == 2  # 4 heads at width 0.5, physically narrow
    source = nimblebert.load(dyna_fast)
    batch = {k: v for k, v in make_tokenizer()(["good movie", "the plot was dull and slow"], padding=True,
                                               return_tensors="pt").items()}
    with torch.inference_mode():
        exits = model.infer(batch, speed=1.0)
        assert exits.layers_run.tolist() == [1, 1]  # the exits are live under int8
        # int8 of the narrow network against float32 of the source at width 0.5: close, not equal.
        torch.testing.assert_close(model.infer(batch).logits, source.infer(batch, width=0.5).logits, atol=0.1,
                                   rtol=0)
    # evaluate, predict and bench take the folder as it is; the width is fixed, the speed is not.
    assert main(["evaluate", str(out), "--data", str(toy_data_dir), "--speed", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "int8" and result["examples"] == 32
    assert main(["evaluate", str(out), "--data", str(toy_data_dir), "--width", "0.5"]) == 2
    assert "fixed at 0.5" in capsys.readouterr().err
    bench = tmp_path / "bench"
    assert main(["bench", str(out), "--data", str(toy_data_dir), "--out", str(bench), "--max-length", "24",
                 "--sweep", "speed=0,1", "--no-onnx", "--rounds", "1", "--b1-examples", "2",
                 "--b32-examples", "32"]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in (bench / "results.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r.get("path") == str(out) and r["runtime"] == "nimblebert"]
    assert {r["knobs"]["speed"] for r in mine} == {0.0, 1.0} and all(r["precision"] == "int8" for r in mine)
    assert all(r["command"].startswith(f"nimblebert predict {out}") and "--width" not in r["command"] for r in mine)


def test_every_format_says_which_knobs_are_fixed(dyna_fast: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    report, line = export(capsys, str(dyna_fast), "--format", "nimble", "--out", str(tmp_path / "n"))
    assert report["fixed_knobs"] == {} and line == "nimble export: still live: width, depth, speed, patience"
    report, line = export(capsys, str(dyna_fast), "--format", "hf", "--out", str(tmp_path / "h"))
    assert line == "hf export: fixed at export: width=1, depth=1; still live: speed, patience"
    assert report["reload_max_abs_diff"] <= 1e-5 and report["check"]["max_abs_diff"] <= 1e-5
    report, line = export(capsys, str(dyna_fast), "--format", "onnx", "--teacher-only", "--out", str(tmp_path / "o"))
    assert line == ("onnx export: dropped (the teacher is exported as it is): width, depth, speed, patience")
    # hf and nimble write the same kind of folder: at the same knobs, the same files and the same weights.
    export(capsys, str(dyna_fast), "--format", "nimble", "--width", "1", "--out", str(tmp_path / "n1"))
    names = {p.name for p in (tmp_path / "h").iterdir()}
    assert names == {p.name for p in (tmp_path / "n1").iterdir()}
    assert (tmp_path / "h" / "model.safetensors").read_bytes() == (tmp_path / "n1" / "model.safetensors").read_bytes()
