"""``GET /v1/predictions`` against the fake Ollama: only stored text, filtered by feedback score
and time, in the shape ``kubetune predictions export`` turns into training data; bad query
parameters are 422s naming the parameter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.predictions_export import to_chat_records
from kubetune_dev.fake_ollama import FakeOllama
from tests.unit.test_gateway_fake_ollama import GatewayUnderTest


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


def _lines(gw: GatewayUnderTest, query: str) -> list[dict[str, object]]:
    answer = gw.http.get(f"/v1/predictions{query}")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines() if line]


def test_scored_answers_are_exported_as_training_material(fake: FakeOllama, tmp_path: Path) -> None:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", content="full")
    try:
        ids = [gw.chat(f"question {i}").headers["x-request-id"] for i in range(3)]
        gw.rows(wait_for=3)
        for request_id, score in zip(ids, (5, 2, 4), strict=False):
            if score:
                assert gw.http.post("/v1/feedback", json={"requestId": request_id, "score": score}).status_code == 200
        everything = _lines(gw, "")
        good = _lines(gw, "?minScore=4&since=7d")
        future = _lines(gw, "?since=2999-01-01T00:00:00Z")
        bad = gw.http.get("/v1/predictions?minScore=9")
        bad_since = gw.http.get("/v1/predictions?since=yesterday")
    finally:
        gw.close()
    assert {line["requestId"] for line in everything} == set(ids)
    assert sorted((line["requestId"], line["score"]) for line in good) == sorted([(ids[0], 5), (ids[2], 4)])
    first = next(line for line in good if line["requestId"] == ids[0])
    assert first["messages"] == [{"role": "user", "content": "question 0"}]
    assert first["response"] == "echo: question 0" and first["version"] == "v2" and first["route"] == "local"
    assert future == []
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "minScore"
    assert bad_since.status_code == 422 and bad_since.json()["error"]["param"] == "since"
    records = to_chat_records(good, 4)
    assert {r["messages"][-1]["content"] for r in records} == {"echo: question 0", "echo: question 2"}


def test_nothing_is_exported_when_the_text_was_not_stored(fake: FakeOllama, tmp_path: Path) -> None:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", content="none")
    try:
        gw.chat("secret question")
        gw.rows(wait_for=1)
        assert _lines(gw, "") == []
    finally:
        gw.close()
