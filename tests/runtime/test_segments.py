"""The ``ort-int8`` runtime (onnxruntime segments, exits between them) on tiny random models: in float32 the segments
give the core's logits and the core's exits; in int8 the exits still fire and the CLI runs it with ``--speed`` live."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tokenizer, tiny_model
from test_int8 import batch, nimble

import nimblebert
from nimblebert.cli.main import main
from nimblebert.core.flops import sample_flops
from nimblebert.errors import UserError
from nimblebert.inference import run
from nimblebert.model import Component, NimbleModel
from nimblebert.runtime import apply_runtime
from nimblebert.runtime.segments import MANIFEST, LiveStructure, SegmentRunner, export_segments

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def numpy_batch(b: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in b.items()}


@pytest.fixture(scope="module")
def fast() -> nimblebert.NimbleModel:
    model = nimble("fastbert", layers=4)
    torch.manual_seed(3)
    with torch.no_grad():  # branches whose confidence and predictions differ between rows: rows leave at different
        for branch in model.extras["branches"]:  # layers under both rules (checked below)
            branch.out.weight.normal_(0.0, 2.0)
            branch.out.bias.zero_()
    return model


@pytest.fixture(scope="module")
def fp32_segments(fast, tmp_path_factory) -> SegmentRunner:
    folder = tmp_path_factory.mktemp("seg")
    manifest = export_segments(fast, folder, int8=True)
    assert manifest["layers"] == 4 and manifest["branches"] == 3
    assert {p.name for p in folder.iterdir()} >= {"seg0.onnx", "seg3_int8.onnx", "full.onnx", MANIFEST}
    # the reshapes' targets are constants (static_shapes): a middle segment computes no shape at run time; the
    # tests below check that its outputs are still the core's
    assert not [n for n in onnx.load(str(folder / "seg1_int8.onnx")).graph.node if n.op_type == "Shape"]
    return SegmentRunner(folder, int8=False)


def test_float_segments_give_the_core_logits_and_exits(fast, fp32_segments) -> None:
    b = batch(rows=8, length=12)
    mixed = 0
    for speed in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0):
        with torch.inference_mode():
            ref = fast.infer(b, speed=speed)
        out = fp32_segments(numpy_batch(b), speed)
        np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4)
        assert out.layers_run.tolist() == ref.layers_run.tolist()  # exits decided identically
        mixed += len(set(out.layers_run.tolist())) > 1
    assert mixed >= 2  # rows left at different layers: the exits (and the row dropping) were exercised
    mixed = 0
    for speed, patience in ((0.0, 1), (0.0, 2), (0.4, 1)):  # PABEE's rule, alone and with the entropy rule
        with torch.inference_mode():
            ref = fast.infer(b, speed=speed, patience=patience)
        out = fp32_segments(numpy_batch(b), speed, patience)
        np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4)
        assert out.layers_run.tolist() == ref.layers_run.tolist()
        mixed += len(set(out.layers_run.tolist())) > 1
    assert mixed >= 2


def test_run_counts_the_flops_the_core_counts(fast, fp32_segments) -> None:
    seg = copy.copy(fast)
    object.__setattr__(seg, "segments", fp32_segments)
    seg.runtime = "ort-int8"
    b = batch(rows=8, length=12)
    for speed in (0.0, 0.6, 1.0):  # 1.0: every row leaves at layer 1, none reaches the head
        knobs = fast.check_knobs({"speed": speed})
        with torch.inference_mode():
            ref, out = run(fast, b, knobs), run(seg, b, knobs)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(sample_flops(seg.encoder, out), sample_flops(fast.encoder, ref))


def test_a_model_without_exits_runs_as_one_graph(tmp_path: Path) -> None:
    plain = nimble("finetune", layers=2)
    assert export_segments(plain, tmp_path, int8=False)["branches"] == 0
    runner = SegmentRunner(tmp_path, int8=False)
    b = batch()
    with torch.inference_mode():
        ref = plain.infer(b)
    out = runner(numpy_batch(b), speed=0.5)  # no branch: the speed has nothing to act on
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4)


def test_segments_run_as_exported_where_onnxruntime_cannot_infer_their_shapes(fast, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """static_shapes only saves time: where onnxruntime's shape inference gives up (it raises), the graphs keep their
    shape arithmetic, and the segments still give the core's logits and exits."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def give_up(*args, **kwargs):
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(give_up))
    export_segments(fast, tmp_path, int8=False)
    assert [n for n in onnx.load(str(tmp_path / "seg1.onnx")).graph.node if n.op_type == "Shape"]  # not rewritten
    runner = SegmentRunner(tmp_path, int8=False)
    b = batch(rows=8, length=12)
    for speed in (0.0, 0.6):
        with torch.inference_mode():
            ref = fast.infer(b, speed=speed)
        out = runner(numpy_batch(b), speed)
        np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4)
        assert out.layers_run.tolist() == ref.layers_run.tolist()


def test_ort_int8_runtime_keeps_speed_live(fast) -> None:
    q = apply_runtime(copy.deepcopy(fast), "ort-int8")
    b = batch(rows=8)
    with torch.inference_mode():
        everyone, none, ref = q.infer(b, speed=1.0), q.infer(b, speed=0.0), fast.infer(b, speed=0.0)
    assert everyone.layers_run.tolist() == [1] * 8  # every row leaves at its first branch
    assert none.layers_run.tolist() == [4] * 8
    assert float((none.logits - ref.logits).abs().max()) < 0.1 * float(ref.logits.abs().max()) + 0.05
    assert q.infer(b, patience=1).layers_run.max() <= 4  # PABEE's knob is live too
    with pytest.raises(UserError, match="already"):
        apply_runtime(q, "int8")


@pytest.fixture(scope="module")
def dyna_fast() -> nimblebert.NimbleModel:
    """DynaBERT then FastBERT: width live, exits live; branches that make rows leave at different layers."""
    torch.manual_seed(0)
    model = NimbleModel(tiny_model(layers=3, hidden=64, ffn=128), make_tokenizer(), label_names=["neg", "pos"],
                        stack=[Component("finetune", {}), Component("dynabert", {}), Component("fastbert", {})])
    model.attach_all()
    with torch.no_grad():
        for branch in model.extras["branches"]:
            branch.out.weight.normal_(0.0, 2.0)
    return model.eval()


def test_a_live_width_gets_graphs_per_setting_with_the_core_logits_exits_and_flops(dyna_fast) -> None:
    seg = copy.copy(dyna_fast)
    seg.runtime = "ort-int8"
    live = LiveStructure(dyna_fast, int8=False)  # float32 graphs: the core's numbers exactly
    object.__setattr__(seg, "segments", live)
    b = batch(rows=8, length=12)
    mixed = 0
    for width in (1.0, 0.5, 0.25):
        for speed in (0.0, 0.5, 0.9):
            knobs = dyna_fast.check_knobs({"width": width, "speed": speed})
            with torch.inference_mode():
                ref, out = run(dyna_fast, b, knobs), run(seg, b, knobs)
            torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=0)
            assert out.layers_run.tolist() == ref.layers_run.tolist()
            torch.testing.assert_close(sample_flops(seg.encoder, out), sample_flops(dyna_fast.encoder, ref))
            mixed += len(set(out.layers_run.tolist())) > 1
    assert mixed >= 2
    assert sorted(live.runners) == [(0.25, 1.0), (0.5, 1.0), (1.0, 1.0)]  # one set of graphs per width, made once
    assert live.at(dyna_fast.check_knobs({"width": 0.5})).heads == 2  # 4 heads at width 0.5: physically narrow
    near = live.at(dyna_fast.check_knobs({"width": 0.5 + 1e-9}))  # the same network: its graphs, not new ones
    assert near is live.at(dyna_fast.check_knobs({"width": 0.5})) and len(live._built) == 3
    live.keep_only([{"width": 0.5, "speed": 0.9}])  # a server keeping the widths it serves
    assert list(live.runners) == [(0.5, 1.0)] and len(live._built) == 1
    with pytest.raises(UserError, match="depth"):  # exits were distilled at full depth: refused, as on the core
        seg.infer(b, depth=0.5, speed=0.5)


def test_ort_int8_refuses_token_cuts_and_a_supernet() -> None:
    with pytest.raises(UserError, match="ort-int8"):
        apply_runtime(nimble("trbert", layers=2), "ort-int8")
    with pytest.raises(UserError, match="--runtime int8"):  # no network until an architecture is chosen
        apply_runtime(nimble("nasbert", layers=2), "ort-int8")


def test_an_exported_live_width_loads_its_stored_graphs(tmp_path: Path, dyna_fast,
                                                        capsys: pytest.CaptureFixture) -> None:
    """``export --format ort-int8`` without --width keeps the width live: the default width's graphs are stored and
    loading uses them (no export at load); another width is made when first asked for."""
    dyna_fast.save(tmp_path / "dyna-fast")
    assert main(["export", str(tmp_path / "dyna-fast"), "--format", "ort-int8", "--out", str(tmp_path / "q")]) == 0
    assert "width" in json.loads(capsys.readouterr().out)["live_knobs"]
    loaded = nimblebert.load(tmp_path / "q")
    assert isinstance(loaded.segments, LiveStructure)
    stored = loaded.segments.at(loaded.check_knobs({}))
    assert stored.folder == tmp_path / "q" / "ort-int8"
    b = batch(rows=4, length=10)
    with torch.inference_mode():
        assert loaded.infer(b, width=0.5, speed=0.5).logits.shape == (4, 2)
    assert loaded.segments.at(loaded.check_knobs({"width": 0.5})).folder != stored.folder


def test_cli_export_then_evaluate_and_predict_on_ort_int8(tmp_path: Path, toy_data_dir: Path, fast,
                                                          capsys: pytest.CaptureFixture) -> None:
    model = copy.deepcopy(fast)
    model.label_names = ["positive", "negative"]
    model.save(tmp_path / "fast")
    assert main(["export", str(tmp_path / "fast"), "--format", "ort-int8", "--out", str(tmp_path / "q")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "ort-int8" and report["live_knobs"] == ["speed", "patience"]
    assert (tmp_path / "q" / "ort-int8" / MANIFEST).exists()
    graphs = [f for f in report["files"] if f.startswith("ort-int8/") and f.endswith(".onnx")]
    assert graphs and f"ort-int8/{MANIFEST}" in report["files"] and "model.safetensors" in report["files"]
    loaded = nimblebert.load(tmp_path / "q")
    assert loaded.runtime == "ort-int8" and loaded.segments.folder == tmp_path / "q" / "ort-int8"  # stored, not redone
    assert main(["evaluate", str(tmp_path / "q"), "--data", str(toy_data_dir), "--speed", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "ort-int8" and result["examples"] == 32 and result["flops_per_sample"] > 0
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a good movie"}\n{"text": "bad"}\n')
    assert main(["predict", str(tmp_path / "fast"), "--input", str(texts), "--runtime", "ort-int8",
                 "--speed", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["exit_layer"] for x in lines] == [1, 1]


def test_bench_runs_ort_int8_beside_the_core(tmp_path: Path, toy_data_dir: Path, fast) -> None:
    model = copy.deepcopy(fast)
    model.label_names = ["positive", "negative"]
    model.save(tmp_path / "fast")
    out = tmp_path / "bench"
    assert main(["bench", str(tmp_path / "fast"), "--data", str(toy_data_dir), "--out", str(out), "--no-onnx",
                 "--runtime", "int8,ort-int8", "--sweep", "speed=0,0.5", "--rounds", "1",
                 "--b1-examples", "2", "--b32-examples", "32"]) == 0
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {"fast speed=0.5 [int8]", "fast speed=0.5 [ort-int8]", "fast speed=0 [ort-int8]"} <= set(rows)
    assert rows["fast speed=0.5 [ort-int8]"]["command"].endswith("--runtime ort-int8")
