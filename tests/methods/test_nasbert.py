"""NAS-BERT on tiny models: ops, the space's rules, FLOPs, supernet training and shrinking, save → load."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from nimblebert.core.encoder import CoreEncoder
from nimblebert.core.flops import sample_flops
from nimblebert.core.ops import MHAOp, OpSpec, build_op, op_params
from nimblebert.core.plan import Plan
from nimblebert.errors import UserError
from nimblebert.methods.nasbert.modules import ShrinkState, block_path
from nimblebert.methods.nasbert.objective import SupernetObjective, block_losses, shrink_round, teacher_blocks
from nimblebert.methods.nasbert.space import arch_params, default_space, format_arch, parse_arch
from nimblebert.model import NimbleModel

SPECS = [OpSpec("mha", 16, 2), OpSpec("ffn", 16, 64), OpSpec("conv", 16, 3), OpSpec("conv", 16, 7),
         OpSpec("linear", 16, 24)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}{s.width}")
def test_op_shapes_params_and_padding(spec: OpSpec) -> None:
    torch.manual_seed(0)
    op = build_op(spec, dropout=0.0).eval()
    assert sum(p.numel() for p in op.parameters()) == op_params(spec)
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask4d = mask[:, None, None, :].bool()
    y = op(x, mask, mask4d)
    assert y.shape == (2, 9, spec.out)
    # A padded row's real tokens get exactly what the row alone gets, whatever sits in the padding.
    x2 = x.clone()
    x2[1, 5:] = 100.0
    alone = op(x[1:, :5], torch.ones(1, 5, dtype=torch.long), None)
    torch.testing.assert_close(op(x2, mask, mask4d)[1, :5], alone[0], rtol=1e-5, atol=1e-5)


def test_conv_without_masking_would_read_padding() -> None:
    """The check above is not vacuous: a kernel over padding changes the real tokens unless it is zeroed."""
    torch.manual_seed(0)
    op = build_op(OpSpec("conv", 16, 5), dropout=0.0).eval()
    x = torch.randn(1, 9, 16)
    x[0, 5:] = 100.0
    full = op(x, torch.ones(1, 9, dtype=torch.long), None)  # no mask: padding is read as tokens
    alone = op(x[:, :5], torch.ones(1, 5, dtype=torch.long), None)
    assert not torch.allclose(full[0, :5], alone[0], atol=1e-3)


def test_space_sizes_and_identity_only_at_tail() -> None:
    from transformers import BertConfig

    minilm = default_space(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12))
    assert (minilm.hidden_sizes, minilm.blocks, minilm.slots) == ((64, 96, 128, 192, 256), 3, 4)
    base = default_space(BertConfig())
    assert (base.hidden_sizes, base.blocks, base.slots) == ((128, 192, 256, 384, 512), 4, 6)
    assert sum(1 for _ in base.block_archs()) == 5 * sum(5**j for j in range(7))  # the paper's ~97,650
    archs = list(minilm.block_archs())
    assert len(archs) == len(set(archs)) == 5 * sum(5**j for j in range(5))
    # An op list never holds an identity: identities are the implicit tail, so 'mha, id, ffn' cannot be written.
    assert all("id" not in ops and len(ops) <= minilm.slots for _, ops in archs)
    with pytest.raises(UserError):
        parse_arch("64:mha,id,ffn/64:/64:", minilm)
    arch = parse_arch("64:mha,conv3/96:ffn/64:", minilm)
    assert format_arch(arch) == "64:mha,conv3/96:ffn/64:"
    assert arch_params(arch, minilm) > 0


def _supernet(layers: int = 2, **cfg) -> NimbleModel:
    hf = tiny_model(layers=layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = NimbleModel(hf, make_tokenizer(), "nasbert", {"dropout": 0.0, **cfg})
    model.method_spec.attach(model)
    return model


def _batch(b: int = 3, t: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 99, (b, t))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_flops_match_counter_for_a_chain() -> None:
    model = _supernet(hidden_sizes="16,24").eval()
    arch = parse_arch("16:mha,conv5,ffn,conv3", default_space(model.hf.config, 0, (16, 24)))
    MHAOp.fused = False  # explicit attention products, which the flop counter sees (CPU SDPA it does not)
    try:
        ids = torch.randint(5, 99, (1, 11))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model.infer({"input_ids": ids}, arch=format_arch(arch))
    finally:
        MHAOp.fused = True
    assert [s.op.kind for s in out.steps] == ["linear", "mha", "conv", "ffn", "conv", "linear"]
    assert float(sample_flops(model.encoder, out)[0]) == counter.get_total_flops()


def test_bert_layers_still_run_when_no_ops_are_planned() -> None:
    model = _supernet()
    enc = CoreEncoder(model.hf)
    batch = _batch()
    with torch.no_grad():
        ref = model.hf(**batch).logits
        torch.testing.assert_close(model.encoder(**batch).logits, ref)
        torch.testing.assert_close(enc(**batch, plan=Plan()).logits, ref)


def test_supernet_step_finite_and_trains_only_the_ops() -> None:
    model = _supernet()
    space = default_space(model.hf.config)
    objective = SupernetObjective(space, _cfg(model), [], every=1000)
    model.train()
    parts = objective(model, _batch())
    assert torch.isfinite(parts["loss"]) and parts["loss"] > 0
    parts["loss"].backward()
    assert all(p.grad is None for p in model.hf.parameters())
    grads = [p.grad for p in model.extras["ops"].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert int(model.extras["shrink"].steps) == 1


def _rows_dataset(rows: list[list[int]]):
    """An encoded task of the given token rows (no padding), labels alternating."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": rows, "token_type_ids": [[0] * len(r) for r in rows],
                                       "attention_mask": [[1] * len(r) for r in rows],
                                       "labels": [i % 2 for i in range(len(rows))]})


def _ragged_task():
    """A 4-layer supernet, its space at sizes 8 and 16, six rows of different lengths and one padded, shuffled batch
    of them: the setting in which the cached teacher targets must equal the live teacher's."""
    from nimblebert.data import make_loader

    model = _supernet(layers=4, hidden_sizes="8,16").eval()
    space = default_space(model.hf.config, 0, (8, 16))
    torch.manual_seed(0)
    rows = [torch.randint(5, 99, (n,)).tolist() for n in (7, 3, 9, 5, 4, 8)]
    encoded = _rows_dataset(rows)
    batch = next(iter(make_loader(encoded, model.tokenizer, 4, shuffle=True, seed=1)))
    return model, space, rows, encoded, batch


def _cfg(model: NimbleModel):
    from nimblebert.methods.nasbert.objective import config_of

    return config_of(model)


def test_shrinking_removes_the_worst_per_bin() -> None:
    model = _supernet(hidden_sizes="8,16", bins=3, blocks=2).eval()  # 2 slots per block: 62 architectures
    space = default_space(model.hf.config, 2, (8, 16))
    state: ShrinkState = model.extras["shrink"]
    batch = _batch()
    ys = [teacher_blocks(model.encoder, batch, space)]
    masks = [batch["attention_mask"]]
    before = state.counts(0)
    live_before = sum(int(state.alive(n).sum()) for n in range(space.blocks))
    members = {b: (state.bin == b).nonzero().squeeze(1) for b in range(3)}
    scores = {b: block_losses(model, 0, [state.archs[int(i)] for i in m], ys, masks) for b, m in members.items()}
    removed = shrink_round(model, ys, masks, samples=10_000, keep=4)  # samples every member: exact halving
    after = state.counts(0)
    assert removed == live_before - sum(int(state.alive(n).sum()) for n in range(space.blocks)) > 0
    for b in range(3):
        assert after[b] == max(min(before[b], 4), before[b] - before[b] // 2)
        alive = state.alive(0)[members[b]]
        if after[b] < before[b]:  # every survivor scored no worse than every removed one
            assert scores[b][alive].max() <= scores[b][~alive].min()


def test_no_shrink_switch_keeps_everything() -> None:
    model = _supernet(shrink=False)
    space = default_space(model.hf.config)
    batch = _batch()
    objective = SupernetObjective(space, _cfg(model), [batch], every=1)
    for _ in range(3):
        objective(model, batch)
    assert bool(model.extras["shrink"].alive(0).all())


def test_supernet_path_is_what_infer_runs(tmp_path) -> None:
    model = _supernet().eval()
    arch = model.extras["shrink"].largest(0)
    assert block_path(0, arch)[0].startswith("b0_in_")
    batch = _batch()
    with torch.no_grad():
        before = model.infer(batch, arch="largest").logits
    model.save(tmp_path / "sn")
    loaded = NimbleModel.load(tmp_path / "sn")
    with torch.no_grad():
        torch.testing.assert_close(loaded.infer(batch, arch="largest").logits, before)
    assert torch.equal(loaded.extras["shrink"].alive0, model.extras["shrink"].alive0)


# ---- latency table, search, the searched network ---------------------------------------------------------------


def _table(model: NimbleModel, space, tmp_path) -> dict:
    from nimblebert.methods.nasbert.latency import load_or_measure

    return load_or_measure(tmp_path / "lat.json", model, space, [8, 16], [1], repeats=1, progress=False)


def test_latency_table_is_cached_with_its_cpu(tmp_path, monkeypatch) -> None:
    import json

    from nimblebert.methods.nasbert import latency

    model = _supernet(hidden_sizes="8,16").eval()
    space = default_space(model.hf.config, 0, (8, 16))
    table = _table(model, space, tmp_path)
    assert table["cpu"]["threads"] == torch.get_num_threads() and "model" in table["cpu"]
    assert set(table["ops_ms"]["b1"]) == {latency.op_name(s) for s in latency.space_ops(space)}
    calls = []
    monkeypatch.setattr(latency, "measure_table", lambda *a, **k: calls.append(1) or table)
    assert latency.load_or_measure(tmp_path / "lat.json", model, space, [8, 16], [1], 1, False) == table
    assert not calls  # the cached table is reused on the same CPU
    other = json.loads((tmp_path / "lat.json").read_text())
    other["cpu"]["model"] = "another CPU"
    (tmp_path / "lat.json").write_text(json.dumps(other))
    latency.load_or_measure(tmp_path / "lat.json", model, space, [8, 16], [1], 1, False)
    assert calls == [1]  # a table from another CPU is measured anew


@pytest.mark.parametrize("block_transfers", [True, False])
def test_search_respects_the_budget_and_finds_the_best_combination(tmp_path, block_transfers: bool) -> None:
    import dataclasses
    import itertools

    from nimblebert.methods.nasbert.latency import predict_latency
    from nimblebert.methods.nasbert.search import combine

    model = _supernet(layers=4, hidden_sizes="8,16").eval()  # 2 blocks
    space = dataclasses.replace(default_space(model.hf.config, 0, (8, 16)), block_transfers=block_transfers)
    table = _table(model, space, tmp_path)
    gen = torch.Generator().manual_seed(0)
    archs = list(space.block_archs())
    tables = []
    for _ in range(space.blocks):
        pick = torch.randperm(len(archs), generator=gen)[:25]
        tables.append(([archs[int(i)] for i in pick], torch.rand(25, generator=gen, dtype=torch.float64)))
    every = [(a0, a1, float(l0 + l1)) for (a0, l0), (a1, l1) in
             itertools.product(zip(*tables[0], strict=True), zip(*tables[1], strict=True))]
    lat = {(a0, a1): predict_latency(table, space, (a0, a1), 1, 12) for a0, a1, _ in every}
    budget = sorted(lat.values())[len(lat) // 3]  # a third of the combinations fit
    params_cap = sorted(arch_params((a0, a1), space) for a0, a1, _ in every)[len(every) // 2]
    found = combine(space, tables, table, 1, 12, budget, params_cap, beam=10_000)
    feasible = [(a0, a1, loss) for a0, a1, loss in every
                if lat[(a0, a1)] <= budget + 1e-9 and arch_params((a0, a1), space) <= params_cap]
    assert found and len(found) == len(feasible)
    for c in found:
        assert c.latency_ms <= budget + 1e-9 and c.params <= params_cap
        assert c.latency_ms == pytest.approx(predict_latency(table, space, c.arch, 1, 12))
        assert c.params == arch_params(c.arch, space)
    assert found[0].loss == pytest.approx(min(loss for _, _, loss in feasible))


@pytest.mark.parametrize("text", ["16:conv3,mha,ffn/8:ffn,conv7", "16:conv3,mha/16:ffn,conv7", "16:/8:ffn",
                                  "24:mha/24:", "8:/16:"])
def test_searched_network_starts_as_its_supernet_path_and_survives_save_load(tmp_path, text: str) -> None:
    import dataclasses

    from nimblebert.methods.nasbert.search import build_searched

    model = _supernet(layers=4, hidden_sizes="8,16,24").eval()
    space = default_space(model.hf.config, 0, (8, 16, 24))
    for p in model.extras.parameters():  # trained-looking weights, not the initial ones
        torch.nn.init.normal_(p, std=0.2)
    # With block transfers the chain is the supernet path exactly, also where two blocks have the same size (the
    # trial run's mistake: there the ops of block 2 met block 1's output without the transfers they learnt behind)
    # and through identity blocks (their in·out transfers fold into the next one).
    arch = parse_arch(text, space)
    batch = _batch()
    net = build_searched(model, arch, "supernet").eval()
    space = dataclasses.replace(space, block_transfers=True)
    assert net.hf.config.num_hidden_layers == 0 and net.method_config["role"] == "net"
    with torch.no_grad():
        expected = model.infer(batch, arch=format_arch(arch)).logits
        got = net.infer(batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    net.save(tmp_path / "net")
    loaded = NimbleModel.load(tmp_path / "net")
    with torch.no_grad():
        torch.testing.assert_close(loaded.infer(batch).logits, got, rtol=0, atol=0)
    assert sum(p.numel() for p in loaded.extras["chain"].parameters()) == arch_params(arch, space)
    with pytest.raises(UserError):
        loaded.infer(batch, arch="8:ffn/8:")


def test_bert_shaped_network_becomes_a_plain_transformers_model(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from nimblebert.methods.nasbert.plain import to_plain
    from nimblebert.methods.nasbert.search import build_searched

    model = _supernet(layers=4, hidden_sizes="16,32").eval()
    space = default_space(model.hf.config, 0, (16, 32))
    torch.manual_seed(3)
    net = build_searched(model, parse_arch("32:mha,ffn/32:mha,ffn", space), "random", block_transfers=False).eval()
    for p in net.extras.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net.save(tmp_path / "net")
    to_plain(net).save(tmp_path / "plain")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, net.infer(batch).logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="not BERT-shaped"):
        to_plain(build_searched(model, parse_arch("16:mha,ffn/32:ffn", space), "random", block_transfers=False))
    with pytest.raises(UserError, match="not BERT-shaped"):  # block transfers are Linears a BertLayer lacks
        to_plain(build_searched(model, parse_arch("32:mha,ffn/32:mha,ffn", space), "random"))
    with pytest.raises(UserError, match="needs block transfers"):
        build_searched(model, parse_arch("32:mha,ffn/32:mha,ffn", space), "supernet", block_transfers=False)
    from nimblebert.export.static import to_static

    exported = to_static(NimbleModel.load(tmp_path / "net"))  # what `nimblebert export` writes
    assert exported.method == "finetune"
    with torch.no_grad():
        torch.testing.assert_close(exported.hf(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


def test_hooks_run_after_every_op_and_rows_can_leave() -> None:
    """Exits compose with a chain: a hook sees every op's output and a finished row leaves the batch."""
    from nimblebert.methods.nasbert.policy import supernet_plan

    model = _supernet(hidden_sizes="16,24").eval()
    space = default_space(model.hf.config, 0, (16, 24))
    arch = parse_arch("16:mha,ffn,conv3", space)
    seen = []

    def hook(state) -> None:
        seen.append((state.step, state.hidden.size(0)))
        if state.step == 2:
            state.finish(torch.tensor([True, False, False]), torch.zeros(3, 2))

    batch = _batch()
    with torch.no_grad():
        out = model.encoder(batch["input_ids"], batch["attention_mask"], plan=supernet_plan(model, arch), hooks=[hook])
        full = model.infer(batch, arch=format_arch(arch))
    assert seen == [(1, 3), (2, 3), (3, 2), (4, 2), (5, 2)]  # in, mha, ffn, conv3, out
    assert out.layers_run.tolist() == [2, 5, 5]
    torch.testing.assert_close(out.logits[1:], full.logits[1:])
    flops = sample_flops(model.encoder, out)
    assert flops[0] < sample_flops(model.encoder, full)[0]


def test_net_distillation_reads_cached_teacher_targets_like_the_teacher(tmp_path, monkeypatch) -> None:

    from nimblebert.distill.teacher import Teacher
    from nimblebert.methods.nasbert.objective import NetObjective, net_targets
    from nimblebert.methods.nasbert.search import build_searched
    from nimblebert.methods.tinybert.objective import TargetSource
    from nimblebert.train.stages import TrainOptions

    monkeypatch.setenv("NIMBLEBERT_HOME", str(tmp_path))
    model, space, rows, encoded, batch = _ragged_task()
    opts = TrainOptions(out=str(tmp_path / "x"), progress=False)
    # "16:/8:" — identity then one op; "8:/16:" — only identities: the last block's output still has a target.
    for text in ("16:mha,conv3/8:ffn", "16:/8:ffn", "8:/16:"):
        net = build_searched(model, parse_arch(text, space), "supernet").eval()
        (cached,) = net_targets(model.hf, space, [encoded], model.tokenizer, opts)
        live = TargetSource(Teacher(model.hf), None, space.teacher_boundaries(), [])
        for hidden, prediction in ((True, False), (False, True)):
            got = NetObjective(cached, hidden, prediction, 1.0)(net, batch)
            want = NetObjective(live, hidden, prediction, 1.0)(net, batch)
            assert got["loss"].requires_grad and float(got["loss"].detach()) > 0
            torch.testing.assert_close(got["loss"], want["loss"], rtol=2e-3, atol=1e-5)  # float16 cache


def test_searched_network_exports_to_onnx_through_the_core(tmp_path) -> None:
    """A network that is not BERT-shaped has no transformers form, but ONNX traces the core's chain: fp32 equal to
    PyTorch on padded batches of other sizes, int8 written too; the transformers format still refuses it."""
    pytest.importorskip("onnxruntime")
    from nimblebert.export import ExportOptions, export_model
    from nimblebert.methods.nasbert.search import build_searched

    model = _supernet(layers=4, hidden_sizes="16,24").eval()
    space = default_space(model.hf.config, 0, (16, 24))
    net = build_searched(model, parse_arch("16:conv3,mha/24:ffn,conv5", space), "supernet").eval()
    for p in net.extras.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net.save(tmp_path / "net")
    report = export_model(tmp_path / "net", tmp_path / "onnx", "onnx", options=ExportOptions(int8=True))
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["fp32"]["argmax_agreement"] == 1.0
    assert (tmp_path / "onnx" / "model.onnx").exists() and (tmp_path / "onnx" / "model_int8.onnx").exists()
    assert report["int8"]["examples"] == report["fp32"]["examples"]
    with pytest.raises(UserError, match="not BERT-shaped"):
        export_model(tmp_path / "net", tmp_path / "hf", "hf")
    assert not (tmp_path / "hf" / "config.json").exists()


def test_block_losses_share_prefixes_exactly() -> None:
    """The prefix-sharing scorer gives each architecture what running its path alone gives (eval mode)."""
    from nimblebert.methods.nasbert.objective import masked_mse, run_block

    model = _supernet(hidden_sizes="8,16", bins=3, blocks=2).eval()
    space = default_space(model.hf.config, 2, (8, 16))
    state: ShrinkState = model.extras["shrink"]
    batch = _batch()
    half = {k: v[:1, :5] for k, v in batch.items()}  # a second, shorter held-out batch
    ys = [teacher_blocks(model.encoder, b, space) for b in (batch, half)]
    masks = [batch["attention_mask"], half["attention_mask"]]
    archs = [state.archs[i] for i in torch.randperm(len(state.archs), generator=torch.Generator().manual_seed(0))]
    for n in range(space.blocks):
        got = block_losses(model, n, archs, ys, masks)
        want = []
        with torch.no_grad():
            for a in archs:
                sq = sum(float(masked_mse(run_block(model.extras["ops"], n, a, y[n], m), y[n + 1], m))
                         * float(m.sum()) for y, m in zip(ys, masks, strict=True))
                want.append(sq / sum(float(m.sum()) for m in masks))
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-7)
        assert len(set(got.tolist())) > len(archs) // 2  # not a constant


def test_held_out_batches_are_the_same_rows_packed_by_length() -> None:

    from nimblebert.methods.nasbert.objective import held_out_batches

    tok = make_tokenizer()
    rows = [list(range(5, 5 + n)) for n in (3, 9, 4, 7, 2, 8, 6, 5, 9, 3)]
    encoded = _rows_dataset(rows)
    got = held_out_batches(encoded, tok, batch_size=4, count=2, rows_per_batch=2)  # the first 8 rows
    kept = sorted(tuple(ids[m.bool()].tolist())
                  for b in got for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True))
    assert kept == sorted(tuple(r) for r in rows[:8])
    padded = sum(b["attention_mask"].numel() for b in got)
    assert padded == sum(len(r) for r in rows[:8]) + 4  # pairs by length (9, 8), (7, 6), ...: one pad each


def test_supernet_reads_the_cached_teacher_blocks_like_the_teacher(tmp_path, monkeypatch) -> None:
    """The supernet's targets from the teacher cache (float16, padding zeroed) give the step's losses that the
    teacher run at the step gives; the teacher runs once per row, not once per step."""

    from nimblebert.methods.nasbert.objective import supernet_targets
    from nimblebert.train.stages import TrainOptions

    monkeypatch.setenv("NIMBLEBERT_HOME", str(tmp_path))
    model, space, rows, encoded, batch = _ragged_task()
    targets = supernet_targets(model.hf, space, encoded, model.tokenizer, TrainOptions(out=str(tmp_path / "x"),
                                                                                      progress=False))
    assert targets.teacher.examples_run == len(rows)  # the cache was filled by one pass
    cfg = _cfg(model)
    cached, live = SupernetObjective(space, cfg, [], 1000, targets), SupernetObjective(space, cfg, [], 1000)
    for _ in range(3):
        torch.manual_seed(3)
        got = cached(model, batch)
        torch.manual_seed(3)  # the same sampled path
        want = live(model, batch)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=2e-3, atol=1e-5)
    assert targets.teacher.examples_run == len(rows)  # the steps read the cache


# ---- bins with latency caps (progressive shrinking, §3.3) ------------------------------------------------------


def _overhead_table(space, overhead: float = 0.05) -> dict:
    """A latency table where every op costs a fixed ``overhead`` ms plus 1e-5 ms per parameter: at batch 1 on a CPU
    an op's fixed cost dominates a small op, so small-but-many-op blocks are slow (the case parameter bins got
    wrong)."""
    from nimblebert.methods.nasbert.latency import op_name, space_ops

    ops = {op_name(s): [overhead + 1e-5 * op_params(s)] * 2 for s in space_ops(space)}
    return {"lengths": [8, 16], "ops_ms": {"b1": ops}, "fixed_ms": {"b1": [0.1, 0.1]}}


def _block_latencies(state: ShrinkState, space, table: dict) -> torch.Tensor:
    from nimblebert.methods.nasbert.latency import block_latency

    return torch.tensor([block_latency(table, space, a, 1, 12) for a in state.archs], dtype=torch.float64)


def test_latency_caps_put_the_fastest_architectures_in_the_low_bins() -> None:
    from transformers import BertConfig

    space = default_space(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4), 1, (8, 16))
    state, bins = ShrinkState(space, 5), 5
    lat = _block_latencies(state, space, _overhead_table(space))
    params = state.params.double()
    by_params = state.bin.clone()
    # Parameter caps alone put slow architectures in bin 1 (many 8-wide ops: few weights, each op's fixed cost).
    assert float(lat[by_params == 0].max()) > float(lat.max()) / bins
    state.set_latency(lat)
    for b in range(bins):
        members = state.bin == b
        assert members.any()
        # Each member meets bin b's caps (both) and not those of any lower bin: the first bin that fits.
        assert (params[members] <= (b + 1) / bins * params.max() + 1e-9).all()
        assert (lat[members] <= (b + 1) / bins * lat.max() + 1e-9).all()
        if b:
            lower = (params[members] <= b / bins * params.max()) & (lat[members] <= b / bins * lat.max())
            assert not lower.any()
    # Everything both small and fast is in bin 1; the bins' mean latency rises with b.
    fast = (lat <= lat.max() / bins) & (params <= params.max() / bins)
    assert fast.sum() > 1 and (state.bin[fast] == 0).all()
    means = [float(lat[state.bin == b].mean()) for b in range(bins)]
    assert means == sorted(means)


def test_shrinking_with_latency_caps_keeps_m_per_bin_and_fast_architectures() -> None:
    model = _supernet(hidden_sizes="8,16", bins=4, blocks=2).eval()  # 2 slots per block: 62 architectures
    space = default_space(model.hf.config, 2, (8, 16))
    state: ShrinkState = model.extras["shrink"]
    lat = _block_latencies(state, space, _overhead_table(space, 0.002))
    state.set_latency(lat)
    budget = float(lat.max()) / 4  # bin 1's latency cap: a small budget per block
    assert int(((state.bin == 0) & (lat > 0)).sum()) >= 1  # bin 1 holds more than the empty block
    batch = _batch()
    ys, masks = [teacher_blocks(model.encoder, batch, space)], [batch["attention_mask"]]
    before = state.counts(0)
    keep = 3
    for _ in range(20):  # until every bin is down to m
        if not shrink_round(model, ys, masks, samples=16, keep=keep):
            break
    for n in range(space.blocks):
        after = state.counts(n)
        assert sum(after) < sum(before)  # shrinking ran
        assert all(a >= min(keep, b) for a, b in zip(after, before, strict=True)) and max(after) == keep
        # An architecture under the small budget is still alive in every block (a low bin keeps its fastest members).
        alive = state.alive(n)
        assert int((alive & (lat <= budget) & (lat > 0)).sum()) >= 1
