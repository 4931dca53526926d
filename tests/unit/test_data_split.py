"""Seeded split, leakage check and general-data mixing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.data import prepare_dataset
from kubetune_trainer.data.records import Location, Record
from kubetune_trainer.data.split import (
    general_count,
    mix_general,
    remove_leakage,
    split_records,
    split_sizes,
)


def _record(i: int, prompt: str | None = None, *, source: str = "d.jsonl") -> Record:
    messages = [
        {"role": "user", "content": prompt or f"question {i}"},
        {"role": "assistant", "content": f"answer {i}"},
    ]
    return Record(Location(source, i + 1), {"messages": messages})


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (100, 0.1, 0.1, (80, 10, 10)),
        (1000, 0.05, 0.2, (750, 50, 200)),
        (5, 0.1, 0.1, (3, 1, 1)),
        (2, 0.1, 0.1, (2, 0, 0)),
        (1, 0.5, 0.3, (1, 0, 0)),
        (10, 0.0, 0.0, (10, 0, 0)),
    ],
)
def test_split_sizes(n: int, val: float, test: float, expected: tuple[int, int, int]) -> None:
    assert split_sizes(n, val, test) == expected
    assert sum(split_sizes(n, val, test)) == n


def test_split_is_deterministic_by_seed_and_a_partition() -> None:
    records = [_record(i) for i in range(100)]
    a = split_records(records, 0.1, 0.1, seed=42)
    b = split_records(records, 0.1, 0.1, seed=42)
    c = split_records(records, 0.1, 0.1, seed=7)
    assert [[r.loc for r in part] for part in a] == [[r.loc for r in part] for part in b]
    assert [r.loc for r in a[2]] != [r.loc for r in c[2]]
    assert [len(part) for part in a] == [80, 10, 10]
    assert sorted(r.loc.line for part in a for r in part) == list(range(1, 101))


def test_leakage_is_removed_from_validation_and_test() -> None:
    train = [_record(0, "Where is my ORDER?"), _record(1)]
    validation = [_record(2, "where is my order?"), _record(3, "Reset my password")]
    test = [_record(4, "reset my  password"), _record(5, "where is my order?"), _record(6)]
    val, tst, leaks = remove_leakage(train, validation, test)
    assert [r.loc.line for r in val] == [4]
    assert [r.loc.line for r in tst] == [7]
    assert [
        (str(leak.loc), leak.split, leak.other_split, str(leak.other_loc)) for leak in leaks
    ] == [
        ("d.jsonl:3", "validation", "train", "d.jsonl:1"),
        ("d.jsonl:5", "test", "validation", "d.jsonl:4"),
        ("d.jsonl:6", "test", "train", "d.jsonl:1"),
    ]


@pytest.mark.parametrize(
    ("n_train", "ratio", "available", "expected"),
    [
        (80, 0.2, 100, 20),
        (80, 0.2, 5, 5),
        (80, 0.0, 100, 0),
        (80, 0.5, 100, 80),
        (80, 1.0, 30, 30),
        (0, 0.2, 10, 0),
    ],
)
def test_general_count_makes_up_the_ratio(
    n_train: int, ratio: float, available: int, expected: int
) -> None:
    assert general_count(n_train, ratio, available) == expected


def test_mix_general_is_seeded_and_hits_the_ratio() -> None:
    train = [_record(i) for i in range(80)]
    general = [_record(i, f"general {i}", source="g.jsonl") for i in range(200)]
    mixed, n = mix_general(train, general, 0.2, seed=1)
    assert n == 20 and len(mixed) == 100
    assert sum(r.loc.source == "g.jsonl" for r in mixed) / len(mixed) == pytest.approx(0.2)
    again, _ = mix_general(train, general, 0.2, seed=1)
    assert [r.loc for r in mixed] == [r.loc for r in again]


def _write(path: Path, prompts: list[str]) -> None:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": "a " + p},
                    ]
                }
            )
            + "\n"
            for p in prompts
        )
    )


def _spec(**dataset: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://task.jsonl"}, **dataset},
            "dataPolicy": {"dedup": "exact"},
        }
    )


def test_prepare_mixes_general_into_train_only(tmp_path: Path) -> None:
    _write(tmp_path / "task.jsonl", [f"task question {i}" for i in range(100)])
    _write(tmp_path / "general.jsonl", [f"general question {i}" for i in range(50)])
    spec = _spec(general={"source": {"uri": "file://general.jsonl"}, "ratio": 0.2})
    prepared = prepare_dataset(spec, tmp_path / "work", base_dir=tmp_path)
    summary = prepared.report.summary()
    assert (summary.train, summary.validation, summary.test, summary.general_mixed) == (
        100,
        10,
        10,
        20,
    )
    general_in = lambda records: sum("general" in r["messages"][0]["content"] for r in records)  # noqa: E731
    assert general_in(prepared.train) == 20
    assert general_in(prepared.validation) == general_in(prepared.test) == 0
    written = (tmp_path / "work" / "data" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == prepared.train


def test_general_records_that_repeat_held_out_prompts_are_not_mixed(tmp_path: Path) -> None:
    prompts = [f"task question {i}" for i in range(100)]
    _write(tmp_path / "task.jsonl", prompts)
    _write(tmp_path / "general.jsonl", prompts)  # every general prompt is also a task prompt
    spec = _spec(general={"source": {"uri": "file://general.jsonl"}, "ratio": 0.5})
    prepared = prepare_dataset(spec, tmp_path / "work", base_dir=tmp_path)
    held_out = {r["messages"][0]["content"] for r in prepared.validation + prepared.test}
    assert held_out and not held_out & {r["messages"][0]["content"] for r in prepared.train}
    assert prepared.general_mixed == 80  # the 80 general prompts that are not held out


def test_too_little_general_data_is_a_warning(tmp_path: Path) -> None:
    _write(tmp_path / "task.jsonl", [f"task question {i}" for i in range(100)])
    _write(tmp_path / "general.jsonl", [f"general question {i}" for i in range(5)])
    prepared = prepare_dataset(
        _spec(general={"source": {"uri": "file://general.jsonl"}}),
        tmp_path / "work",
        base_dir=tmp_path,
    )
    assert prepared.general_mixed == 5
    assert any("general data is" in w for w in prepared.report.warnings)


def test_prepare_split_is_deterministic_and_counts_leakage(tmp_path: Path) -> None:
    prompts = [f"task question {i}" for i in range(60)] + ["repeated prompt"] * 40
    path = tmp_path / "task.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": f"answer {i}"},
                    ]
                }
            )
            + "\n"
            for i, p in enumerate(prompts)
        )
    )
    first = prepare_dataset(_spec(), tmp_path / "a", base_dir=tmp_path)
    second = prepare_dataset(_spec(), tmp_path / "b", base_dir=tmp_path)
    assert first.test == second.test and first.train == second.train
    summary = first.report.summary()
    assert summary.leakage > 0
    assert summary.train + summary.validation + summary.test + summary.leakage == 100
    report = json.loads((tmp_path / "a" / "data" / "report.json").read_text())
    assert len(report["leakage"]) == summary.leakage
    assert all(item["alsoIn"] in ("train", "validation") for item in report["leakage"])
