"""DynaBERT (Hou et al. 2020) on tiny random models: knobs, sub-networks, objectives, save/load, export."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import make_tokenizer, tiny_model
from transformers import AutoModelForSequenceClassification

import nimblebert
from nimblebert.core.plan import depth_layers
from nimblebert.core.slicing import width_sizes
from nimblebert.distill.teacher import SnapshotTeacher, Teacher
from nimblebert.errors import UserError
from nimblebert.export import export_model, to_static
from nimblebert.methods import get_method
from nimblebert.methods.dynabert import (
    DynaBertConfig,
    SubNetworkObjective,
    hidden_targets,
    plan_of,
)
from nimblebert.methods.dynabert.materialize import RECORD_KEYS
from nimblebert.methods.losses import hidden_mse
from nimblebert.model import NimbleModel

LAYERS, HEADS, FFN = 4, 4, 37
GRID = [(w, d) for d in (1.0, 0.75, 0.5) for w in (1.0, 0.75, 0.5, 0.25)]


def make_model(seed: int = 0, **cfg) -> NimbleModel:
    model = NimbleModel(tiny_model(seed=seed, layers=LAYERS), make_tokenizer(), "dynabert", cfg, ["neg", "pos"])
    get_method("dynabert").attach(model)
    return model.eval()


def make_batch(rows: int = 12, length: int = 14, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (rows,), generator=g)}


def hf_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


# ---- knobs and sub-networks ---------------------------------------------------------------------------

def test_full_width_and_depth_is_exactly_the_plain_model() -> None:
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        ref = model.hf(**hf_inputs(batch)).logits
        for knobs in ({}, {"width": 1.0, "depth": 1.0}):
            out = model.infer(batch, **knobs)
            torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
            assert out.layers_run.tolist() == [LAYERS] * 12


@pytest.mark.parametrize("width,depth", GRID)
def test_each_sub_network_keeps_the_first_heads_neurons_and_the_official_layers(width: float, depth: float) -> None:
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        out = model.infer(batch, width=width, depth=depth)
    heads, ffn = width_sizes(HEADS, FFN, width)
    assert heads == max(1, round(HEADS * width))
    expected_layers = [int(i / depth) for i in range(round(LAYERS * depth))]  # the official floor(i / m_d)
    assert [s.layer for s in out.steps] == expected_layers
    assert all((s.heads, s.ffn) == (heads, ffn) for s in out.steps)
    assert out.layers_run.tolist() == [len(expected_layers)] * 12 and torch.isfinite(out.logits).all()


def test_flops_shrink_with_width_and_depth() -> None:
    from nimblebert.core.flops import sample_flops

    model = make_model()
    batch = make_batch()
    flops = {}
    with torch.no_grad():
        for w, d in GRID:
            flops[w, d] = float(sample_flops(model.encoder, model.infer(batch, width=w, depth=d)).mean())
    for d in (1.0, 0.75, 0.5):
        per_width = [flops[w, d] for w in (1.0, 0.75, 0.5, 0.25)]
        assert per_width == sorted(per_width, reverse=True) and len(set(per_width)) == 4
    for w in (1.0, 0.5):
        assert flops[w, 1.0] > flops[w, 0.75] > flops[w, 0.5]


def test_knob_out_of_range_is_a_user_error() -> None:
    model = make_model()
    batch = make_batch()
    for knobs, match in (({"width": 1.5}, "out of range"), ({"depth": -0.1}, "out of range"),
                         ({"width": 0.0}, "out of range"), ({"depth": 0.0}, "out of range"),
                         ({"width": "wide"}, "must be a float"), ({"speed": 0.3}, "does not apply")):
        with pytest.raises(UserError, match=match):
            model.infer(batch, **knobs)


def test_hidden_targets_are_the_official_kept_layers_index() -> None:
    assert hidden_targets(12, 1.0) == list(range(13))
    assert hidden_targets(12, 0.5) == [0, 2, 4, 6, 8, 10, 12]
    assert hidden_targets(12, 0.75) == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12]
    assert hidden_targets(6, 0.5) == [0, 2, 4, 6]
    assert hidden_targets(LAYERS, 0.75) == [0, 1, 2, 4]


def test_config_is_validated_and_sorted() -> None:
    cfg = DynaBertConfig(widths=[0.5, 1.0, 0.25], depths=[0.5, 1.0])
    assert cfg.widths == [1.0, 0.5, 0.25] and cfg.depths == [1.0, 0.5]  # descending, as the official loop
    for kw, match in (({"widths": [1.2]}, "out of range"), ({"depths": []}, "at least one"),
                      ({"phases": ["depth", "width"]}, "order"), ({"phases": ["warmup"]}, "unknown"),
                      ({"importance_split": "dev"}, "unknown"), ({"width_lambda2": -1.0}, "≥ 0")):
        with pytest.raises(UserError, match=match):
            DynaBertConfig(**kw)
    model = make_model(widths=[0.5, 1.0])
    assert model.method_config == dataclasses.asdict(DynaBertConfig(widths=[1.0, 0.5]))
    one_label = NimbleModel(tiny_model(layers=2, labels=1), None, "dynabert", {}, ["score"])
    with pytest.raises(UserError, match="at least 2 labels"):
        get_method("dynabert").attach(one_label)


# ---- objectives -------------------------------------------------------------------------------------

def test_width_objective_is_the_sum_over_widths_of_the_official_loss() -> None:
    from nimblebert.methods.losses import hidden_mse, soft_cross_entropy

    teacher_model = make_model(seed=1)  # a different model, so that every term is non-zero
    student = make_model()
    batch = make_batch()
    teacher = Teacher(teacher_model.hf)
    objective = SubNetworkObjective([0.25, 1.0, 0.5], [1.0], lambda1=1.0, lambda2=0.1, teacher=teacher)
    parts = objective(student, batch)
    assert list(parts)[3:] == ["w1_d1", "w0.5_d1", "w0.25_d1"]  # descending widths
    with torch.no_grad():
        t = teacher_model.encoder(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
        expected = 0.0
        for w in (1.0, 0.5, 0.25):
            s = student.encoder(batch["input_ids"], batch["attention_mask"], output_hidden_states=True,
                                plan=plan_of(student, w, 1.0))
            expected += float(soft_cross_entropy(s.logits, t.logits) + 0.1 * hidden_mse(s.hidden_states,
                                                                                           t.hidden_states))
    assert math.isclose(float(parts["loss"].detach()), expected, rel_tol=1e-5)
    assert parts["loss"].requires_grad and math.isfinite(float(parts["kd"])) and float(parts["hidden"]) > 0
    parts["loss"].backward()  # one backward = the official per-width backward passes, accumulated
    assert all(p.grad is not None for p in student.hf.parameters())
    assert all(p.grad is None for p in teacher_model.hf.parameters())  # the teacher is frozen


def test_depth_objective_matches_student_hidden_states_to_the_official_teacher_layers() -> None:
    model = make_model()
    batch = make_batch()
    objective = SubNetworkObjective([1.0, 0.5], [1.0, 0.5], teacher=Teacher(make_model().hf))
    parts = objective(model, batch)
    assert [k for k in parts if k.startswith("w")] == ["w1_d1", "w0.5_d1", "w1_d0.5", "w0.5_d0.5"]
    # The same weights as the teacher: the full sub-network's loss is ~0 (soft CE = the teacher's entropy).
    with torch.no_grad():
        p = torch.softmax(model.hf(**hf_inputs(batch)).logits, -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    assert math.isclose(float(parts["w1_d1"]), entropy, rel_tol=1e-4)
    assert float(parts["w1_d0.5"]) > float(parts["w1_d1"])
    # Without a teacher: gold-label cross-entropy (the final fine-tuning).
    gold = SubNetworkObjective([1.0], [1.0])(model, batch)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model.hf(**hf_inputs(batch)).logits, batch["labels"])
    assert math.isclose(float(gold["loss"].detach()), float(ce), rel_tol=1e-5) and "kd" not in gold


def test_snapshot_teacher_is_frozen_at_first_use_and_survives_a_restart(tmp_path) -> None:
    model = make_model()
    batch = make_batch()
    path = tmp_path / "teacher.safetensors"
    first = SnapshotTeacher(path)
    before = first(model, batch).logits
    assert path.exists()
    with torch.no_grad():  # the student moves on
        for p in model.hf.parameters():
            p.add_(0.05)
    torch.testing.assert_close(first(model, batch).logits, before)
    # A resumed run builds a new SnapshotTeacher: it reads the file, not the moved student.
    torch.testing.assert_close(SnapshotTeacher(path)(model, batch).logits, before)
    assert not torch.allclose(model.infer(batch).logits, before)


def test_evaluate_grid_sums_the_sub_networks_accuracies(tiny_tokenizer) -> None:
    """The official model-selection criterion (used once the trainer offers a per-stage evaluate hook)."""
    import datasets

    from nimblebert.data import encode, make_loader
    from nimblebert.methods.dynabert import evaluate_grid

    model = make_model()
    texts = {"text": ["a good movie", "bad plot", "the best film", "awful acting and a dull story"] * 3,
             "label": [1, 0, 1, 0] * 3}
    loader = make_loader(encode(datasets.Dataset.from_dict(texts), tiny_tokenizer, 16, False), tiny_tokenizer, 5,
                         shuffle=False)
    scores = evaluate_grid(model, loader, widths=[0.5, 1.0], depths=[1.0, 0.5])
    per = {k: v for k, v in scores.items() if k.startswith("accuracy_w")}
    assert list(per) == ["accuracy_w1_d1", "accuracy_w0.5_d1", "accuracy_w1_d0.5", "accuracy_w0.5_d0.5"]
    assert math.isclose(scores["accuracy_sum"], sum(per.values())) and math.isclose(scores["accuracy"],
                                                                                      scores["accuracy_sum"] / 4)


# ---- save, load, export ----------------------------------------------------------------------------

def test_save_load_gives_the_same_predictions_at_every_setting(tmp_path) -> None:
    model = make_model(widths=[1.0, 0.5])
    batch = make_batch()
    model.save(tmp_path / "dyna")
    loaded = nimblebert.load(tmp_path / "dyna")
    assert loaded.method == "dynabert" and loaded.method_config == model.method_config
    assert not (tmp_path / "dyna" / "nimblebert.safetensors").exists()  # no extras
    with torch.no_grad():
        for w, d in GRID:
            torch.testing.assert_close(model.infer(batch, width=w, depth=d).logits,
                                       loaded.infer(batch, width=w, depth=d).logits, atol=1e-6, rtol=0)
        hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "dyna").eval()
        torch.testing.assert_close(hf(**hf_inputs(batch)).logits, loaded.infer(batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("width,depth", [(0.5, 0.5), (0.25, 1.0), (0.75, 0.75), (1.0, 0.5)])
def test_export_is_a_smaller_plain_model_with_the_same_predictions(tmp_path, width: float, depth: float) -> None:
    model = make_model()
    model.save(tmp_path / "dyna")
    out = tmp_path / "sub"
    report = export_model(tmp_path / "dyna", out, "hf", knobs={"width": width, "depth": depth})
    assert report["exported_method"] == "dynabert" and report["reload_max_abs_diff"] <= 1e-5
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    heads, ffn = width_sizes(HEADS, FFN, width)
    layers = round(LAYERS * depth)
    assert hf.config.num_hidden_layers == layers and hf.config.intermediate_size == ffn
    assert len(hf.bert.encoder.layer) == layers
    assert hf.bert.encoder.layer[0].intermediate.dense.weight.shape == (ffn, 32)
    full_params = sum(p.numel() for p in model.hf.parameters())
    assert sum(p.numel() for p in hf.parameters()) < full_params or (width, depth) == (1.0, 1.0)
    assert (out / "model.safetensors").stat().st_size < (tmp_path / "dyna" / "model.safetensors").stat().st_size
    section = hf.config.nimblebert
    # The DynaBERT component stays in the stack, fixed at the exported setting: its knobs are no longer accepted.
    (component,) = section["stack"]
    assert component["method"] == "dynabert" and component["fixed"] == {"width": width, "depth": depth}
    assert component["config"]["heads_per_layer"] == [heads] * layers
    assert set(RECORD_KEYS) <= set(component["config"])  # what attach() carries onto every later save
    for seed in range(3):
        batch = make_batch(rows=7, length=9 + seed, seed=seed)
        with torch.no_grad():
            dynamic = model.infer(batch, width=width, depth=depth).logits
            torch.testing.assert_close(hf(**hf_inputs(batch)).logits, dynamic, atol=1e-5, rtol=0)
    static = nimblebert.load(out)
    assert static.knobs() == () and static.encoder.num_heads == heads  # physically narrow: only the kept heads run
    with torch.no_grad():
        torch.testing.assert_close(static.infer(batch).logits, dynamic, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="fixed at"):
        static.check_knobs({"width": 0.5})


def test_depth_rule_last_runs_the_last_layer_trains_on_it_and_exports_it(tmp_path) -> None:
    """--depth-rule last (our option): the official pattern counted from the top. It is stored with the model,
    so inference, the training objective's layer map and the export all follow it."""
    assert depth_layers(6, 0.5, "last") == (1, 3, 5) and depth_layers(12, 0.5, "last") == (1, 3, 5, 7, 9, 11)
    assert depth_layers(6, 0.75, "last") == (1, 3, 4, 5)  # the official (0, 1, 2, 4) mirrored
    assert hidden_targets(6, 0.5, "last") == [0, 2, 4, 6] and hidden_targets(6, 0.75, "last") == [0, 2, 4, 5, 6]
    model = make_model(depth_rule="last")
    batch = make_batch()
    with torch.no_grad():
        out = model.infer(batch, depth=0.5)
    assert [s.layer for s in out.steps] == [1, 3]  # 4 layers at 0.5: the official (0, 2) mirrored
    # the objective runs the same sub-network as inference and matches its hidden states to layers 2 and 4
    objective = SubNetworkObjective([1.0], [0.5], lambda1=0.0, lambda2=1.0, teacher=Teacher(model.hf),
                                    depth_rule="last")
    with torch.no_grad():
        loss = objective(model, batch)["loss"]
        full = model.infer(batch)
        direct = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               plan=plan_of(model, 1.0, 0.5), output_hidden_states=True)
        teacher = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                output_hidden_states=True)
    expected = hidden_mse(list(direct.hidden_states), [teacher.hidden_states[i] for i in (0, 2, 4)])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.logits, full.logits)
    model.save(tmp_path / "dyna")
    assert nimblebert.load(tmp_path / "dyna").method_config["depth_rule"] == "last"
    export_model(tmp_path / "dyna", tmp_path / "sub", "hf", knobs={"width": 0.5, "depth": 0.5})
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sub").eval()
    assert hf.config.nimblebert["method_config"]["source_layers"] == [1, 3]
    with torch.no_grad():
        torch.testing.assert_close(hf(**hf_inputs(batch)).logits, model.infer(batch, width=0.5, depth=0.5).logits,
                                   atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="depth-rule"):
        make_model(depth_rule="first")


def test_export_knob_errors(tmp_path) -> None:
    model = make_model()
    model.save(tmp_path / "dyna")
    loaded = nimblebert.load(tmp_path / "dyna")
    with pytest.raises(UserError, match="out of range"):
        to_static(loaded, {"width": 2.0})
    with pytest.raises(UserError, match="does not apply"):
        to_static(loaded, {"speed": 0.5})
    assert to_static(loaded, {}).hf.config.num_hidden_layers == LAYERS  # defaults: the full model
