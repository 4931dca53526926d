"""Formats, auto-detection and every bad-input case, each reported with its file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.data import DataValidationError, prepare_dataset
from kubetune_trainer.data.formats import detect_record_format, normalise

USER = {"role": "user", "content": "Ticket: my parcel is late"}
ANSWER = {"role": "assistant", "content": "shipping"}


def _spec(uri: str = "file://data.jsonl", **dataset: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": uri}, **dataset},
            "dataPolicy": {"dedup": "none"},
        }
    )


def _chat(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"question number {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def _write(path: Path, lines: list[Any]) -> None:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )


def _problems(
    tmp_path: Path, bad: list[Any], *, good: int = 10, fmt: str = "auto"
) -> list[dict[str, str]]:
    """Write ``good`` valid chat records followed by ``bad`` lines; return report problems."""
    _write(tmp_path / "data.jsonl", [_chat(i) for i in range(good)] + bad)
    prepare_dataset(_spec(format=fmt), tmp_path / "work", base_dir=tmp_path)
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    return report["data"]["problems"]  # type: ignore[no-any-return]


# --- normalisation ---------------------------------------------------------------------------


def test_every_format_normalises_to_trl_shapes() -> None:
    assert normalise({"messages": [USER, ANSWER], "id": 7}, "chat") == (
        {"messages": [USER, ANSWER]},
        [],
    )
    data, problems = normalise(
        {
            "instruction": "Route it",
            "input": "parcel late",
            "output": "shipping",
            "system": "Be brief",
        },
        "instruction",
    )
    assert problems == []
    assert data == {
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Route it\n\nparcel late"},
            {"role": "assistant", "content": "shipping"},
        ]
    }
    assert normalise({"instruction": "Say hi", "input": "", "output": "hi"}, "instruction")[0] == {
        "messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    }
    assert normalise({"prompt": "2+2=", "completion": "4"}, "completion") == (
        {"prompt": "2+2=", "completion": "4"},
        [],
    )
    assert normalise({"prompt": "p", "chosen": "good", "rejected": "bad"}, "preference")[0] == {
        "prompt": "p",
        "chosen": "good",
        "rejected": "bad",
    }


def test_chat_style_preference_is_flattened_when_simple() -> None:
    value = {
        "prompt": [{"role": "user", "content": "p"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert normalise(value, "preference") == (
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        [],
    )
    value["chosen"] = [USER, ANSWER]
    assert normalise(value, "preference")[1][0][0] == "unsupported_shape"
    assert (
        normalise({"prompt": "p", "chosen": "same", "rejected": "same "}, "preference")[1][0][0]
        == "identical_pair"
    )


def test_structured_text_content_is_joined() -> None:
    message = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert normalise({"messages": [message, ANSWER]}, "chat")[0] == {
        "messages": [{"role": "user", "content": "ab"}, ANSWER]
    }


def test_record_format_detection() -> None:
    assert detect_record_format({"messages": []}) == "chat"
    assert detect_record_format({"instruction": "x", "output": "y"}) == "instruction"
    assert detect_record_format({"prompt": "x", "completion": "y"}) == "completion"
    assert detect_record_format({"prompt": "x", "chosen": "y", "rejected": "z"}) == "preference"
    assert detect_record_format({"text": "x"}) is None
    assert detect_record_format([1, 2]) is None


# --- auto-detection through prepare_dataset --------------------------------------------------


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"instruction": "Route: parcel {i}", "output": "shipping"}, "instruction"),
        ({"prompt": "Count to {i}:", "completion": " done"}, "completion"),
    ],
)
def test_auto_detects_the_format(tmp_path: Path, record: dict[str, str], fmt: str) -> None:
    _write(
        tmp_path / "data.jsonl", [{k: v.format(i=i) for k, v in record.items()} for i in range(10)]
    )
    prepared = prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    assert prepared.format == fmt
    assert prepared.report.summary().format == fmt


def test_mixed_formats_are_an_error_naming_the_lines(tmp_path: Path) -> None:
    lines = [_chat(i) for i in range(8)] + [
        {"prompt": "a", "completion": "b"},
        _chat(9),
        {"prompt": "c", "completion": "d"},
    ]
    _write(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataValidationError) as caught:
        prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    message = str(caught.value)
    assert "mixed formats" in message
    assert "2 completion record(s) at file://data.jsonl:9, file://data.jsonl:11" in message
    assert "dataset.format: chat" in message  # the fix
    assert json.loads((tmp_path / "work" / "data" / "report.json").read_text())["error"] == message


def test_explicit_format_drops_records_of_other_formats(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [{"prompt": "a", "completion": "b"}], fmt="chat")
    assert problems == [
        {
            "location": "file://data.jsonl:11",
            "code": "wrong_format",
            "severity": "error",
            "message": "this is a completion record but the dataset format is chat",
        }
    ]


# --- every bad input, with file:line --------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "fragment"),
    [
        ('{"messages": [', "invalid_json", "invalid JSON"),
        (
            {"messages": [{"role": "bot", "content": "hi"}, ANSWER]},
            "unknown_role",
            "messages[0].role 'bot'",
        ),
        (
            {"messages": [{"role": "human", "content": "hi"}, ANSWER]},
            "unknown_role",
            "did you mean 'user'",
        ),
        ({"messages": [{"content": "hi"}, ANSWER]}, "missing_role", "messages[0] has no 'role'"),
        ({"messages": [USER]}, "not_ending_with_assistant", "ends with a 'user' message"),
        (
            {"messages": [USER, {"role": "assistant", "content": "  "}]},
            "empty_content",
            "messages[1].content' is empty",
        ),
        ({"messages": []}, "empty_content", "'messages' is empty"),
        (
            {"messages": [{"role": "user", "content": 5}, ANSWER]},
            "wrong_type",
            "must be a string, got a number",
        ),
        ({"messages": "hello"}, "wrong_type", "must be a list"),
        (
            {"messages": [{"role": "system", "content": "s"}, ANSWER]},
            "no_user_message",
            "no user message",
        ),
        ([1, 2], "wrong_type", "expected a JSON object, got a list"),
        ({"text": "hello"}, "unknown_format", "no chat fields (keys: text)"),
    ],
)
def test_bad_chat_record_is_dropped_and_reported_with_file_line(
    tmp_path: Path, bad: Any, code: str, fragment: str
) -> None:
    problems = _problems(tmp_path, [bad])
    assert len(problems) == 1, problems
    assert problems[0]["location"] == "file://data.jsonl:11"
    assert problems[0]["code"] == code
    assert fragment in problems[0]["message"]
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    assert report["summary"]["invalid"] == 1 and report["summary"]["total"] == 11
    assert "file://data.jsonl:11" in (tmp_path / "work" / "data" / "report.txt").read_text()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"instruction": "", "output": "x"}, "empty_content"),
        ({"instruction": "x"}, "missing_field"),
        ({"instruction": "x", "output": "y", "input": 3}, "wrong_type"),
    ],
)
def test_bad_instruction_records(tmp_path: Path, bad: dict[str, Any], code: str) -> None:
    good = [{"instruction": f"task {i}", "output": f"out {i}"} for i in range(10)]
    _write(tmp_path / "data.jsonl", [*good, bad])
    prepared = prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    problems = json.loads((tmp_path / "work" / "data" / "report.json").read_text())["data"][
        "problems"
    ]
    assert [(p["location"], p["code"]) for p in problems] == [("file://data.jsonl:11", code)]
    assert prepared.report.summary().invalid == 1


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text("\n\n")
    with pytest.raises(DataValidationError, match="the dataset is empty"):
        prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    assert (tmp_path / "work" / "data" / "report.json").is_file()


def test_no_known_format_is_an_error_naming_the_first_record(tmp_path: Path) -> None:
    _write(tmp_path / "data.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataValidationError,
        match=r"no record has a known format; the first record \(file://data.jsonl:1\) has keys \[answer, question\]",
    ):
        prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)


def test_mostly_invalid_input_is_an_error(tmp_path: Path) -> None:
    lines: list[Any] = [_chat(0), _chat(1)] + ["{broken"] * 3
    _write(tmp_path / "data.jsonl", lines)
    with pytest.raises(
        DataValidationError,
        match=r"3 of 5 records are invalid \(invalid_json: 3\); first: file://data.jsonl:3",
    ):
        prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)


def test_objective_and_format_must_fit(tmp_path: Path) -> None:
    _write(
        tmp_path / "data.jsonl",
        [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)],
    )
    with pytest.raises(DataValidationError, match="set objective: dpo"):
        prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    _write(tmp_path / "data.jsonl", [_chat(i) for i in range(5)])
    dpo = _spec().model_copy(update={"objective": "dpo"})
    with pytest.raises(DataValidationError, match="objective dpo needs preference records"):
        prepare_dataset(dpo, tmp_path / "work", base_dir=tmp_path)


# --- ShareGPT and Gemma's model role ---------------------------------------------------------


def _sharegpt(i: int) -> dict[str, Any]:
    return {
        "id": f"conv-{i}",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": f"question number {i}"},
            {"from": "gpt", "value": f"answer {i}", "weight": 1},
        ],
    }


def test_sharegpt_is_read_as_chat() -> None:
    assert detect_record_format(_sharegpt(1)) == "chat"
    assert normalise(_sharegpt(1), "chat") == (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "question number 1"},
                {"role": "assistant", "content": "answer 1"},
            ]
        },
        [],
    )
    for speaker, role in [("user", "user"), ("assistant", "assistant"), ("model", "assistant")]:
        turns = [{"from": "human", "value": "q"}, {"from": speaker, "value": "a"}]
        if role == "user":
            turns = [{"from": speaker, "value": "q"}, {"from": "bot", "value": "a"}]
        data, problems = normalise({"conversations": turns}, "chat")
        assert problems == [] and data is not None
        assert [m["role"] for m in data["messages"]] == ["user", "assistant"]


def test_gemma_model_role_is_read_as_assistant() -> None:
    value = {"messages": [USER, {"role": "model", "content": "shipping"}]}
    assert normalise(value, "chat") == ({"messages": [USER, ANSWER]}, [])
    pair = {"prompt": "p", "chosen": [{"role": "model", "content": "a"}], "rejected": "b"}
    assert normalise(pair, "preference")[0] == {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_the_report_counts_records_mapped_from_sharegpt_and_the_model_role(
    tmp_path: Path,
) -> None:
    gemma = {"messages": [USER, {"role": "model", "content": "shipping"}]}
    lines: list[Any] = [_sharegpt(i) for i in range(7)] + [gemma] * 2 + [_chat(1)]
    _write(tmp_path / "data.jsonl", lines)
    prepared = prepare_dataset(_spec(), tmp_path / "work", base_dir=tmp_path)
    assert prepared.format == "chat" and prepared.report.summary().invalid == 0
    assert sum(map(len, (prepared.train, prepared.validation, prepared.test))) == 10
    assert prepared.report.main.mapped == {"sharegpt": 7, "model-role": 2}
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    assert report["data"]["mapped"] == {"fromShareGPT": 7, "modelRoleAsAssistant": 2}
    text = (tmp_path / "work" / "data" / "report.txt").read_text()
    assert "7 record(s) mapped from ShareGPT" in text
    assert "2 record(s) with Gemma's 'model' role read as 'assistant'" in text


@pytest.mark.parametrize(
    ("turns", "code", "fragment"),
    [
        (
            [{"from": "narrator", "value": "once"}, {"from": "gpt", "value": "a"}],
            "unknown_role",
            "conversations[0].from 'narrator' is not one of human, user, gpt",
        ),
        (
            [{"value": "q"}, {"from": "gpt", "value": "a"}],
            "missing_role",
            "conversations[0] has no 'from'",
        ),
        (
            [{"from": "human"}, {"from": "gpt", "value": "a"}],
            "missing_field",
            "'conversations[0].value' is missing",
        ),
        (["hi", {"from": "gpt", "value": "a"}], "wrong_type", "conversations[0] must be an object"),
        (
            [{"from": 3, "value": "q"}, {"from": "gpt", "value": "a"}],
            "wrong_type",
            "conversations[0].from must be a string",
        ),
        (
            [{"from": "human", "value": "q"}],
            "not_ending_with_assistant",
            "ends with a 'user' message",
        ),
        ([], "empty_content", "'conversations' is empty"),
    ],
)
def test_bad_sharegpt_record_is_dropped_and_reported_with_file_line(
    tmp_path: Path, turns: list[Any], code: str, fragment: str
) -> None:
    problems = _problems(tmp_path, [{"conversations": turns}])
    assert [(p["location"], p["code"]) for p in problems] == [("file://data.jsonl:11", code)]
    assert fragment in problems[0]["message"], problems


def test_two_assistant_turns_in_a_row_are_an_error(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [{"messages": [USER, ANSWER, ANSWER]}])
    assert [(p["location"], p["code"]) for p in problems] == [
        ("file://data.jsonl:11", "consecutive_assistant_turns")
    ]


def test_a_problem_message_never_echoes_a_secret_or_a_megabyte(tmp_path: Path) -> None:
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    problems = _problems(
        tmp_path,
        [
            {"messages": [{"role": key, "content": "hi"}, ANSWER]},
            {"messages": [{"role": "x" * 1_000_000, "content": "hi"}, ANSWER]},
        ],
    )
    assert [p["code"] for p in problems] == ["unknown_role", "unknown_role"]
    assert key not in problems[0]["message"] and "[REDACTED:" in problems[0]["message"]
    assert len(problems[1]["message"]) < 300 and "1000000 characters" in problems[1]["message"]
    for name in ("report.json", "report.txt"):
        assert key not in (tmp_path / "work" / "data" / name).read_text()
