"""prepare_dataset end to end: every format through files in tmp_path, the files it writes, token
statistics and length checks with a real SentencePiece tokenizer (the tiny Llama's, trained in
the test), and the example datasets in examples/data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import DataReportSummary
from kubetune_trainer.data import DataReport, PreparedData, prepare_dataset
from kubetune_trainer.data.records import Location, Record
from kubetune_trainer.data.stats import count_tokens, token_stats

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "data"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tokenizer of a tiny Llama built locally (SentencePiece BPE trained on the fly)."""
    import sentencepiece  # noqa: F401  (a missing dependency fails, never skips)
    import transformers

    from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

    corpus = [*BUILTIN_CORPUS, *(EXAMPLES / "support-chat.jsonl").read_text().splitlines()]
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", corpus)
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def _spec(
    uri: str = "file://data.jsonl",
    *,
    max_length: int = 2048,
    dataset: dict[str, Any] | None = None,
    **extra: Any,
) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": uri}, **(dataset or {})},
            "training": {"maxLength": max_length},
            **extra,
        }
    )


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


FORMATS: dict[str, tuple[Any, Any]] = {
    "chat": (
        lambda i: {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} plus one?"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        },
        lambda i: {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} plus one?"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        },
    ),
    "instruction": (
        lambda i: {"instruction": "Add one.", "input": str(i), "output": str(i + 1)},
        lambda i: {
            "messages": [
                {"role": "user", "content": f"Add one.\n\n{i}"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        },
    ),
    "completion": (
        lambda i: {"prompt": f"{i} + 1 =", "completion": f" {i + 1}"},
        lambda i: {"prompt": f"{i} + 1 =", "completion": f" {i + 1}"},
    ),
    "preference": (
        lambda i: {"prompt": f"{i} + 1 =", "chosen": str(i + 1), "rejected": str(i + 2)},
        lambda i: {"prompt": f"{i} + 1 =", "chosen": str(i + 1), "rejected": str(i + 2)},
    ),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("explicit", [False, True])
def test_every_format_end_to_end(tmp_path: Path, tokenizer: Any, fmt: str, explicit: bool) -> None:
    make, normalised = FORMATS[fmt]
    _write(tmp_path / "data.jsonl", [make(i) for i in range(50)])
    extra: dict[str, Any] = {"objective": "dpo"} if fmt == "preference" else {}
    spec = _spec(dataset={"format": fmt if explicit else "auto"}, **extra)
    prepared = prepare_dataset(spec, tmp_path / "work", tokenizer=tokenizer, base_dir=tmp_path)

    assert isinstance(prepared, PreparedData) and isinstance(prepared.report, DataReport)
    assert prepared.format == fmt
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (40, 5, 5)
    expected = [normalised(i) for i in range(50)]
    everything = prepared.train + prepared.validation + prepared.test
    assert sorted(map(json.dumps, everything)) == sorted(map(json.dumps, expected))
    assert prepared.general_mixed == 0

    data = tmp_path / "work" / "data"
    for name in ("train", "validation", "test"):
        written = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
        assert written == getattr(prepared, name)
    report = json.loads((data / "report.json").read_text())
    summary = prepared.report.summary()
    assert isinstance(summary, DataReportSummary)
    assert report["summary"] == summary.to_wire()
    assert (summary.format, summary.total, summary.invalid, summary.train, summary.test) == (
        fmt,
        50,
        0,
        40,
        5,
    )
    assert report["tokens"]["count"] == 50 and report["tokens"]["truncated"] == 0
    assert "kubetune data report: 50 " in (data / "report.txt").read_text()


def test_chat_tokens_are_counted_with_the_chat_template(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "Ticket: where is my parcel?"},
        {"role": "assistant", "content": "shipping"},
    ]
    expected = len(
        tokenizer(
            tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False
        )["input_ids"]
    )
    assert count_tokens([Record(Location("d", 1), {"messages": messages})], tokenizer) == [expected]
    assert expected > len(tokenizer("Ticket: where is my parcel? shipping")["input_ids"])


def test_token_stats() -> None:
    stats = token_stats([10, 20, 30, 40, 100], max_length=35)
    assert stats is not None
    assert (stats.min, stats.p50, stats.max, stats.truncated, stats.count) == (10, 30, 100, 2, 5)
    assert stats.mean == 40.0 and stats.p95 == 100
    assert token_stats([], 10) is None


def test_length_checks(tmp_path: Path, tokenizer: Any) -> None:
    def chat(user: str, answer: str) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ]
        }

    records = [chat(f"hi {i}", "ok") for i in range(20)]
    records += [
        chat(
            "hi there", " ".join(["word"] * 15)
        ),  # line 21: over 16 tokens, prompt short -> kept, truncated
        chat("hi again", " ".join(["word"] * 300)),  # line 22: far over 4 x 16 -> rejected
        chat(" ".join(["word"] * 7), "ok"),  # line 23: prompt alone fills maxLength -> rejected
    ]
    counts = count_tokens([Record(Location("d", i), r) for i, r in enumerate(records)], tokenizer)
    assert (
        max(counts[:20]) <= 16
        and 16 < counts[20] <= 64
        and counts[21] > 64
        and 16 < counts[22] <= 64
    )
    _write(tmp_path / "data.jsonl", records)
    prepared = prepare_dataset(
        _spec(max_length=16), tmp_path / "work", tokenizer=tokenizer, base_dir=tmp_path
    )
    problems = json.loads((tmp_path / "work" / "data" / "report.json").read_text())["data"][
        "problems"
    ]
    assert [(p["location"], p["code"], p["severity"]) for p in problems] == [
        ("file://data.jsonl:21", "over_length", "warning"),
        ("file://data.jsonl:22", "too_long", "error"),
        ("file://data.jsonl:23", "answer_truncated_away", "error"),
    ]
    assert "would be truncated" in problems[0]["message"]
    summary = prepared.report.summary()
    assert (summary.invalid, summary.truncated) == (2, 1)
    assert summary.train + summary.validation + summary.test == 21


def test_without_a_tokenizer_lengths_are_not_checked(tmp_path: Path) -> None:
    _write(
        tmp_path / "data.jsonl", [{"prompt": f"p{i} " * 500, "completion": "c"} for i in range(10)]
    )
    prepared = prepare_dataset(_spec(max_length=16), tmp_path / "work", base_dir=tmp_path)
    assert prepared.report.tokens is None and prepared.report.summary().truncated == 0
    assert "no tokenizer" in (tmp_path / "work" / "data" / "report.txt").read_text()


def test_no_valid_record_left_is_an_error(tmp_path: Path) -> None:
    from kubetune_trainer.data import DataValidationError

    _write(
        tmp_path / "data.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "ask"},
                    {"role": "assistant", "content": "same"},
                ]
            }
        ]
        * 3,
    )
    spec = _spec(dataPolicy={"dedup": "exact"})
    prepared = prepare_dataset(spec, tmp_path / "ok", base_dir=tmp_path)  # one survives dedup
    assert prepared.report.summary().duplicates_removed == 2
    _write(
        tmp_path / "data.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "my password=hunter2!"},
                    {"role": "assistant", "content": "noted"},
                ]
            }
        ],
    )
    with pytest.raises(DataValidationError, match="no valid record remains"):
        prepare_dataset(spec, tmp_path / "none", base_dir=tmp_path)


# --- examples/data -------------------------------------------------------------------------


def test_example_files_match_their_generator() -> None:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(
        "generate_examples", EXAMPLES / "generate.py"
    )
    assert module_spec and module_spec.loader
    generate = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generate)
    for name, make in generate.FILES.items():
        assert (EXAMPLES / name).read_text() == generate.render(make()), (
            f"run python examples/data/generate.py ({name})"
        )
        assert (EXAMPLES / name).stat().st_size < 200_000


def test_support_chat_example_is_clean_and_mixes_with_general(
    tmp_path: Path, tokenizer: Any
) -> None:
    general = {"source": {"uri": "file://general.jsonl"}, "ratio": 0.2}
    spec = _spec("file://support-chat.jsonl", max_length=256, dataset={"general": general})
    prepared = prepare_dataset(spec, tmp_path, tokenizer=tokenizer, base_dir=EXAMPLES)
    summary = prepared.report.summary()
    assert summary.format == "chat" and summary.total >= 150
    assert (
        summary.invalid,
        summary.duplicates_removed,
        summary.flagged,
        summary.leakage,
        summary.truncated,
    ) == (0, 0, 0, 0, 0)
    assert summary.general_mixed > 0 and summary.test >= 20
    labels = {r["messages"][-1]["content"] for r in prepared.train + prepared.test}
    assert labels >= {"billing", "technical", "account", "shipping"}
    assert prepared.report.tokens is not None and prepared.report.tokens.max < 64


def test_preference_example_prepares_for_dpo(tmp_path: Path) -> None:
    prepared = prepare_dataset(
        _spec("file://preference.jsonl", objective="dpo"), tmp_path, base_dir=EXAMPLES
    )
    summary = prepared.report.summary()
    assert (
        prepared.format == "preference"
        and summary.total >= 50
        and summary.invalid == summary.flagged == 0
    )
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in prepared.train)
