"""The LLM judge against a real local OpenAI-compatible HTTP server (tests/judge_server.py):
retries, Retry-After, timeouts, refusals, malformed replies, concurrency and token usage."""

from __future__ import annotations

import logging
import time

import openai  # noqa: F401  (a missing dependency fails, never skips)
import pytest

from kubetune.api.finetunejob import JudgeSpec
from kubetune_trainer.evaluation.judge import Judge, retry_after_seconds
from tests.judge_server import FakeJudgeServer, Reply, verdict

SECRET = "sk-test-SECRET-do-not-leak-0123456789"


def _judge(server: FakeJudgeServer, waits: list[float] | None = None, **spec: object) -> Judge:
    settings: dict[str, object] = {
        "endpoint": server.url,
        "model": "judge-model",
        "timeout_seconds": 0.5,
    }
    settings.update(spec)
    recorded = waits if waits is not None else []

    def sleep(seconds: float) -> None:
        recorded.append(seconds)
        time.sleep(seconds)

    return Judge(JudgeSpec.model_validate(settings), SECRET, backoff_seconds=0.01, sleep=sleep)


def test_scripted_failures_are_retried_until_scored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = {
        "case-good": [verdict(5, "Same as the reference.")],
        "case-fenced": [Reply(content='```json\n{"score": 3, "reason": "partly"}\n```')],
        "case-malformed": [Reply(content='{"score": "four"}'), verdict(4)],
        "case-refusal-text": [Reply(content="I'm sorry, but I can't help with that."), verdict(2)],
        "case-refusal-field": [Reply(content=None, refusal="I cannot grade this."), verdict(3)],
        "case-429": [Reply(status=429, headers={"Retry-After": "1"}), verdict(4)],
        "case-500": [Reply(status=503), verdict(4)],
        "case-slow": [Reply(delay=3.0), verdict(5)],
        "case-always-bad": [Reply(content="score: 5")],
    }
    waits: list[float] = []
    with FakeJudgeServer(script, api_key=SECRET) as server:
        judge = _judge(server, waits, max_retries=2, max_concurrency=4)
        items = [(f"question {m}", "reference", f"answer {m}") for m in script]
        started = time.monotonic()
        outcomes = dict(zip(script, judge.score_all(items), strict=True))
        elapsed = time.monotonic() - started
        judge.close()

    assert {m: o.score for m, o in outcomes.items()} == {
        "case-good": 5,
        "case-fenced": 3,
        "case-malformed": 4,
        "case-refusal-text": 2,
        "case-refusal-field": 3,
        "case-429": 4,
        "case-500": 4,
        "case-slow": 5,
        "case-always-bad": None,
    }
    # Requests per example, as the server counted them: retries really happened.
    assert server.counts["case-good"] == 1
    assert server.counts["case-malformed"] == 2
    assert server.counts["case-refusal-text"] == 2
    assert server.counts["case-refusal-field"] == 2
    assert server.counts["case-429"] == 2
    assert server.counts["case-500"] == 2
    assert server.counts["case-slow"] == 2
    assert server.counts["case-always-bad"] == 3  # 1 + max_retries, then given up
    assert outcomes["case-slow"].attempts == 2 and server.aborted == 1
    # Retry-After: 1 was honoured.
    assert 1.0 in waits and elapsed >= 1.0
    bad = outcomes["case-always-bad"]
    assert not bad.scored and bad.attempts == 3 and "malformed verdict" in (bad.error or "")
    # The retry after a malformed reply shows the judge its reply and the format again.
    retried = [r for r in server.requests if "case-malformed" in str(r["messages"])][1]
    assert retried["messages"][-2] == {"role": "assistant", "content": '{"score": "four"}'}
    assert "score" in retried["messages"][-1]["content"]
    # Tokens of every reply, malformed ones included, are summed.
    assert judge.tokens == server.total_tokens == sum(o.tokens for o in outcomes.values())
    assert judge.tokens > 0
    # The key was sent as a bearer token and appears nowhere else.
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert SECRET not in caplog.text
    assert all(SECRET not in str(o.to_row()) for o in outcomes.values())
    assert all(r["temperature"] == 0 and r["model"] == "judge-model" for r in server.requests)


def test_concurrency_never_exceeds_the_limit() -> None:
    with FakeJudgeServer(
        default=Reply(content='{"score": 4, "reason": "ok"}', delay=0.15)
    ) as server:
        judge = _judge(server, max_concurrency=3, timeout_seconds=5)
        outcomes = judge.score_all([(f"q{i}", "r", "a") for i in range(12)])
        judge.close()
    assert all(o.score == 4 for o in outcomes)
    assert server.max_in_flight == 3  # reached, never exceeded
    assert len(server.requests) == 12


def test_retry_after_is_capped() -> None:
    waits: list[float] = []
    with FakeJudgeServer(
        {"x": [Reply(status=429, headers={"Retry-After": "3600"}), verdict(5)]}
    ) as server:
        spec = JudgeSpec.model_validate(
            {"endpoint": server.url, "model": "m", "timeout_seconds": 2}
        )
        judge = Judge(spec, None, max_retry_after=0.2, sleep=waits.append)
        outcome = judge.score("x", "r", "a")
        judge.close()
    assert outcome.score == 5 and waits == [0.2]


def test_rate_limit_exhausting_retries_is_unscored_not_raised() -> None:
    with FakeJudgeServer({"x": [Reply(status=429, headers={"retry-after-ms": "10"})]}) as server:
        judge = _judge(server, max_retries=1)
        outcome = judge.score("x", "r", "a")
        judge.close()
    assert outcome.score is None and outcome.attempts == 2 and "429" in (outcome.error or "")
    assert server.counts["x"] == 2


def test_authentication_errors_are_not_retried() -> None:
    with FakeJudgeServer(api_key="the-right-key") as server:
        judge = _judge(server, max_retries=3)
        outcome = judge.score("q", "r", "a")
        judge.close()
    assert outcome.score is None and outcome.attempts == 1
    assert "401" in (outcome.error or "") and SECRET not in (outcome.error or "")
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_unscored() -> None:
    with FakeJudgeServer() as server:
        url = server.url
    spec = JudgeSpec.model_validate(
        {"endpoint": url, "model": "m", "timeout_seconds": 1, "max_retries": 2}
    )
    waits: list[float] = []
    judge = Judge(spec, SECRET, backoff_seconds=0.01, sleep=waits.append)
    outcome = judge.score("q", "r", "a")
    judge.close()
    assert outcome.score is None and outcome.attempts == 3 and "connection" in (outcome.error or "")
    assert waits == [0.01, 0.02]  # exponential backoff


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_broken_response_bodies_are_retried() -> None:
    script = {
        "case-not-json": [Reply(raw=b"<html>bad gateway</html>"), verdict(4)],
        "case-not-a-completion": [Reply(raw=b'{"choices": "weird"}'), verdict(3)],
        "case-no-choices": [Reply(raw=b'{"id": "x", "choices": []}'), verdict(2)],
        "case-content-filter": [Reply(content=None, finish_reason="content_filter"), verdict(1)],
    }
    with FakeJudgeServer(script) as server:
        judge = _judge(server, max_retries=1)
        outcomes = judge.score_all([(m, "r", "a") for m in script])
        judge.close()
    assert [o.score for o in outcomes] == [4, 3, 2, 1]
    assert all(o.attempts == 2 for o in outcomes)
    assert all(server.counts[m] == 2 for m in script)
