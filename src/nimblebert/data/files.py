"""Read one local data file (csv, tsv, jsonl/json, parquet) into plain Python columns.

We read with pandas, ``json`` and pyarrow rather than ``datasets.load_dataset`` because every cell of a
text file must stay the string the user wrote (``load_dataset("csv")`` turns the text "NA" or "null"
into a missing value), an error must name the file and the row, and a small local file should not
leave an Arrow cache behind in ``~/.cache/huggingface``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimblebert.errors import UserError

# File suffix -> format. ".json" may hold one JSON array of objects or JSON lines.
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass
class RawTable:
    """One split's file as columns of Python values, plus what we need to point at a bad row."""

    source: str  # the file path (or "hub-id[split]") used in error messages
    columns: dict[str, list[Any]]
    lines: list[int] | None = None  # line number of each row (JSON lines); None: count data rows

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def where(self, i: int) -> str:
        """Human-readable position of row ``i`` (0-based), e.g. 'line 7' or 'data row 3'."""
        if self.lines is not None:
            return f"line {self.lines[i]}"
        return f"data row {i + 1}"


def read_table(path: Path) -> RawTable:
    """Read ``path`` by its suffix; every problem becomes a one-line :class:`UserError`."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty; add examples to it")
    if kind == "parquet":
        return _read_parquet(path)

    text = _decode(path)
    if not text.strip():
        raise UserError(f"{path} holds only whitespace; add examples to it")
    if kind in ("csv", "tsv"):
        return _read_delimited(path, text, sep="," if kind == "csv" else "\t")
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # not one JSON document: read it as JSON lines below
        if isinstance(data, list):
            return _from_rows(path, data, lines=None)
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{path}: expected a list of JSON objects or one JSON object per line")
        # A single object is one JSON line; falls through to the JSON-lines reader.
    return _read_json_lines(path, text)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        # utf-8-sig drops a byte-order mark (Excel writes one) and is otherwise plain UTF-8.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path} is not UTF-8 (byte 0x{raw[err.start]:02x} on line {line}); re-save the file as UTF-8"
        ) from None


def _read_delimited(path: Path, text: str, sep: str) -> RawTable:
    import pandas as pd

    try:
        # dtype=str and no NA detection: a cell reads back exactly as written ("NA" stays "NA",
        # "007" stays "007"); an empty cell becomes "" and is caught by the row checks later.
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise UserError(f"{path} could not be parsed ({reason}); check its quoting and separators") from None
    if len(frame) == 0:
        raise UserError(f"{path} has a header but no rows; add examples below the header")
    return RawTable(str(path), {str(name): frame[name].tolist() for name in frame.columns})


def _read_json_lines(path: Path, text: str) -> RawTable:
    rows: list[Any] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path} line {number} is not valid JSON ({err.msg}); write one JSON object per line"
            ) from None
        lines.append(number)
    return _from_rows(path, rows, lines)


def _from_rows(path: Path, rows: list[Any], lines: list[int] | None) -> RawTable:
    if not rows:
        raise UserError(f"{path} holds no examples; add one JSON object per example")
    keys: dict[str, None] = {}  # ordered union of the keys of all rows
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            where = f"line {lines[i]}" if lines is not None else f"item {i + 1}"
            raise UserError(
                f'{path} {where} is not a JSON object; write objects like {{"text": ..., "label": ...}}'
            )
        keys.update(dict.fromkeys(row))
    # A key missing from a row reads as None and is reported by the row checks with its line number.
    columns = {key: [row.get(key) for row in rows] for key in keys}
    return RawTable(str(path), columns, lines)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise UserError(
            f"{path} could not be read as parquet ({err}); re-write it or use csv/jsonl"
        ) from None
    if table.num_rows == 0:
        raise UserError(f"{path} has no rows; add examples to it")
    return RawTable(str(path), table.to_pydict())
