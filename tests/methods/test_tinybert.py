"""TinyBERT's parts on tiny random models: layer map, student shape and initialisation, losses on pre-softmax
masked scores, the teacher cache, and the data augmentation (masked-LM and embedding-neighbour paths)."""

from __future__ import annotations

import random

import datasets
import pytest
import torch
from conftest import WORDS, make_tokenizer, tiny_config, tiny_model
from transformers import BertForMaskedLM, BertTokenizer

from nimblebert.data import encode, make_loader
from nimblebert.distill import augment as aug
from nimblebert.distill.cache import build_cache
from nimblebert.distill.teacher import Teacher
from nimblebert.errors import UserError
from nimblebert.methods.losses import attention_mse
from nimblebert.methods.tinybert.config import TinyBertConfig, copies_for_rows
from nimblebert.methods.tinybert.objective import PROJECTION, TargetSource, layer_losses, swap_in_student
from nimblebert.methods.tinybert.student import build_student, check_student, hidden_map, layer_map, uniform_layer_map
from nimblebert.model import NimbleModel

TEXTS = ["the movie was good and fun", "a bad , boring film", "it is not very smart but beautiful",
         "this story was the worst"]


def batch_of(texts: list[str], tokenizer=None) -> dict[str, torch.Tensor]:
    tokenizer = tokenizer or make_tokenizer()
    enc = encode(datasets.Dataset.from_dict({"text": texts}), tokenizer, 24, False)
    return next(iter(make_loader(enc, tokenizer, len(texts), shuffle=False)))


# ---- layer map and student shape ------------------------------------------------------------------


def test_uniform_layer_map_includes_the_embeddings() -> None:
    assert uniform_layer_map(12, 4) == [3, 6, 9, 12]  # TinyBERT4 from BERT-base: g(m) = 3m
    assert uniform_layer_map(6, 3) == [2, 4, 6]
    assert uniform_layer_map(6, 2) == [3, 6]
    assert hidden_map([2, 4, 6]) == [0, 2, 4, 6]  # student hidden j <-> teacher hidden k·j, j = 0 the embeddings
    assert layer_map(TinyBertConfig(layer_map="1,3,6"), 6, 3) == [1, 3, 6]


@pytest.mark.parametrize("teacher,student,match", [(6, 4, "multiple of"), (4, 5, "between 1 and 4"),
                                                   (5, 2, "--layer-map")])
def test_non_divisible_depths_are_a_clear_error(teacher: int, student: int, match: str) -> None:
    with pytest.raises(UserError, match=match):
        uniform_layer_map(teacher, student)


def test_layer_map_option_is_checked() -> None:
    with pytest.raises(UserError, match="one per student layer"):
        layer_map(TinyBertConfig(layer_map="2,4"), 6, 3)
    with pytest.raises(UserError, match="only 6 layers"):
        layer_map(TinyBertConfig(layer_map="2,4,7"), 6, 3)
    with pytest.raises(UserError, match="comma-separated"):
        TinyBertConfig(layer_map="two")


def test_mismatched_heads_are_a_clear_error() -> None:
    teacher = tiny_model(layers=4, heads=4)
    with pytest.raises(UserError, match="attention heads.*--student-heads 4"):
        build_student(teacher, TinyBertConfig(student_layers=2, student_heads=2), "random")
    with pytest.raises(UserError, match="not divisible by the 4 heads"):
        build_student(teacher, TinyBertConfig(student_layers=2, student_hidden=30), "random")
    with pytest.raises(UserError, match="attention heads"):
        check_student(tiny_model(layers=2, heads=2), teacher, TinyBertConfig())
    with pytest.raises(UserError, match="--student-init random"):  # a narrower student cannot copy layers
        build_student(teacher, TinyBertConfig(student_layers=2, student_hidden=16), "teacher")


def test_student_from_a_subset_of_teacher_layers_copies_the_right_layers() -> None:
    teacher = tiny_model(layers=4, seed=3)
    student = build_student(teacher, TinyBertConfig(student_layers=2), "teacher")
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 32
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    assert same(s_layers[0], t_layers[1]) and same(s_layers[1], t_layers[3])  # g(m) = 2m: teacher layers 2, 4
    assert not same(s_layers[0], t_layers[0])
    assert same(student.bert.embeddings, teacher.bert.embeddings)
    assert same(student.classifier, teacher.classifier) and same(student.bert.pooler, teacher.bert.pooler)
    chosen = build_student(teacher, TinyBertConfig(student_layers=2, init_layers="1,3"), "teacher")
    assert same(chosen.bert.encoder.layer[0], t_layers[0]) and same(chosen.bert.encoder.layer[1], t_layers[2])
    narrow = build_student(teacher, TinyBertConfig(student_layers=2, student_hidden=16), "random")
    c = narrow.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads) == (16, 18, 4)  # FFN keeps the teacher's ratio


# ---- losses ---------------------------------------------------------------------------------------------


def student_model(teacher: torch.nn.Module, layers: int, **cfg) -> NimbleModel:
    model = NimbleModel(teacher, make_tokenizer(), "tinybert", cfg, ["negative", "positive"])
    swap_in_student(model, build_student(teacher, TinyBertConfig(student_layers=layers, **cfg), "teacher"))
    model.extras[PROJECTION] = torch.nn.Linear(model.hf.config.hidden_size, teacher.config.hidden_size)
    return model


def test_teacher_targets_are_the_mapped_pre_softmax_masked_scores_and_states() -> None:
    teacher = tiny_model(layers=4, seed=1)
    batch = batch_of(TEXTS)
    mask = batch["attention_mask"]
    assert not bool(mask.all())  # the batch has padding
    targets = Teacher(teacher).run(batch, hidden_map([2, 4]), [1, 3], logits=True)
    with torch.no_grad():
        ref = teacher(input_ids=batch["input_ids"], attention_mask=mask, token_type_ids=batch["token_type_ids"],
                      output_hidden_states=True)
    real = mask.bool()
    for target, j in zip(targets.hidden, [0, 2, 4], strict=True):  # student hidden j <-> teacher hidden 2j
        torch.testing.assert_close(target[real], ref.hidden_states[j][real], atol=1e-5, rtol=0)
        assert bool((target[~real] == 0).all())
    # Teacher layer 4's scores, by hand: QKᵀ/√d_h from layer 3's output, before the softmax.
    attn = teacher.bert.encoder.layer[3].attention.self
    h = ref.hidden_states[3]
    b, t, _ = h.shape
    q = attn.query(h).view(b, t, 4, 8).transpose(1, 2)
    k = attn.key(h).view(b, t, 4, 8).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5  # (b, h, t, t)
    both = (mask[:, None, :, None] * mask[:, None, None, :]).bool().expand_as(scores)
    torch.testing.assert_close(targets.scores[1][both], scores[both], atol=1e-5, rtol=0)
    assert bool((targets.scores[1][~both] == 0).all())  # every padded entry zero
    assert float(targets.scores[1].min()) < 0  # raw scores, not probabilities
    torch.testing.assert_close(targets.logits, ref.logits, atol=1e-5, rtol=0)


def test_layer_losses_match_the_official_formulas_on_pre_softmax_scores() -> None:
    teacher = tiny_model(layers=4, seed=1)
    model = student_model(teacher, 2)
    batch = batch_of(TEXTS)
    mask = batch["attention_mask"]
    source = TargetSource(Teacher(teacher), None, hidden_map([2, 4]), [1, 3])
    parts = layer_losses(model, batch, source)
    assert set(parts) == {"loss", "attn", "hidden"}  # no prediction loss in this stage

    # By hand: the official att loss on the student's masked pre-softmax scores (-10000 at padded keys, as the
    # official model adds), entries <= -100 zeroed in both, plus the padded query rows we zero too.
    out = model.encoder(batch["input_ids"], mask, batch["token_type_ids"], output_hidden_states=True,
                        output_scores=True)
    with torch.no_grad():
        ref = teacher(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
    rows = mask[:, None, :, None].bool()
    student_scores = [torch.where(rows, s.clamp(min=-10000.0), torch.zeros(())) for s in out.scores]
    teacher_scores = source(batch, logits=False, inner=True).scores
    teacher_scores = [torch.where(mask[:, None, None, :].bool(), t, torch.full((), -10000.0)) for t in teacher_scores]
    assert float(student_scores[0].detach().min()) <= -100  # the masked entries are there, and get zeroed by the loss
    torch.testing.assert_close(parts["attn"], attention_mse(student_scores, teacher_scores))
    fit = model.extras[PROJECTION]
    m = mask[:, :, None].float()
    hidden = sum(torch.nn.functional.mse_loss(fit(out.hidden_states[j]) * m, ref.hidden_states[2 * j] * m)
                 for j in range(3))
    torch.testing.assert_close(parts["hidden"], hidden)


def test_a_student_equal_to_its_teacher_has_zero_layer_losses() -> None:
    teacher = tiny_model(layers=2, seed=2)
    model = student_model(teacher, 2)  # k = 1: every layer copied onto itself
    with torch.no_grad():
        model.extras[PROJECTION].weight.copy_(torch.eye(32))
        model.extras[PROJECTION].bias.zero_()
    model.eval()
    parts = layer_losses(model, batch_of(TEXTS), TargetSource(Teacher(teacher), None, [0, 1, 2], [0, 1]))
    assert float(parts["attn"]) < 1e-10 and float(parts["hidden"]) < 1e-10


def test_cached_targets_equal_the_teachers_in_any_batch(tmp_path) -> None:
    tokenizer = make_tokenizer()
    teacher = Teacher(tiny_model(layers=4, seed=4))
    enc = encode(datasets.Dataset.from_dict({"text": TEXTS * 3}), tokenizer, 24, False)
    cache = build_cache(teacher, enc, tokenizer, [0, 2, 4], [1, 3], True, True, tmp_path, batch_size=5,
                        progress=False)
    assert teacher.examples_run == len(enc)
    build_cache(teacher, enc, tokenizer, [0, 2, 4], [1, 3], True, True, tmp_path, progress=False)
    build_cache(teacher, enc, tokenizer, [], [], True, False, tmp_path, progress=False)  # logits only
    assert teacher.examples_run == len(enc)  # read back, not recomputed
    other = build_cache(teacher, enc, tokenizer, [0, 4], [3], False, True, tmp_path, progress=False)
    assert teacher.examples_run == 2 * len(enc) and other.logits is None  # another layer map: one more pass
    # A pre-trained teacher gets a new random classifier at every load: its hidden states and scores stay cached.
    reloaded = tiny_model(layers=4, seed=4)
    torch.nn.init.normal_(reloaded.classifier.weight)
    again = Teacher(reloaded)
    assert again.fingerprint(head=False) == teacher.fingerprint(head=False)
    assert again.fingerprint(head=True) != teacher.fingerprint(head=True)
    build_cache(again, enc, tokenizer, [0, 4], [3], False, True, tmp_path, progress=False)
    assert again.examples_run == 0
    loader = make_loader(enc, tokenizer, 4, shuffle=True, seed=3)  # other batches, other padding
    for batch in loader:
        got = cache.targets(batch, logits=True, inner=True)
        want = teacher.run(batch, [0, 2, 4], [1, 3], logits=True)
        torch.testing.assert_close(got.logits, want.logits)
        for a, b in zip(got.hidden + got.scores, want.hidden + want.scores, strict=True):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-3)  # float16 storage


# ---- augmentation ----------------------------------------------------------------------------------


def test_stop_words_and_non_alphabetic_words_are_never_candidates() -> None:
    assert aug.is_candidate("movie") and aug.is_candidate("Movie")
    for word in ("the", "was", "not", "won't", "3", "!", ",", "3d", "don", "'s"):
        assert not aug.is_candidate(word)
    tokenizer = make_tokenizer()
    embeddings = torch.randn(tokenizer.vocab_size, 8)
    augmenter = aug.Augmenter(tokenizer, 3, embeddings=embeddings)
    [(words, candidates)] = augmenter.candidates(["The movie was 3 times not good !"])
    assert words == ["the", "movie", "was", "3", "times", "not", "good", "!"]
    assert set(candidates) == {1, 6}  # movie, good; "times" is unknown to the tiny vocabulary: kept
    rows = aug.augment_rows([{"text": "The movie was 3 times not good !", "label": 1}], ["text"], augmenter,
                            20, 1.0, 0)
    for row in rows[1:]:
        new = row["text"].split()
        assert [new[i] for i in (0, 2, 3, 4, 5, 7)] == ["the", "was", "3", "times", "not", "!"]
        assert row["label"] == 1


def test_embedding_neighbours_are_whole_words_nearest_first() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "fine", "bad", "##ness", "42", "movie"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    emb = torch.zeros(len(vocab), 3)
    emb[:, 2] = 1.0  # far from everything by default
    emb[5] = torch.tensor([1.0, 0.0, 0.0])  # good
    emb[6] = torch.tensor([0.9, 0.1, 0.0])  # great: nearest
    emb[7] = torch.tensor([0.7, 0.3, 0.0])  # fine: next
    emb[8] = torch.tensor([-1.0, 0.0, 0.0])  # bad: opposite
    emb[9] = emb[10] = emb[4] = torch.tensor([1.0, 0.0, 0.0])  # ##ness, 42 and [MASK] are as close as can be
    found = aug.EmbeddingNeighbours(emb, tokenizer, 2)([("good", [5]), ("Good", [5])])
    assert found == [["great", "fine"], ["Great", "Fine"]]  # the word itself, pieces, numbers, specials excluded


def test_variants_respect_p_and_n() -> None:
    words = [f"w{i}" for i in range(200)]
    candidates = {i: ["x", "y"] for i in range(200)}
    variants = aug.make_variants(words, candidates, 30, 0.4, random.Random(0))
    assert len(variants) == 30  # N trials, all new
    replaced = sum(a != b for v in variants for a, b in zip(v.split(), words, strict=True)) / (30 * 200)
    assert abs(replaced - 0.4) < 0.03  # each candidate replaced with probability p
    assert aug.make_variants(words, candidates, 30, 0.0, random.Random(0)) == []  # p = 0: nothing new
    few = aug.make_variants(["good"], {0: ["great"]}, 10, 1.0, random.Random(0))
    assert few == ["great"]  # duplicates dropped: at most N, and only new sentences


@pytest.fixture
def masked_lm_dir(tmp_path):
    """A tiny random BERT with a masked-LM head, and a vocabulary with '##' pieces."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing", "##ly"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config(layers=2)).eval()
    # Make '##' pieces and [UNK] the model's favourites, so that filtering them is really tested.
    with torch.no_grad():
        model.cls.predictions.bias[[vocab.index("##s"), vocab.index("##ing"), 1]] += 50.0
    folder = tmp_path / "mlm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_masked_lm_path_on_a_tiny_random_masked_lm(masked_lm_dir, monkeypatch) -> None:
    folder, model, tokenizer = masked_lm_dir
    from nimblebert.distill.augment import has_mlm_head

    assert has_mlm_head(str(folder))
    mlm = aug.MaskedLMCandidates(model, tokenizer, 5)
    pieces = tokenizer("good movie", add_special_tokens=False)["input_ids"]
    ids, types, pos = mlm._inputs(pieces, 1)  # [CLS] good [MASK] [SEP] good movie [SEP]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "good", "[MASK]", "[SEP]", "good", "movie", "[SEP]"]
    assert types == [0, 0, 0, 0, 1, 1, 1] and pos == 2

    augmenter = aug.Augmenter(tokenizer, 5, mlm=model)
    [(words, candidates)] = augmenter.candidates(["the good movies and a fun plot"])
    assert words == ["the", "good", "movies", "and", "a", "fun", "plot"]
    assert set(candidates) == {1, 5, 6}  # "movies" is two pieces (movie ##s): kept, as are stop words
    assert augmenter.mlm.calls > 0
    for options in candidates.values():
        assert 1 <= len(options) <= 5  # at most K
        assert all(not o.startswith("##") and o not in tokenizer.all_special_tokens for o in options)

    ds = datasets.Dataset.from_dict({"text": ["the good movies and a fun plot", "a dull ending"], "label": [1, 0]})
    cache = folder.parent / "cache"
    first = aug.augment_dataset(ds, False, tokenizer, model, "mlm", 4, 0.5, 5, 0, cache)
    assert first[0] == {"text": "the good movies and a fun plot", "label": 1}  # the original first
    assert 1 < len(first) <= 2 * 5 and sorted(set(first["label"])) == [0, 1]
    assert len(list(cache.glob("augmented-*.jsonl"))) == 1

    def no_work(*args, **kwargs):
        raise AssertionError("the cached set should have been reused")

    monkeypatch.setattr(aug, "Augmenter", no_work)
    second = aug.augment_dataset(ds, False, tokenizer, model, "mlm", 4, 0.5, 5, 0, cache)
    assert second.to_list() == first.to_list()
    with pytest.raises(AssertionError, match="reused"):  # other settings: not the same cache entry
        aug.augment_dataset(ds, False, tokenizer, model, "mlm", 5, 0.5, 5, 0, cache)


def test_pairs_augment_each_field_with_the_other_unchanged() -> None:
    tokenizer = make_tokenizer()
    augmenter = aug.Augmenter(tokenizer, 3, embeddings=torch.randn(tokenizer.vocab_size, 8))
    row = {"text": "good movie", "text_pair": "bad plot", "label": 0}
    rows = aug.augment_rows([row], ["text", "text_pair"], augmenter, 5, 1.0, 0)
    assert rows[0] == row
    assert all(r["text_pair"] == "bad plot" or r["text"] == "good movie" for r in rows)
    assert any(r["text"] != "good movie" for r in rows) and any(r["text_pair"] != "bad plot" for r in rows)


# ---- --aug-target-rows: N from the number of training rows (--recipe joint) ------------------------------------


@pytest.mark.parametrize(("rows", "n"), [(100, 20), (400, 20), (420, 19), (1000, 7), (2800, 2), (4000, 1),
                                         (5600, 1), (8530, 1), (100_000, 1)])
def test_copies_for_rows_keeps_the_augmented_set_near_the_target(rows: int, n: int) -> None:
    """N = round(T / R) - 1 between 1 and --aug-copies: 20 (the paper's) on a few hundred rows, falling with R so
    the augmented set stays near T = 8,400 rows, and never below one copy."""
    assert copies_for_rows(rows, 8400, 20) == n
    if 1 < n < 20:
        assert abs(rows * (n + 1) - 8400) <= rows / 2  # the nearest whole N
    assert copies_for_rows(rows, 8400, 5) == min(n, 5)  # --aug-copies caps it
    assert copies_for_rows(rows, 8400, 0) == 0  # no copies asked for: none


def test_aug_target_rows_is_checked() -> None:
    with pytest.raises(UserError, match="--aug-target-rows"):
        TinyBertConfig(aug_target_rows=-1)
