"""Exact and near-duplicate removal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.data import prepare_dataset
from kubetune_trainer.data.dedup import deduplicate, jaccard, lsh_params, shingles
from kubetune_trainer.data.records import Location, Record

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def _record(line: int, user: str, answer: str = "ok") -> Record:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Record(Location("d.jsonl", line), {"messages": messages})


def _sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(n))


def test_exact_duplicates_ignore_case_and_whitespace() -> None:
    records = [
        _record(1, "Where is my order?"),
        _record(2, "where  is my\norder?"),
        _record(3, "Where is my parcel?"),
    ]
    kept, removed = deduplicate(records, "exact")
    assert [r.loc.line for r in kept] == [1, 3]
    assert [(str(d.loc), str(d.duplicate_of), d.kind) for d in removed] == [
        ("d.jsonl:2", "d.jsonl:1", "exact")
    ]


def test_the_report_says_that_exact_ignores_case_and_whitespace(tmp_path: Path) -> None:
    # differing only by case, these are "near" duplicates to a reader: the report says why
    # they are counted as exact
    lines = [_record(i, f"Ticket {i}: where is my parcel?").data for i in range(10)]
    lines += [_record(11, "TICKET 3:  Where is my PARCEL?").data]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://data.jsonl"}},
        }
    )
    prepared = prepare_dataset(spec, tmp_path / "work", base_dir=tmp_path)
    assert [d.kind for d in prepared.report.main.duplicates] == ["exact"]
    text = (tmp_path / "work" / "data" / "report.txt").read_text()
    assert "1 removed (dedup near: exact (ignoring case and whitespace) 1, near 0)" in text
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    assert report["policy"]["exactDuplicates"] == "exact (ignoring case and whitespace)"


def test_exact_mode_keeps_near_duplicates_and_none_keeps_everything() -> None:
    text = _sentence(random.Random(0))
    records = [_record(1, text), _record(2, text + " extra"), _record(3, text)]
    assert [r.loc.line for r in deduplicate(records, "exact")[0]] == [1, 2]
    assert len(deduplicate(records, "none")[0]) == 3


def test_near_duplicates_above_the_threshold_are_removed() -> None:
    rng = random.Random(1)
    base = _sentence(rng, 60)
    words = base.split()
    one_word_changed = " ".join([*words[:30], "zulu", *words[31:]])
    unrelated = _sentence(rng, 60)
    records = [_record(1, base), _record(2, one_word_changed), _record(3, unrelated)]
    similarity = jaccard(shingles(base), shingles(one_word_changed))
    assert 0.9 < similarity < 1.0
    kept, removed = deduplicate(records, "near", 0.9)
    assert [r.loc.line for r in kept] == [1, 3]
    assert removed[0].kind == "near" and str(removed[0].duplicate_of) == "d.jsonl:1"
    assert removed[0].similarity >= 0.9


def test_pairs_under_the_threshold_are_never_removed() -> None:
    rng = random.Random(2)
    base = _sentence(rng, 40).split()
    variants = [
        " ".join(base[:20] + _sentence(rng, 20).split()) for _ in range(20)
    ]  # about half shared
    records = [_record(i, v) for i, v in enumerate(variants)]
    kept, removed = deduplicate(records, "near", 0.9)
    assert removed == [] and len(kept) == 20


def test_near_recall_on_many_planted_duplicates() -> None:
    """LSH may miss a pair at the threshold with small probability; well above it, none."""
    rng = random.Random(3)
    records = []
    for i in range(300):
        text = _sentence(rng, 80)
        records.append(_record(2 * i, text))
        words = text.split()
        words[rng.randrange(len(words))] = "changed"
        records.append(_record(2 * i + 1, " ".join(words)))  # Jaccard ~0.93
    _, removed = deduplicate(records, "near", 0.9)
    assert len(removed) >= 295
    assert all(d.similarity >= 0.9 for d in removed)


def test_short_records_are_one_shingle() -> None:
    assert shingles("hi there") == shingles("Hi,   THERE!")
    assert len(shingles("one two")) == 1


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 0.95, 1.0])
def test_lsh_params_catch_pairs_at_the_threshold(threshold: float) -> None:
    bands, rows = lsh_params(threshold)
    assert bands * rows <= 128
    assert 1 - (1 - threshold**rows) ** bands >= 0.95
