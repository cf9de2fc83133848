"""Data for nimblebert: built-in datasets, local folders, hub datasets; tokenization and batching.

Typical use::

    task = load_task("mr")                       # or a folder, or a hub id
    train = encode(task.train, tokenizer, max_length=64, has_pair=task.has_pair)
    loader = make_loader(train, tokenizer, batch_size=32, shuffle=True, seed=0)
    loader.batch_sampler.set_epoch(epoch)        # same order on a resumed run
"""

from .batching import Collator, EpochBatchSampler, encode, make_loader
from .builtin import builtin_names, data_home, prepare_builtin
from .inputs import read_texts_jsonl
from .task import TaskData, load_task

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
