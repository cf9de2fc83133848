"""``nimblebert export``: ONNX round trip against PyTorch, int8, the hf format, and what cannot be exported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import make_tokenizer, tiny_model
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

import nimblebert
from nimblebert.cli.main import main
from nimblebert.errors import UserError
from nimblebert.export import ExportOptions, export_model, to_static
from nimblebert.export import onnx as onnx_format
from nimblebert.export.onnx import OrtModel
from nimblebert.methods import get_method, list_methods
from nimblebert.model import NimbleModel

LABELS = ["negative", "positive"]


def save_model(folder: Path, method: str = "finetune", seed: int = 0) -> Path:
    model = NimbleModel(tiny_model(seed=seed, layers=3), make_tokenizer(), method, {}, LABELS)
    get_method(method).attach(model)
    model.save(folder)
    return folder


def fresh_batch(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Shapes the exporter never saw, with padding and token types 0/1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def test_onnx_round_trip_fp32_and_int8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = save_model(tmp_path / "plain")
    out = tmp_path / "onnx"
    capsys.readouterr()
    assert main(["export", str(src), "--out", str(out), "--format", "onnx", "--int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["int8"]["argmax_agreement"] >= 0.5
    assert {"model.onnx", "model_int8.onnx", "config.json", "export.json"} <= {p.name for p in out.iterdir()}
    assert not (out / ".exporting").exists()

    # The graph: opset >= 17, the three inputs and logits, dynamic batch and sequence axes.
    graph = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param

    # fp32 equals PyTorch within 1e-4 on shapes the exporter never saw.
    hf = AutoModelForSequenceClassification.from_pretrained(src).eval()
    fp32, int8 = OrtModel(out / "model.onnx"), OrtModel(out / "model_int8.onnx")
    for rows, length, seed in ((1, 5, 0), (4, 23, 1), (7, 40, 2)):
        batch = fresh_batch(rows, length, seed)
        with torch.no_grad():
            ref = hf(**batch).logits
        assert (fp32(batch) - ref).abs().max() < 1e-4
        assert int8(batch).shape == ref.shape and torch.isfinite(int8(batch)).all()
    assert (out / "model_int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size

    # Config (labels) and tokenizer sit beside the model.
    assert AutoConfig.from_pretrained(out).id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(out)("good movie")["input_ids"]


def test_hf_format_is_a_plain_transformers_folder(tmp_path: Path) -> None:
    src = save_model(tmp_path / "plain")
    report = export_model(src, tmp_path / "hf", "hf")
    assert report["reload_max_abs_diff"] == 0.0
    a = AutoModelForSequenceClassification.from_pretrained(src).eval()
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = fresh_batch(3, 9, 0)
    with torch.no_grad():
        assert torch.equal(a(**batch).logits, b(**batch).logits)
    assert nimblebert.load(tmp_path / "hf").method == "finetune"


def test_failed_check_leaves_no_finished_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_format, "FP32_TOLERANCE", -1.0)  # every export now "disagrees"
    out = tmp_path / "onnx"
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export_model(save_model(tmp_path / "plain"), out, "onnx")
    assert not (out / "config.json").exists() and not (out / ".exporting").exists()


def test_bad_requests_are_user_errors(tmp_path: Path) -> None:
    src = save_model(tmp_path / "plain")
    with pytest.raises(UserError, match="--int8 does not apply"):
        export_model(src, tmp_path / "a", "hf", options=ExportOptions(int8=True))
    with pytest.raises(UserError, match="unknown export format"):
        export_model(src, tmp_path / "a", "tflite")
    with pytest.raises(UserError, match="the model folder itself"):
        export_model(src, src, "onnx")
    with pytest.raises(UserError, match="does not apply"):
        to_static(nimblebert.load(src), {"speed": 0.5})


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimblebert", *args], capture_output=True, text=True, timeout=300)


needs_fastbert = pytest.mark.skipif("fastbert" not in list_methods(), reason="FastBERT is not registered")


@needs_fastbert
def test_dynamic_model_refused_in_one_line_teacher_only_works(tmp_path: Path) -> None:
    src = save_model(tmp_path / "fast", method="fastbert")
    proc = _run_cli("export", str(src), "--out", str(tmp_path / "refused"))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "data-dependent control flow" in lines[0] and "--teacher-only" in lines[0]
    assert not (tmp_path / "refused" / "config.json").exists()

    out = tmp_path / "teacher"
    report = export_model(src, out, "onnx", teacher_only=True)
    assert report["exported_method"] == "finetune" and report["fp32"]["max_abs_diff"] < 1e-4
    hf = AutoModelForSequenceClassification.from_pretrained(src).eval()  # the teacher: model.safetensors
    batch = fresh_batch(2, 11, 3)
    with torch.no_grad():
        assert (OrtModel(out / "model.onnx")(batch) - hf(**batch).logits).abs().max() < 1e-4


@needs_fastbert
def test_materializer_hook_gets_the_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension point DynaBERT uses: ``Method.materialize(model, **knobs)``, given the checked knobs."""
    import dataclasses

    from nimblebert.export import teacher_of
    from nimblebert.methods import registry

    seen = {}

    def materialize(model: NimbleModel, **knobs) -> NimbleModel:
        seen.update(knobs)
        return teacher_of(model)

    spec = dataclasses.replace(get_method("fastbert"), materialize=materialize)
    monkeypatch.setitem(registry._METHODS, "fastbert", spec)
    model = nimblebert.load(save_model(tmp_path / "fast", method="fastbert"))
    static = to_static(model, {"speed": "0.5"})
    assert static.method == "finetune" and seen["speed"] == 0.5  # checked and converted by the method's knob
    with pytest.raises(UserError, match="out of range"):
        to_static(model, {"speed": 2})


def test_static_shapes_leaves_an_uninferable_graph_as_it_is_and_writes_nothing_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's symbolic shape inference, where it cannot finish (here: an operator it does not know), saves its
    partial graph as ``sym_shape_infer_temp.onnx`` (with the weights beside it) into the working directory and raises;
    three such copies once reached this repository's root. The rewrite only saves time, so the graph stays as
    exported and the user's directory stays clean."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Foo", ["x"], ["f"], domain="com.example"),
             helper.make_node("Shape", ["f"], ["s"]), helper.make_node("Reshape", ["f", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert onnx_format.static_shapes(path) == 0
    assert path.read_bytes() == before
    assert list(work.iterdir()) == [] and Path.cwd() == work
