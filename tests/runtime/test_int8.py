"""The int8 runtime on tiny random models: close to float32, every knob still live, saved flag round-trips.

The tiny models here are 64 wide (FFN 128), so that their Linears reach the runtime's size threshold
(:data:`nimblebert.runtime.int8.MIN_FEATURES`) as MiniLM's do.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model
from torch import nn

import nimblebert
from nimblebert.cli.main import main
from nimblebert.core.encoder import CoreEncoder
from nimblebert.core.plan import Plan
from nimblebert.errors import UserError
from nimblebert.methods import get_method
from nimblebert.model import NimbleModel
from nimblebert.runtime import apply_runtime, int8
from nimblebert.runtime.int8 import Int8Linear, quantize_
from nimblebert.runtime.onednn import PackedLinear, pack_

WIDE = dict(hidden=64, heads=4, ffn=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch(rows: int = 6, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def nimble(method: str = "finetune", layers: int = 3, seed: int = 0, **cfg) -> NimbleModel:
    model = NimbleModel(tiny_model(seed=seed, layers=layers, **WIDE), make_tokenizer(), method, cfg, ["neg", "pos"])
    get_method(method).attach(model)
    return model.eval()


def int8_of(model: NimbleModel) -> NimbleModel:
    return apply_runtime(copy.deepcopy(model), "int8")


def test_int8_linear_is_close_to_float_at_every_slice() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    q = Int8Linear(linear)
    x = torch.randn(2, 7, 96)
    with torch.inference_mode():
        ref = linear(x)
        scale = float(ref.abs().max())
        assert float((q(x) - ref).abs().max()) < 0.03 * scale
        rows = q.narrow(x, rows=40)
        assert rows.shape == (2, 7, 40)
        assert float((rows - ref[..., :40]).abs().max()) < 0.03 * scale
        cols = q.narrow(x[..., :48], cols=48)
        ref_cols = nn.functional.linear(x[..., :48], linear.weight[:, :48], linear.bias)
        assert float((cols - ref_cols).abs().max()) < 0.03 * float(ref_cols.abs().max())
    # The float weights stay what they were: state_dict (and so save) is the nn.Linear's.
    assert set(q.state_dict()) == set(linear.state_dict())
    torch.testing.assert_close(q.weight, linear.weight)
    assert isinstance(q, nn.Linear)


needs_onednn_int8 = pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines,
                                       reason="this torch build has no onednn quantized engine")


@pytest.fixture
def int8_engine(monkeypatch: pytest.MonkeyPatch):
    """``set(on)``: int8 products of many rows on oneDNN (on) or fbgemm only (off), whatever this CPU has."""
    def set_onednn(on: bool) -> None:
        monkeypatch.setenv("NIMBLEBERT_INT8_ONEDNN", "1" if on else "0")
        int8.onednn_int8.cache_clear()

    yield set_onednn
    int8.onednn_int8.cache_clear()


@needs_onednn_int8
def test_int8_products_of_many_rows_run_on_onednn_at_bucket_rows(int8_engine, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    # Below ONEDNN_MIN_ROWS rows fbgemm (oneDNN's fixed cost per call loses there), from it on oneDNN at the oneDNN
    # runtimes' row buckets (a primitive per row count); the same arithmetic, so the same result up to rounding.
    monkeypatch.setattr(int8, "ONEDNN_MIN_ROWS", 32)  # the tiny shapes of a test (the real threshold is larger)
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    int8_engine(False)
    plain = Int8Linear(linear)
    plain._pack(40, None)  # its narrow width packed now, fbgemm only
    int8_engine(True)
    q = Int8Linear(linear)
    assert plain._full.onednn is None and q._full.onednn is not None
    seen: list[int] = []
    run = int8.Int8Product._onednn
    monkeypatch.setattr(int8.Int8Product, "_onednn", lambda self, x: seen.append(x.size(0)) or run(self, x))
    with torch.inference_mode():
        for rows in (int8.ONEDNN_MIN_ROWS - 1, 37, 64):
            x = torch.randn(rows, 96)
            out = q(x)
            assert out.shape == (rows, 80)
            scale = float(plain(x).abs().max())
            torch.testing.assert_close(out, plain(x), atol=0.01 * scale, rtol=0)
            narrow = q.narrow(x, rows=40)
            torch.testing.assert_close(narrow, plain.narrow(x, rows=40), atol=0.01 * scale, rtol=0)
        assert seen == [40, 40, 64, 64]  # 31 rows stayed on fbgemm; 37 ran at the bucket (40), full and narrow
        seen.clear()
        x = torch.randn(1, 37, 96)  # batch 1, a long sentence: (1, t, d) padded to the bucket and back
        out = q(x)
        assert seen == [40] and out.shape == (1, 37, 80)
        torch.testing.assert_close(out, plain(x), atol=0.01 * float(plain(x).abs().max()), rtol=0)
        # a copy packs again for both kernels (torch's own copy of a packed weight repacks it for the engine in
        # force, fbgemm: the oneDNN path would silently be lost)
        copied = copy.deepcopy(q._full)
        seen.clear()
        torch.testing.assert_close(copied(x), out, atol=0, rtol=0)
        assert seen == [40]


@needs_onednn_int8
def test_int8_batches_reach_onednn_through_the_row_layout(int8_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import nimblebert.core.encoder as encoder_module
    from nimblebert.core.tokens import row_layout

    made: list[int] = []

    def spy(mask: torch.Tensor, bucket, key_multiple=None):  # noqa: ANN001, ANN202
        layout = row_layout(mask, bucket, key_multiple)
        made.append(layout.gather.numel() if layout.gather is not None else mask.numel())
        return layout

    monkeypatch.setattr(encoder_module, "row_layout", spy)
    monkeypatch.setattr(int8, "ONEDNN_MIN_ROWS", 32)  # a tiny model's batch (the real threshold is larger)
    products: list[int] = []
    run = int8.Int8Product._onednn
    monkeypatch.setattr(int8.Int8Product, "_onednn", lambda self, x: products.append(x.size(0)) or run(self, x))
    fp32 = nimble()
    int8_engine(True)
    q = int8_of(fp32)
    b = batch(rows=6, length=12)  # ragged: 6 rows, between 3 and 12 real tokens each
    real = int(b["attention_mask"].sum())
    with torch.inference_mode():
        ref = fp32.infer(b).logits
        assert made == [real]  # float32: the real tokens, no filler rows
        made.clear()
        out = q.infer(b).logits
        assert made == [int8.int8_rows(real)] and real >= int8.ONEDNN_MIN_ROWS and made[0] % 8 == 0
        assert products and set(products) == {made[0]}  # every layer product ran on oneDNN at the layout's rows
        assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02
        made.clear()
        q.infer({k: v[:1] for k, v in b.items()})
    assert made == []  # batch 1: nothing to gather, no layout (it cost 5 % there)


@pytest.mark.parametrize("replace, kind", [(quantize_, Int8Linear), (pack_, PackedLinear)], ids=["int8", "onednn"])
def test_small_linears_stay_float(replace, kind) -> None:
    """Both CPU runtimes swap only the Linears whose sides reach MIN_FEATURES (their one shared loop)."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2), nn.Linear(32, 64))
    assert replace(model) == 1
    assert [type(m) for m in model] == [kind, nn.Linear, nn.Linear]


def test_int8_logits_close_to_float_and_the_encoder_sees_the_new_modules() -> None:
    fp32 = nimble()
    q = int8_of(fp32)
    assert q.runtime == "int8"
    # Every layer's Linears are int8; the pooler and the classifier (one token each) stay float32.
    assert sum(isinstance(m, Int8Linear) for m in q.hf.modules()) == 3 * 6
    assert type(q.hf.bert.pooler.dense) is nn.Linear
    assert all(isinstance(p.query, Int8Linear) and isinstance(p.ffn_out, Int8Linear) for p in q.encoder.parts)
    # Q, K and V run as one fused product at full width; it gives what the three separate ones give.
    p0, x = q.encoder.parts[0], torch.randn(5, 64)
    with torch.inference_mode():
        fused = p0.query.fused_qkv(x)
        separate = torch.cat([p0.query(x), p0.key(x), p0.value(x)], dim=-1)
    torch.testing.assert_close(fused, separate, atol=1e-4, rtol=1e-4)
    assert "fused_qkv" not in str(list(q.hf.state_dict()))
    b = batch()
    with torch.inference_mode():
        ref, out = fp32.infer(b).logits, q.infer(b).logits
    assert not torch.equal(ref, out)  # it really ran other kernels
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02
    one = {k: v[:1] for k, v in b.items()}  # no padding: the layers run on the (b, t) layout, not packed tokens
    assert bool(one["attention_mask"].all())
    with torch.inference_mode():
        ref, out = fp32.infer(one).logits, q.infer(one).logits
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02


def test_cached_parts_follow_replaced_modules() -> None:
    model = tiny_model(layers=2)
    enc = CoreEncoder(model)
    first = enc.parts
    assert enc.parts is first  # cached between calls
    new = nn.Linear(32, 32)
    model.bert.encoder.layer[1].attention.self.query = new
    assert enc.parts is not first and enc.parts[1].query is new


def test_narrow_widths_run_in_int8() -> None:
    fp32 = nimble()
    q = int8_of(fp32)
    plan = Plan(heads=(2, 2, 2), ffn=(64, 64, 64))
    b = batch()
    with torch.inference_mode():
        ref = fp32.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
        out = q.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
        full = q.encoder(b["input_ids"], b["attention_mask"]).logits
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02
    assert not torch.allclose(out, full)  # the width really changed what ran
    layer0 = q.encoder.parts[0]
    # packed once per width; Q, K and V as one fused product at the narrow width too
    assert 2 * 16 in layer0.query.fused_qkv._widths and (None, 64) in layer0.ffn_out._packed
    assert (2 * 16, None) not in layer0.query._packed
    x = torch.randn(5, 64)
    with torch.inference_mode():  # it gives what the three narrow products give (same input quantization)
        fused = layer0.query.fused_qkv.width(2 * 16)(x)
        separate = torch.cat([m.narrow(x, rows=2 * 16) for m in (layer0.query, layer0.key, layer0.value)], dim=-1)
    torch.testing.assert_close(fused, separate, atol=1e-5, rtol=1e-5)
    for p in q.encoder.parts:  # and so the whole model, against the three-call path the core takes without it
        object.__setattr__(p.query, "fused_qkv", None)
    with torch.inference_mode():
        unfused = q.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
    torch.testing.assert_close(out, unfused, atol=1e-5, rtol=1e-5)


def test_fastbert_exits_fire_under_int8() -> None:
    fp32 = nimble("fastbert", layers=4)
    q = int8_of(fp32)
    assert all(type(b.proj) is nn.Linear for b in q.extras["branches"])  # branches stay float32 (see apply_runtime)
    b = batch(rows=8)
    with torch.inference_mode():
        everyone = q.infer(b, speed=1.0)
        none = q.infer(b, speed=0.0)
    assert everyone.layers_run.tolist() == [1] * 8  # every row leaves at its first branch
    assert none.layers_run.tolist() == [4] * 8


def test_trbert_token_cuts_fire_under_int8() -> None:
    fp32 = nimble("trbert", layers=3)
    q = int8_of(fp32)
    with torch.no_grad():
        for policy in q.extras["policies"]:
            policy.linear_2.bias.fill_(-3.0)  # keep probability ≈ 0: every droppable token leaves
    b = batch(rows=4)
    with torch.inference_mode():
        out = q.infer(b, keep_threshold=0.5)
    kept = out.extras["tokens_kept"]
    assert (kept[:, -1] < b["attention_mask"].sum(dim=1)).all()
    assert torch.isfinite(out.logits).all()


def test_save_load_keeps_the_runtime(tmp_path: Path) -> None:
    fp32 = nimble("fastbert", layers=2)
    fp32.save(tmp_path / "fp32")
    q = nimblebert.load(tmp_path / "fp32", runtime="int8")
    q.save(tmp_path / "int8")
    section = json.loads((tmp_path / "int8" / "config.json").read_text())["nimblebert"]
    assert section["runtime"] == "int8"
    again = nimblebert.load(tmp_path / "int8")
    assert again.runtime == "int8" and isinstance(again.encoder.parts[0].query, Int8Linear)
    # The stored weights are the float32 ones: fp32 on request gives the original model back exactly.
    back = nimblebert.load(tmp_path / "int8", runtime="fp32")
    b = batch()
    with torch.inference_mode():
        torch.testing.assert_close(back.infer(b).logits, fp32.infer(b).logits)
    with pytest.raises(UserError, match="unknown"):
        nimblebert.load(tmp_path / "int8", runtime="int4")
    with pytest.raises(UserError, match="already"):
        apply_runtime(again, "fp32")


def test_cli_export_nimble_int8_then_evaluate_and_predict(tmp_path: Path, toy_data_dir: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    model = nimble("fastbert", layers=2)
    model.label_names = ["positive", "negative"]
    model.save(tmp_path / "fast")
    assert main(["export", str(tmp_path / "fast"), "--format", "nimble", "--int8", "--out", str(tmp_path / "q")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "int8" and report["live_knobs"] == ["speed", "patience"]  # the knobs stay knobs
    assert nimblebert.load(tmp_path / "q").runtime == "int8"
    assert main(["evaluate", str(tmp_path / "q"), "--data", str(toy_data_dir), "--speed", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "int8" and result["examples"] == 32
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a good movie"}\n{"text": "bad"}\n')
    assert main(["predict", str(tmp_path / "fast"), "--input", str(texts), "--runtime", "int8", "--speed", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["exit_layer"] for x in lines] == [1, 1]
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path / "fast"), "--input", str(texts), "--runtime", "int4"])
    assert exit_.value.code == 2 and "int4" in capsys.readouterr().err


def test_bench_runs_each_model_on_each_runtime(tmp_path: Path, toy_data_dir: Path) -> None:
    model = nimble("fastbert", layers=2)
    model.label_names = ["positive", "negative"]
    model.save(tmp_path / "fast")
    out = tmp_path / "bench"
    assert main(["bench", str(tmp_path / "fast"), "--data", str(toy_data_dir), "--out", str(out), "--no-onnx",
                 "--runtime", "fp32", "--runtime", "int8", "--sweep", "speed=0,0.5", "--rounds", "1",
                 "--b1-examples", "2", "--b32-examples", "32"]) == 0
    rows = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {"fast speed=0.5 [fp32]", "fast speed=0.5 [int8]", "fast speed=0 [int8]"} <= set(rows)
    assert rows["fast speed=0.5 [int8]"]["precision"] == "int8"
    assert rows["fast speed=0.5 [int8]"]["command"].endswith("--runtime int8")
    assert "--runtime" not in rows["fast speed=0.5 [fp32]"]["command"]
