"""Data for nimblebert: built-in datasets, local folders, hub datasets; tokenization and batching.

Typical use::

    task = load_task("mr")                       # or a folder, or a hub id
    train = encode(task.train, tokenizer, max_length=64, has_pair=task.has_pair)
    loader = make_loader(train, tokenizer, batch_size=32, shuffle=True, seed=0)
    loader.batch_sampler.set_epoch(epoch)        # same order on a resumed run
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name and the submodule that defines it, imported on first use (PEP 562): ``datasets`` (pandas, pyarrow)
# takes a noticeable part of a second to import, and ``nimblebert predict`` needs only the collator.
_WHERE = {
    "Collator": "batching", "EpochBatchSampler": "batching", "encode": "batching", "make_loader": "batching",
    "builtin_names": "builtin", "data_home": "builtin", "prepare_builtin": "builtin",
    "read_texts_jsonl": "inputs", "TaskData": "task", "load_task": "task",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Collator",
    "EpochBatchSampler",
    "TaskData",
    "builtin_names",
    "data_home",
    "encode",
    "load_task",
    "make_loader",
    "prepare_builtin",
    "read_texts_jsonl",
]
