"""Tokenization, padding and batching: from a :class:`TaskData` split to model-ready tensors.

Batches are padded only to their own longest row (dynamic padding): on CPU, padding is paid for in
full by every layer, and our benchmarks bucket rows by length to waste even less.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler

from nimblebert.errors import UserError

if TYPE_CHECKING:
    import datasets

# Columns that :func:`encode` writes and :class:`Collator` turns into tensors.
MODEL_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "labels", "token_labels")
PROGRESS_MIN_ROWS = 50_000  # encode() shows a progress bar from this many rows on
# Shuffled bucketing sorts rows by length within windows of this many batches: on a CPU every pad token
# costs as much as a real one (mr's training batches were ~2x padding without it), while whole-set sorting
# would give every epoch the same batches.
BUCKET_WINDOW = 50


def encode(ds: datasets.Dataset, tokenizer: Any, max_length: int, has_pair: bool) -> datasets.Dataset:
    """Tokenize ``text`` (and ``text_pair``) without padding; over-long texts are truncated.

    Returns a dataset with ``input_ids``, ``token_type_ids`` (zeros when the tokenizer has none, as
    for RoBERTa), ``attention_mask`` and, when ``ds`` has a ``label`` column, ``labels``.
    """
    import datasets  # here, not at the top: predict batches without it (see nimblebert.data)

    # Below this, a tokenizer leaves some text with no token at all, or (for pairs) silently
    # skips truncation altogether; neither is what the user asked for.
    minimum = tokenizer.num_special_tokens_to_add(pair=has_pair) + (2 if has_pair else 1)
    if max_length < minimum:
        raise UserError(f"--max-length {max_length} is too small for this tokenizer; use at least {minimum}")
    if has_pair and "text_pair" not in ds.column_names:
        raise ValueError("encode(has_pair=True) needs a 'text_pair' column")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        pairs = batch["text_pair"] if has_pair else None
        enc = tokenizer(batch["text"], pairs, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        out = {
            "input_ids": ids,
            "token_type_ids": enc.get("token_type_ids") or [[0] * len(row) for row in ids],
            "attention_mask": enc.get("attention_mask") or [[1] * len(row) for row in ids],
        }
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    # A progress bar only where tokenizing takes a while and stderr is a terminal: on small sets it is stderr noise
    # (and the CLI promises a single stderr line when the input is bad); in a pipe or a CI log its \r updates are
    # hundreds of lines (TinyBERT's 55,159 augmented rows: one per 1,000).
    piped = not (getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())
    quiet = (len(ds) < PROGRESS_MIN_ROWS or piped) and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        return ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="Tokenizing")
    finally:
        if quiet:
            datasets.enable_progress_bars()


class Collator:
    """Pad a list of encoded rows to the longest one; return a dict of tensors.

    Returns ``input_ids`` (padded with the tokenizer's pad id), ``attention_mask`` (1 = real token),
    ``token_type_ids`` (padded with 0), and ``labels`` / ``token_labels`` (padded with -100) / ``index``
    when the rows carry them.
    Padding is always on the right, as BERT-family models were trained.
    """

    def __init__(self, tokenizer: Any = None, pad_token_id: int | None = None):
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            raise UserError(
                "the tokenizer has no padding token; use a model whose tokenizer defines pad_token"
            )
        self.pad_token_id = int(pad_token_id)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor(
                [list(row[key]) + [fill] * (width - len(row[key])) for row in rows], dtype=torch.long
            )

        batch = {
            "input_ids": padded("input_ids", self.pad_token_id),
            "attention_mask": torch.tensor(
                [[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in rows],
                dtype=torch.long,
            ),
        }
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = padded("token_type_ids", 0)
        else:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        label_key = next((k for k in ("labels", "label") if k in rows[0]), None)
        if label_key is not None:
            batch["labels"] = torch.tensor([row[label_key] for row in rows], dtype=torch.long)
        if "token_labels" in rows[0]:  # per-token targets (SSA); padding is ignored by the loss
            batch["token_labels"] = padded("token_labels", -100)
        if "index" in rows[0]:
            batch["index"] = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Yields batches of row indices; the order depends only on ``seed`` and the epoch.

    - ``shuffle``: rows are permuted with ``torch.Generator().manual_seed(seed + epoch)``.
    - ``lengths`` given (bucketing): rows are sorted longest first and cut into batches, so each
      batch holds rows of similar length. With ``shuffle`` too (training), rows are permuted, then
      sorted within windows of ``BUCKET_WINDOW`` batches, cut, and the batches permuted: each epoch
      draws different batch-mates while padding stays near the minimum.

    Each pass over the sampler uses the next epoch (0, 1, 2, ...); ``set_epoch(e)`` makes the next
    pass use epoch ``e``, which is how a resumed run gets the same order as the uninterrupted one.
    Accelerate's prepared loaders call ``set_epoch`` themselves.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        lengths: list[int] | None = None,
    ):
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be at least 1")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.lengths = lengths
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``, without advancing the sampler."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.lengths is not None and self.shuffle:
            perm = torch.randperm(self.num_rows, generator=generator).tolist()
            window = self.batch_size * BUCKET_WINDOW
            order = []
            for start in range(0, self.num_rows, window):
                order += sorted(perm[start : start + window], key=lambda i: -self.lengths[i])
        elif self.lengths is not None:
            # Longest first (a memory problem shows at once); ties broken by index.
            order = sorted(range(self.num_rows), key=lambda i: (-self.lengths[i], i))
        elif self.shuffle:
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        batches = [order[i : i + self.batch_size] for i in range(0, self.num_rows, self.batch_size)]
        if self.lengths is not None and self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        yield from self.batches(epoch)


class _IndexedRows(torch.utils.data.Dataset):
    """An encoded dataset whose rows also carry their position (``index``)."""

    def __init__(self, encoded: datasets.Dataset):
        keep = [c for c in MODEL_COLUMNS if c in encoded.column_names]
        self.rows = encoded.select_columns(keep).with_format(None)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rows[int(i)], "index": int(i)}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read per batch instead of one per row (DataLoader calls this when it exists).
        columns = self.rows[list(indices)]
        return [{**{k: v[j] for k, v in columns.items()}, "index": int(i)} for j, i in enumerate(indices)]


def make_loader(
    encoded: datasets.Dataset,
    tokenizer: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket_by_length: bool = False,
) -> DataLoader:
    """A DataLoader of padded batches from a dataset made by :func:`encode`.

    Every batch has an ``index`` tensor: the rows' positions in ``encoded``, so outputs can be put
    back in the original order even when ``shuffle`` or ``bucket_by_length`` reorder them. The order
    is reproducible: see :class:`EpochBatchSampler` (``loader.batch_sampler.set_epoch(epoch)``).
    """
    lengths = [len(ids) for ids in encoded["input_ids"]] if bucket_by_length else None
    sampler = EpochBatchSampler(len(encoded), batch_size, shuffle=shuffle, seed=seed, lengths=lengths)
    # A private generator: starting an iterator draws a seed from the loader's generator, and drawing it from
    # the global one would shift the dropout masks of a run resumed mid-epoch.
    return DataLoader(_IndexedRows(encoded), batch_sampler=sampler, collate_fn=Collator(tokenizer),
                      generator=torch.Generator().manual_seed(seed))
