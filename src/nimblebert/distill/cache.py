"""The teacher (:class:`~.teacher.Teacher`) run once per example: its logits, hidden states and attention scores
cached on disk (TinyBERT reads all three, TR-BERT's joint stage the logits).

Distillation reads the same teacher outputs every epoch (and the intermediate and prediction stages read the
same augmented set), so the teacher runs once over each training set, in eval mode, in batches bucketed by
length, and the student's steps look its outputs up by the rows' ``index``. Per example only its real tokens
are stored: the mapped hidden states (n_h, L, d) and attention scores (n_a, h, L, L) in float16 in two flat
files read through ``numpy.memmap``, the logits (C,) in float32. Real-token outputs do not depend on how much
padding a batch had, so the cached targets are exactly what the teacher would give in the student's batch.

The hidden states and scores take ``2·(n_h·L·d + n_a·h·L²)`` bytes per example — about 145 KB for a 3-layer
student of MiniLM-L6 on mr (27 tokens on average), so 0.8 GB for mr's training set augmented to 5,600 rows but
8.5 GB at the paper's N = 20. Above ``--teacher-cache-gb`` they are recomputed at every step instead (the logits, a few
bytes per example, are always cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import data_home, make_loader
from ..train.progress import progress_bar
from .fingerprint import rows_fingerprint
from .teacher import Targets, Teacher

VERSION = 1  # bump when the cached files change meaning


class TeacherCache:
    """Cached teacher outputs of one encoded dataset, looked up by row index.

    Two folders, so that runs share what they can: ``logits-*`` (the logits of every row, for any student)
    and ``inner-*`` (the hidden states and scores of the teacher layers one layer map needs).

    Attributes:
        logits: (n, C) float32, or None. hidden/scores: flat float16 memmaps, or None when not cached.
    """

    def __init__(self, lengths: np.ndarray, logits_folder: Path | None, inner_folder: Path | None) -> None:
        self.lengths = lengths
        self.logits = torch.from_numpy(np.load(logits_folder / "logits.npy")) if logits_folder else None
        self.inner = inner_folder is not None
        self.hidden_idx: list[int] = []
        self.score_idx: list[int] = []
        self.hidden = self.scores = None
        self.d = self.h = 0
        if inner_folder is not None:
            meta = json.loads((inner_folder / "meta.json").read_text())
            self.hidden_idx, self.score_idx = meta["hidden_idx"], meta["score_idx"]
            self.d, self.h = meta["hidden_size"], meta["heads"]
            self.hidden = np.memmap(inner_folder / "hidden.f16", dtype=np.float16, mode="r")
            self.scores = np.memmap(inner_folder / "scores.f16", dtype=np.float16, mode="r")
        nh, na = len(self.hidden_idx), len(self.score_idx)
        self.hidden_offsets = np.concatenate([[0], np.cumsum(nh * lengths * self.d)])
        self.score_offsets = np.concatenate([[0], np.cumsum(na * self.h * lengths ** 2)])

    def __len__(self) -> int:
        return len(self.lengths)

    def targets(self, batch: dict[str, torch.Tensor], logits: bool, inner: bool) -> Targets:
        """The cached targets of the batch's rows (``batch["index"]``), padded to its width, on its device."""
        index = batch["index"].tolist()
        device = batch["input_ids"].device
        b, width = batch["input_ids"].shape
        out_logits = self.logits[index].to(device) if logits and self.logits is not None else None
        hidden: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        if inner and self.inner:
            nh, na = len(self.hidden_idx), len(self.score_idx)
            hid = torch.zeros(nh, b, width, self.d)
            sco = torch.zeros(na, b, self.h, width, width)
            for r, i in enumerate(index):
                n = int(self.lengths[i])
                part = self.hidden[self.hidden_offsets[i]:self.hidden_offsets[i + 1]]  # type: ignore[index]
                hid[:, r, :n] = torch.from_numpy(part.astype(np.float32).reshape(nh, n, self.d))
                part = self.scores[self.score_offsets[i]:self.score_offsets[i + 1]]  # type: ignore[index]
                sco[:, r, :, :n, :n] = torch.from_numpy(part.astype(np.float32).reshape(na, self.h, n, n))
            hidden = [t.to(device) for t in hid.unbind(0)]
            scores = [t.to(device) for t in sco.unbind(0)]
        return Targets(out_logits, hidden, scores)


def cache_root(cache_dir: str, method: str) -> Path:
    """A method's cache folder: ``--cache-dir`` when given, else ``$NIMBLEBERT_HOME/cache/<method>``."""
    return Path(cache_dir).expanduser() if cache_dir else data_home() / "cache" / method


def inner_bytes(lengths: np.ndarray, n_hidden: int, n_scores: int, hidden_size: int, heads: int) -> int:
    """Disk taken by the float16 hidden states and scores of examples of these lengths."""
    lengths = lengths.astype(np.int64)
    return int(2 * (n_hidden * hidden_size * lengths.sum() + n_scores * heads * (lengths ** 2).sum()))


def _key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps({"version": VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:24]


def _publish(tmp: Path, folder: Path) -> None:
    """Rename a finished temporary folder into place (another process may have finished it first: keep theirs)."""
    try:
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def build_cache(
    teacher: Teacher, encoded: Any, tokenizer: Any, hidden_idx: list[int], score_idx: list[int], logits: bool,
    inner: bool, cache_dir: Path, batch_size: int = 64, progress: bool = True,
) -> TeacherCache:
    """Run the teacher once over ``encoded`` for what is not cached yet, and return the cache.

    Folders are named by the teacher's weights and the token ids (and, for hidden states and scores, by the
    layers kept); each is written to a temporary folder first and then renamed, so that a killed run never
    leaves a half-written cache behind.
    """
    cfg = teacher.hf.config
    lengths = np.array([len(r) for r in encoded["input_ids"]], dtype=np.int64)
    rows = rows_fingerprint([encoded["input_ids"], encoded["token_type_ids"]])
    logits_folder = Path(cache_dir) / f"logits-{_key(teacher=teacher.fingerprint(head=True), rows=rows)}"
    inner_key = _key(teacher=teacher.fingerprint(head=False), rows=rows, hidden=hidden_idx, scores=score_idx)
    inner_folder = Path(cache_dir) / f"inner-{inner_key}"
    need_logits = logits and not (logits_folder / "logits.npy").exists()
    need_inner = inner and not (inner_folder / "meta.json").exists()
    if need_logits or need_inner:
        nh, na, d, h = len(hidden_idx), len(score_idx), cfg.hidden_size, cfg.num_attention_heads
        hidden_off = np.concatenate([[0], np.cumsum(nh * lengths * d)])
        score_off = np.concatenate([[0], np.cumsum(na * h * lengths ** 2)])
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp_logits = Path(tempfile.mkdtemp(prefix=".logits.", dir=cache_dir)) if need_logits else None
        tmp_inner = Path(tempfile.mkdtemp(prefix=".inner.", dir=cache_dir)) if need_inner else None
        try:
            all_logits = np.zeros((len(lengths), cfg.num_labels), dtype=np.float32)
            hidden = scores = None
            if tmp_inner is not None:
                hidden = np.memmap(tmp_inner / "hidden.f16", dtype=np.float16, mode="w+",
                                   shape=(max(1, int(hidden_off[-1])),))
                scores = np.memmap(tmp_inner / "scores.f16", dtype=np.float16, mode="w+",
                                   shape=(max(1, int(score_off[-1])),))
            loader = make_loader(encoded, tokenizer, batch_size, shuffle=False, bucket_by_length=True)
            # tqdm on a terminal, plain lines with the time left in a pipe (a CI log gets no \r updates)
            bar = progress_bar(len(loader), 0, f"teacher outputs ({len(lengths):,} rows, once)", progress)
            for batch in loader:
                out = teacher.run(batch, hidden_idx if need_inner else [], score_idx if need_inner else [],
                                  logits=need_logits)
                for r, i in enumerate(batch["index"].tolist()):
                    n = int(lengths[i])
                    if out.logits is not None:
                        all_logits[i] = out.logits[r].cpu().numpy()
                    if hidden is not None and scores is not None:
                        # hidden states only (NAS-BERT's block outputs) or scores only leave the other list empty
                        if out.hidden:
                            block = torch.stack([t[r, :n] for t in out.hidden])  # (nh, L, d)
                            hidden[hidden_off[i]:hidden_off[i + 1]] = block.half().cpu().numpy().reshape(-1)
                        if out.scores:
                            block = torch.stack([t[r, :, :n, :n] for t in out.scores])  # (na, h, L, L)
                            scores[score_off[i]:score_off[i + 1]] = block.half().cpu().numpy().reshape(-1)
                bar.update()
            bar.close()
            if tmp_logits is not None:
                np.save(tmp_logits / "logits.npy", all_logits)
                _publish(tmp_logits, logits_folder)
            if tmp_inner is not None and hidden is not None and scores is not None:
                hidden.flush()
                scores.flush()
                (tmp_inner / "meta.json").write_text(json.dumps(
                    {"hidden_idx": hidden_idx, "score_idx": score_idx, "hidden_size": d, "heads": h,
                     "examples": len(lengths)}))
                _publish(tmp_inner, inner_folder)
        finally:
            for tmp in (tmp_logits, tmp_inner):
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
        what = " and ".join(w for w, need in (("logits", need_logits), ("hidden states and scores", need_inner))
                            if need)
        sys.stderr.write(f"distill: teacher {what} of {len(lengths)} rows cached in {cache_dir}\n")
    return TeacherCache(lengths, logits_folder if logits else None, inner_folder if inner else None)
