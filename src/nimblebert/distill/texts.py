"""The texts TinyBERT trains on: the task's training split (to augment) and unlabelled text (general distillation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data import TaskData, encode, load_task, read_texts_jsonl
from ..errors import UserError


def training_task(data: Any, opts: Any, label_names: list[str]) -> TaskData:
    """The run's task: ``data.task`` (the :class:`~nimblebert.train.stages.TrainData` that ``nimblebert train``
    hands the method), else ``opts.data`` (and its column names) loaded here.

    TinyBERT and DynaBERT (``--augment``) build their own training sets (augmented, TinyBERT's with cached teacher
    outputs), so they need the raw training texts, not only the encoded split the trainer receives.
    """
    task = getattr(data, "task", None)
    if task is not None:
        return task
    spec = getattr(opts, "data", None)
    if not spec:
        raise UserError("the distillation stages need the training texts (to augment them): pass the TrainData "
                        "to stages() (as nimblebert train does), or set opts.data")
    return load_task(spec, text_column=getattr(opts, "text_column", "text"),
                     text_pair_column=getattr(opts, "text_pair_column", "text_pair"),
                     label_column=getattr(opts, "label_column", "label"), label_names=label_names,
                     splits=("train",))


def read_general_texts(spec: str) -> list[str]:
    """Unlabelled texts: a .txt file (one per line), a .jsonl file, or the train split of a built-in / folder."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"--general-data {spec} is empty; give a file with one text per line")
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8") as f:
                rows = read_texts_jsonl(f)
            texts = [t for r in rows for t in (r["text"], r.get("text_pair")) if t]
        else:
            try:
                texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            except UnicodeDecodeError:
                raise UserError(f"--general-data {spec} is not UTF-8 text; re-save it as UTF-8") from None
    elif not path.exists() and (path.suffix.lower() in (".txt", ".jsonl", ".json") or spec.startswith((".", "/", "~"))):
        raise UserError(f"--general-data {spec} does not exist; give a text file, a .jsonl file or a built-in name")
    else:
        task = load_task(spec, splits=("train",))
        texts = [t for r in task.train for t in (r["text"], r.get("text_pair")) if t]
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError(f"--general-data {spec} holds no text")
    return texts


def chunk_texts(texts: list[str], tokenizer: Any, max_length: int) -> list[str]:
    """Cut texts longer than ``max_length`` tokens into consecutive pieces that fit, at word boundaries
    (the official general distillation reads documents as 128-token sequences)."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        words, offsets = enc.word_ids(), enc["offset_mapping"]
        if len(offsets) <= budget:
            out.append(text)
            continue
        start = 0  # first token of the current piece
        while start < len(offsets):
            end = min(start + budget, len(offsets))
            if end < len(offsets) and words[end] is not None and words[end] == words[end - 1]:
                # Do not split a word: end the piece where that word starts (unless it fills the whole piece).
                cut = end - 1
                while cut > start and words[cut - 1] == words[end]:
                    cut -= 1
                end = cut if cut > start else end
            out.append(text[offsets[start][0]:offsets[end - 1][1]])
            start = end
    return out


def general_dataset(spec: str, tokenizer: Any, max_length: int) -> Any:
    """The encoded unlabelled texts of general distillation (no ``labels`` column)."""
    import datasets

    texts = chunk_texts(read_general_texts(spec), tokenizer, max_length)
    return encode(datasets.Dataset.from_list([{"text": t} for t in texts]), tokenizer, max_length, False)


def base_of_teacher(folder: str) -> str | None:
    """The base model a nimblebert-trained teacher was fine-tuned from (its ``train_summary.json``)."""
    summary = Path(folder) / "train_summary.json"
    if not summary.is_file():
        return None
    try:
        options = json.loads(summary.read_text()).get("options", {})
    except (OSError, ValueError):
        return None
    return options.get("model") or options.get("teacher")
