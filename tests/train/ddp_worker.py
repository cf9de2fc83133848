"""Run under ``torchrun --nproc_per_node 2``: train the tiny model, then write this rank's weights digest."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from nimblebert.data import encode, load_task
from nimblebert.methods import get_method
from nimblebert.model import from_base
from nimblebert.train.loop import train
from nimblebert.train.stages import TrainOptions


def main(model_dir: str, data_dir: str, out: str) -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)  # different on purpose: DDP must make them equal
    task = load_task(data_dir)
    model = from_base(model_dir, task.label_names)
    enc = {s: encode(getattr(task, s), model.tokenizer, 32, False) for s in ("train", "validation")}
    opts = TrainOptions(out=out, max_steps=6, batch_size=8, lr=1e-3, progress=False, eval_every=3)
    train(model, get_method("finetune").stages(model, opts), enc["train"], enc["validation"], opts)
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "world": world, "sha256": digest.hexdigest()}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
