"""Seeded train / validation / test split, the leakage check, and general-data mixing."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_trainer.data.formats import canonical, prompt_text
from kubetune_trainer.data.records import Location, Record


@dataclass(frozen=True)
class Leak:
    """A held-out record whose prompt also appears in an earlier split; it was removed."""

    loc: Location
    split: str
    other_split: str
    other_loc: Location

    def to_json(self) -> dict[str, str]:
        return {
            "location": str(self.loc),
            "split": self.split,
            "alsoIn": self.other_split,
            "otherLocation": str(self.other_loc),
        }


def split_sizes(n: int, validation: float, test: float) -> tuple[int, int, int]:
    """(train, validation, test) sizes: fractions rounded half up, at least one training record."""
    n_val = int(n * validation + 0.5)
    n_test = int(n * test + 0.5)
    while n_val + n_test >= n and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def split_records(
    records: Sequence[Record], validation: float, test: float, seed: int
) -> tuple[list[Record], list[Record], list[Record]]:
    """Shuffle with ``seed`` and cut into train, validation and test."""
    order = list(records)
    random.Random(seed).shuffle(order)
    n_train, n_val, _ = split_sizes(len(order), validation, test)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def prompt_key(record: Record) -> str:
    """Normalised prompt, the key of the leakage check."""
    return canonical(prompt_text(record.data))


def remove_leakage(
    train: Sequence[Record], validation: Sequence[Record], test: Sequence[Record]
) -> tuple[list[Record], list[Record], list[Leak]]:
    """Drop validation records whose prompt is in train, and test records whose prompt is in
    train or validation: a held-out score on prompts the model trained on means nothing."""
    seen: dict[str, tuple[str, Location]] = {
        prompt_key(r): ("train", r.loc) for r in reversed(train)
    }
    leaks: list[Leak] = []
    kept: dict[str, list[Record]] = {"validation": [], "test": []}
    for name, records in (("validation", validation), ("test", test)):
        for record in records:
            key = prompt_key(record)
            if key in seen:
                other_split, other_loc = seen[key]
                leaks.append(Leak(record.loc, name, other_split, other_loc))
                continue
            kept[name].append(record)
        for record in kept[name]:
            seen.setdefault(prompt_key(record), (name, record.loc))
    return kept["validation"], kept["test"], leaks


def general_count(n_train: int, ratio: float, available: int) -> int:
    """General examples needed so they make up ``ratio`` of the final training set, capped at
    what is available: g / (n_train + g) = ratio."""
    if ratio <= 0 or available <= 0:
        return 0
    if ratio >= 1:
        return available
    return min(available, int(n_train * ratio / (1 - ratio) + 0.5))


def mix_general(
    train: Sequence[Record], general: Sequence[Record], ratio: float, seed: int
) -> tuple[list[Record], int]:
    """``train`` plus a seeded sample of ``general`` (see :func:`general_count`), shuffled."""
    rng = random.Random(seed)
    n = general_count(len(train), ratio, len(general))
    mixed = list(train) + rng.sample(list(general), n)
    rng.shuffle(mixed)
    return mixed, n
