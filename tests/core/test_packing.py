"""Padded batches run their per-token products on the real tokens alone (core/tokens.pack_index): the results
must be those of the padded computation, forward and backward, at full and sliced width, after token drops."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import nimblebert.core.tokens as tokens
from nimblebert.core.encoder import CoreEncoder, LoopState
from nimblebert.core.plan import FULL, Plan
from nimblebert.core.tokens import PACK_MIN_PADDING, pack_index, row_layout, unpack


def _ragged(batch: int = 4, length: int = 12, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, length), generator=g)
    lengths = torch.tensor([length, 9, 5, 2])[:batch]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids, mask


def test_pack_index_only_when_padding_is_worth_it() -> None:
    assert pack_index(torch.ones(2, 50, dtype=torch.long)) is None
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, 49] = 0  # 1 % padding: below the threshold
    assert 1 / 100 < PACK_MIN_PADDING and pack_index(mask) is None
    mask[1, 40:] = 0  # 10 % padding
    index = pack_index(mask)
    assert index is not None
    assert index.tolist() == [*range(50), *range(50, 90)]  # flat positions of the real tokens, row by row


def test_unpack_puts_rows_back_with_zeros_at_padding() -> None:
    _, mask = _ragged()
    index = pack_index(mask)
    assert index is not None
    rows = torch.arange(index.numel(), dtype=torch.float32)[:, None].expand(-1, 3)
    out = unpack(rows, index, *mask.shape)
    assert out.shape == (*mask.shape, 3)
    assert (out[~mask.bool()] == 0).all()
    torch.testing.assert_close(out[mask.bool()], rows)


def _run(monkeypatch: pytest.MonkeyPatch, packed: bool, plan: Plan = FULL, hooks: tuple = ()
         ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    monkeypatch.setattr(tokens, "PACK_MIN_PADDING", PACK_MIN_PADDING if packed else 2.0)
    # training mode (dropout 0): the path gradients flow through; inference on the CPU runs the row layout instead
    model = tiny_model(layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ids, mask = _ragged()
    out = CoreEncoder(model)(ids, mask, plan=plan, hooks=hooks, output_hidden_states=not hooks)
    out.logits.float().pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), [h.detach() for h in out.hidden_states or []], grads


@pytest.mark.parametrize("plan", [FULL, Plan(layers=(0, 2), heads=(2, 2, 2), ffn=(20, 20, 20))],
                         ids=["full", "sliced"])
def test_packed_equals_padded_forward_and_backward(monkeypatch: pytest.MonkeyPatch, plan: Plan) -> None:
    logits, hiddens, grads = _run(monkeypatch, packed=True, plan=plan)
    ref_logits, ref_hiddens, ref_grads = _run(monkeypatch, packed=False, plan=plan)
    _, mask = _ragged()
    real = mask.bool()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for ours, theirs in zip(hiddens, ref_hiddens, strict=True):
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    for h in hiddens[1:]:  # layer outputs: padding is never computed, so it holds zeros
        assert (h[~real] == 0).all()
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # at inference the CPU runs the row layout (real tokens gathered once, keys padded): the same logits
    model = tiny_model(layers=3).eval()
    ids, _ = _ragged()
    seen: list[object] = []
    with torch.inference_mode():
        out = CoreEncoder(model)(ids, mask, plan=plan, hooks=(lambda state: seen.append(state.layout),))
        # asked for the hidden states it keeps the plain path (packing is off here, as for the reference), padding
        # included: DynaBERT's unmasked hidden-state loss reads a teacher's there
        states = CoreEncoder(model)(ids, mask, plan=plan, output_hidden_states=True)
    assert seen and all(layout is not None for layout in seen)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(states.logits, ref_logits, atol=1e-5, rtol=0)
    for ours, theirs in zip(states.hidden_states, ref_hiddens, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_packing_follows_dropped_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """After rows keep different numbers of tokens (TR-BERT), the shorter rows are padding for later layers."""
    seen: list[torch.Tensor | None] = []

    def drop(state: LoopState) -> None:
        if state.layer == 0:
            keep = torch.zeros_like(state.mask, dtype=torch.bool)
            keep[0, :3] = True  # row 0 keeps 3 of its 12 tokens, the others all theirs
            keep[1:] = True
            state.keep_tokens(keep)
        seen.append(state.pack)

    logits, _, grads = _run(monkeypatch, packed=True, hooks=(drop,))
    assert seen[0] is not None and seen[0].numel() == 3 + 9 + 5 + 2  # the live real tokens after the drop
    ref_logits, _, ref_grads = _run(monkeypatch, packed=False, hooks=(drop,))
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_key_mask_pads_keys_to_the_multiple_and_masks_what_was_added() -> None:
    _, mask = _ragged(length=12)
    keys = tokens.key_mask4d(mask, 16)
    assert keys is not None and keys.shape == (4, 1, 1, 16) and keys.dtype == torch.bool
    torch.testing.assert_close(keys[:, 0, 0, :12], mask.bool())
    assert not keys[..., 12:].any()  # the added keys are never attended to
    full = torch.ones(2, 16, dtype=torch.long)
    assert tokens.key_mask4d(full, 16) is None  # a multiple already, nothing padded: no mask at all
    assert tokens.key_mask4d(full[:, :13], 16)[..., 13:].sum() == 0


def test_padded_keys_give_the_unpadded_attention_in_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    # bfloat16 inference pads K and V to tokens.KEY_MULTIPLE in the row layout, at every batch size (batch 1 too):
    # the added keys are masked, so a layer's output is that of attention on the real keys. (Attending to the added
    # keys instead moves it by ~1e-2 on this model: the tolerance would catch it.)
    import nimblebert.core.encoder as encoder_module

    torch.manual_seed(0)
    model = tiny_model(layers=2).eval().to(torch.bfloat16)
    encoder = CoreEncoder(model)
    ids, mask = _ragged(length=12)
    x = torch.randn(4, 12, model.config.hidden_size, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref, _ = encoder.layer(encoder.parts[0], x, tokens.attention_mask4d(mask))
        out, _ = encoder.layer(encoder.parts[0], x, tokens.attention_mask4d(mask),
                               layout=row_layout(mask, lambda n: n, key_multiple=16))
        torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=2e-3, rtol=0)
        # the loop lays the keys out at the multiple, at batch 32-like and batch 1 alike, and the outputs follow
        keys: list[int] = []  # the key length of every layout the loop makes

        def spy(*args: object, **kwargs: object) -> tokens.RowLayout:
            layout = row_layout(*args, **kwargs)
            keys.append(layout.keys)
            return layout

        monkeypatch.setattr(encoder_module, "row_layout", spy)
        for batch_ids, batch_mask in ((ids, mask), (ids[2:3, :5], mask[2:3, :5])):
            logits = {}
            for multiple in (1, 16):
                monkeypatch.setattr(tokens, "KEY_MULTIPLE", multiple)
                keys.clear()
                logits[multiple] = encoder(batch_ids, batch_mask).logits
                assert keys and set(keys) == {-(-batch_ids.size(1) // multiple) * multiple}
            torch.testing.assert_close(logits[16], logits[1], atol=2e-3, rtol=0)


def test_row_layout_gathers_the_real_tokens_into_bucket_rows_and_scatters_them_back() -> None:
    _, mask = _ragged(length=12)  # 12 + 9 + 5 + 2 = 28 real tokens
    layout = row_layout(mask, lambda n: 32, key_multiple=16)
    real = mask.bool().reshape(-1).nonzero().squeeze(1)
    assert layout.real == 28 and layout.gather.shape == (32,) and layout.keys == 16
    assert layout.gather[:28].tolist() == real.tolist()
    assert (layout.gather[28:] == real[0]).all()  # filler rows copy a real token: no garbage reaches a product
    rows = torch.arange(1, 33, dtype=torch.float32)[:, None]  # what a product would return, row by row
    out = layout.to_batch(rows)
    assert out.shape == (4, 12, 1)
    assert out[mask.bool()].squeeze(1).tolist() == list(range(1, 29))  # the filler rows are dropped
    assert (out[~mask.bool()] == 1).all()  # padding reads the first real token: finite, and masked where read
    keys = layout.to_keys(rows)
    assert keys.shape == (4, 16, 1)
    assert keys[:, :12][mask.bool()].squeeze(1).tolist() == list(range(1, 29))
    assert (keys[:, 12:] == 1).all() and (keys[:, :12][~mask.bool()] == 1).all()
    torch.testing.assert_close(layout.key_mask, tokens.key_mask4d(mask, 16))
    # every position real and the key length already a multiple: views, no copies, no mask
    dense = row_layout(torch.ones(2, 16, dtype=torch.long), lambda n: 40, key_multiple=16)
    rows = torch.randn(40, 3)
    assert dense.key_mask is None and dense.to_batch(rows).data_ptr() == rows.data_ptr()
    assert dense.to_keys(rows).shape == (2, 16, 3) and dense.to_keys(rows).data_ptr() == rows.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16-products"])
def test_inference_sums_residuals_in_place_without_touching_the_layer_input(dtype: torch.dtype) -> None:
    # Without autograd the residual sums go in place into the products' outputs (core/encoder._residual): the
    # layer's input (the previous layer's output, which hooks and the caller may hold) must come out unchanged, and
    # the result must be the out-of-place one (with autograd on), also when the product is bfloat16 and the
    # residual float32 (the sum is then float32).
    torch.manual_seed(0)
    encoder = CoreEncoder(tiny_model(layers=2).eval())
    part = encoder.parts[0]
    if dtype == torch.bfloat16:  # a bf16-onednn-like product: bfloat16 output, float32 everywhere else
        for name in ("attn_out", "ffn_out"):
            linear = getattr(part, name)
            object.__setattr__(part, name, lambda z, lin=linear: lin(z).to(torch.bfloat16))
    _, mask = _ragged(length=12)
    x = torch.randn(4, 12, encoder.model.config.hidden_size)
    before = x.clone()
    ref, _ = encoder.layer(part, x, tokens.attention_mask4d(mask))  # autograd on: sums out of place
    with torch.inference_mode():
        out, _ = encoder.layer(part, x, tokens.attention_mask4d(mask))
    assert torch.equal(x, before)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=0)
