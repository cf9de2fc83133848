"""The one Teacher of nimblebert.distill: what each method reads of it, on tiny random models."""

from __future__ import annotations

import torch
from conftest import make_tokenizer, tiny_model

from nimblebert.distill.teacher import SnapshotTeacher, Teacher
from nimblebert.model import NimbleModel

TEXTS = ["the movie was good and fun", "a bad , boring film that never ends , sadly", "fine"]


def batch_of(texts: list[str]) -> dict[str, torch.Tensor]:
    batch = dict(make_tokenizer()(texts, padding=True, return_tensors="pt"))
    assert not bool(batch["attention_mask"].all())  # the tests need padding
    return batch


def reference(hf: torch.nn.Module, batch: dict[str, torch.Tensor]):
    with torch.no_grad():
        return hf(**batch, output_hidden_states=True)


def test_dynabert_form_gives_logits_and_every_hidden_state_with_padding_kept() -> None:
    hf = tiny_model(layers=3, seed=1)
    batch = batch_of(TEXTS)
    teacher = Teacher(hf)
    out = teacher(None, batch)  # type: ignore[arg-type]  # a fixed teacher does not read the student
    ref = reference(hf, batch)
    assert len(out.hidden) == 4 and out.scores == []  # embeddings + 3 layers; no scores asked for
    real = batch["attention_mask"].bool()
    for mine, theirs in zip(out.hidden, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=0)
    # Padding is left as the encoder gives it (DynaBERT's unmasked MSE reads it): the embeddings there are not zeroed.
    torch.testing.assert_close(out.hidden[0][~real], ref.hidden_states[0][~real], atol=1e-5, rtol=0)
    assert bool((out.hidden[0][~real] != 0).any())
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in hf.parameters()) and not hf.training
    assert teacher.examples_run == len(TEXTS)


def test_tinybert_form_zeroes_padding_and_otherwise_agrees_with_the_dynabert_form() -> None:
    teacher = Teacher(tiny_model(layers=2, seed=2))
    batch = batch_of(TEXTS)
    kept = teacher.run(batch, [0, 1, 2], [], logits=False, zero_pad=False)
    zeroed = teacher.run(batch, [0, 1, 2], [1], logits=False)
    assert kept.logits is None and zeroed.logits is None and len(zeroed.scores) == 1
    real = batch["attention_mask"].bool()
    for a, b in zip(kept.hidden, zeroed.hidden, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
        assert bool((b[~real] == 0).all())


def test_snapshot_teacher_is_the_student_at_its_first_call(tmp_path) -> None:
    model = NimbleModel(tiny_model(layers=2, seed=3), make_tokenizer(), "finetune", {}, ["negative", "positive"])
    batch = batch_of(TEXTS)
    snapshot = SnapshotTeacher(tmp_path / "teacher.safetensors")
    first = snapshot(model, batch)
    fixed = Teacher(tiny_model(layers=2, seed=3))(model, batch)  # the same weights, as a fixed teacher
    torch.testing.assert_close(first.logits, fixed.logits)
    for a, b in zip(first.hidden, fixed.hidden, strict=True):
        torch.testing.assert_close(a, b)
    assert all(p.requires_grad for p in model.hf.parameters())  # the student itself stays trainable
