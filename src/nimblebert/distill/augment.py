"""TinyBERT's data augmentation (Jiao et al. 2020, §3.3 "Data Augmentation", Algorithm 1; the official
``TinyBERT/data_augmentation.py``).

For every text field: split it into words as BERT's basic tokenizer does; each purely alphabetic word that
is not a stop word is a *candidate*. A candidate gets K replacement words:

- one WordPiece long: the top-K predictions of a masked language model at its position, the input being
  ``[CLS] sentence-with-[MASK] [SEP] original-sentence [SEP]`` (so the model sees the word as context),
  pieces starting with ``##`` (and special tokens) dropped;
- when no masked-LM head is available (MiniLM ships none): the K nearest whole words to it by cosine
  similarity in the model's input-embedding space;
- several WordPieces long: the paper takes its K nearest GloVe words. We have no GloVe offline, and the
  mean of the pieces' input embeddings is no substitute (for "unpretentious" its neighbours are "un",
  "une", "una", ...: the first piece dominates), so such words stay as they are.

Then N trials: in each, every candidate is replaced by one of its K words drawn uniformly, with probability
p; a trial's sentence is kept if it is new. The output is the original plus up to N variants per field
(Algorithm 1 with p_t = 0.4, N_a = N, K = 15). For a pair, each field is augmented while the other stays
as it is. Labels are copied; distillation relabels every row with the teacher's outputs anyway.

The augmented set is written to a JSONL file named by a hash of everything it depends on (texts, labels,
tokenizer, candidate model weights, K, N, p, seed), so a second run with the same inputs reads it back.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..io import atomic_write
from ..train.progress import tracked
from .config import AugmentOptions
from .fingerprint import tensors_fingerprint

VERSION = 1  # bump when the output of the algorithm changes, so old cached sets are not reused

# The official stop-word list (NLTK's English list plus "'s" and "'re"): never replaced.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves this that that'll these
those am is are was were be been being have has had having do does did doing a an the and but if or because as
until while of at by for with about against between into through during before after above below to from up down
in out on off over under again further then once here there all any both each few more most other some such no
nor not only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain aren
aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn
wouldn't 's 're
""".split())
_ALPHABETIC = re.compile(r"[a-z]+")


def is_candidate(word: str) -> bool:
    """A word may be replaced when it is purely alphabetic (a-z, any case) and not a stop word (official rule)."""
    lower = word.lower()
    return bool(_ALPHABETIC.fullmatch(lower)) and lower not in STOP_WORDS


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        raise UserError("TinyBERT's augmentation needs a fast (tokenizers) BERT-style tokenizer; pass --no-augment "
                        "to distil without it")
    return backend


def split_words(tokenizer: Any, text: str) -> list[str]:
    """Words as BERT's basic tokenizer makes them: normalised (lower-cased for uncased models), split on
    white space and punctuation."""
    backend = _backend(tokenizer)
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


def word_pieces(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """The WordPiece ids of each word."""
    if not words:
        return []
    enc = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token_id, w in zip(enc["input_ids"], enc.word_ids(), strict=True):
        if w is not None:
            pieces[w].append(token_id)
    return pieces


class EmbeddingNeighbours:
    """The K whole words nearest to a word in an input-embedding space (cosine similarity).

    Candidates are vocabulary tokens that are whole words (no ``##`` continuation), purely alphabetic and not
    special. A query of several pieces is the mean of their vectors (not used by :class:`Augmenter`, see the
    module docstring).
    """

    def __init__(self, embeddings: torch.Tensor, tokenizer: Any, k: int) -> None:
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        allowed = sorted(i for t, i in vocab.items()
                         if i < embeddings.size(0) and i not in special and _ALPHABETIC.fullmatch(t.lower()))
        if not allowed:
            raise UserError("the tokenizer has no whole-word tokens to use as replacements; pass --no-augment")
        id_to_token = {i: t for t, i in vocab.items()}
        self.k = k
        self.embeddings = embeddings.detach().float().cpu()  # (V, d)
        self.ids = torch.tensor(allowed)
        self.tokens = [id_to_token[i] for i in allowed]
        self.unit = F.normalize(self.embeddings[self.ids], dim=-1)  # (V', d)

    @torch.no_grad()
    def __call__(self, queries: Sequence[tuple[str, Sequence[int]]], chunk: int = 1024) -> list[list[str]]:
        """``queries``: (word, its piece ids) -> for each, up to K neighbour words, nearest first."""
        out: list[list[str]] = []
        for start in range(0, len(queries), chunk):
            part = queries[start:start + chunk]
            vectors = torch.stack([self.embeddings[list(pieces)].mean(dim=0) for _, pieces in part])  # (q, d)
            sims = F.normalize(vectors, dim=-1) @ self.unit.T  # (q, V')
            top = sims.topk(min(self.k + 1, sims.size(1)), dim=-1).indices  # one extra: the word itself
            for (word, _), row in zip(part, top.tolist(), strict=True):
                found = [self.tokens[j] for j in row if self.tokens[j] != word.lower()][: self.k]
                out.append([w.title() for w in found] if word.istitle() else found)  # official: keep title case
        return out


class MaskedLMCandidates:
    """The top-K predictions of a masked LM for one masked word in context (single-piece words)."""

    def __init__(self, mlm: nn.Module, tokenizer: Any, k: int, batch_size: int = 16) -> None:
        self.mlm = mlm.eval()
        self.k = k
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.max_length = int(getattr(mlm.config, "max_position_embeddings", 512))
        self.special = set(tokenizer.all_special_ids)
        self.id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
        self.calls = 0  # forward passes (tests check the cache makes a second run skip them)
        self._unknown_ids: torch.Tensor | None = None

    def _unknown(self, size: int) -> torch.Tensor:
        """(V,) True for output ids that the tokenizer does not know."""
        if self._unknown_ids is None or self._unknown_ids.numel() != size:
            self._unknown_ids = torch.tensor([j not in self.id_to_token for j in range(size)])
        return self._unknown_ids

    def _inputs(self, pieces: Sequence[int], position: int) -> tuple[list[int], list[int], int]:
        """``[CLS] masked [SEP] original [SEP]`` with segment ids 0 then 1, truncated to the model's length."""
        tok = self.tokenizer
        masked = list(pieces)
        masked[position] = tok.mask_token_id
        ids = [tok.cls_token_id, *masked, tok.sep_token_id, *pieces, tok.sep_token_id]
        types = [0] * (len(masked) + 2) + [1] * (len(pieces) + 1)
        return ids[: self.max_length], types[: self.max_length], position + 1

    @torch.no_grad()
    def __call__(self, queries: Sequence[tuple[Sequence[int], int]], progress: bool = False) -> list[list[str]]:
        """``queries``: (a sentence's piece ids, position of the word to mask) -> up to K words each."""
        results: list[list[str]] = [[] for _ in queries]
        built = [self._inputs(p, pos) for p, pos in queries]
        # Longest first, so that each batch holds similar lengths (less padding); results go back by index.
        order = sorted(range(len(built)), key=lambda i: -len(built[i][0]))
        device = next(self.mlm.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tracked(batches, len(batches), "masked-LM candidates", progress):
            batch = [i for i in batch if built[i][2] < self.max_length]  # masked word cut off: no candidates
            if not batch:
                continue
            width = max(len(built[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(batch):
                n = len(built[i][0])
                ids[r, :n] = torch.tensor(built[i][0])
                types[r, :n] = torch.tensor(built[i][1])
                mask[r, :n] = 1
            logits = self.mlm(input_ids=ids.to(device), token_type_ids=types.to(device),
                              attention_mask=mask.to(device)).logits  # (b, t, V)
            self.calls += 1
            rows = torch.arange(len(batch), device=device)
            positions = torch.tensor([built[i][2] for i in batch], device=device)
            at_mask = logits[rows, positions].float()  # (b, V)
            # Ids past the tokenizer's vocabulary (models pad their output matrix) are no words at all.
            unknown = self._unknown(at_mask.size(-1)).to(device)
            at_mask = at_mask.masked_fill(unknown, float("-inf"))
            # The official order: the top K first, then '##' pieces (and, here, special tokens) dropped.
            top = at_mask.topk(min(self.k, int((~unknown).sum())), dim=-1).indices.tolist()  # (b, K)
            for i, ids_k in zip(batch, top, strict=True):
                results[i] = [self.id_to_token[j] for j in ids_k
                              if j not in self.special and not self.id_to_token[j].startswith("##")]
        return results


def make_variants(words: Sequence[str], candidates: dict[int, list[str]], n: int, p: float,
                  rng: random.Random) -> list[str]:
    """Algorithm 1's sampling: N trials, each replacing every candidate position with probability p by a
    uniformly drawn candidate; the new sentences (joined with spaces, as the official code writes them)."""
    seen = {" ".join(words)}
    variants = []
    for _ in range(n):
        new = list(words)
        for position, options in candidates.items():
            choice = rng.choice(options)  # drawn before the coin, in the official order
            if rng.random() < p:
                new[position] = choice
        sentence = " ".join(new)
        if sentence not in seen:
            seen.add(sentence)
            variants.append(sentence)
    return variants


class Augmenter:
    """Candidates for every candidate word of many sentences: from a masked LM when given, else from the
    embedding neighbours (single-piece words only, see the module docstring)."""

    def __init__(self, tokenizer: Any, k: int, mlm: nn.Module | None = None,
                 embeddings: torch.Tensor | None = None, progress: bool = False) -> None:
        if (mlm is None) == (embeddings is None):
            raise ValueError("Augmenter needs a masked LM or an embedding matrix (one of them)")
        self.tokenizer = tokenizer
        self.mlm = MaskedLMCandidates(mlm, tokenizer, k) if mlm is not None else None
        self.neighbours = EmbeddingNeighbours(embeddings, tokenizer, k) if embeddings is not None else None
        self.unk = tokenizer.unk_token_id
        self.progress = progress

    def candidates(self, sentences: Sequence[str]) -> list[tuple[list[str], dict[int, list[str]]]]:
        """For each sentence: its words and {word position: replacement candidates} (a word with no
        candidate keeps itself as its only option, as in the official code)."""
        parsed = []
        mlm_queries: list[tuple[list[int], int]] = []
        mlm_where: list[tuple[int, int]] = []
        emb_queries: dict[tuple[str, tuple[int, ...]], list[tuple[int, int]]] = {}
        for s, text in enumerate(sentences):
            words = split_words(self.tokenizer, text)
            pieces = word_pieces(self.tokenizer, words)
            flat = [i for p in pieces for i in p]
            parsed.append((words, {}))
            start = 0
            for w, (word, ids) in enumerate(zip(words, pieces, strict=True)):
                offset, start = start, start + len(ids)
                if len(ids) != 1 or self.unk in ids or not is_candidate(word):
                    continue  # unknown and several-piece words have no good candidates here: they stay
                if self.mlm is not None:
                    mlm_queries.append((flat, offset))
                    mlm_where.append((s, w))
                else:  # out of context, the same word always has the same neighbours: ask once
                    emb_queries.setdefault((word, tuple(ids)), []).append((s, w))
        if mlm_queries:
            for (s, w), found in zip(mlm_where, self.mlm(mlm_queries, self.progress), strict=True):  # type: ignore[misc]
                parsed[s][1][w] = found or [parsed[s][0][w]]
        keys = list(emb_queries)
        for key, found in zip(keys, self.neighbours(keys) if keys else [], strict=True):  # type: ignore[misc]
            for s, w in emb_queries[key]:
                parsed[s][1][w] = found or [parsed[s][0][w]]
        return parsed


def augment_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str], augmenter: Augmenter, n: int, p: float,
                 seed: int) -> list[dict[str, Any]]:
    """The original row, then for each field its variants with the other fields unchanged."""
    per_field = {f: augmenter.candidates([str(r[f]) for r in rows]) for f in fields}
    out = []
    for i, row in enumerate(rows):
        out.append(dict(row))
        for f in fields:
            words, candidates = per_field[f][i]
            rng = random.Random(f"{seed}-{i}-{f}")  # per example and field: independent of the batch order
            for variant in make_variants(words, candidates, n, p, rng):
                out.append({**row, f: variant})
    return out


def augment_dataset(
    ds: Any, has_pair: bool, tokenizer: Any, source: nn.Module, kind: str, n: int, p: float, k: int, seed: int,
    cache_dir: Path | None = None, progress: bool = False,
) -> Any:
    """The augmented training set (a ``datasets.Dataset`` with the columns of ``ds``), read from the cache when
    the same inputs were augmented before.

    Args:
        ds: rows with ``text`` (and ``text_pair`` when ``has_pair``) and usually ``label``.
        source: ``kind == "mlm"``: a ``*ForMaskedLM``; ``"embeddings"``: any model (its input embeddings are used).
    """
    import datasets

    if kind not in ("mlm", "embeddings"):
        raise ValueError(f"kind must be 'mlm' or 'embeddings', got {kind!r}")
    fields = ["text", "text_pair"] if has_pair else ["text"]
    rows = [dict(r) for r in ds]
    path = None
    if cache_dir is not None:
        embeddings = source.get_input_embeddings().weight
        weights = tensors_fingerprint(source.state_dict() if kind == "mlm" else {"embeddings": embeddings})
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
        key = hashlib.sha256(json.dumps(
            {"version": VERSION, "kind": kind, "n": n, "p": p, "k": k, "seed": seed, "fields": fields,
             "vocab": vocab, "weights": weights, "lower": str(_backend(tokenizer).normalizer), "rows": rows},
            sort_keys=True, default=str).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"augmented-{key}.jsonl"
        if path.exists():
            with path.open(encoding="utf-8") as f:
                cached = [json.loads(line) for line in f if line.strip()]
            sys.stderr.write(f"augmentation (TinyBERT §3.3): set read from the cache ({len(cached)} rows, {path})\n")
            return datasets.Dataset.from_list(cached)
    augmenter = Augmenter(tokenizer, k, mlm=source if kind == "mlm" else None,
                          embeddings=None if kind == "mlm" else source.get_input_embeddings().weight,
                          progress=progress)
    out = augment_rows(rows, fields, augmenter, n, p, seed)
    if path is not None:
        atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8"))
    sys.stderr.write(f"augmentation (TinyBERT §3.3): {len(rows)} examples into {len(out)} rows ({kind} candidates, "
                     f"N={n}, p={p}, K={k})\n")
    return datasets.Dataset.from_list(out)


def has_mlm_head(folder: str) -> bool:
    """Whether a local model folder's weights hold a masked-LM head (BERT ``cls.predictions``, RoBERTa ``lm_head``)."""
    path = Path(folder)
    if not path.is_dir():
        return False
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            if any(k.startswith(("cls.predictions.", "lm_head.")) for k in handle.keys()):
                return True
    return False


def augmentation_source(opts: AugmentOptions, spec: str | None, fallback: nn.Module, tokenizer: Any
                        ) -> tuple[nn.Module, str]:
    """The model that proposes replacement words, and 'mlm' or 'embeddings'.

    ``spec`` names the run's teacher (or model): it proposes them when it has a masked-LM head; without one,
    the input embeddings of ``fallback`` (the loaded teacher) do, unless ``--aug-model`` names another model.
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    from ..model import load_tokenizer, resolve_model

    spec = opts.aug_model or spec
    folder = resolve_model(spec) if spec else None
    mlm = bool(folder) and has_mlm_head(folder)  # type: ignore[arg-type]
    if opts.aug_source == "mlm" and not mlm:
        raise UserError(f"--aug-source mlm: {spec} has no masked-LM head; give one with --aug-model (e.g. a "
                        "bert-base-uncased folder) or use --aug-source embeddings")
    if opts.aug_model and load_tokenizer(folder).get_vocab() != tokenizer.get_vocab():  # type: ignore[arg-type]
        raise UserError(f"--aug-model {opts.aug_model} has another vocabulary than the student; its candidates "
                        "must be words of the student's tokenizer")
    if opts.aug_source != "embeddings" and mlm:
        return AutoModelForMaskedLM.from_pretrained(folder).eval(), "mlm"
    if opts.aug_model:
        return AutoModel.from_pretrained(folder).eval(), "embeddings"
    return fallback, "embeddings"


def augment_cache(cache_dir: str = "") -> Path:
    """Where augmented sets are cached: ``--cache-dir``/augment, by default TinyBERT's
    (``$NIMBLEBERT_HOME/cache/tinybert/augment``), which DynaBERT shares: the same inputs give the same set."""
    from .cache import cache_root

    return cache_root(cache_dir, "tinybert") / "augment"


def augment_training_set(ds: Any, has_pair: bool, opts: AugmentOptions, train: Any, teacher: nn.Module,
                         tokenizer: Any, cache_dir: Path) -> Any:
    """``ds`` augmented with the run's options (``train``: its TrainOptions, for the seed, the teacher's name
    and the progress bar), candidates from :func:`augmentation_source`; cached in ``cache_dir``."""
    source, kind = augmentation_source(opts, train.teacher or train.model, teacher, tokenizer)
    return augment_dataset(ds, has_pair, tokenizer, source, kind, opts.aug_copies, opts.aug_p, opts.aug_candidates,
                           train.seed, cache_dir, progress=train.progress)


def encoded_training_set(data: Any, opts: AugmentOptions, train: Any, teacher: nn.Module, tokenizer: Any,
                         label_names: Sequence[str], cache_dir: Path) -> Any:
    """The run's training texts (:func:`~.texts.training_task`), augmented when ``opts.augment``
    (:func:`augment_training_set`, cached in ``cache_dir``), encoded at ``train.max_length``: what TinyBERT's task
    stages and DynaBERT's distillation stages (``--augment``) train on, the teacher relabelling every row."""
    from ..data import encode
    from .texts import training_task

    task = training_task(data, train, list(label_names))
    rows = task.train
    if opts.augment:
        rows = augment_training_set(rows, task.has_pair, opts, train, teacher, tokenizer, cache_dir)
    return encode(rows, tokenizer, train.max_length, task.has_pair)
