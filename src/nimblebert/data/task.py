"""``load_task``: a built-in name, a local folder or a hub dataset id -> one :class:`TaskData`.

Every source ends in the same place: each split as plain columns (:class:`RawTable`), checked row by
row and mapped to label ids by :func:`_build`, so the three sources cannot drift apart in behaviour.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimblebert.errors import UserError

from .builtin import builtin_dir, builtin_names, prepare_builtin, read_meta
from .files import SUFFIXES, RawTable, read_table
from .split import SPLIT_SEED, stratified_split

if TYPE_CHECKING:  # imported where used: `datasets` (pandas, pyarrow) is slow to import (see nimblebert.data)
    import datasets

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
# File stems (and hub split names) accepted for each split.
_ALIASES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}
# "name", "owner/name", optionally ":config" (e.g. "nyu-mll/glue:sst2").
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")


@dataclass
class TaskData:
    """A text-classification task, ready for :func:`encode`.

    Each split has columns ``text`` (str), ``text_pair`` (str, only when ``has_pair``) and ``label``
    (int id into ``label_names``). A split left out of ``load_task(splits=...)`` is None, and so is
    ``test`` when the task has no labelled test split.
    """

    name: str
    train: datasets.Dataset | None
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    label_names: list[str] = field(default_factory=list)
    has_pair: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class _Columns:
    text: str
    text_pair: str
    label: str
    pair_required: bool  # the user named a pair column explicitly, so it must exist


def load_task(
    spec: str,
    *,
    text_column: str = "text",
    text_pair_column: str = "text_pair",
    label_column: str = "label",
    label_names: list[str] | None = None,
    splits: tuple[str, ...] | list[str] = SPLIT_NAMES,
) -> TaskData:
    """Load a task from a built-in name, a local folder, or (when online) a hub dataset id.

    A built-in is prepared on first use (the column arguments do not apply to it). ``label_names``
    (e.g. saved with a model) fixes the id of each label and makes any other label an error;
    without it the names are the sorted distinct labels of the train split (numerically when all are
    integers), and a validation/test label that never occurs in train is an error.
    """
    unknown = [s for s in splits if s not in SPLIT_NAMES]
    if unknown:
        raise UserError(f"unknown split {unknown[0]!r}; choose from {', '.join(SPLIT_NAMES)}")
    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names) or not label_names:
            raise UserError(f"label names {label_names} must be distinct and non-empty; fix the saved labels")
    spec = str(spec)
    wanted = tuple(s for s in SPLIT_NAMES if s in splits)

    if spec in builtin_names():
        meta = read_meta(spec)
        if meta is None:
            prepare_builtin(spec)
            meta = read_meta(spec)
        columns = _Columns("text", "text_pair", "label", pair_required=False)
        return _load_folder(builtin_dir(spec), spec, columns, label_names or meta["label_names"], wanted)

    columns = _Columns(
        text_column, text_pair_column, label_column, pair_required=text_pair_column != "text_pair"
    )
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, spec, columns, label_names, wanted)
    if path.exists():
        raise UserError(f"{spec} is a file; give the folder that holds train.* and validation.* files")
    if _looks_like_path(spec) or not _HUB_ID.fullmatch(spec):
        raise UserError(
            f"data folder {spec!r} does not exist (nor is it a built-in: {', '.join(builtin_names())}, "
            f"or a hub dataset id); give a folder holding train.* and validation.* files"
        )
    return _load_hub(spec, columns, label_names, wanted)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or "\\" in spec
        or spec.count("/") > 1
        or spec.lower().endswith(tuple(SUFFIXES))
    )


# ---------------------------------------------------------------------------------------------
# Local folders


def _load_folder(
    folder: Path, name: str, columns: _Columns, label_names: list[str] | None, wanted: tuple[str, ...]
) -> TaskData:
    files = {split: _split_file(folder, split) for split in SPLIT_NAMES}
    if files["train"] is None and ("train" in wanted or label_names is None):
        raise UserError(f"no train file in {folder}; add train.csv (or .tsv, .jsonl, .json, .parquet)")
    if files["validation"] is None and "validation" in wanted:
        raise UserError(
            f"no validation file in {folder}; add validation.csv (or dev.*, valid.*; .tsv, .jsonl, .parquet)"
        )
    # The train split is read even when not wanted if it is the only way to learn the label names.
    to_read = [
        s for s in SPLIT_NAMES if files[s] is not None and (s in wanted or (s == "train" and not label_names))
    ]
    tables = {split: read_table(files[split]) for split in to_read}
    return _build(name, tables, columns, label_names, wanted)


def _split_file(folder: Path, split: str) -> Path | None:
    hits = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.stem.lower() in _ALIASES[split] and p.suffix.lower() in SUFFIXES
    )
    if len(hits) > 1:
        raise UserError(f"{folder} has several {split} files ({', '.join(p.name for p in hits)}); keep one")
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------
# Hub datasets


def _load_hub(
    spec: str, columns: _Columns, label_names: list[str] | None, wanted: tuple[str, ...]
) -> TaskData:
    import datasets

    repo, _, config = spec.partition(":")
    _check_hub_reachable(spec)
    try:
        loaded = datasets.load_dataset(repo, config or None)
    except Exception as err:  # any hub, network or format failure means the same thing to the user
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(
            f"could not load {spec!r}: not a built-in ({', '.join(builtin_names())}), not a folder, "
            f"and as a hub dataset it failed ({reason}); check the name or path (the hub needs a connection)"
        ) from None
    return from_dataset_dict(loaded, spec, columns, label_names, wanted)


def _check_hub_reachable(spec: str) -> None:
    """Fail in seconds, not after half a minute of retries, when the hub cannot be reached.

    Skipped in offline mode (``datasets`` then reads its cache) and behind a proxy (a direct
    connection says nothing there).
    """
    import huggingface_hub.constants as hub

    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    if hub.HF_HUB_OFFLINE or any(os.environ.get(v) for v in proxies):
        return
    url = urllib.parse.urlsplit(hub.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"{spec!r} is not a built-in ({', '.join(builtin_names())}) or a folder, and the hub "
            f"({url.hostname}) cannot be reached ({err}); check the name or path, or go online"
        ) from None


def from_dataset_dict(
    loaded: datasets.DatasetDict,
    name: str,
    columns: _Columns | None = None,
    label_names: list[str] | None = None,
    wanted: tuple[str, ...] = SPLIT_NAMES,
) -> TaskData:
    """Turn a hub ``DatasetDict`` into a :class:`TaskData` (split names and ClassLabels handled here).

    A ``ClassLabel`` column gives the label names in the hub's own order. A split whose labels are
    all -1 (GLUE-style unlabelled test sets) counts as absent. Without a validation split, 10% of
    train is held out with the same seeded stratified split as the built-ins.
    """
    import datasets

    columns = columns or _Columns("text", "text_pair", "label", pair_required=False)
    found = {split: next((a for a in _ALIASES[split] if a in loaded), None) for split in SPLIT_NAMES}
    if found["train"] is None:
        raise UserError(f"hub dataset {name!r} has no train split (it has: {', '.join(loaded)})")

    tables: dict[str, RawTable] = {}
    for split, hub_split in found.items():
        if hub_split is None:
            continue
        ds = loaded[hub_split]
        feature = ds.features.get(columns.label)
        if isinstance(feature, datasets.ClassLabel):
            label_names = label_names or list(feature.names)
            if all(v < 0 for v in ds[columns.label]):
                log.info("ignoring split %s of %s: it has no labels", hub_split, name)
                continue
        table_columns = {col: list(ds[col]) for col in ds.column_names}
        if isinstance(feature, datasets.ClassLabel):
            # -1 means "no label" in hub ClassLabels; None makes the row check report it.
            table_columns[columns.label] = [
                feature.names[v] if v >= 0 else None for v in table_columns[columns.label]
            ]
        tables[split] = RawTable(f"{name}[{hub_split}]", table_columns)

    if "validation" not in tables and "validation" in wanted:
        train = tables["train"]
        keys = [str(t) for t in _column(train, columns.text, "--text-column")]
        labels = [str(v) for v in _column(train, columns.label, "--label-column")]
        label_ids = {v: i for i, v in enumerate(sorted(set(labels)))}
        parts = stratified_split(keys, [label_ids[v] for v in labels], {"validation": 0.1}, seed=SPLIT_SEED)
        log.info("%s has no validation split: holding out %d train examples", name, len(parts["validation"]))
        for split in ("train", "validation"):
            rows = sorted(parts[split])
            tables[split] = RawTable(
                f"{name}[{split}]", {k: [v[i] for i in rows] for k, v in train.columns.items()}
            )
    tables = {s: t for s, t in tables.items() if s in wanted or (s == "train" and not label_names)}
    return _build(name, tables, columns, label_names, wanted)


# ---------------------------------------------------------------------------------------------
# Checking rows and mapping labels (shared by all sources)


def _build(
    name: str,
    tables: dict[str, RawTable],
    columns: _Columns,
    label_names: list[str] | None,
    wanted: tuple[str, ...],
) -> TaskData:
    import datasets

    if not tables:  # e.g. only "test" wanted and there is none
        return TaskData(name, None, None, None, list(label_names or []), columns.pair_required)
    first = next(iter(tables.values()))
    has_pair = columns.pair_required or columns.text_pair in first.columns

    checked: dict[str, dict[str, list]] = {}
    for split, table in tables.items():
        cols = {"text": _texts(table, columns.text, "--text-column")}
        if has_pair:
            cols["text_pair"] = _texts(table, columns.text_pair, "--text-pair-column")
        cols["label"] = [
            _label_key(table, i, v) for i, v in enumerate(_column(table, columns.label, "--label-column"))
        ]
        checked[split] = cols

    if label_names is None:
        label_names = _derive_names(checked["train"]["label"])
        if len(label_names) < 2:
            # A classifier of one class learns nothing, and training would end "successfully" without a word.
            only = label_names[0] if label_names else None
            raise UserError(f"{tables['train'].source}: every example has the one label {only!r}; a classifier "
                            "needs examples of at least two labels (check --label-column)")
        unknown_hint = f"it never occurs in {tables['train'].source}; fix it or add training examples with it"
    else:
        unknown_hint = f"the known labels are {', '.join(label_names)}; fix the label"
    ids = {label: i for i, label in enumerate(label_names)}

    features = datasets.Features(
        {"text": datasets.Value("string")}
        | ({"text_pair": datasets.Value("string")} if has_pair else {})
        | {"label": datasets.ClassLabel(names=label_names)}
    )
    out: dict[str, datasets.Dataset | None] = dict.fromkeys(SPLIT_NAMES)
    for split in wanted:
        if split not in checked:
            continue  # only a missing test split gets here; train and validation were checked earlier
        cols = checked[split]
        for i, label in enumerate(cols["label"]):
            if label not in ids:
                where = f"{tables[split].source} {tables[split].where(i)}"
                raise UserError(f"{where}: label {label!r} is unknown; {unknown_hint}")
        cols["label"] = [ids[label] for label in cols["label"]]
        out[split] = datasets.Dataset.from_dict(cols, features=features)
    return TaskData(name, out["train"], out["validation"], out["test"], list(label_names), has_pair)


def _column(table: RawTable, column: str, flag: str) -> list[Any]:
    if column not in table.columns:
        found = ", ".join(repr(c) for c in table.columns)
        raise UserError(
            f"{table.source} has no column {column!r} (found: {found}); rename the column or pass {flag} NAME"
        )
    return table.columns[column]


def _texts(table: RawTable, column: str, flag: str) -> list[str]:
    values = _column(table, column, flag)
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            problem = "is empty" if isinstance(value, str) or value is None else f"is not text ({value!r})"
            raise UserError(
                f"{table.source} {table.where(i)}: {column!r} {problem}; give every example a text"
            )
    return values


def _label_key(table: RawTable, i: int, value: Any) -> str:
    """A label as the string we match on: ints (and integral floats) as digits, strings stripped."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a float parquet/pandas column means label 1
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        problem = "has no label"
    else:
        problem = f"has an invalid label {value!r}"
    raise UserError(f"{table.source} {table.where(i)} {problem}; give every example a label")


def _derive_names(labels: list[str]) -> list[str]:
    distinct = set(labels)
    if all(re.fullmatch(r"-?\d+", label) for label in distinct):
        return sorted(distinct, key=int)  # 2 before 10
    return sorted(distinct)
