"""SSA's weak token labels, made each epoch by probing the latest model (official ``data_util.py``:
``aug_func``, ``Aug_each_ckpt``; METHODS.md §3 "Weak label generation").

For an epoch with probed share r (0 in epoch 0, then +0.2 per epoch up to 0.8), the training set is
``len_aug = round(r·N)`` probed examples plus ``N − len_aug`` originals drawn at random: N rows every epoch.
A probed example is an original whose **masked variant** leaves a correct prediction unchanged: the
original (unmasked) text is trained on with token labels 0 at the masked positions (unimportant), 1 at
the other text tokens, and −100 (ignored) at special tokens and padding; originals get all-1 labels. This is
the code's rule (the paper's prose describes the mirror image).

Masking, per text segment (each side of a pair separately), as the official code: at every text token,
with probability ``aug_threshold`` a masking event happens; it masks a span inside the token's own
length-quartile of the segment, ending at a random position of that quartile, 3 tokens long if u >
``rm_threshold``, 2 if u > ``rm_low``, else 1 (u uniform), clipped to the quartile.

Rounds: the model's predictions on the originals are computed once per epoch; each round masks every
still-unused, correctly predicted example afresh and keeps the qualifying variants, until ``len_aug``
distinct examples qualify or ``probe_rounds`` rounds have run (the official loop has no cap; the shortfall,
if any, is reported and filled with originals). Deviation: one probed variant per example per epoch (the
official code may keep two different variants of the same example); it keeps the epoch's rows distinct.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...data import make_loader
from ...io import write_json
from ...model import NimbleModel
from .config import SsaConfig

if TYPE_CHECKING:  # imported where used: every command that loads a model imports this module
    import datasets

CACHE_FILE = "probed.jsonl"


def aug_ratio(epoch: int, cfg: SsaConfig) -> float:
    """Share of probed examples in ``epoch``'s training set: 0, then +``aug_ratio_step`` per epoch, capped."""
    return min(epoch * cfg.aug_ratio_step, cfg.max_aug_ratio)


def text_segments(input_ids: list[int], special_ids: set[int]) -> list[list[int]]:
    """Positions of each run of non-special tokens (a pair gives two segments)."""
    segments: list[list[int]] = []
    current: list[int] = []
    for i, tok in enumerate(input_ids):
        if tok in special_ids:
            if current:
                segments.append(current)
            current = []
        else:
            current.append(i)
    if current:
        segments.append(current)
    return segments


def mask_positions(input_ids: list[int], special_ids: set[int], cfg: SsaConfig, rng: random.Random) -> list[int]:
    """The positions the official masking rule masks in one example (sorted, never a special token)."""
    masked: set[int] = set()
    for seg in text_segments(input_ids, special_ids):
        n = len(seg)
        bounds = [round(n * q / 4) for q in range(5)]  # quartile q covers seg[bounds[q]:bounds[q+1]]
        for j in range(n):
            if rng.random() >= cfg.aug_threshold:
                continue
            q = min(3, next(k for k in range(4) if j < bounds[k + 1]))
            lo, hi = bounds[q], bounds[q + 1]
            end = rng.randrange(lo, hi)
            u = rng.random()
            span = 3 if u > cfg.rm_threshold else 2 if u > cfg.rm_low else 1
            masked.update(seg[k] for k in range(max(lo, end - span + 1), end + 1))
    return sorted(masked)


def token_labels(input_ids: list[int], special_ids: set[int], masked: list[int]) -> list[int]:
    """−100 at special tokens, 0 at masked positions, 1 at the other text tokens."""
    labels = [-100 if tok in special_ids else 1 for tok in input_ids]
    for i in masked:
        labels[i] = 0
    return labels


@torch.inference_mode()
def _predict(model: NimbleModel, rows: datasets.Dataset, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    preds = torch.empty(len(rows), dtype=torch.long)
    for batch in make_loader(rows, model.tokenizer, batch_size, shuffle=False, bucket_by_length=True):
        batch = {k: v.to(device) for k, v in batch.items()}
        preds[batch["index"].cpu()] = model.infer(batch).logits.argmax(dim=-1).cpu()
    return preds


def probe_epoch(model: NimbleModel, train: datasets.Dataset, epoch: int, cfg: SsaConfig, seed: int,
                cache: Path | None = None) -> tuple[datasets.Dataset, dict[str, Any]]:
    """The training set of ``epoch`` (N rows with ``token_labels``) and a report of the probing cost.

    ``train`` is the encoded training split (with ``labels``). The result is cached in ``cache`` (a folder)
    so that a resumed run trains on the same rows.
    """
    import datasets

    if cache is not None and (cache / CACHE_FILE).exists():
        rows = [json.loads(line) for line in (cache / CACHE_FILE).read_text().splitlines()]
        return datasets.Dataset.from_list(rows), json.loads((cache / "probe.json").read_text())
    start = time.time()
    rng = random.Random(seed * 1000 + epoch)
    special = set(model.tokenizer.all_special_ids)
    mask_id = model.tokenizer.mask_token_id
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask", "labels") if c in train.column_names]
    base = train.select_columns(columns).with_format(None)
    n = len(base)
    want = round(aug_ratio(epoch, cfg) * n)
    probed: dict[int, list[int]] = {}
    rounds = probed_rows = 0
    if want > 0:
        if mask_id is None:
            raise ValueError("SSA's probing needs a tokenizer with a mask token")
        was_training = model.training
        model.eval()
        gold = torch.tensor(base["labels"])
        original = _predict(model, base, cfg.probe_batch_size)
        candidates = [i for i in range(n) if original[i] == gold[i]]
        ids = base["input_ids"]
        while len(probed) < want and rounds < cfg.probe_rounds:
            rounds += 1
            todo = [i for i in candidates if i not in probed]
            rng.shuffle(todo)
            variants: list[tuple[int, list[int]]] = []  # (example, masked input ids)
            positions: list[list[int]] = []
            for i in todo:
                masked = mask_positions(ids[i], special, cfg, rng)
                if masked:  # a variant with nothing masked would qualify trivially and teach nothing
                    hidden = set(masked)
                    variants.append((i, [mask_id if k in hidden else t for k, t in enumerate(ids[i])]))
                    positions.append(masked)
            if not variants:
                continue
            masked_rows = base.select([i for i, _ in variants]).remove_columns("input_ids").add_column(
                "input_ids", [row for _, row in variants])
            probed_rows += len(variants)
            after = _predict(model, masked_rows, cfg.probe_batch_size)
            for (i, _), masked, pred in zip(variants, positions, after.tolist(), strict=True):
                if pred == int(original[i]) and len(probed) < want:
                    probed[i] = masked
        model.train(was_training)
    # The epoch's set: the probed examples, then originals drawn at random from the rest, N in all.
    rest = [i for i in range(n) if i not in probed]
    rng.shuffle(rest)
    chosen = list(probed) + rest[: n - len(probed)]
    rows = []
    for i in chosen:
        row = {c: base[i][c] for c in columns}
        row["token_labels"] = token_labels(row["input_ids"], special, probed.get(i, []))
        rows.append(row)
    report = {"epoch": epoch, "aug_ratio": aug_ratio(epoch, cfg), "wanted": want, "probed": len(probed),
              "rounds": rounds, "probed_rows": probed_rows + (n if want else 0),
              "probe_seconds": round(time.time() - start, 2)}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / (CACHE_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(cache / "probe.json", report)
        tmp.replace(cache / CACHE_FILE)  # last: its presence means the epoch's set is complete
    return datasets.Dataset.from_list(rows), report
