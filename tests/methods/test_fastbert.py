"""FastBERT (Liu et al. 2020) on tiny random models: branches, exit policies, FLOPs, saving, objectives."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

import nimblebert
from nimblebert.core.encoder import LoopState
from nimblebert.core.flops import head_flops, layer_flops, sample_flops
from nimblebert.errors import UserError
from nimblebert.methods import get_method
from nimblebert.methods.fastbert import (
    ExitHook,
    FastBertConfig,
    distill_objective,
    finetune_objective,
    normalized_entropy,
)
from nimblebert.model import NimbleModel

LAYERS = 4
BRANCH_KINDS = [{"branch": "attention"}, {"branch": "attention", "pooling": "mean"}, {"branch": "mlp"},
                {"branch": "linear"}]


def make_model(tokenizer=None, layers: int = LAYERS, spread: bool = True, seed: int = 0,
               **cfg) -> NimbleModel:
    """A tiny FastBERT. Random branches are all near-uniform; ``spread`` rescales each branch's output
    layer so that its logit margin has mean 0 and std 2.5 over random inputs: confidences then differ
    from row to row and layer to layer, and every exit layer gets used."""
    model = NimbleModel(tiny_model(seed=seed, layers=layers), tokenizer, "fastbert", cfg, ["neg", "pos"])
    get_method("fastbert").attach(model)
    model.eval()
    if spread:
        per = branch_logits(model, make_batch(rows=64, seed=99))[:-1]
        with torch.no_grad():
            for i, (branch, logits) in enumerate(zip(model.extras["branches"], per, strict=True)):
                margin = logits[:, 1] - logits[:, 0]
                scale = (2.5 + i) / float(margin.std())
                branch.out.weight.mul_(scale)
                branch.out.bias.mul_(scale)
                branch.out.bias += torch.tensor([0.5, -0.5]) * float(margin.mean()) * scale
    return model


def make_batch(rows: int = 12, length: int = 14, seed: int = 1, padded: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if padded:  # ragged rows, right-padded like the collator's batches
        lengths = torch.randint(3, length + 1, (rows,), generator=g)
        lengths[0] = length
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
    types = torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def branch_logits(model: NimbleModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Reference: every branch on the full batch (no row removal), plus the teacher last. [(B, C)] * L"""
    with torch.no_grad():
        out = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                            output_hidden_states=True)
        hs = out.hidden_states
        per = [b(hs[i + 1], batch["attention_mask"]) for i, b in enumerate(model.extras["branches"])]
    return [*per, out.logits]


def rows_of(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Row ``i`` alone, without its padding."""
    n = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :n] for k, v in batch.items()}


# ---- building, saving, the teacher ----------------------------------------------------------------

@pytest.mark.parametrize("cfg", BRANCH_KINDS, ids=lambda c: "-".join(c.values()))
def test_attach_builds_one_branch_per_layer_but_the_last(cfg: dict) -> None:
    model = make_model(**cfg)
    assert len(model.extras["branches"]) == LAYERS - 1
    assert model.method_config == dataclasses.asdict(FastBertConfig(**cfg))
    logits = branch_logits(model, make_batch())
    assert all(x.shape == (12, 2) and torch.isfinite(x).all() for x in logits)


def test_speed_zero_is_exactly_the_plain_transformers_model() -> None:
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        ref = model.hf(**batch).logits
        out = model.infer(batch, speed=0.0)
        default = model.infer(batch)  # the default knob is the teacher too
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    assert torch.equal(out.logits.argmax(-1), ref.argmax(-1))
    assert out.layers_run.tolist() == [LAYERS] * 12
    assert "extra_flops" not in out.extras  # normal mode: no branch was computed
    torch.testing.assert_close(default.logits, out.logits)


@pytest.mark.parametrize("cfg", BRANCH_KINDS, ids=lambda c: "-".join(c.values()))
def test_save_load_gives_same_predictions_and_exit_layers(tmp_path, tiny_tokenizer, cfg: dict) -> None:
    model = make_model(tiny_tokenizer, **cfg)
    batch = make_batch()
    model.save(tmp_path / "fast")
    loaded = nimblebert.load(tmp_path / "fast")
    assert loaded.method == "fastbert" and loaded.method_config == model.method_config
    with torch.no_grad():
        for knobs in ({"speed": 0.0}, {"speed": 0.4}, {"speed": 0.8}, {"patience": 1}):
            a, b = model.infer(batch, **knobs), loaded.infer(batch, **knobs)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
            assert a.layers_run.tolist() == b.layers_run.tolist()
        # model.safetensors is exactly the teacher, as a plain transformers model.
        hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fast").eval()
        teacher = model.infer(batch, speed=0.0).logits
        torch.testing.assert_close(hf(**batch).logits, teacher, atol=1e-5, rtol=0)


def test_attach_rejects_models_it_cannot_serve() -> None:
    one_layer = NimbleModel(tiny_model(layers=1), None, "fastbert", {}, ["a", "b"])
    with pytest.raises(UserError, match="at least 2 layers"):
        get_method("fastbert").attach(one_layer)
    with pytest.raises(UserError, match="--branch"):
        FastBertConfig(branch="cls")
    with pytest.raises(UserError, match="divisible"):
        FastBertConfig(branch_hidden=128, branch_heads=3)
    with pytest.raises(UserError, match="--finetune"):
        FastBertConfig(finetune="maybe")


# ---- the exit rule ----------------------------------------------------------------------------------

def expected_entropy_exits(model: NimbleModel, batch: dict[str, torch.Tensor], speed: float):
    """Reference exit layers and logits: first layer whose normalized entropy ≤ speed, else the teacher."""
    per = branch_logits(model, batch)
    rows = batch["input_ids"].size(0)
    layers, logits = torch.full((rows,), LAYERS), per[-1].clone()
    for i in reversed(range(LAYERS - 1)):  # reversed: the first qualifying layer wins
        hit = normalized_entropy(per[i]) <= speed
        layers[hit], logits[hit] = i + 1, per[i][hit]
    return layers, logits


@pytest.mark.parametrize("cfg", BRANCH_KINDS, ids=lambda c: "-".join(c.values()))
@pytest.mark.parametrize("speed", [0.15, 0.4, 0.7])
def test_batched_exit_matches_reference_and_rows_alone(cfg: dict, speed: float) -> None:
    model = make_model(**cfg)
    batch = make_batch(rows=16)
    want_layers, want_logits = expected_entropy_exits(model, batch, speed)
    with torch.no_grad():
        out = model.infer(batch, speed=speed)
        alone = [model.infer(rows_of(batch, i), speed=speed) for i in range(16)]
    assert out.layers_run.tolist() == want_layers.tolist()
    torch.testing.assert_close(out.logits, want_logits, atol=1e-4, rtol=1e-5)
    assert [int(a.layers_run[0]) for a in alone] == out.layers_run.tolist()
    torch.testing.assert_close(torch.cat([a.logits for a in alone]), out.logits, atol=1e-4, rtol=1e-5)


def test_exit_layers_spread_and_never_increase_as_speed_rises() -> None:
    model = make_model()
    batch = make_batch(rows=32, seed=3)
    previous = None
    seen = set()
    with torch.no_grad():
        for speed in [i / 20 for i in range(21)]:
            layers = model.infer(batch, speed=speed).layers_run
            seen.update(layers.tolist())
            if previous is not None:
                assert (layers <= previous).all(), f"speed {speed}: some exit layer increased"
            previous = layers
    assert seen == set(range(1, LAYERS + 1))  # the toy model really exercises every exit layer
    assert previous is not None and previous.tolist() == [1] * 32  # speed 1: everyone leaves at layer 1


def test_rows_really_leave_the_tensors() -> None:
    model = make_model()
    batch = make_batch(rows=16, seed=3)
    widths = []
    hook = ExitHook(model.extras["branches"], speed=0.5, patience=0)
    with torch.no_grad():
        out = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                            hooks=[hook, lambda s: widths.append(tuple(s.hidden.shape[:2]))])
    counts = [s.rows.numel() for s in out.steps]
    assert counts[0] == 16 and all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert counts[-1] < 16  # later layers ran on fewer rows ...
    for step, (rows, _) in zip(out.steps[1:], widths, strict=False):
        assert step.rows.numel() == rows  # ... and the hidden states really had fewer rows
    for i, step in enumerate(out.steps):  # exactly the rows that had not left yet ran layer i
        assert sorted(step.rows.tolist()) == sorted((out.layers_run > i).nonzero().flatten().tolist())
    # Padding columns needed only by rows that left are cut off as well.
    lengths = batch["attention_mask"].sum(1)
    for (_, width), step in zip(widths, out.steps[1:], strict=False):
        assert width == int(lengths[step.rows].max())


# ---- the patience rule (PABEE) ----------------------------------------------------------------------

def expected_patience_exits(model: NimbleModel, batch: dict[str, torch.Tensor], patience: int) -> list[int]:
    """Reference PABEE counter, row by row: +1 when the branch prediction repeats, 0 otherwise."""
    preds = [x.argmax(-1).tolist() for x in branch_logits(model, batch)[:-1]]
    layers = len(preds) + 1
    exits = []
    for r in range(batch["input_ids"].size(0)):
        count, exit_layer = 0, layers
        for i in range(layers - 1):
            count = count + 1 if i > 0 and preds[i][r] == preds[i - 1][r] else 0
            if count >= patience:
                exit_layer = i + 1
                break
        exits.append(exit_layer)
    return exits


@pytest.mark.parametrize("patience", [1, 2])
def test_patience_rule_follows_pabee(patience: int) -> None:
    model = make_model(layers=5)
    batch = make_batch(rows=24, seed=5)
    want = expected_patience_exits(model, batch, patience)
    per = branch_logits(model, batch)
    with torch.no_grad():
        out = model.infer(batch, patience=patience)
        alone = [int(model.infer(rows_of(batch, i), patience=patience).layers_run[0]) for i in range(24)]
    assert out.layers_run.tolist() == want == alone
    assert min(want) >= patience + 1  # PABEE: patience p needs p + 1 agreeing branches
    assert len(set(want)) > 1
    for r, layer in enumerate(want):
        torch.testing.assert_close(out.logits[r], per[layer - 1][r], atol=1e-4, rtol=1e-5)


def test_patience_longer_than_the_branches_is_the_teacher_and_both_rules_combine() -> None:
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        teacher = model.infer(batch, speed=0.0)
        never = model.infer(batch, patience=LAYERS - 1)  # needs LAYERS agreeing branches: only LAYERS-1 exist
        both = model.infer(batch, speed=0.4, patience=1)
        by_speed = model.infer(batch, speed=0.4)
        by_patience = model.infer(batch, patience=1)
    assert never.layers_run.tolist() == [LAYERS] * 12
    torch.testing.assert_close(never.logits, teacher.logits, atol=1e-5, rtol=0)
    assert torch.equal(both.layers_run, torch.minimum(by_speed.layers_run, by_patience.layers_run))


@pytest.mark.parametrize("knobs", [{"speed": 1.5}, {"speed": -0.1}, {"patience": -1}, {"patience": "x"},
                                   {"speed": "fast"}, {"width": 0.5}])
def test_knob_out_of_range_is_a_user_error(knobs: dict) -> None:
    model = make_model()
    with pytest.raises(UserError):
        model.infer(make_batch(), **knobs)


def test_knobs_are_checked_again_once_the_stack_changes() -> None:
    """``infer`` remembers checked knobs per stack (a server's every batch asks the same): a bad value still fails on
    every call, and a component replaced in place (here: one with ``speed`` fixed at export) is checked anew."""
    model = make_model()
    for _ in range(2):
        with pytest.raises(UserError):
            model.infer(make_batch(), speed=1.5)
    with torch.no_grad():
        model.infer(make_batch(), speed=0.5)
    top = model.stack[-1]
    model.stack[-1] = dataclasses.replace(top, fixed={"speed": 0.5})
    with pytest.raises(UserError, match="fixed"), torch.no_grad():
        model.infer(make_batch(), speed=0.5)


# ---- FLOPs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", BRANCH_KINDS, ids=lambda c: "-".join(c.values()))
def test_branch_flops_formula_matches_the_flop_counter(cfg: dict) -> None:
    model = make_model(**cfg)
    branch = model.extras["branches"][0].eval()  # the inference path, whose FLOPs the runner reports
    hidden = torch.randn(1, 9, 32)
    mask = torch.ones(1, 9, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        branch(hidden, mask)
    assert float(branch.flops(torch.tensor([9]), 32)[0]) == counter.get_total_flops()


def test_sample_flops_include_the_branches_that_ran() -> None:
    model = make_model()
    batch = make_batch(rows=16, seed=3)
    enc, branches = model.encoder, model.extras["branches"]
    lengths = batch["attention_mask"].sum(1)
    layer = layer_flops(lengths.double(), 32, 4, 8, 37)  # tiny config: hidden 32, 4 heads of 8, FFN 37
    per_branch = branches[0].flops(lengths, 32)
    with torch.no_grad():
        full = sample_flops(enc, model.infer(batch, speed=0.0))
        first = sample_flops(enc, model.infer(batch, speed=1.0))
        out = model.infer(batch, speed=0.5)
        mid = sample_flops(enc, out)
    torch.testing.assert_close(full, LAYERS * layer + head_flops(enc))
    torch.testing.assert_close(first, layer + per_branch)  # left at layer 1: no teacher head
    exits = out.layers_run.double()
    ran_branches = exits.clamp(max=LAYERS - 1)
    reached_head = (out.layers_run == LAYERS).double()
    want = exits * layer + ran_branches * per_branch + reached_head * head_flops(enc)
    torch.testing.assert_close(mid, want)
    assert 1 < out.layers_run.float().mean() < LAYERS


# ---- objectives -------------------------------------------------------------------------------------

def test_stage1_objective_is_cross_entropy_of_the_teacher_head() -> None:
    model = make_model()
    batch = {**make_batch(), "labels": torch.randint(0, 2, (12,))}
    parts = finetune_objective(model, batch)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        ref = F.cross_entropy(model.hf(**inputs).logits, batch["labels"])
    torch.testing.assert_close(parts["loss"].detach(), ref, atol=1e-5, rtol=0)
    parts["loss"].backward()
    assert all(p.grad is None for p in model.extras.parameters())  # students untouched by stage 1
    assert model.hf.classifier.weight.grad is not None


def manual_distill_loss(model: NimbleModel, batch: dict[str, torch.Tensor]) -> float:
    """Σ over students of KL(p_T ‖ p_S), batch mean, T = 1, with p_T from transformers' own forward."""
    per = branch_logits(model, batch)[:-1]
    with torch.no_grad():
        teacher = torch.softmax(model.hf(**batch).logits, -1)  # the stage-1 classifier, run by transformers
    return sum(float((teacher * (teacher.log() - F.log_softmax(x, -1))).sum(-1).mean()) for x in per)


def test_stage2_objective_distils_the_models_own_head_into_every_student() -> None:
    model = make_model()
    batch = make_batch()  # no labels: stage 2 does not need them
    parts = distill_objective(model, batch)
    before = manual_distill_loss(model, batch)
    assert math.isclose(float(parts["loss"].detach()), before, rel_tol=1e-5)
    assert [f"kl_{i}" for i in range(1, LAYERS)] == [k for k in parts if k.startswith("kl_")]
    assert math.isclose(sum(float(v) for k, v in parts.items() if k.startswith("kl_")), before, rel_tol=1e-5)
    parts["loss"].backward()
    assert all(p.grad is None for p in model.hf.parameters())  # backbone and teacher ran under no_grad
    assert all(p.grad is not None for p in model.extras.parameters())
    # The teacher is the live head, not a copy made at attach time: change it and the target follows.
    with torch.no_grad():
        model.hf.classifier.weight.mul_(200.0)
    after = manual_distill_loss(model, batch)
    assert not math.isclose(after, before, rel_tol=1e-2)
    assert math.isclose(float(distill_objective(model, batch)["loss"].detach()), after, rel_tol=1e-5)


def test_loop_state_sanity_for_hooks() -> None:
    """The hook relies on LoopState.finish keeping ``rows`` aligned with ``hidden``."""
    state = LoopState(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.long), 2)
    state.step = 1
    state.finish(torch.tensor([False, True, False]), torch.randn(3, 2))
    assert state.rows.tolist() == [0, 2] and state.hidden.shape[0] == 2
    assert state.layers_run.tolist() == [0, 1, 0]


def test_folded_branch_equals_the_papers_branch_and_follows_weight_updates() -> None:
    """At inference the attention branch with first-token pooling runs as folded products (modules.py): the same
    logits as the paper's computation (the training path), padding included, and a weight update (an optimizer
    step, a loaded state dict) refolds it."""
    from nimblebert.methods.fastbert.modules import AttentionBranch

    torch.manual_seed(0)
    branch = AttentionBranch(32, 16, 2, 3).eval()
    hidden = torch.randn(3, 9, 32)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    for _ in range(2):
        paper = branch(hidden, mask)  # grad enabled: the unfolded products
        with torch.inference_mode():
            folded = branch(hidden, mask)
        torch.testing.assert_close(folded, paper.detach(), atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # in place, as an optimizer step: the fold must follow
            branch.key_value.weight.mul_(1.5)
            branch.dense.bias.add_(0.3)
    with torch.inference_mode():
        assert not torch.allclose(branch(hidden, mask), folded)
