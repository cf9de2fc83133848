"""Composition: every method trains on the folder of an earlier one (or is refused in one line), the folder records
the stack, and one pass runs every component's contribution together (rows leave, tokens drop, widths shrink).

Parametrized over the registry: a method registered later is covered by the contract and the pair tests without
new test code (a tiny run of it needs at most a line in ``QUICK``)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

import nimblebert
from nimblebert.cli.main import main
from nimblebert.core.flops import sample_flops
from nimblebert.data import encode, load_task, make_loader
from nimblebert.methods import get_method, list_methods
from nimblebert.methods.fastbert import normalized_entropy
from nimblebert.model import Component, NimbleModel

LABELS = ["negative", "positive"]
# Options that make one optimizer step of every stage quick on a tiny model (no augmentation, one importance
# batch); SSA as a base is the variant whose head predicts (the hybrid one is refused as a base by design).
QUICK: dict[str, list[str]] = {
    "tinybert": ["--student-layers", "2", "--no-augment"],
    "dynabert": ["--widths", "1", "0.5", "--depths", "1", "0.5", "--importance-examples", "8"],
    "trbert": ["--rollouts", "2", "--joint-rollouts", "2"],
    "ssa": ["--variant", "reg"],
}
COMMON = ["--max-steps", "1", "--no-progress", "--max-length", "24", "--batch-size", "8", "--save-every", "1000"]

# The pairs (A, then B on A's folder) that are refused, by rule (README: "How methods stack"):
REFUSED = {
    # order: token reduction and exits sit on the structure they were trained on
    ("trbert", "finetune"), ("trbert", "dynabert"), ("trbert", "ssa"),
    ("fastbert", "finetune"), ("fastbert", "dynabert"), ("fastbert", "ssa"), ("fastbert", "trbert"),
    # once per stack (DynaBERT and plain fine-tuning continue their own folder instead; a static method may recur)
    ("trbert", "trbert"), ("fastbert", "fastbert"), ("ssa", "ssa"),
    # a structure that is still a knob takes only exits (distilled at every width) and its own continuation;
    # the others would retrain it at one size (export a width first)
    ("dynabert", "trbert"), ("dynabert", "finetune"), ("dynabert", "ssa"),
    # NAS-BERT: a supernet's structure is a knob (--arch), so the same rules as DynaBERT's; it is a structure
    ("nasbert", "trbert"), ("nasbert", "finetune"), ("nasbert", "ssa"), ("nasbert", "dynabert"),
    ("nasbert", "nasbert"), ("dynabert", "nasbert"), ("trbert", "nasbert"), ("fastbert", "nasbert"),
}


def quick_train(method: str, base: Path, data: Path, out: Path) -> int:
    return main(["train", method, "--model", str(base), "--data", str(data), "--out", str(out), *COMMON,
                 *QUICK.get(method, [])])


@pytest.fixture(scope="module", autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory):
    """Training writes caches under the data home (teacher outputs; NAS-BERT measures this CPU's latency table for
    its bins): keep them in the module's temporary folder, not in the user's ~/.cache/nimblebert."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIMBLEBERT_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny fine-tuned teacher (4 layers) and the toy task, shared by the module's tests."""
    from conftest import toy_rows

    root = tmp_path_factory.mktemp("compose")
    data = root / "toy"
    data.mkdir()
    for split, n, seed in (("train", 48, 1), ("validation", 16, 2), ("test", 16, 3)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(n, seed)))
    teacher = root / "teacher"
    NimbleModel(tiny_model(layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), make_tokenizer(),
                "finetune", {}, LABELS).save(teacher)
    return {"root": root, "data": data, "teacher": teacher}


@pytest.fixture(scope="module")
def trained(world: dict[str, Path]) -> dict[str, Path]:
    """Every registered method trained once (one step per stage) on the teacher."""
    out = {}
    for method in list_methods():
        folder = world["root"] / f"one-{method}"
        assert quick_train(method, world["teacher"], world["data"], folder) == 0, method
        out[method] = folder
    return out


def batch_of(model: NimbleModel, data: Path, rows: int = 8) -> dict[str, torch.Tensor]:
    task = load_task(str(data), label_names=model.label_names)
    enc = encode(task.test.select(range(rows)), model.tokenizer, 24, task.has_pair)
    batch = next(iter(make_loader(enc, model.tokenizer, rows, shuffle=False)))
    batch.pop("index")
    batch.pop("labels", None)
    return batch


@pytest.mark.parametrize("method", list_methods())
def test_contract_every_method(method: str, world: dict[str, Path], trained: dict[str, Path],
                               tmp_path: Path) -> None:
    """Trains (finite losses in every stage's log), records itself in the stack, save → load gives the same
    logits at every knob setting, and at each knob's ``full`` value the component leaves the model whole."""
    folder = trained[method]
    log = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    model = nimblebert.load(folder)
    assert model.methods[-1] == method and model.stack[-1].source == str(world["teacher"])
    batch = batch_of(model, world["data"])
    model.save(tmp_path / "again")
    again = nimblebert.load(tmp_path / "again")
    settings = [{}] + [{k.name: v} for k in model.knobs() for v in k.sweep[-1:]]
    with torch.no_grad():
        for knobs in settings:
            torch.testing.assert_close(model.infer(batch, **knobs).logits, again.infer(batch, **knobs).logits,
                                       atol=1e-6, rtol=0)
        full = {k.name: k.full for k in model.knobs() if k.full is not None}
        if get_method(method).head_is_classifier(model.stack[-1].config):
            plain = model.hf(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}).logits
            torch.testing.assert_close(model.infer(batch, **full).logits, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("first,second", list(itertools.product(list_methods(), repeat=2)))
def test_every_pair_stacks_or_is_refused_in_one_line(first: str, second: str, world: dict[str, Path],
                                                     trained: dict[str, Path], tmp_path: Path,
                                                     capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / f"{first}-{second}"
    capfd.readouterr()
    code = quick_train(second, trained[first], world["data"], out)
    err = [x for x in capfd.readouterr().err.splitlines() if x.startswith("nimblebert: error")]
    if (first, second) in REFUSED:
        assert code == 2 and len(err) == 1 and not (out / "config.json").exists(), (first, second, err)
        return
    assert code == 0, (first, second, err)
    base, model = nimblebert.load(trained[first]), nimblebert.load(out)
    if get_method(second).new_network:  # a new student: the folder was its teacher
        assert model.methods == [second] and model.stack[0].teacher_stack == base.methods
    elif get_method(second).continues and base.method == second:
        assert model.methods == base.methods  # continued, not stacked twice
    else:
        assert model.methods == [*base.methods, second]
        assert set(base.extras.state_dict()) <= set(model.extras.state_dict())  # kept what the folder had
        names = {k.name for k in model.knobs()}
        assert {k.name for k in base.knobs()} <= names  # every component's knobs accepted together
        with torch.no_grad():
            model.infer(batch_of(model, world["data"]), **{k.name: k.sweep[-1] for k in model.knobs() if k.sweep
                                                          and not (k.name == "depth" and "speed" in names)})


# ---- what components do together in one pass -------------------------------------------------------------------


def stacked(tokenizer, methods: list[str], layers: int = 4, **configs: dict) -> NimbleModel:
    """A tiny model with these components attached (random branches / policies), in order."""
    model = NimbleModel(tiny_model(layers=layers), tokenizer, label_names=["neg", "pos"],
                        stack=[Component(m, dict(configs.get(m, {}))) for m in methods])
    model.attach_all()
    return model.eval()


def sentences(tokenizer, n: int = 6) -> dict[str, torch.Tensor]:
    texts = [" ".join(["good movie the plot was fun"] * (1 + i % 3)) for i in range(n)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_exits_and_token_cuts_in_one_pass_batched_equals_row_by_row() -> None:
    """TR-BERT then FastBERT: rows leave and tokens drop in the same pass; the per-row and per-token state of the
    cut hook follows the rows that leave (LoopState.row_state / token_state), so a batch gives each row exactly
    what it gets alone, and the FLOPs are the sum of both components' (layers at the kept lengths, branches,
    policies)."""
    tok = make_tokenizer()
    model = stacked(tok, ["finetune", "trbert", "fastbert"], fastbert={"branch": "linear"})
    torch.manual_seed(0)
    for policy in model.extras["policies"]:  # keep probabilities spread around the threshold: some tokens go
        torch.nn.init.normal_(policy.linear_2.weight, std=3.0)
    torch.nn.init.normal_(model.extras["branches"][0].out.weight, std=3.0)
    batch = sentences(tok)
    with torch.no_grad():  # a speed between the first branch's least and most sure rows: some leave, some stay
        hidden = model.encoder(**batch, output_hidden_states=True).hidden_states[1]
        unsure = normalized_entropy(model.extras["branches"][0](hidden, batch["attention_mask"]))
        speed = float(unsure.min() + unsure.max()) / 2
        both = model.infer(batch, speed=speed, keep_threshold=0.5)
        for i in range(batch["input_ids"].size(0)):
            length = int(batch["attention_mask"][i].sum())
            row = {k: v[i:i + 1, :length] for k, v in batch.items()}
            alone = model.infer(row, speed=speed, keep_threshold=0.5)
            torch.testing.assert_close(both.logits[i:i + 1], alone.logits, atol=1e-5, rtol=0)
            assert int(both.layers_run[i]) == int(alone.layers_run[0])
            assert both.extras["tokens_kept"][i].tolist() == alone.extras["tokens_kept"][0].tolist()
        cuts_only = model.infer(batch, keep_threshold=0.5)
    left = both.layers_run < 4
    kept = both.extras["tokens_kept"]
    assert bool(left.any()) and bool((~left).any())  # some rows left early, some ran every layer
    assert bool((kept[~left, -1] < batch["attention_mask"].sum(dim=1)[~left]).any())  # and those dropped tokens
    flops, cut_flops = sample_flops(model.encoder, both), sample_flops(model.encoder, cuts_only)
    assert bool((flops[left] < cut_flops[left]).all())  # leaving saves the layers it skipped


def test_exits_on_a_dynamic_width_are_distilled_at_every_width_and_run_together(tmp_path: Path) -> None:
    from nimblebert.methods.fastbert.objective import distill_objective, parent_settings

    tok = make_tokenizer()
    model = stacked(tok, ["finetune", "dynabert", "fastbert"])
    model.stack[1].config["widths"] = [1.0, 0.5]
    assert parent_settings(model) == [{"width": 1.0}, {"width": 0.5}]
    batch = sentences(tok)
    loss = distill_objective(model.train(), batch)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.extras["branches"].parameters())
    assert model.hf.bert.encoder.layer[0].attention.self.query.weight.grad is None  # the backbone stays frozen
    model.eval()
    with torch.no_grad():
        narrow = model.infer(batch, width=0.5, speed=0.0)
        both = model.infer(batch, width=0.5, speed=1.0)
    assert bool((both.layers_run == 1).all()) and all(s.heads == 2 for s in both.steps)  # 4 heads at width 0.5
    assert not torch.allclose(narrow.logits, model.infer(batch).logits)
    with pytest.raises(nimblebert.errors.UserError, match="not both"):
        model.check_knobs({"speed": 0.5, "depth": 0.5})


def test_export_fixes_the_width_keeps_the_exits_live_and_runs_only_kept_heads(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from nimblebert.export import export_model

    tok = make_tokenizer()
    model = stacked(tok, ["finetune", "dynabert", "fastbert"])
    model.save(tmp_path / "dyna-fast")
    report = export_model(tmp_path / "dyna-fast", tmp_path / "w50", "hf", knobs={"width": 0.5})
    assert report["exported_stack"] == "dynabert+fastbert"
    narrow = nimblebert.load(tmp_path / "w50")
    assert narrow.stack[1].fixed == {"width": 0.5, "depth": 1.0} and [k.name for k in narrow.knobs()] == [
        "speed", "patience"]
    assert narrow.encoder.num_heads == 2  # physically narrow: the zeroed heads never run
    batch = sentences(tok)
    with torch.no_grad():
        for speed in (0.0, 0.6, 1.0):
            out = narrow.infer(batch, speed=speed)
            torch.testing.assert_close(out.logits, model.infer(batch, width=0.5, speed=speed).logits, atol=1e-5,
                                       rtol=0)
            assert all(s.heads == 2 for s in out.steps)
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "w50").eval()
        torch.testing.assert_close(plain(**batch).logits, narrow.infer(batch).logits, atol=1e-5, rtol=0)
    with pytest.raises(nimblebert.errors.UserError, match="not fixed at export"):
        export_model(tmp_path / "dyna-fast", tmp_path / "w50s", "hf", knobs={"width": 0.5, "speed": 0.5})
    with pytest.raises(nimblebert.errors.UserError, match="--teacher-only"):
        export_model(tmp_path / "dyna-fast", tmp_path / "onnx", "onnx", knobs={"width": 0.5})
    with pytest.raises(nimblebert.errors.UserError, match="full depth"):
        export_model(tmp_path / "dyna-fast", tmp_path / "d50", "hf", knobs={"width": 0.5, "depth": 0.5})


def test_info_shows_the_stack_and_every_knob(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tok = make_tokenizer()
    stacked(tok, ["finetune", "dynabert", "fastbert"]).save(tmp_path / "m")
    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["method"] for c in info["stack"]] == ["finetune", "dynabert", "fastbert"]
    assert {k["name"] for k in info["knobs"]} == {"width", "depth", "speed", "patience"}
    assert main(["info", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    assert "dynabert (structure)" in text and "--speed [0.0, 1.0]" in text
    assert main(["info", str(tmp_path / "missing")]) == 2


def test_a_method_trained_on_an_exported_width_keeps_running_only_the_kept_heads(tmp_path: Path) -> None:
    # The export records which heads the weights hold (the dropped ones are zeros); a method stacked on the exported
    # folder must save that record again, or the folder it writes runs every head, the zeroed ones included.
    from nimblebert.export import export_model
    from nimblebert.model import from_base

    tok = make_tokenizer()
    stacked(tok, ["finetune", "dynabert"]).save(tmp_path / "dyna")
    export_model(tmp_path / "dyna", tmp_path / "w50", "hf", knobs={"width": 0.5})
    on_top = from_base(str(tmp_path / "w50"), ["neg", "pos"], "fastbert")
    assert on_top.encoder.num_heads == 2
    on_top.save(tmp_path / "w50-fast")
    back = nimblebert.load(tmp_path / "w50-fast")
    assert back.methods == ["finetune", "dynabert", "fastbert"]
    assert back.encoder.num_heads == 2 and back.stack[1].config["heads_per_layer"] == [2] * 4
    batch = sentences(tok)
    with torch.no_grad():
        out = back.infer(batch, speed=0.0)
        assert all(s.heads == 2 for s in out.steps)
        torch.testing.assert_close(out.logits, nimblebert.load(tmp_path / "w50").infer(batch).logits, atol=1e-5,
                                   rtol=0)
