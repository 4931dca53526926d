"""Exact and near-duplicate removal. The first occurrence is kept; later ones are reported
with the location of the record they duplicate.

- exact: the whole record (roles included) compared case- and whitespace-insensitively, so
  records that differ only in case or spacing are exact duplicates, not near ones (the report
  says "exact (ignoring case and whitespace)").
- near: Jaccard similarity of word 3-shingles ≥ ``threshold`` (``dataPolicy.nearDuplicateThreshold``).
  Candidates come from MinHash LSH (128 permutations; bands and rows chosen so that a pair at
  the threshold becomes a candidate with probability ≥ 0.95), and each candidate's true Jaccard
  is then computed from the shingle sets: nothing under the threshold is ever removed, and a
  pair at or just above it is missed with probability ≤ 5% (the LSH trade-off). Time is linear in the number of records: each record is hashed once and
  compared only with the records sharing a band bucket, at most ``MAX_CANDIDATES`` of them.
  Records shorter than 3 words are one shingle.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from kubetune_trainer.data.formats import canonical, record_text
from kubetune_trainer.data.records import Location, Record

SHINGLE_WORDS = 3
NUM_PERM = 128
MAX_CANDIDATES = 100
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")
_GRAM_MULTIPLIER = np.uint64(1_000_003)


@dataclass(frozen=True)
class Duplicate:
    """A removed record and the kept record it duplicates."""

    loc: Location
    duplicate_of: Location
    kind: Literal["exact", "near"]
    similarity: float = 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "location": str(self.loc),
            "duplicateOf": str(self.duplicate_of),
            "kind": self.kind,
            "similarity": round(self.similarity, 3),
        }


def exact_key(text: str) -> bytes:
    """Digest of the canonical text."""
    return hashlib.blake2b(canonical(text).encode(), digest_size=16).digest()


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[int]:
    """32-bit hashes of the word ``size``-grams of the canonical text."""
    return frozenset(_shingle_array(canonical(text), size).tolist())


def _shingle_array(canonical_text: str, size: int = SHINGLE_WORDS) -> np.ndarray:
    """Sorted unique shingle hashes: word hashes combined per ``size``-gram, vectorised."""
    words = _WORD.findall(canonical_text)
    if len(words) < size:
        return np.array([zlib.crc32((" ".join(words) or canonical_text).encode())], dtype=np.uint64)
    hashed = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    combined = np.zeros(len(words) - size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            combined = combined * _GRAM_MULTIPLIER + hashed[k : len(words) - size + 1 + k]
    return np.unique(combined & _MAX32)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a ∩ b| / |a ∪ b|."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    return a, b


def minhash(hashes: frozenset[int] | np.ndarray, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signature (universal hashing modulo 2^61-1, as in datasketch)."""
    a, b = _permutations(num_perm)
    if isinstance(hashes, np.ndarray):
        values = hashes
    else:
        values = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    with np.errstate(over="ignore"):
        permuted = ((values[:, None] * a[None, :] + b) % _MERSENNE) & _MAX32
    return permuted.min(axis=0)  # type: ignore[no-any-return]


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.95) -> tuple[int, int]:
    """(bands, rows) that make a pair at exactly ``threshold`` a candidate with probability ≥
    ``recall``, with the fewest candidates below it (those are only checked, never removed)."""
    grid = np.linspace(0.0, threshold, 101)
    best, best_fp = (num_perm, 1), float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands < recall:
            continue
        false_pos = float(np.trapezoid(1.0 - (1.0 - grid**rows) ** bands, grid))
        if false_pos < best_fp:
            best, best_fp = (bands, rows), false_pos
    return best


def deduplicate(
    records: Sequence[Record], mode: Literal["none", "exact", "near"], threshold: float = 0.9
) -> tuple[list[Record], list[Duplicate]]:
    """Records without duplicates (order kept), and the duplicates removed."""
    if mode == "none":
        return list(records), []
    kept: list[Record] = []
    removed: list[Duplicate] = []
    seen: dict[bytes, Location] = {}
    bands, rows = lsh_params(threshold)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    sets: list[np.ndarray] = []
    for record in records:
        text = canonical(record_text(record.data))
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in seen:
            removed.append(Duplicate(record.loc, seen[key], "exact"))
            continue
        if mode == "near":
            shingle_set = _shingle_array(text)
            signature = minhash(shingle_set)
            keys = [signature[i * rows : (i + 1) * rows].tobytes() for i in range(bands)]
            match = _best_match(shingle_set, keys, buckets, sets, threshold)
            if match is not None:
                index, similarity = match
                removed.append(Duplicate(record.loc, kept[index].loc, "near", similarity))
                continue
            for band, band_key in zip(buckets, keys, strict=True):
                band.setdefault(band_key, []).append(len(kept))
            sets.append(shingle_set)
        seen[key] = record.loc
        kept.append(record)
    return kept, removed


def _best_match(
    shingle_set: np.ndarray,
    keys: list[bytes],
    buckets: list[dict[bytes, list[int]]],
    sets: list[np.ndarray],
    threshold: float,
) -> tuple[int, float] | None:
    candidates: set[int] = set()
    for band, band_key in zip(buckets, keys, strict=True):
        candidates.update(band.get(band_key, ()))
        if len(candidates) >= MAX_CANDIDATES:
            break
    best: tuple[int, float] | None = None
    for index in sorted(candidates)[:MAX_CANDIDATES]:
        similarity = _jaccard_sorted(shingle_set, sets[index])
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (index, similarity)
    return best
