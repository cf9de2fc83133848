"""TR-BERT (Ye et al., NAACL 2021): policies, token dropping, FLOPs, REINFORCE, stages, save/load and the CLI,
on tiny random BERTs."""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_model
from transformers import AutoModelForSequenceClassification, BertTokenizerFast

import nimblebert
from nimblebert.cli.main import main
from nimblebert.core.flops import head_flops, layer_flops, sample_flops
from nimblebert.data import encode, make_loader
from nimblebert.errors import UserError
from nimblebert.methods import get_method
from nimblebert.methods.trbert import (
    CutHook,
    RLObjective,
    TrBertConfig,
    default_cuts,
    forced_tokens,
    guide_target,
    residual_scores,
    selection_nll,
    stages,
    top_n_mask,
)
from nimblebert.methods.trbert.objective import cached_scores
from nimblebert.model import NimbleModel
from nimblebert.train.loop import train
from nimblebert.train.stages import TrainData, TrainOptions

NEUTRAL = "the a movie film plot actor story is was and it this that script acting ending".split()


@pytest.fixture
def words() -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def trbert_model(tokenizer, layers: int = 4, **cfg) -> NimbleModel:
    model = NimbleModel(tiny_model(layers=layers), tokenizer, "trbert", cfg, ["neg", "pos"])
    get_method("trbert").attach(model)
    return model.eval()


def set_policy(model: NimbleModel, bias: float) -> None:
    """Every policy outputs the constant σ(bias)."""
    for policy in model.extras["policies"]:
        torch.nn.init.zeros_(policy.linear_2.weight)
        torch.nn.init.constant_(policy.linear_2.bias, bias)


def toy(n: int, seed: int) -> dict[str, list]:
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        w = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 14))]
        w.insert(rng.randrange(len(w) + 1), "good" if i % 2 else "awful")
        texts.append(" ".join(w))
        labels.append(i % 2)
    return {"text": texts, "label": labels}


def encoded(tokenizer, n: int = 24, seed: int = 0):
    return encode(datasets.Dataset.from_dict(toy(n, seed)), tokenizer, 24, False)


def batch_of(tokenizer, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = next(iter(make_loader(encoded(tokenizer, n, seed), tokenizer, n, shuffle=False)))
    return batch


def options(tmp_path, name: str, **kw) -> TrainOptions:
    kw = {"max_steps": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "eval_every": 10_000,
          "save_every": 10_000, "log_every": 1, **kw}
    return TrainOptions(out=str(tmp_path / name), **kw)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_cuts_and_heuristic_target_follow_the_official_placement(words) -> None:
    assert default_cuts(12) == [1, 6] and default_cuts(6) == [1, 3] and default_cuts(4) == [1, 2]
    assert default_cuts(2) == [1] and default_cuts(1) == []
    assert guide_target(12, [1, 6]) == 9 and guide_target(6, [1, 3]) == 5 and guide_target(2, [1]) == 2
    model = trbert_model(words, layers=4)
    assert model.method_config["cuts"] == [1, 2] and len(model.extras["policies"]) == 2
    with pytest.raises(UserError, match="before the last layer"):
        trbert_model(words, layers=4, cuts=[4])
    with pytest.raises(UserError, match="penalty-length"):
        TrBertConfig(penalty_length="max")


def test_policy_keeps_cls_and_sep_never_padding_and_tokens_really_leave(words) -> None:
    model = trbert_model(words)
    batch = batch_of(words)
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.min()) < batch["input_ids"].size(1)  # the batch has padding
    with torch.no_grad():
        set_policy(model, 20.0)  # p ≈ 1 everywhere: every real token stays, no padding comes in
        out = model.infer(batch, keep_threshold=0.5)
        assert torch.equal(out.extras["tokens_kept"], lengths[:, None].expand(-1, 2))
        set_policy(model, -20.0)  # p ≈ 0: only [CLS] and [SEP] stay
        out = model.infer(batch, keep_threshold=0.5)
    assert torch.equal(out.extras["tokens_kept"], torch.full((6, 2), 2))
    # Tokens really leave: the layers after the first cut run on 2 tokens per row, in a 2-wide tensor.
    assert [s.lengths.tolist() for s in out.steps] == [lengths.tolist()] + [[2] * 6] * 3
    # Which two: [CLS] and [SEP], found again in the last hidden state's first positions.
    forced = forced_tokens(batch, [words.cls_token_id, words.sep_token_id], False)
    assert torch.equal(forced.sum(1), torch.full((6,), 2))
    assert forced[:, 0].all()


def test_pairs_can_keep_the_first_segment(words) -> None:
    enc = words(["the movie", "a plot"], ["is good and fun", "was bad"], padding=True, return_tensors="pt")
    batch = dict(enc)
    forced = forced_tokens(batch, [words.cls_token_id, words.sep_token_id], keep_first_segment=True)
    first = (batch["token_type_ids"] == 0) & batch["attention_mask"].bool()
    assert torch.equal(forced & batch["attention_mask"].bool(), first | (batch["input_ids"] == words.sep_token_id))


def test_threshold_off_is_the_plain_transformers_model(words, tmp_path) -> None:
    model = trbert_model(words)
    batch = batch_of(words)
    model.save(tmp_path / "m")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        golden = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).logits
        out = model.infer(batch, keep_threshold=0.0)
    torch.testing.assert_close(out.logits, golden, atol=1e-5, rtol=0)
    assert "extra_flops" not in out.extras and out.layers_run.tolist() == [4] * 6


def test_batched_inference_equals_per_row_inference(words) -> None:
    torch.manual_seed(3)
    model = trbert_model(words)
    for policy in model.extras["policies"]:  # a policy whose decisions differ from token to token
        torch.nn.init.normal_(policy.linear_1.weight, std=2.0)
        torch.nn.init.normal_(policy.linear_2.weight, std=2.0)
    batch = batch_of(words, 8, seed=5)
    with torch.no_grad():
        out = model.infer(batch, keep_threshold=0.5)
        kept = out.extras["tokens_kept"]
        assert len(set(kept[:, -1].tolist())) > 1  # rows keep different numbers of tokens
        for r in range(8):
            n = int(batch["attention_mask"][r].sum())
            row = {k: batch[k][r: r + 1, :n] for k in ("input_ids", "attention_mask", "token_type_ids")}
            alone = model.infer(row, keep_threshold=0.5)
            torch.testing.assert_close(alone.logits[0], out.logits[r], atol=1e-5, rtol=0)
            assert torch.equal(alone.extras["tokens_kept"][0], kept[r])


def test_keep_fraction_reaches_every_saving_where_a_threshold_is_a_cliff(words) -> None:
    """A policy whose probabilities all sit at σ(2) ≈ 0.88: thresholds 0.3-0.8 keep every token, 0.9 keeps none
    (the cliff issue 20 saw). ``keep_fraction`` keeps the policy's top share of each row's selectable tokens at each
    cut, whatever the probabilities' scale; 1 is the full model."""
    model = trbert_model(words)
    set_policy(model, 2.0)
    batch = batch_of(words, 8, seed=5)
    forced = forced_tokens(batch, [2, 3], False)
    selectable = (batch["attention_mask"].bool() & ~forced).sum(dim=1)
    with torch.no_grad():
        assert torch.equal(model.infer(batch, keep_threshold=0.3).extras["tokens_selected"][:, 0], selectable)
        assert int(model.infer(batch, keep_threshold=0.9).extras["tokens_selected"].sum()) == 0
        for fraction in (0.8, 0.5, 0.2):
            out = model.infer(batch, keep_fraction=fraction)
            first = torch.ceil(fraction * selectable.float()).long()
            assert torch.equal(out.extras["tokens_selected"][:, 0], first)  # per row, per cut
            assert torch.equal(out.extras["tokens_selected"][:, 1], torch.ceil(fraction * first.float()).long())
        full = model.infer(batch, keep_fraction=1.0)
        torch.testing.assert_close(full.logits, model.infer(batch, keep_threshold=0.0).logits, atol=0, rtol=0)


def test_random_and_first_baselines_keep_the_policys_counts(words) -> None:
    torch.manual_seed(1)
    model = trbert_model(words)
    for policy in model.extras["policies"]:
        torch.nn.init.normal_(policy.linear_2.weight, std=3.0)
    batch = batch_of(words, 8)
    with torch.no_grad():
        ref = model.infer(batch, keep_threshold=0.5)
        for mode in ("random", "first"):
            out = model.infer(batch, keep_threshold=0.5, drop_mode=mode)
            # Every cut keeps exactly the policy's counts (taken from the policy's own pass), so the baselines
            # run the same tokens per layer: the same FLOPs.
            assert torch.equal(out.extras["tokens_kept"], ref.extras["tokens_kept"])
            assert torch.equal(sample_flops(model.encoder, out), sample_flops(model.encoder, ref))
        with pytest.raises(UserError, match="drop-mode"):
            model.infer(batch, drop_mode="best")
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0, 9.0]])
    allowed = torch.tensor([[False, True, True, True, False]])
    assert top_n_mask(scores, torch.tensor([2]), allowed).tolist() == [[False, True, False, True, False]]


def test_flops_count_the_kept_tokens_and_the_policies(words) -> None:
    model = trbert_model(words)
    batch = batch_of(words, 1)
    n = int(batch["attention_mask"].sum())
    enc, d = model.encoder, model.hf.config.hidden_size

    def layer(t: int) -> float:
        return float(layer_flops(t, d, enc.num_heads, enc.head_dim, enc.ffn_size))

    per_token = 2 * d * 32 + 2 * 32  # policy: Linear(d→32) + Linear(32→1)
    with torch.no_grad():
        set_policy(model, -20.0)  # keep [CLS] + [SEP]: layer 1 at n tokens, layers 2–4 at 2
        out = model.infer(batch)
        manual = layer(n) + 3 * layer(2) + head_flops(enc) + per_token * (n + 2)
        assert float(sample_flops(enc, out)[0]) == pytest.approx(manual)
        set_policy(model, 20.0)  # keep all: the full model plus the two policies
        out = model.infer(batch)
        manual = 4 * layer(n) + head_flops(enc) + per_token * 2 * n
        assert float(sample_flops(enc, out)[0]) == pytest.approx(manual)


def test_selection_nll_matches_a_hand_computation() -> None:
    p = torch.tensor([[0.9, 0.2, 0.6, 0.5]])
    a = torch.tensor([[True, False, False, True]])
    selectable = torch.tensor([[False, True, True, False]])  # position 0 forced, position 3 padding
    hand = -(math.log(1 - 0.2 + 1e-6) + math.log(1 - 0.6 + 1e-6)) / 2
    assert float(selection_nll(p, a, selectable)[0]) == pytest.approx(hand, rel=1e-6)


def test_reinforce_moves_the_keep_probability_with_the_reward(words) -> None:
    """Keeping rewarded -> p rises; the RL objective's own reward with a large α -> p falls."""
    torch.manual_seed(0)
    model = trbert_model(words)
    batch = batch_of(words, 6)
    forced = forced_tokens(batch, [words.cls_token_id, words.sep_token_id], False)
    k = 8
    rep = {key: batch[key].repeat_interleave(k, 0) for key in ("input_ids", "attention_mask", "token_type_ids")}

    def mean_p() -> float:
        with torch.no_grad():
            hidden = model.encoder(batch["input_ids"], batch["attention_mask"], output_hidden_states=True,
                                   classify=False).hidden_states[1]
            return float(model.extras["policies"][0](hidden)[batch["attention_mask"].bool()].mean())

    opt = torch.optim.SGD(model.extras["policies"].parameters(), lr=0.5)
    before = mean_p()
    for _ in range(5):
        hook = CutHook(model.extras["policies"], [1, 2], forced.repeat_interleave(k, 0), sample=True,
                       detach_input=True)
        with torch.no_grad():
            model.encoder(rep["input_ids"], rep["attention_mask"], rep["token_type_ids"], hooks=[hook])
        reward = hook.kept[:, 0].float()  # keeping is rewarded
        baseline = reward.view(-1, k).mean(1).repeat_interleave(k)
        loss = ((reward - baseline) * hook.nll).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_p() > before + 0.02

    model = trbert_model(words)
    objective = RLObjective(TrBertConfig(alpha=20.0, rollouts=8, guide_rate=0.0), joint=False)
    opt = torch.optim.SGD(model.extras["policies"].parameters(), lr=0.5)
    before = mean_p()
    for _ in range(5):
        parts = objective(model, batch)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    assert mean_p() < before - 0.02


def test_penalty_denominator_is_each_rows_real_length(words) -> None:
    model = trbert_model(words)
    set_policy(model, 20.0)  # keep everything: the kept fraction is exactly 1 of the real length
    batch = batch_of(words, 6)
    assert int(batch["attention_mask"].sum(1).min()) < batch["input_ids"].size(1)
    real = RLObjective(TrBertConfig(rollouts=2, guide_rate=0.0), joint=False)(model, batch)
    padded = RLObjective(TrBertConfig(rollouts=2, guide_rate=0.0, penalty_length="padded"), joint=False)(model, batch)
    assert float(real["kept_fraction"]) == pytest.approx(1.0)
    assert float(padded["kept_fraction"]) < 0.99  # the official rule: short rows look cheaper


def test_guided_rollout_keeps_the_heuristics_top_n(words) -> None:
    model = trbert_model(words)
    set_policy(model, 0.0)  # p = 0.5: n = round(Σ p) = round(selectable / 2)
    batch = batch_of(words, 2)
    forced = forced_tokens(batch, [words.cls_token_id, words.sep_token_id], False)
    selectable = batch["attention_mask"].bool() & ~forced
    scores = [torch.rand(batch["input_ids"].shape), torch.rand(batch["input_ids"].shape)]
    hook = CutHook(model.extras["policies"], [1, 2], forced, sample=True, guide_rows=torch.tensor([True, False]),
                   guide_scores=scores)
    with torch.no_grad():
        model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], hooks=[hook])
    n = int(torch.round(selectable[0].sum() * 0.5))
    assert int(hook.kept[0, 0]) == 2 + n
    assert float(hook.nll[0].detach()) > 0  # the guided action's log-likelihood enters the same objective


def test_residual_gradient_scores_match_an_independent_computation(words) -> None:
    model = trbert_model(words)
    batch = batch_of(words, 4)
    scores = residual_scores(model, batch, [1, 2], 3)
    assert scores.shape == (2, 4, batch["input_ids"].size(1))
    assert (scores >= 0).all() and (scores[:, ~batch["attention_mask"].bool()] == 0).all()
    hf = model.hf.eval()
    out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    h = out.hidden_states
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out.logits, batch["labels"], reduction="sum"),
                                  h[3])
    for c, src in enumerate((1, 2)):
        expected = ((h[3] - h[src]) * grad).sum(-1).abs() * batch["attention_mask"]
        torch.testing.assert_close(scores[c], expected.detach(), atol=1e-5, rtol=1e-4)


def test_residual_scores_are_cached_per_example(words, tmp_path) -> None:
    model = trbert_model(words)
    enc = encoded(words, 10)
    first = cached_scores(model, enc, [1, 2], 3, tmp_path, 4, progress=False)
    assert len(list(tmp_path.glob("scores-*.npz"))) == 1
    again = cached_scores(model, enc, [1, 2], 3, tmp_path, 4, progress=False)
    lengths = [len(r) for r in enc["input_ids"]]
    assert [a.shape for a in first] == [(2, n) for n in lengths]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    batch = next(iter(make_loader(enc, words, 10, shuffle=False)))
    direct = residual_scores(model, batch, [1, 2], 3)
    for r, i in enumerate(batch["index"].tolist()):
        np.testing.assert_allclose(first[i], direct[:, r, : lengths[i]].numpy(), atol=1e-5, rtol=1e-4)


def test_rl_stage_trains_only_the_policies_and_the_model_round_trips(words, tmp_path) -> None:
    model = trbert_model(words, finetune="no", joint_epochs=-1.0, rollouts=2, guide_rate=1.0,
                         cache_dir=str(tmp_path / "cache"))
    train_enc, val_enc = encoded(words, 16, 0), encoded(words, 8, 1)
    plan = stages(model, options(tmp_path, "rl"), TrainData(None, train_enc, val_enc))
    assert [s.name for s in plan] == ["rl"] and plan[0].select == "last"
    bert, policies = snapshot(model.hf), snapshot(model.extras)
    train(model, plan, train_enc, val_enc, options(tmp_path, "rl"))
    assert same(bert, snapshot(model.hf))  # BERT bit-identical
    assert not same(policies, snapshot(model.extras))
    log = [json.loads(x) for x in (tmp_path / "rl" / "train_log.jsonl").read_text().splitlines()]
    assert [r["guided"] for r in log if "guided" in r] == [1.0, 1.0] and all(
        math.isfinite(r["loss"]) for r in log if "loss" in r)

    loaded = nimblebert.load(tmp_path / "rl")
    assert loaded.method_config["cuts"] == [1, 2]
    batch = batch_of(words, 6)
    with torch.no_grad():
        for threshold in (0.0, 0.3, 0.5, 0.7):
            a, b = model.eval().infer(batch, keep_threshold=threshold), loaded.infer(batch, keep_threshold=threshold)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
            assert torch.equal(a.extras["tokens_kept"], b.extras["tokens_kept"])


def test_stages_follow_the_recipe(words, tmp_path) -> None:
    teacher = NimbleModel(tiny_model(layers=4), words, "finetune", {}, ["neg", "pos"])
    teacher.save(tmp_path / "teacher")
    model = nimblebert.model.from_base(str(tmp_path / "teacher"), ["neg", "pos"], "trbert", {})
    names = [s.name for s in stages(model, options(tmp_path, "x", model=str(tmp_path / "teacher")))]
    assert names == ["rl", "joint"]
    plan = stages(model, options(tmp_path, "x", model="plain", max_steps=None, epochs=2.0, batch_size=4),
                  TrainData(None, encoded(words, 16), None))
    assert [s.name for s in plan] == ["finetune", "rl", "joint"]
    assert plan[1].objective.guide_steps == 4  # 0.5 of 2 epochs × 4 batches


def test_cli_train_evaluate_predict(tmp_path, words, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split, (n, seed) in {"train": (24, 0), "validation": (8, 1), "test": (8, 2)}.items():
        rows = toy(n, seed)
        datasets.Dataset.from_dict({"text": rows["text"], "label": [("neg", "pos")[y] for y in rows["label"]]}
                                   ).to_csv(str(data / f"{split}.csv"), index=False)
    base = tmp_path / "base"
    tiny_model(layers=4).save_pretrained(base)
    words.save_pretrained(base)
    out = tmp_path / "tr"
    common = ["--data", str(data), "--max-length", "24"]
    assert main(["train", "trbert", "--model", str(base), "--out", str(out), *common, "--max-steps", "2",
                 "--batch-size", "8", "--no-progress", "--rollouts", "2", "--alpha", "0.5",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert set(summary["stages"]) == {"finetune", "rl", "joint"}
    capsys.readouterr()

    assert main(["evaluate", str(out), *common, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["mean_tokens_kept"]) == 2 and result["knobs"] == {"keep_threshold": 0.5, "keep_fraction": 0.0,
                                                                        "drop_mode": "policy"}
    assert result["mean_tokens_kept"][1] <= result["mean_tokens_kept"][0] <= result["mean_tokens_in"]
    assert main(["evaluate", str(out), *common, "--json", "--keep-threshold", "0"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["mean_tokens_kept"] == [full["mean_tokens_in"]] * 2
    assert full["flops_per_sample"] >= result["flops_per_sample"]
    assert main(["evaluate", str(out), *common, "--json", "--drop-mode", "random"]) == 0
    assert json.loads(capsys.readouterr().out)["knobs"]["drop_mode"] == "random"

    texts = tmp_path / "in.jsonl"
    texts.write_text('"a good movie and the plot"\n{"text": "an awful plot"}\n')
    assert main(["predict", str(out), "--input", str(texts), "--keep-threshold", "0.9"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all("tokens_kept" in x for x in lines)
    assert main(["evaluate", str(out), *common, "--keep-threshold", "2"]) == 2  # one clear line, exit code 2
    assert "--keep-threshold 2.0 is out of range" in capsys.readouterr().err
