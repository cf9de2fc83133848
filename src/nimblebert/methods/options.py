"""A method's options dataclass rebuilt from the values a model folder stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def options_from(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` (a method's config dataclass) built from ``values``, keeping only the keys that are its fields.

    A component's saved options also hold what the method recorded beside them (e.g. TR-BERT's cuts,
    TinyBERT's ``student_init_used``), and a folder written before a field existed lacks it: both must load,
    the first ignored, the second at its default. The dataclass's own checks (``__post_init__``) run.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})
