"""SSA (Chen/Kou et al. 2020): the probing rule, the labels, the pooling math, the loss, training through the
trainer and the CLI, on tiny random models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tokenizer, tiny_model, toy_rows
from transformers import AutoModelForSequenceClassification

import nimblebert
from nimblebert.cli.main import main
from nimblebert.data import encode
from nimblebert.errors import UserError
from nimblebert.methods.ssa import (
    SsaConfig,
    aug_ratio,
    importance_pooling,
    mask_positions,
    objective,
    probe_epoch,
    token_labels,
)
from nimblebert.model import NimbleModel, from_base

SPECIAL = {0, 2, 3, 4}  # [PAD] [CLS] [SEP] [MASK] in conftest's vocabulary


def _model(variant: str = "hybrid", **cfg) -> NimbleModel:
    model = NimbleModel(tiny_model(layers=2), make_tokenizer(), "ssa", {"variant": variant, **cfg}, ["neg", "pos"])
    model.method_spec.attach(model)
    return model


def test_aug_ratio_schedule_is_the_official_one() -> None:
    cfg = SsaConfig()
    assert [aug_ratio(e, cfg) for e in range(7)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])


def test_masking_spans_stay_in_their_quartile_and_skip_special_tokens() -> None:
    ids = [2, *range(10, 30), 3, *range(40, 52), 3]  # [CLS] a (20 tokens) [SEP] b (12 tokens) [SEP]
    seg_a, seg_b = list(range(1, 21)), list(range(22, 34))
    cfg = SsaConfig(aug_threshold=0.3)
    rng = random.Random(0)
    spans = set()
    for _ in range(300):
        masked = mask_positions(ids, SPECIAL, cfg, rng)
        assert all(ids[i] not in SPECIAL for i in masked)
        for seg in (seg_a, seg_b):
            quart = [set(seg[round(len(seg) * q / 4): round(len(seg) * (q + 1) / 4)]) for q in range(4)]
            inside = [i for i in masked if i in seg]
            # every maximal run of masked positions lies within one quartile or across adjacent events
            for i in inside:
                assert any(i in qs for qs in quart)
        runs, run = [], 1
        for a, b in zip(masked, masked[1:], strict=False):
            if b == a + 1:
                run += 1
            else:
                runs.append(run)
                run = 1
        if masked:
            runs.append(run)
        spans.update(runs)
    assert {1, 2, 3} <= spans  # all three span lengths occur
    # u > 0.7 -> 3 tokens: with rm thresholds at 0 every event masks 3 tokens (clipped to its quartile)
    always3 = SsaConfig(aug_threshold=1.0, rm_threshold=0.0, rm_low=0.0)
    masked = mask_positions([2, *range(10, 22), 3], SPECIAL, always3, random.Random(1))
    assert len(masked) >= 3
    assert mask_positions([2, 3], SPECIAL, always3, random.Random(1)) == []


def test_token_labels_zero_masked_one_text_ignore_special() -> None:
    ids = [2, 10, 11, 12, 3, 0, 0]
    assert token_labels(ids, SPECIAL, [2]) == [-100, 1, 0, 1, -100, -100, -100]
    assert token_labels(ids, SPECIAL, []) == [-100, 1, 1, 1, -100, -100, -100]


def test_probe_keeps_only_variants_that_leave_a_correct_prediction_unchanged(monkeypatch) -> None:
    model = _model()
    tok = model.tokenizer
    rows = datasets.Dataset.from_dict({"text": ["good movie plot story actor"] * 20, "label": [0, 1] * 10})
    enc = encode(rows, tok, 16, False)

    # A fake model: predicts 0 unless a [MASK] sits at position 1, then 1. Gold alternates 0/1, so only the
    # even rows are right, and only variants that leave position 1 alone keep the prediction.
    def fake_infer(batch, **_):
        logits = torch.zeros(batch["input_ids"].size(0), 2)
        logits[:, 0] = 1.0
        logits[batch["input_ids"][:, 1] == tok.mask_token_id] = torch.tensor([0.0, 1.0])
        return type("Out", (), {"logits": logits})()

    monkeypatch.setattr(model, "infer", fake_infer)
    cfg = SsaConfig(aug_threshold=0.5, aug_ratio_step=0.2)
    train, report = probe_epoch(model, enc, 2, cfg, seed=0)  # epoch 2: 40% of 20 = 8 wanted
    assert len(train) == 20 and report["wanted"] == 8
    assert report["probed"] <= 10  # at most the 10 correctly predicted rows
    probed = [r for r in train if 0 in r["token_labels"]]
    assert len(probed) == report["probed"] > 0
    for r in probed:
        assert r["labels"] == 0  # only rows predicted right
        assert r["token_labels"][1] == 1  # position 1 was never masked in a kept variant
        assert r["input_ids"] == enc[0]["input_ids"]  # trained on the original (unmasked) text
    originals = [r for r in train if 0 not in r["token_labels"]]
    assert all(set(r["token_labels"]) == {-100, 1} for r in originals)
    epoch0, report0 = probe_epoch(model, enc, 0, cfg, seed=0)
    assert report0["probed"] == 0 and all(0 not in r["token_labels"] for r in epoch0)


def test_probe_results_are_cached_for_resume(tmp_path: Path) -> None:
    model = _model()
    enc = encode(datasets.Dataset.from_list(toy_rows(16, 0)).map(
        lambda r: {"label": int(r["label"] == "positive")}), model.tokenizer, 16, False)
    first, _ = probe_epoch(model, enc, 1, SsaConfig(), 0, tmp_path / "e1")
    torch.nn.init.normal_(model.extras["token_head"].decoder.weight)  # a changed model...
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(torch.randn_like(p))
    again, _ = probe_epoch(model, enc, 1, SsaConfig(), 0, tmp_path / "e1")
    assert first.to_list() == again.to_list()  # ...reads the cached epoch, not a new probe


def test_importance_pooling_by_hand() -> None:
    hidden = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, 5.0]]])
    # importance a_t = softmax(logits)[1]; choose logits so a = [.., 0.9, 0.2, 0.6, ..]
    a = torch.tensor([[0.5, 0.9, 0.2, 0.6, 0.7]])
    logits = torch.stack([torch.zeros_like(a), torch.log(a / (1 - a))], dim=-1)
    text = torch.tensor([[False, True, True, True, False]])  # [CLS] ... [SEP]
    text_before = text.clone()
    pooled, w = importance_pooling(hidden, logits, text, threshold=0.3)
    expected_w = torch.softmax(torch.tensor([0.9, 0.6]), dim=0)  # softmax of the probabilities themselves
    assert torch.allclose(w[0, [1, 3]], expected_w, atol=1e-6) and w[0, [0, 2, 4]].abs().max() == 0
    assert torch.allclose(pooled[0], expected_w[0] * hidden[0, 1] + expected_w[1] * hidden[0, 3], atol=1e-6)
    assert torch.equal(text, text_before)  # the caller's mask is not written to
    # every text token below the threshold: fall back to all text tokens
    _, w_low = importance_pooling(hidden, logits, text, threshold=0.95)
    assert torch.allclose(w_low[0, [1, 2, 3]], torch.softmax(torch.tensor([0.9, 0.2, 0.6]), 0), atol=1e-6)
    # no text token at all: zero pooling, no NaN
    pooled0, w0 = importance_pooling(hidden, logits, torch.zeros_like(text), threshold=0.3)
    assert torch.equal(pooled0, torch.zeros_like(pooled0)) and not torch.isnan(w0).any()


def test_hybrid_output_mixes_cls_and_pooling_with_lambda() -> None:
    from nimblebert.methods.ssa.heads import forward, pooled_cls, special_mask

    model = _model(cls_weight=0.25).eval()
    batch = {k: v for k, v in model.tokenizer(["good movie", "an awful dull plot"], padding=True,
                                               return_tensors="pt").items()}
    out, token_logits = forward(model, batch)
    hidden = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           classify=False).extras["last_hidden"]
    c, _ = importance_pooling(hidden, token_logits, special_mask(model, batch["input_ids"],
                                                                 batch["attention_mask"]), 0.3)
    expected = model.extras["classifier"](0.25 * pooled_cls(model, hidden) + 0.75 * c)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert (out.extras["extra_flops"] > 0).all()


def test_loss_weights_and_ignore_index() -> None:
    from nimblebert.methods.ssa.heads import forward

    model = _model(aug_loss_weight=0.3).eval()
    batch = dict(model.tokenizer(["good movie plot", "awful"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1:4] = torch.tensor([1, 0, 1])
    labels[1, 1] = 1
    batch["token_labels"] = labels
    parts = objective(model, batch)
    out, tl = forward(model, batch)
    task = F.cross_entropy(out.logits, batch["labels"])
    keep = labels >= 0
    token = F.cross_entropy(tl[keep], labels[keep])
    assert torch.allclose(parts["loss"], 0.7 * task + 0.3 * token, atol=1e-6)


def test_reg_variant_is_a_plain_transformers_model(tmp_path: Path) -> None:
    model = _model("reg").eval()
    model.save(tmp_path / "reg")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reg").eval()
    loaded = nimblebert.load(tmp_path / "reg")
    batch = dict(model.tokenizer(["good movie", "an awful dull plot"], padding=True, return_tensors="pt"))
    assert torch.allclose(loaded.infer(batch).logits, plain(**batch).logits, atol=1e-5)
    from_base(str(tmp_path / "reg"), ["neg", "pos"], "fastbert")  # usable as a teacher
    hybrid = _model("hybrid")
    hybrid.save(tmp_path / "hybrid")
    with pytest.raises(UserError, match="--variant reg"):
        from_base(str(tmp_path / "hybrid"), ["neg", "pos"], "fastbert")
    reloaded = nimblebert.load(tmp_path / "hybrid")
    assert torch.allclose(reloaded.infer(batch).logits, hybrid.eval().infer(batch).logits, atol=1e-6)


def _toy_folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for split, (n, seed) in {"train": (48, 0), "validation": (16, 1), "test": (16, 2)}.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(n, seed)))
    return data


def test_cli_trains_with_probing_every_epoch_and_evaluates(tmp_path: Path, capsys) -> None:
    data = _toy_folder(tmp_path)
    base = NimbleModel(tiny_model(layers=2), make_tokenizer(), "finetune", {}, ["negative", "positive"])
    base.save(tmp_path / "base")
    out = tmp_path / "ssa"
    args = ["train", "ssa", "--model", str(tmp_path / "base"), "--data", str(data), "--out", str(out),
            "--max-length", "16", "--batch-size", "8", "--epochs", "3", "--no-progress", "--lr", "1e-3",
            "--save-every", "4"]
    assert main(args) == 0
    probes = [json.loads(x) for x in (out / "probe_log.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in probes] == [0, 1, 2]
    assert [p["wanted"] for p in probes] == [0, round(0.2 * 48), round(0.4 * 48)]
    assert probes[2]["probed_rows"] >= 48  # the originals' pass plus the masked variants
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(data), "--max-length", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["flops_per_sample"] > 0
    assert main(["train", "ssa", "--model", str(tmp_path / "base"), "--data", str(data), "--out",
                 str(tmp_path / "bad"), "--cls-weight", "1.5"]) == 2
    assert "--cls-weight 1.5 is out of range" in capsys.readouterr().err


def test_killed_ssa_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from nimblebert.data import load_task
    from nimblebert.train.loop import StopTraining, train
    from nimblebert.train.stages import TrainData, TrainOptions

    data = _toy_folder(tmp_path)
    base = NimbleModel(tiny_model(layers=2), make_tokenizer(), "finetune", {}, ["negative", "positive"])
    base.save(tmp_path / "base")

    def run(out: Path, stop_after: int | None = None, resume: bool = False):
        task = load_task(str(data))
        torch.manual_seed(0)  # the new heads' initialisation (the CLI seeds it the same way)
        model = from_base(str(tmp_path / "base"), task.label_names, "ssa", SsaConfig(aug_threshold=0.3))
        enc = {s: encode(getattr(task, s), model.tokenizer, 16, False) for s in ("train", "validation")}
        opts = TrainOptions(out=str(out), epochs=3, batch_size=8, lr=1e-3, save_every=3, progress=False,
                            resume=resume)
        stages = model.method_spec.stages(model, opts, TrainData(task, enc["train"], enc["validation"]))
        stages[0].select = "last"
        train(model, stages, enc["train"], enc["validation"], opts, stop_after=stop_after)

    run(tmp_path / "full")
    with pytest.raises(StopTraining):
        run(tmp_path / "killed", stop_after=8)  # mid-epoch 1 (6 steps an epoch): epoch 1's probe is cached
    run(tmp_path / "killed", resume=True)
    a, b = nimblebert.load(tmp_path / "full").state_dict(), nimblebert.load(tmp_path / "killed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_position_token_head_uses_each_positions_decoder(tmp_path: Path) -> None:
    from nimblebert.methods.ssa.heads import forward

    model = _model(share_weight=0).eval()
    head = model.extras["token_head"]
    assert head.weight.shape == (model.hf.config.max_position_embeddings, 2, 32)
    batch = dict(model.tokenizer(["good movie plot", "awful"], padding=True, return_tensors="pt"))
    _, logits = forward(model, batch)
    hidden = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           classify=False).extras["last_hidden"]
    h = head.norm(F.gelu(head.dense(hidden)))
    for t in range(h.size(1)):
        assert torch.allclose(logits[:, t], h[:, t] @ head.weight[t].T + head.bias[t], atol=1e-6)
    assert not torch.allclose(head.weight[0], head.weight[1])  # separate decoders, not one copied
    model.save(tmp_path / "pp")
    loaded = nimblebert.load(tmp_path / "pp")
    assert torch.allclose(loaded.infer(batch).logits, model.infer(batch).logits, atol=1e-6)
    with pytest.raises(UserError, match="--share-weight 2"):
        SsaConfig(share_weight=2)
