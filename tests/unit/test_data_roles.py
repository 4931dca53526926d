"""Roles that do not fit the base model's chat template fail at data preparation, at their
file:line, with the template's own message and the fix: rendered by transformers with the REAL
templates of Gemma 2, Mistral Nemo and Qwen 2.5 (llama.cpp's copies, from the pinned
llama-cpp-python sdist that `make llama-cpp` unpacks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.data import DataValidationError, prepare_dataset
from kubetune_trainer.data.records import Location, Record
from kubetune_trainer.data.validate import check_roles
from kubetune_trainer.export.llamacpp import FETCH_HINT, llama_cpp_dir

GEMMA = "google-gemma-2-2b-it.jinja"
MISTRAL = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
QWEN = "Qwen-Qwen2.5-7B-Instruct.jinja"  # no alternation check: user/assistant/assistant renders

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Where is my parcel?"}
ANSWER = {"role": "assistant", "content": "It ships tomorrow."}


def _tokenizer(template: str) -> Any:
    """A real transformers tokenizer whose chat template is one of llama.cpp's model templates,
    so that transformers' own renderer (raise_exception included) runs it."""
    import transformers
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    path = llama_cpp_dir() / "models" / "templates" / template
    assert path.is_file(), f"{path} is missing: {FETCH_HINT}"
    model = Tokenizer(WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    model.pre_tokenizer = Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=model,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        name_or_path=path.stem,
    )
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return tokenizer


def _record(line: int, *messages: dict[str, str]) -> Record:
    return Record(Location("d.jsonl", line), {"messages": list(messages)})


def test_gemma_refuses_a_system_turn_and_turns_that_do_not_alternate() -> None:
    gemma = _tokenizer(GEMMA)
    records = [
        _record(1, USER, ANSWER),
        _record(2, SYSTEM, USER, ANSWER),
        _record(3, USER, USER, ANSWER),
    ]
    kept, problems = check_roles(records, gemma)
    assert [r.loc.line for r in kept] == [1]
    system, alternate = problems
    assert (str(system.loc), system.code) == ("d.jsonl:2", "template_rejects_roles")
    assert "google-gemma-2-2b-it" in system.message
    assert "(system/user/assistant)" in system.message
    assert "System role not supported" in system.message  # the template's own words
    assert "fold the system prompt into the first user turn" in system.message  # the fix
    assert str(alternate.loc) == "d.jsonl:3"
    assert (
        "Conversation roles must alternate user/assistant/user/assistant/..." in alternate.message
    )
    assert "merge consecutive turns" in alternate.message


def test_mistral_refuses_turns_that_do_not_alternate_and_a_system_prompt_it_would_drop() -> None:
    """Mistral's template writes the system prompt into the LAST user turn only, so in a
    training conversation (which ends with the answer) the system prompt silently vanishes:
    the record is refused rather than trained without it."""
    mistral = _tokenizer(MISTRAL)
    records = [
        _record(1, USER, ANSWER),
        _record(2, USER, ANSWER, ANSWER),
        _record(3, SYSTEM, USER, ANSWER),
    ]
    assert "Be brief." not in mistral.apply_chat_template(
        [SYSTEM, USER, ANSWER], tokenize=False
    )  # renders without error, and without the system prompt
    kept, problems = check_roles(records, mistral)
    assert [r.loc.line for r in kept] == [1]
    alternate, dropped = problems
    assert str(alternate.loc) == "d.jsonl:2"
    assert (
        "After the optional system message, conversation roles must alternate" in alternate.message
    )
    assert "merge consecutive turns" in alternate.message
    assert (str(dropped.loc), dropped.code) == ("d.jsonl:3", "template_moves_messages")
    assert "messages[2]" in dropped.message
    assert "fold it into the first user message" in dropped.message


def test_two_assistant_turns_in_a_row_are_caught_even_when_the_template_renders_them() -> None:
    qwen = _tokenizer(QWEN)
    doubled = [USER, ANSWER, {"role": "assistant", "content": "Anything else?"}]
    assert "Anything else?" in qwen.apply_chat_template(doubled, tokenize=False)  # renders fine
    kept, problems = check_roles([_record(1, USER, ANSWER), _record(2, *doubled)], qwen)
    assert [r.loc.line for r in kept] == [1]
    (problem,) = problems
    assert (str(problem.loc), problem.code) == ("d.jsonl:2", "consecutive_assistant_turns")
    assert "messages[1] and messages[2] are both assistant turns; merge them" in problem.message
    # no tokenizer (or none with a template): still caught, the data is wrong for any model
    assert [p.code for p in check_roles([_record(2, *doubled)], None)[1]] == [
        "consecutive_assistant_turns"
    ]


def test_plain_records_are_not_rendered() -> None:
    gemma = _tokenizer(GEMMA)
    record = Record(Location("d.jsonl", 1), {"prompt": "2+2=", "completion": "4"})
    assert check_roles([record], gemma) == ([record], [])


# --- through prepare_dataset: the report, and the share of invalid records --------------------


def _spec() -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://data.jsonl"}},
            "dataPolicy": {"dedup": "none"},
        }
    )


def _chat(i: int, *extra: dict[str, str]) -> dict[str, Any]:
    return {
        "messages": [
            *extra,
            {"role": "user", "content": f"question number {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def test_records_the_template_refuses_are_reported_with_file_line_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    lines = [_chat(i) for i in range(10)]
    lines[4] = _chat(4, SYSTEM)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    prepared = prepare_dataset(
        _spec(), tmp_path / "work", tokenizer=_tokenizer(GEMMA), base_dir=tmp_path
    )
    summary = prepared.report.summary()
    assert (summary.invalid, summary.train + summary.validation + summary.test) == (1, 9)
    report = json.loads((tmp_path / "work" / "data" / "report.json").read_text())
    (problem,) = report["data"]["problems"]
    assert problem["location"] == "file://data.jsonl:5"
    assert problem["code"] == "template_rejects_roles"
    assert "System role not supported" in problem["message"]
    text = (tmp_path / "work" / "data" / "report.txt").read_text()
    assert "file://data.jsonl:5: the chat template of google-gemma-2-2b-it" in text


def test_a_dataset_the_template_refuses_fails_before_training_with_the_fix(
    tmp_path: Path,
) -> None:
    lines = [_chat(i, SYSTEM) for i in range(10)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataValidationError) as caught:
        prepare_dataset(_spec(), tmp_path / "work", tokenizer=_tokenizer(GEMMA), base_dir=tmp_path)
    message = str(caught.value)
    assert "10 of 10 records are invalid (template_rejects_roles: 10)" in message
    assert "first: file://data.jsonl:1: the chat template of google-gemma-2-2b-it" in message
    assert "System role not supported" in message
    assert "fold the system prompt into the first user turn" in message
