"""Content hashes that name the on-disk caches (augmented sets, teacher outputs): same inputs, same file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import torch


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes of the tensors (e.g. a model's state_dict)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rows_fingerprint(columns: Iterable[Iterable[Iterable[int]]]) -> str:
    """SHA-256 of token-id rows (each column a list of rows), with row boundaries."""
    h = hashlib.sha256()
    for column in columns:
        for row in column:
            arr = np.asarray(row, dtype=np.int64)
            h.update(np.int64(arr.size).tobytes())
            h.update(arr.tobytes())
        h.update(b"|")
    return h.hexdigest()
