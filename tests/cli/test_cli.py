"""The CLI end to end on a tiny model and the toy data: outputs are a contract for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nimblebert.cli.main import main


@pytest.fixture
def trained(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    code = main(["train", "finetune", "--model", str(tiny_model_dir), "--data", str(toy_data_dir), "--out", str(out),
                 "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--max-length", "32", "--no-progress"])
    assert code == 0
    return out


def test_train_evaluate_predict_and_plain_transformers(trained: Path, toy_data_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert (trained / "train_log.jsonl").exists() and (trained / "model.safetensors").exists()
    assert main(["evaluate", str(trained), "--data", str(toy_data_dir), "--json", "--max-length", "32"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "examples", "mean_layers", "flops_per_sample", "knobs"):
        assert key in result
    assert result["examples"] == 32 and result["mean_layers"] == 3.0 and result["split"] == "test"

    texts = tmp_path / "in.jsonl"
    texts.write_text('{"text": "a good fun movie"}\n"an awful boring film"\n\n{"text": "the plot"}\n')
    assert main(["predict", str(trained), "--input", str(texts)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all({"label", "score", "exit_layer"} <= set(x) for x in lines)
    assert all(x["label"] in ("negative", "positive") for x in lines)

    # The folder is a plain transformers model with the same predictions.
    hf = AutoModelForSequenceClassification.from_pretrained(trained).eval()
    tok = AutoTokenizer.from_pretrained(trained)
    enc = tok(["a good fun movie", "an awful boring film", "the plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(hf(**enc).logits, -1)
    for i, line in enumerate(lines):
        assert hf.config.id2label[int(probs[i].argmax())] == line["label"]
        assert abs(float(probs[i].max()) - line["score"]) < 1e-4


def test_bench_writes_tables(trained: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = main(["bench", str(trained), "--data", str(toy_data_dir), "--out", str(out), "--max-length", "32",
                 "--rounds", "1", "--b1-examples", "4", "--b32-examples", "32"])
    assert code == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rows} >= {"run", "transformers-sdpa", "transformers-eager"}
    assert all(r["b1_ms"] > 0 and r["b32_speedup"] > 0 for r in rows)
    assert "| model |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().startswith("name,")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimblebert", *args], capture_output=True, text=True, timeout=300)


def _expect_bad_input(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr  # one clear line, no traceback
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_one_line_exit_2(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    base = ["train", "finetune", "--model", str(tiny_model_dir), "--no-progress", "--max-steps", "1"]
    # A missing data folder.
    _expect_bad_input(_run_cli(*base, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o1")), "nope")
    # An empty train file.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.csv").write_text("")
    (empty / "validation.csv").write_text("text,label\na,b\n")
    _expect_bad_input(_run_cli(*base, "--data", str(empty), "--out", str(tmp_path / "o2")), "train.csv")
    # A missing column.
    _expect_bad_input(_run_cli(*base, "--data", str(toy_data_dir), "--label-column", "stars",
                               "--out", str(tmp_path / "o3")), "stars")
    # A validation label never seen in training.
    unseen = tmp_path / "unseen"
    unseen.mkdir()
    (unseen / "train.csv").write_text("text,label\ngood movie,pos\nbad movie,neg\n")
    (unseen / "validation.csv").write_text("text,label\nok movie,neutral\n")
    _expect_bad_input(_run_cli(*base, "--data", str(unseen), "--out", str(tmp_path / "o4")), "neutral")
    # Undecodable bytes.
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "train.csv").write_bytes(b"text,label\n\xff\xfe bad,pos\n")
    (binary / "validation.csv").write_text("text,label\ngood,pos\n")
    _expect_bad_input(_run_cli(*base, "--data", str(binary), "--out", str(tmp_path / "o5")), "train.csv")
    # An empty text.
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "train.csv").write_text('text,label\ngood movie,pos\n"  ",neg\n')
    (blank / "validation.csv").write_text("text,label\ngood,pos\n")
    _expect_bad_input(_run_cli(*base, "--data", str(blank), "--out", str(tmp_path / "o6")), "empty")
    # A folder that is not a model.
    _expect_bad_input(_run_cli("evaluate", str(tmp_path), "--data", str(toy_data_dir)), "not a model folder")
    # Out-of-range flags.
    _expect_bad_input(_run_cli(*base[:-2], "--max-steps", "0", "--data", str(toy_data_dir),
                               "--out", str(tmp_path / "o7")), "--max-steps")
    _expect_bad_input(_run_cli("evaluate", str(tiny_model_dir), "--data", str(toy_data_dir), "--speed", "2"),
                      "--speed")
    # Nothing that looks finished was left behind.
    for i in range(1, 8):
        assert not (tmp_path / f"o{i}" / "config.json").exists()


def test_overlong_text_is_truncated_not_fatal(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    texts = tmp_path / "long.jsonl"
    texts.write_text(json.dumps({"text": " ".join(["good movie"] * 500)}) + "\n")
    capsys.readouterr()
    assert main(["predict", str(trained), "--input", str(texts), "--max-length", "16"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
