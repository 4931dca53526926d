"""Sequence-level distillation and synthetic augmentation in the data stage, against a local
OpenAI-compatible chat server (tests/judge_server.py) playing the teacher: answers of prompt-only
records, the cache on the artifact volume (a second run sends no request), the concurrency
bound, retries that honour Retry-After, bad answers rejected by validation and counted, the API
key in no file and no log line, and synthetic examples flagged and counted apart."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.teacher import TeacherSpec
from kubetune_trainer.data import prepare_dataset
from kubetune_trainer.data.errors import DataValidationError
from kubetune_trainer.distill import AnswerCache, Teacher, TeacherUnavailableError
from tests.judge_server import FakeJudgeServer, Reply

KEY = "sk-teacher-SECRET-0123456789abcdef"


def _teacher_reply(body: dict[str, Any]) -> Reply:
    """The stand-in teacher: a request for a new example gets a new question, anything else
    an answer naming the question it answers."""
    last = str(body["messages"][-1]["content"])
    if last.startswith("Here is one example of a task"):
        seed = last.split("Request:\n", 1)[1].split("\n", 1)[0]
        variant = last.split("(variation ", 1)[1].split(" ", 1)[0]
        return Reply(content=f"{seed} (case {variant})?", prompt_tokens=30, completion_tokens=8)
    return Reply(content=f"Teacher answer to: {last}", prompt_tokens=20, completion_tokens=6)


def _prompts(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"How do I reset setting number {i} on device {i * 7}?"} for i in range(n)]


def _spec(data: Path, url: str, **teacher: Any) -> FineTuneJobSpec:
    dataset: dict[str, Any] = {"source": {"uri": f"file://{data}"}}
    if "augment" in teacher:
        dataset["augment"] = {"perExample": teacher.pop("augment")}
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "objective": teacher.pop("objective", "distill"),
            "teacher": {
                "endpoint": url,
                "model": "teacher-70b",
                "apiKeySecretRef": {"name": "teacher", "key": "api-key"},
                **teacher,
            },
            "dataset": dataset,
            "dataPolicy": {"dedup": "exact"},
        }
    )


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(c.ENV_TEACHER_API_KEY, KEY)


def test_prompt_only_records_are_answered_and_a_second_run_pays_nothing(
    tmp_path: Path, keyed: None
) -> None:
    data = _write(tmp_path / "prompts.jsonl", _prompts(20))
    with FakeJudgeServer(responder=_teacher_reply, api_key=KEY) as server:
        spec = _spec(data, server.url)
        first = prepare_dataset(spec, tmp_path / "run")
        sent = len(server.requests)
        again = prepare_dataset(spec, tmp_path / "run")  # the retried pod: same artifact volume
        assert len(server.requests) == sent  # zero teacher requests the second time
    assert sent == 20
    usage = first.report.teacher
    assert usage is not None
    assert (usage.answered, usage.cached, usage.requests) == (20, 0, 20)
    assert (usage.prompt_tokens, usage.completion_tokens) == (20 * 20, 20 * 6)
    second = again.report.teacher
    assert second is not None and (second.answered, second.cached, second.requests) == (20, 20, 0)
    # What the teacher data cost, though this run paid nothing of it.
    assert (second.prompt_tokens, second.completion_tokens) == (20 * 20, 20 * 6)
    assert first.format == "completion"
    records = first.train + first.validation + first.test
    assert len(records) == 20
    assert all(r["completion"] == f"Teacher answer to: {r['prompt']}" for r in records)
    assert again.train == first.train and again.test == first.test
    status = first.report.summary().to_wire()
    assert status["teacher"]["answered"] == 20 and status["synthetic"] == 0


def test_the_test_split_keeps_the_datasets_own_answers_as_references(
    tmp_path: Path, keyed: None
) -> None:
    records = [
        {"prompt": f"What is code {i} of the manual?", "completion": f"Code {i} means stop."}
        for i in range(20)
    ]
    data = _write(tmp_path / "answered.jsonl", records)
    with FakeJudgeServer(responder=_teacher_reply) as server:
        prepared = prepare_dataset(_spec(data, server.url), tmp_path / "run")
    assert prepared.test
    assert all(r["completion"].startswith("Code ") for r in prepared.test)
    assert all(r["completion"].startswith("Teacher answer") for r in prepared.train)


def test_requests_in_flight_never_exceed_the_concurrency(tmp_path: Path, keyed: None) -> None:
    data = _write(tmp_path / "prompts.jsonl", _prompts(12))

    def slow(body: dict[str, Any]) -> Reply:
        reply = _teacher_reply(body)
        return Reply(content=reply.content, delay=0.05)

    with FakeJudgeServer(responder=slow) as server:
        prepare_dataset(_spec(data, server.url, concurrency=2), tmp_path / "run")
        assert len(server.requests) == 12
        assert 1 <= server.max_in_flight <= 2


def test_a_429_waits_for_retry_after_and_a_500_backs_off(tmp_path: Path) -> None:
    script = {
        "first": [Reply(status=429, headers={"Retry-After": "7"}), Reply(content="fine")],
        "second": [Reply(status=503), Reply(status=503), Reply(content="fine too")],
    }
    waits: list[float] = []
    with FakeJudgeServer(script) as server:
        spec = TeacherSpec.model_validate({"endpoint": server.url, "model": "t", "maxRetries": 3})
        teacher = Teacher(spec, KEY, AnswerCache(tmp_path, spec), sleep=waits.append)
        answers = teacher.ask_all(
            [[{"role": "user", "content": "first"}], [{"role": "user", "content": "second"}]]
        )
        teacher.close()
    assert [a.text for a in answers] == ["fine", "fine too"]
    assert sorted(waits) == [1.0, 2.0, 7.0]  # Retry-After 7 s; backoff 1 s, then 2 s
    assert teacher.requests == 5


def test_retries_give_up_and_the_record_is_invalid_with_the_teachers_error(
    tmp_path: Path, keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kubetune_trainer.distill.teacher.BACKOFF_SECONDS", 0.0)
    records = _prompts(10)
    records[3] = {"prompt": "always-overloaded question?"}
    data = _write(tmp_path / "prompts.jsonl", records)
    script = {"always-overloaded": [Reply(status=503)]}
    with FakeJudgeServer(script, responder=_teacher_reply) as server:
        prepared = prepare_dataset(_spec(data, server.url, maxRetries=1), tmp_path / "run")
        assert server.counts["always-overloaded"] == 2  # the request and one retry
    usage = prepared.report.teacher
    assert usage is not None and usage.failed == 1 and usage.answered == 9
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["data"]["problemsByCode"] == {"teacher_failed": 1}
    assert "the teacher gave no answer" in report["data"]["problems"][0]["message"]


def test_empty_teacher_answers_are_rejected_by_validation_and_counted(
    tmp_path: Path, keyed: None
) -> None:
    records = [
        {"messages": [{"role": "user", "content": f"Question {i}: where is office {i}?"}]}
        for i in range(10)
    ]
    records[2]["messages"][0]["content"] = "blank-me: where is the annex?"
    records[5]["messages"][0]["content"] = "blank-me too: where is the depot?"
    data = _write(tmp_path / "chat.jsonl", records)
    with FakeJudgeServer({"blank-me": [Reply(content="")]}, responder=_teacher_reply) as server:
        prepared = prepare_dataset(_spec(data, server.url), tmp_path / "run")
    usage = prepared.report.teacher
    assert usage is not None and usage.answered == 10 and usage.rejected == 2
    assert prepared.report.summary().invalid == 2
    assert len(prepared.train + prepared.validation + prepared.test) == 8
    text = (tmp_path / "run" / "data" / "report.txt").read_text()
    assert "2 answer(s) rejected by validation" in text


def test_a_refused_key_stops_the_teacher_and_the_key_is_nowhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(c.ENV_TEACHER_API_KEY, KEY)
    data = _write(tmp_path / "prompts.jsonl", _prompts(8))
    caplog.set_level(logging.DEBUG)
    # The server wants another key: every request is refused with 401.
    script = {"": [Reply(status=401, content=None)]}
    with FakeJudgeServer(script, api_key="sk-the-right-one", responder=_teacher_reply) as server:
        spec = _spec(data, server.url, concurrency=1)
        with pytest.raises(TeacherUnavailableError) as info:
            prepare_dataset(spec, tmp_path / "run")
        assert len(server.requests) == 1  # no request after the refusal
    message = str(info.value)
    assert "HTTP 401" in message and "teacher.apiKeySecretRef" in message
    out, err = capfd.readouterr()
    texts = [message, caplog.text, out, err]
    texts += [p.read_text() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert texts[4:]  # the report and the cache's teacher.json were written
    assert not any(KEY in t for t in texts)


def test_the_key_never_reaches_a_file_or_a_log_line_on_success(
    tmp_path: Path, keyed: None, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "prompts.jsonl", _prompts(10))
    caplog.set_level(logging.DEBUG)
    with FakeJudgeServer(
        {"number 3 ": [Reply(status=429, headers={"Retry-After": "0"}), Reply(content="ok")]},
        responder=_teacher_reply,
        api_key=KEY,
    ) as server:
        prepared = prepare_dataset(_spec(data, server.url), tmp_path / "run")
        assert server.auth_headers and all(h == f"Bearer {KEY}" for h in server.auth_headers)
    out, err = capfd.readouterr()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.parent.name != "data" for p in files)  # cache entries were written
    for text in [caplog.text, out, err, json.dumps(prepared.report.to_json())]:
        assert KEY not in text
    for path in files:
        assert KEY not in path.read_text(), path


def test_augment_adds_flagged_synthetic_examples_from_training_seeds_only(
    tmp_path: Path, keyed: None
) -> None:
    records = [
        {"prompt": f"How do I pair headset model {i} with a laptop?", "completion": f"Hold {i}."}
        for i in range(20)
    ]
    data = _write(tmp_path / "seeds.jsonl", records)
    with FakeJudgeServer(responder=_teacher_reply) as server:
        spec = _spec(data, server.url, objective="sft", augment=2)
        prepared = prepare_dataset(spec, tmp_path / "run")
        sent = len(server.requests)
        prepare_dataset(spec, tmp_path / "run")
        assert len(server.requests) == sent  # the synthetic examples are cached too
    report = prepared.report
    seeds = report.train - report.synthetic_mixed
    assert report.synthetic_mixed == 2 * seeds
    assert sent == 2 * 2 * seeds  # a new request, then its answer, twice per seed
    held_out = {r["prompt"] for r in prepared.validation + prepared.test}
    synthetic = [r for r in prepared.train if "(case " in r["prompt"]]
    assert len(synthetic) == report.synthetic_mixed
    assert not any(r["prompt"].split(" (case")[0] + "?" in held_out for r in synthetic)
    lines = [json.loads(x) for x in (tmp_path / "run/data/train.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x.get("synthetic") is True) == report.synthetic_mixed
    summary = report.summary()
    assert summary.synthetic == report.synthetic_mixed and summary.total == 20
    full = json.loads((tmp_path / "run/data/report.json").read_text())
    assert full["synthetic"]["mixed"] == report.synthetic_mixed
    assert full["synthetic"]["records"] == 2 * seeds
    assert f"{report.synthetic_mixed} synthetic" in (tmp_path / "run/data/report.txt").read_text()


def test_most_answers_missing_fails_the_data_stage_with_the_count(
    tmp_path: Path, keyed: None
) -> None:
    data = _write(tmp_path / "prompts.jsonl", _prompts(6))
    with FakeJudgeServer(default=Reply(content="")) as server, pytest.raises(DataValidationError):
        prepare_dataset(_spec(data, server.url), tmp_path / "run")
    report = json.loads((tmp_path / "run/data/report.json").read_text())
    assert report["teacher"]["rejected"] == 6 and report["teacher"]["answered"] == 6


def test_a_local_teacher_model_answers_once_and_a_second_run_never_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """teacher.uri: a model the trainer loads (here a tiny Llama built in the test, random
    weights: its answers are noise, which is all this test needs)."""
    from kubetune_trainer.distill.local_teacher import LocalTeacher
    from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

    folder = build_tiny_llama(tmp_path / "teacher", BUILTIN_CORPUS)
    records = [
        {"messages": [{"role": "user", "content": f"Ticket {i}: my order {i} is late."}]}
        for i in range(8)
    ]
    data = _write(tmp_path / "chat.jsonl", records)
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "objective": "distill",
            "teacher": {"uri": f"file://{folder}", "maxTokens": 6, "concurrency": 3},
            "dataset": {"source": {"uri": f"file://{data}"}, "augment": {"perExample": 1}},
            "dataPolicy": {"dedup": "none"},
        }
    )
    import kubetune_trainer.evaluation.generation as generation

    loads: list[Path] = []
    real_iter_models = generation.iter_models

    def counted(path: Path, *args: Any, **kwargs: Any) -> Any:
        loads.append(path)
        return real_iter_models(path, *args, **kwargs)

    monkeypatch.setattr(generation, "iter_models", counted)
    first = prepare_dataset(spec, tmp_path / "run")
    assert loads == [folder]  # one load for the answers, the new requests and their answers
    usage = first.report.teacher
    assert usage is not None and usage.model == f"file://{folder}"
    report = first.report
    seeds = report.train - report.synthetic_mixed
    # 8 answers, then one new request per training seed and an answer to each non-empty one.
    assert usage.requests >= 8 + seeds and usage.cached == 0
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert seeds + report.validation + report.test + report.summary().invalid == 8
    kept = first.train + first.validation + first.test
    assert all(r["messages"][-1]["role"] == "assistant" for r in kept)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher model was loaded although every answer is cached")

    monkeypatch.setattr("kubetune_trainer.evaluation.generation.iter_models", no_model)
    again = prepare_dataset(spec, tmp_path / "run")
    second = again.report.teacher
    assert second is not None and second.requests == 0 and second.cached == usage.requests
    assert again.train == first.train
    assert spec.teacher is not None
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert LocalTeacher(spec.teacher).size_bytes() == weights > 0


@pytest.mark.parametrize(
    ("record", "sent", "answered"),
    [
        (
            {"instruction": "Summarise", "input": "a long text", "system": "Be brief."},
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Summarise\n\na long text"},
            ],
            {
                "instruction": "Summarise",
                "input": "a long text",
                "system": "Be brief.",
                "output": "A.",
            },
        ),
        (
            {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "old"}]},
            [{"role": "user", "content": "Hi?"}],
            {
                "messages": [
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "A."},
                ]
            },
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "old"},
                ]
            },
            [
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
            ],
            {
                "messages": [
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A."},
                ]
            },
        ),
        (
            {"prompt": "2+2=", "completion": "5"},
            [{"role": "user", "content": "2+2="}],
            {"prompt": "2+2=", "completion": "A."},
        ),
    ],
    ids=["instruction", "sharegpt", "multi-turn-chat", "completion"],
)
def test_each_record_shape_is_asked_up_to_its_last_user_turn_and_keeps_its_shape(
    record: dict[str, Any], sent: list[dict[str, str]], answered: dict[str, Any]
) -> None:
    from kubetune_trainer.distill.generate import answered_row, prompt_of

    found = prompt_of(record)
    assert found is not None and found[0] == sent
    assert answered_row(record, found[0], found[1], "A.") == answered


def test_records_without_a_prompt_are_left_for_validation_to_name() -> None:
    from kubetune_trainer.distill.generate import prompt_of

    assert prompt_of({"messages": [{"role": "assistant", "content": "orphan answer"}]}) is None
    assert prompt_of({"text": "no known field"}) is None
    assert prompt_of(["not", "an", "object"]) is None
