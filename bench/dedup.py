"""Exact and near-duplicate removal at dataset scale.

    .venv/bin/python bench/dedup.py --records 20000 100000

Builds random 20-80-word chat records from a 5,000-word vocabulary, makes every 10th one a copy
of an earlier record with one word changed (a near duplicate), and times `deduplicate` in exact
and in near mode (threshold 0.9). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import time

from kubetune_trainer.data.dedup import deduplicate
from kubetune_trainer.data.records import Location, Record


def make_records(n: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    texts: list[list[str]] = []
    for i in range(n):
        if i % 10 == 9 and texts:
            words = list(rng.choice(texts))
            words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            words = rng.choices(vocab, k=rng.randint(20, 80))
        texts.append(words)
    return [
        Record(Location("bench.jsonl", i + 1), {"messages": [{"role": "user", "content": " ".join(w[:-3])},
                                                             {"role": "assistant", "content": " ".join(w[-3:])}]})
        for i, w in enumerate(texts)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[20000])
    args = parser.parse_args()
    print(f"{'records':>9} {'exact s':>9} {'near s':>9} {'near removed':>13}")
    for n in args.records:
        records = make_records(n)
        start = time.perf_counter()
        deduplicate(records, "exact")
        exact = time.perf_counter() - start
        start = time.perf_counter()
        _, removed = deduplicate(records, "near", 0.9)
        near = time.perf_counter() - start
        print(f"{n:>9} {exact:>9.2f} {near:>9.2f} {len(removed):>13}")


if __name__ == "__main__":
    main()
