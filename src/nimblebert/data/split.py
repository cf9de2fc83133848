"""A fixed, seeded, stratified split that comes out the same on every machine.

We order examples by a SHA-256 hash of (seed, text) instead of a NumPy or torch permutation: hashes do
not depend on library versions (NumPy does not promise the same random stream across releases), on
the platform, or on the order the examples were read in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

SPLIT_SEED = 20261123


def hash_order(keys: Sequence[str], seed: int, salt: str = "") -> list[int]:
    """Indices of ``keys`` in a pseudo-random order fixed by ``seed`` (ties broken by position)."""

    def digest(i: int) -> tuple[str, int]:
        return hashlib.sha256(f"{seed}\x1f{salt}\x1f{keys[i]}".encode()).hexdigest(), i

    return sorted(range(len(keys)), key=digest)


def stratified_split(
    keys: Sequence[str],
    labels: Sequence[int],
    fractions: dict[str, float],
    seed: int = SPLIT_SEED,
    rest: str = "train",
) -> dict[str, list[int]]:
    """Split example indices per class; ``fractions`` gives each held-out split's share.

    ``keys`` identify the examples (their text). Each class is shuffled on its own and cut
    ``round(n_class * fraction)`` examples per held-out split, in the order given; what is left
    goes to ``rest``. Each split is then shuffled again so that classes are interleaved in the files.
    Returns ``{split name: example indices}``.
    """
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)

    out: dict[str, list[int]] = {name: [] for name in [*fractions, rest]}
    for label in sorted(by_class):
        members = by_class[label]
        shuffled = [members[j] for j in hash_order([keys[i] for i in members], seed, salt="split")]
        start = 0
        for name, fraction in fractions.items():
            # floor(x + 0.5), not round(): Python's round() goes to even on .5.
            count = math.floor(len(members) * fraction + 0.5)
            out[name].extend(shuffled[start : start + count])
            start += count
        out[rest].extend(shuffled[start:])

    for name, indices in out.items():
        out[name] = [indices[j] for j in hash_order([keys[i] for i in indices], seed, salt="order")]
    return out
