"""``nimblebert bench`` over composed settings × backends, and ``pick``'s command reproducing the chosen row."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

from nimblebert.bench.pareto import pick, run_command
from nimblebert.cli.main import main
from nimblebert.model import from_base

LABELS = ["negative", "positive"]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A static fine-tuned model and a FastBERT model on it (untrained: the bench does not care), wide enough (64)
    for the int8 runtime to quantize their layers."""
    base = tmp_path / "base"
    tiny_model(layers=2, hidden=64, ffn=128, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    static, fast = tmp_path / "static", tmp_path / "fast"
    torch.manual_seed(0)
    from_base(str(base), LABELS, "finetune").save(static)
    from_base(str(static), LABELS, "fastbert", {"branch": "attention"}).save(fast)
    return static, fast


def test_bench_covers_settings_times_runtimes_and_onnx_of_static_folders(
        folders: tuple[Path, Path], toy_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    static, fast = folders
    out = tmp_path / "bench"
    code = main(["bench", str(static), str(fast), "--data", str(toy_data_dir), "--out", str(out),
                 "--max-length", "24", "--sweep", "speed=0,0.5", "--runtime", "fp32,int8", "--rounds", "1",
                 "--b1-examples", "3", "--b32-examples", "32"])
    assert code == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    names = {r["name"] for r in rows}
    # Every folder at every setting on both runtimes, next to the baselines.
    assert {"static [fp32]", "static [int8]", "fast speed=0 [fp32]", "fast speed=0.5 [fp32]", "fast speed=0 [int8]",
            "fast speed=0.5 [int8]", "onnxruntime-fp32", "onnxruntime-int8", "transformers-sdpa"} <= names
    int8 = [r for r in rows if r.get("precision") == "int8"]
    assert len(int8) == 3 and all("--runtime int8" in r["command"] for r in int8)
    assert all("--runtime" not in r["command"] for r in rows if r.get("precision") == "fp32")

    # pick chooses among all of them; its command runs the chosen row's configuration again.
    row = next(r for r in rows if r["name"] == "fast speed=0.5 [int8]")
    best = pick(rows, max_latency_ms=row["b1_ms"], min_accuracy=0.0)
    assert best["b1_ms"] <= row["b1_ms"]
    assert run_command(row) == f"nimblebert predict {fast} --speed 0.5 --runtime int8"
    argv = shlex.split(row["command"])
    assert argv[:2] == ["nimblebert", "predict"]
    monkeypatch.setattr(sys, "stdin", io.StringIO('"a good fun movie"\n"the worst plot"\n'))
    assert main(argv[1:]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) == 2 and all(x["label"] in LABELS and "exit_layer" in x for x in lines)


def test_bench_exports_every_static_folder_to_onnx(folders: tuple[Path, Path], toy_data_dir: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    static, fast = folders
    out = tmp_path / "bench"
    assert main(["bench", str(fast), str(static), "--data", str(toy_data_dir), "--out", str(out),
                 "--max-length", "24", "--rounds", "1", "--b1-examples", "3", "--b32-examples", "32"]) == 0
    capsys.readouterr()
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # The dynamic first folder: its teacher's onnx baselines; the static second folder: its own onnx rows.
    want = {"onnxruntime-fp32", "onnxruntime-int8", "static [onnxruntime-fp32]", "static [onnxruntime-int8]"}
    assert want <= set(rows)
    own = rows["static [onnxruntime-int8]"]
    assert own["path"] == str(static) and own["static"] and Path(own["onnx_file"]).is_file()
    assert own["command"].startswith(f"nimblebert export {static} --format onnx --int8 --out ")
    assert "--teacher-only" not in own["command"]
    assert "fast [onnxruntime-fp32]" not in rows  # FastBERT's exits do not export as they are
