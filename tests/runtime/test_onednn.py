"""The fp32-onednn runtime: the same float32 products on packed weights, so the same logits, exits and widths.

Tiny models 64 wide (FFN 128) so that their Linears reach the runtime's size threshold, as MiniLM's do.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_int8 import batch, nimble
from torch import nn

import nimblebert
from nimblebert.core.plan import Plan
from nimblebert.errors import UserError
from nimblebert.model import NimbleModel
from nimblebert.runtime import apply_runtime
from nimblebert.runtime.onednn import BF16FloatLinear, BF16Linear, FusedPacked, PackedLinear, bf16_supported, gelu_kind


def onednn_of(model: NimbleModel) -> NimbleModel:
    return apply_runtime(copy.deepcopy(model), "fp32-onednn")


def test_packed_linear_equals_float_linear_at_every_slice() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    p = PackedLinear(linear)
    for x in (torch.randn(2, 7, 96), torch.randn(1, 96), torch.randn(33, 96)):
        with torch.inference_mode():
            torch.testing.assert_close(p(x), linear(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(p.narrow(x, rows=40), linear(x)[..., :40], atol=1e-5, rtol=1e-5)
            ref = nn.functional.linear(x[..., :48], linear.weight[:, :48], linear.bias)
            torch.testing.assert_close(p.narrow(x[..., :48], cols=48), ref, atol=1e-5, rtol=1e-5)
    assert set(p._packed) == {(None, None), (40, None), (None, 48)}  # each width packed once
    assert set(p.state_dict()) == set(linear.state_dict()) and isinstance(p, nn.Linear)


def test_logits_equal_fp32_on_padded_and_single_rows_and_narrow_widths() -> None:
    fp32 = nimble()
    fast = onednn_of(fp32)
    assert fast.runtime == "fp32-onednn"
    assert sum(isinstance(m, PackedLinear) for m in fast.hf.modules()) == 3 * 6
    assert type(fast.hf.bert.pooler.dense) is nn.Linear
    b = batch()
    one = {k: v[:1] for k, v in b.items()}
    plan = Plan(heads=(2, 2, 2), ffn=(64, 64, 64))
    with torch.inference_mode():
        torch.testing.assert_close(fast.infer(b).logits, fp32.infer(b).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast.infer(one).logits, fp32.infer(one).logits, atol=1e-5, rtol=1e-4)
        narrow = fast.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
        ref = fp32.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
        torch.testing.assert_close(narrow, ref, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(narrow, fast.infer(b).logits)  # the width really changed what ran
    # Q, K and V ran as one packed product, at full width and at the narrow one (each width packed once).
    fused = fast.encoder.parts[0].query.fused_qkv
    assert isinstance(fused, FusedPacked) and set(fused._widths) == {64, 2 * fast.encoder.head_dim}


def test_fused_qkv_equals_the_three_products_at_every_width() -> None:
    torch.manual_seed(0)
    trio = [PackedLinear(nn.Linear(64, 64)) for _ in range(3)]
    fused = FusedPacked(trio)
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), torch.cat([m(x) for m in trio], -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.width(16)(x), torch.cat([m(x)[..., :16] for m in trio], -1),
                                   atol=1e-5, rtol=1e-5)
    assert fused.width(16) is fused.width(16)  # packed once


def test_fastbert_exits_are_the_fp32_exits(tmp_path: Path) -> None:
    fp32 = nimble("fastbert", layers=4)
    fast = onednn_of(fp32)
    assert isinstance(fast.extras["branches"][0].proj, PackedLinear)  # the branches' projections packed too
    b = batch(rows=8)
    with torch.inference_mode():
        for speed in (0.0, 0.3, 0.6, 1.0):
            a, o = fp32.infer(b, speed=speed), fast.infer(b, speed=speed)
            assert o.layers_run.tolist() == a.layers_run.tolist()
            torch.testing.assert_close(o.logits, a.logits, atol=1e-5, rtol=1e-4)
        assert fast.infer(b, speed=1.0).layers_run.tolist() == [1] * 8
    # Saved, the folder names its runtime and keeps float32 weights.
    fast.save(tmp_path / "f")
    again = nimblebert.load(tmp_path / "f")
    assert again.runtime == "fp32-onednn" and isinstance(again.encoder.parts[0].query, PackedLinear)


needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="oneDNN has no bfloat16 products on this CPU")


@needs_bf16
def test_bf16_linear_is_the_bfloat16_product_at_every_slice() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    p = BF16Linear(linear)
    w, bias = linear.weight.bfloat16().float(), linear.bias.bfloat16().float()
    for x in (torch.randn(2, 7, 96), torch.randn(1, 96), torch.randn(33, 96)):
        xb = x.bfloat16().float()  # what the product multiplies: both sides rounded to bfloat16
        with torch.inference_mode():
            out = p(x)
            assert out.dtype == torch.bfloat16  # left in bfloat16: the core's residual sum promotes it
            torch.testing.assert_close(out.float(), nn.functional.linear(xb, w, bias), atol=3e-2, rtol=1e-2)
            ref = nn.functional.linear(xb[..., :48], w[:, :48], bias)
            torch.testing.assert_close(p.narrow(x[..., :48], cols=48).float(), ref, atol=3e-2, rtol=1e-2)
            torch.testing.assert_close(p.narrow(x, rows=40).float(), out[..., :40].float(), atol=3e-2, rtol=1e-2)
    assert set(p._packed) == {(None, None), (40, None), (None, 48)}
    assert set(p.state_dict()) == set(linear.state_dict())  # float32 weights stay: save is unchanged
    assert p.weight.dtype == torch.float32


@needs_bf16
def test_bf16_runtime_keeps_float32_outside_the_products_and_every_knob_live(tmp_path: Path) -> None:
    fp32 = nimble("fastbert", layers=4)
    bf16 = apply_runtime(copy.deepcopy(fp32), "bf16-onednn")
    assert bf16.runtime == "bf16-onednn"
    assert sum(isinstance(m, BF16Linear) for m in bf16.hf.modules()) == 4 * 6
    assert isinstance(bf16.encoder.parts[0].query.fused_qkv, FusedPacked)
    proj = bf16.extras["branches"][0].proj  # the branches' projections multiply in bfloat16, answer in float32
    assert isinstance(proj, BF16FloatLinear) and proj(torch.randn(3, proj.in_features)).dtype == torch.float32
    b = batch(rows=8)
    plan = Plan(heads=(2, 2, 2, 2), ffn=(64, 64, 64, 64))
    with torch.inference_mode():
        out = bf16.infer(b, speed=0.0)
        ref = fp32.infer(b, speed=0.0)
        # LayerNorm, residuals, exits and classifier stay float32; the products' rounding moves logits a little
        assert out.logits.dtype == torch.float32
        torch.testing.assert_close(out.logits, ref.logits, atol=5e-2, rtol=5e-2)
        assert not torch.equal(out.logits, ref.logits)  # the products really ran in bfloat16
        hidden = bf16.encoder(b["input_ids"], b["attention_mask"], output_hidden_states=True).hidden_states
        assert all(h.dtype == torch.float32 for h in hidden)
        narrow = bf16.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits
        torch.testing.assert_close(narrow, fp32.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits,
                                   atol=5e-2, rtol=5e-2)
        assert not torch.allclose(narrow, bf16.encoder(b["input_ids"], b["attention_mask"]).logits)
        assert bf16.infer(b, speed=1.0).layers_run.tolist() == [1] * 8  # exits live
    bf16.save(tmp_path / "f")
    again = nimblebert.load(tmp_path / "f")
    assert again.runtime == "bf16-onednn" and isinstance(again.encoder.parts[0].query, BF16Linear)


def test_bf16_runtime_is_refused_with_one_line_where_onednn_has_no_bfloat16(monkeypatch) -> None:
    import nimblebert.runtime.onednn as onednn

    monkeypatch.setattr(onednn, "bf16_supported", lambda: False)
    with pytest.raises(UserError, match="bf16-onednn runtime needs oneDNN's bfloat16"):
        apply_runtime(nimble(), "bf16-onednn")


def test_gelu_kind_tells_erf_from_tanh_and_fuses_neither_else() -> None:
    from transformers.activations import ACT2FN

    assert gelu_kind(ACT2FN["gelu"]) == "none"  # BERT's and MiniLM's: the erf form
    assert gelu_kind(ACT2FN["gelu_new"]) == "tanh" and gelu_kind(ACT2FN["gelu_pytorch_tanh"]) == "tanh"
    assert gelu_kind(ACT2FN["relu"]) is None and gelu_kind(ACT2FN["silu"]) is None


def test_fused_gelu_is_the_activation_of_the_product_at_every_width() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    for kind, act in (("none", nn.functional.gelu), ("tanh", lambda z: nn.functional.gelu(z, approximate="tanh"))):
        p = PackedLinear(linear)
        p.fuse_gelu(kind)
        x = torch.randn(5, 64)
        with torch.inference_mode():
            torch.testing.assert_close(p(x), act(linear(x)), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(p.narrow(x, rows=32), act(linear(x))[:, :32], atol=1e-5, rtol=1e-5)


def test_the_runtime_fuses_the_ffn_gelu_and_the_core_skips_its_own() -> None:
    fp32 = nimble()
    fast = onednn_of(fp32)
    assert all(p.ffn_in.fused_act == "none" for p in fast.encoder.parts)
    b = batch()
    plan = Plan(heads=(2, 2, 2), ffn=(64, 64, 64))
    with torch.inference_mode():  # applied once, not twice: the logits are the float32 model's, full and narrow
        torch.testing.assert_close(fast.infer(b).logits, fp32.infer(b).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits,
                                   fp32.encoder(b["input_ids"], b["attention_mask"], plan=plan).logits,
                                   atol=1e-5, rtol=1e-4)


def test_keep_heap_sets_glibc_thresholds_and_can_be_turned_off(monkeypatch) -> None:
    import ctypes
    import sys

    from nimblebert.runtime import keep_heap

    monkeypatch.setenv("NIMBLEBERT_KEEP_HEAP", "0")
    assert keep_heap() is False
    monkeypatch.delenv("NIMBLEBERT_KEEP_HEAP")
    calls = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert keep_heap() is True
    assert calls == [(-3, 32 << 20), (-1, 64 << 20)]  # M_MMAP_THRESHOLD 32 MB, M_TRIM_THRESHOLD 64 MB
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no glibc")))
    assert keep_heap() is False


def test_rows_run_in_buckets_so_few_shapes_reach_onednn() -> None:
    import os

    from nimblebert.runtime.onednn import row_bucket

    assert [row_bucket(r) for r in (1, 8, 9, 22, 64, 65, 100, 512, 513, 700)] == [8, 8, 16, 24, 64, 96, 128, 512,
                                                                                  640, 768]
    assert len({row_bucket(r) for r in range(1, 2049)}) <= 40  # a few dozen primitives per product, not 2048
    assert int(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]) >= 4096
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    p = PackedLinear(linear)
    for shape in ((1, 22, 64), (65, 64), (3, 7, 64)):  # padded to 24, 96 and 24 rows: the extra rows are dropped
        x = torch.randn(*shape)
        with torch.inference_mode():
            out = p(x)
        assert out.shape == (*shape[:-1], 96)
        torch.testing.assert_close(out, linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", ["ragged", "dense", "one"])
def test_layer_on_bucket_rows_equals_the_plain_layer(shape: str) -> None:
    # The oneDNN runtimes run a layer's products on the real tokens gathered into bucket rows (core/tokens.RowLayout),
    # with keys padded for attention: the output at real tokens is the plain layer's, at full and narrow width.
    from nimblebert.core.tokens import attention_mask4d, row_layout
    from nimblebert.runtime.onednn import row_bucket

    fast = onednn_of(nimble())
    enc = fast.encoder
    b = batch()
    mask = {"ragged": b["attention_mask"], "dense": torch.ones_like(b["attention_mask"]),
            "one": torch.ones_like(b["attention_mask"][:1, :5])}[shape]
    torch.manual_seed(0)
    x = torch.randn(*mask.shape, enc.model.config.hidden_size)
    real = mask.bool()
    with torch.inference_mode():
        for heads in (None, 2):
            ref, _ = enc.layer(enc.parts[1], x, attention_mask4d(mask), heads=heads)
            for multiple in (None, 16):
                layout = row_layout(mask, row_bucket, multiple)
                rows = real.numel() if layout.gather is None else layout.gather.numel()  # None: every position
                assert rows == row_bucket(int(real.sum()))
                out, _ = enc.layer(enc.parts[1], x, attention_mask4d(mask), heads=heads, layout=layout)
                torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-4)
    assert enc.parts[1].query.row_bucket is row_bucket  # the encoder reads it to build the layout
