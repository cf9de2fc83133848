"""``nimblebert bench`` end to end on tiny models: tables, chart, onnxruntime rows with measured accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

import nimblebert
from nimblebert.bench import onnx as bench_onnx
from nimblebert.bench.measure import evaluate_logits, full_model_flops
from nimblebert.cli.main import main
from nimblebert.data import encode, load_task, make_loader
from nimblebert.inference import metrics, predict_loader
from nimblebert.methods import get_method, list_methods
from nimblebert.model import NimbleModel

LABELS = ["negative", "positive"]
FAST_ARGS = ["--max-length", "32", "--rounds", "1", "--b1-examples", "3", "--b32-examples", "32"]


def save_model(folder: Path, method: str = "finetune") -> Path:
    model = NimbleModel(tiny_model(layers=3), make_tokenizer(), method, {}, LABELS)
    get_method(method).attach(model)
    model.save(folder)
    return folder


class Negated:
    """An onnxruntime model whose logits are negated: its argmax is always the other class."""

    def __init__(self, inner: bench_onnx.OrtModel) -> None:
        self.inner, self.path = inner, inner.path

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.inner(batch)


def test_bench_writes_everything_and_measures_onnx_accuracy(tmp_path: Path, toy_data_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = save_model(tmp_path / "teacher")
    models = [str(teacher)]
    sweep = []
    if "fastbert" in list_methods():
        models.append(str(save_model(tmp_path / "fast", "fastbert")))
        sweep = ["--sweep", "speed=0,0.5"]

    # The int8 session's logits are negated: if its accuracy is measured (not copied from the teacher),
    # its row must show 1 - the fp32 row's accuracy.
    real = bench_onnx.onnx_baselines

    def patched(model, folder):
        sessions, report = real(model, folder)
        sessions[bench_onnx.ONNX_INT8] = Negated(sessions[bench_onnx.ONNX_INT8])
        return sessions, report

    monkeypatch.setattr(bench_onnx, "onnx_baselines", patched)
    out = tmp_path / "bench"
    assert main(["bench", *models, "--data", str(toy_data_dir), "--out", str(out), *sweep, *FAST_ARGS]) == 0

    for name in ("results.jsonl", "results.csv", "results.md", "pareto.png", "meta.json", "onnx/model.onnx",
                 "onnx/model_int8.onnx"):
        assert (out / name).exists(), name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {"teacher", "transformers-sdpa", "transformers-eager", "onnxruntime-fp32", "onnxruntime-int8"} <= set(rows)
    if sweep:
        assert {"fast speed=0", "fast speed=0.5"} <= set(rows)
    for r in rows.values():
        for key in ("accuracy", "macro_f1", "flops_per_sample", "b1_ms", "b1_p90_ms", "b32_ms_per_sample",
                    "b32_samples_per_s", "params_m", "size_mb", "command"):
            assert r.get(key) is not None, (r["name"], key)
        assert r["b1_ms"] > 0 and r["b32_speedup"] > 0 and r["examples"] == 32
    fp32, int8 = rows["onnxruntime-fp32"], rows["onnxruntime-int8"]
    assert fp32["accuracy"] == rows["teacher"]["accuracy"] == rows["transformers-sdpa"]["accuracy"]
    assert int8["accuracy"] == pytest.approx(1 - fp32["accuracy"])
    assert fp32["flops_per_sample"] == rows["teacher"]["flops_per_sample"] and rows["teacher"]["flops_speedup"] == 1
    assert fp32["size_mb"] == round((out / "onnx/model.onnx").stat().st_size / 1e6, 2)
    assert rows["teacher"]["size_mb"] == round((teacher / "model.safetensors").stat().st_size / 1e6, 2)
    # Exactly one baseline per batch size, one of the plain transformers rows, with speed-up 1.
    for tag in ("b1", "b32"):
        (base,) = [r for r in rows.values() if tag in r["baseline"]]
        assert base["name"].startswith("transformers-") and base[f"{tag}_speedup"] == 1.0
    assert any(r["pareto"] for r in rows.values())
    md = (out / "results.md").read_text()
    assert "| size MB |" in md and "onnxruntime-int8" in md and "pareto.png" in md
    assert (out / "results.csv").read_text().startswith("name,")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["onnx"]["fp32"]["max_abs_diff"] < 1e-4


def test_bench_no_onnx(tmp_path: Path, toy_data_dir: Path) -> None:
    out = tmp_path / "bench"
    assert main(["bench", str(save_model(tmp_path / "teacher")), "--data", str(toy_data_dir), "--out", str(out),
                 "--no-onnx", *FAST_ARGS]) == 0
    names = [json.loads(x)["name"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert names == ["teacher", "transformers-sdpa", "transformers-eager"]
    assert not (out / "onnx").exists() and (out / "pareto.png").exists()


def test_evaluate_logits_measures_the_function_given(tmp_path: Path, toy_data_dir: Path) -> None:
    model = nimblebert.load(save_model(tmp_path / "teacher"))
    task = load_task(str(toy_data_dir), label_names=model.label_names)
    encoded = encode(task.test, model.tokenizer, 32, task.has_pair)
    loader = make_loader(encoded, model.tokenizer, 8, shuffle=False, bucket_by_length=True)
    ours = metrics(predict_loader(model, loader), model.num_labels)
    plain = evaluate_logits(lambda b: model.hf(**b).logits, model, loader)
    assert plain["accuracy"] == ours["accuracy"]
    assert plain["flops_per_sample"] == pytest.approx(ours["flops_per_sample"])
    always_positive = evaluate_logits(lambda b: torch.tensor([[0.0, 1.0]]).expand(b["input_ids"].size(0), 2),
                                      model, loader)
    share = sum(1 for x in encoded["labels"] if x == 1) / len(encoded)
    assert always_positive["accuracy"] == pytest.approx(share) and always_positive["mean_layers"] == 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    flops = full_model_flops(model, mask)
    assert flops[1] > flops[0] > 0  # real tokens only
