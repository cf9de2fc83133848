"""The request and response shapes of ``POST /predict``, as text-embeddings-inference (TEI) defines them.

Request: ``{"inputs": ..., "truncate": false, "raw_scores": false}`` where ``inputs`` is, exactly as in TEI,
a string; a list of one string or a pair ``[a, b]``; or a batch ``[[a], [a, b], ...]`` (each item a list of
one or two strings). nimblebert adds one optional field, ``"accuracy_floor": float``: this request is never
answered by a ladder rung whose calibrated accuracy is lower (the knob cap per request).

Response: for a single input, a list of ``{"label", "score"}`` sorted by score, highest first (softmax
probabilities, or the raw logits with ``raw_scores``); for a batch, a list of those lists.

Errors are ``{"error": str, "error_type": str}``. Status codes, and where they differ from TEI's:

=====  ==============  ===========================================================================
code   error_type      when
=====  ==============  ===========================================================================
400    Empty           ``inputs`` is an empty list (TEI: 400 Empty as well)
413    Validation      body larger than the limit, more inputs than ``--max-client-batch-size``, or
                       an input longer than ``--max-input-length`` tokens without ``truncate``
422    Validation      anything else malformed: not JSON, not UTF-8, wrong types, unknown shapes
                       (TEI answers broken JSON with 400/422 from its framework, as plain text;
                       here every error is the JSON body above)
429    Overloaded      the queue is full or the latency target cannot be met (``Retry-After``), or
                       the request waited past its deadline before it could run
503    Unhealthy       loading, or draining for shutdown
=====  ==============  ===========================================================================

Everything here is plain Python (no web framework), so the parser is tested directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error", "error_type"}`` with an HTTP status."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def validation(message: str, status: int = 422) -> ApiError:
    return ApiError(status, "Validation", message)


@dataclass
class PredictRequest:
    """A parsed ``/predict`` body: the sequences (text, optional pair), whether it was a batch."""

    sequences: list[tuple[str, str | None]]
    batch: bool
    truncate: bool = False
    raw_scores: bool = False
    accuracy_floor: float | None = None


SHAPE = ("`inputs` must be a string, a list of one string or a pair of strings [a, b], or a batch "
         "[[a], [a, b], ...]")


def _sequence(item: Any, where: str) -> tuple[str, str | None]:
    if not isinstance(item, list) or not 1 <= len(item) <= 2 or not all(isinstance(s, str) for s in item):
        raise validation(f"{where} must be a list of one string or a pair of strings; {SHAPE}")
    return (item[0], item[1] if len(item) == 2 else None)


def _flag(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise validation(f"`{name}` must be true or false, got {type(value).__name__}")
    return value


def parse_predict(body: bytes, max_body_bytes: int, max_batch: int) -> PredictRequest:
    """Parse and check a ``/predict`` body; raises :class:`ApiError` (never anything else) on bad input."""
    if len(body) > max_body_bytes:
        raise validation(f"body is {len(body)} bytes; the limit is {max_body_bytes}", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise validation("body is not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise validation(f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise validation("body must be a JSON object with `inputs`")
    if "inputs" not in obj:
        raise validation("missing field `inputs`")
    inputs = obj["inputs"]
    if isinstance(inputs, str):
        sequences, batch = [(inputs, None)], False
    elif isinstance(inputs, list):
        if not inputs:
            raise ApiError(400, "Empty", "`inputs` cannot be empty")
        if all(isinstance(s, str) for s in inputs):
            if len(inputs) > 2:  # TEI's rule: a flat list is one sequence or one pair, never a batch
                raise validation(f"a flat list of {len(inputs)} strings is neither one input nor a pair; "
                                 "send a batch as [[a], [b], ...]")
            sequences, batch = [(inputs[0], inputs[1] if len(inputs) == 2 else None)], False
        else:
            if len(inputs) > max_batch:
                raise validation(f"batch of {len(inputs)} inputs; the limit is {max_batch} "
                                 "(--max-client-batch-size)", 413)
            sequences = [_sequence(item, f"inputs[{i}]") for i, item in enumerate(inputs)]
            batch = True
    else:
        raise validation(SHAPE)
    for text, pair in sequences:
        try:  # JSON may spell lone surrogates (\ud800) that no UTF-8 tokenizer accepts
            text.encode("utf-8")
            (pair or "").encode("utf-8")
        except UnicodeEncodeError:
            raise validation("an input holds invalid Unicode (a lone surrogate)") from None
        if not text.strip() and not (pair or "").strip():
            raise ApiError(400, "Empty", "an input is empty (nothing but white space)")
    floor = obj.get("accuracy_floor")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                              or not math.isfinite(floor) or not 0 <= floor <= 1):
        raise validation("`accuracy_floor` must be a number in [0, 1]")
    return PredictRequest(sequences, batch, _flag(obj, "truncate"), _flag(obj, "raw_scores"),
                          None if floor is None else float(floor))


def predictions(scores: list[float], labels: list[str]) -> list[dict[str, Any]]:
    """TEI's ``[{"score", "label"}, ...]``, highest score first."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    return [{"score": float(s), "label": label} for s, label in pairs]
