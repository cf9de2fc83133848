"""Reading the texts that ``nimblebert predict`` classifies."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from nimblebert.errors import UserError

_FIX = 'write one JSON object like {"text": "..."} or one JSON string per line'


def read_texts_jsonl(stream: Iterable[str] | Iterable[bytes]) -> list[dict[str, Any]]:
    """Parse JSON lines into dicts that each hold ``text`` (and maybe ``text_pair``).

    A line is a JSON object with a string ``text`` (other keys, e.g. an id, are kept as they are) or a
    bare JSON string, which becomes ``{"text": ...}``. Blank lines are skipped. Anything else is a
    :class:`UserError` naming the line.
    """
    name = getattr(stream, "name", "input")
    rows: list[dict[str, Any]] = []
    number = 0
    try:
        for number, line in enumerate(stream, start=1):
            if isinstance(line, bytes):
                line = line.decode("utf-8")
            else:
                # A text stream opened with errors="surrogateescape" (Python's standard input under a C/POSIX
                # locale) turns bad bytes into lone surrogates, which fail only later, when encoded again.
                line.encode("utf-8")
            line = line.lstrip("\ufeff") if number == 1 else line  # a byte-order mark from some editors
            if not line.strip():
                continue
            rows.append(_parse(line, f"{name} line {number}"))
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise UserError(f"{name} is not UTF-8 (line {max(number, 1)}); re-save it as UTF-8") from None
    return rows


def _parse(line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where} is not valid JSON ({err.msg}); {_FIX}") from None
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict):
        raise UserError(f"{where} is a JSON {type(value).__name__}, not an object or string; {_FIX}")
    if not isinstance(value.get("text"), str):
        raise UserError(f'{where} has no "text" string; {_FIX}')
    if not value["text"].strip():
        # Refused as in training data: a classifier has nothing to read, and a silent label for it would be a
        # guess. Blank lines (no JSON at all) are skipped instead.
        raise UserError(f"{where}: the text is empty; give every line a non-empty text (or drop the line)")
    row = dict(value)
    if row.get("text_pair") is None:
        row.pop("text_pair", None)
    elif not isinstance(row["text_pair"], str):
        raise UserError(f'{where}: "text_pair" must be a string; {_FIX}')
    return row
