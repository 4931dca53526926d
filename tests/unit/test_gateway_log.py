"""The gateway's prediction log and feedback API (against the fake Ollama of
test_gateway_fake_ollama): what is stored per content mode, feedback rules, retention."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.serving.gateway.metrics import GatewayMetrics
from kubetune.serving.gateway.predictions import Prediction, PredictionLog, connect
from kubetune.serving.gateway.settings import GatewaySettings
from kubetune_dev.fake_ollama import FakeOllama
from tests.unit.test_gateway_fake_ollama import GatewayUnderTest, sample

SECRET = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def gateway(fake: FakeOllama, tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", content="full")
    yield gw
    gw.close()


@pytest.mark.parametrize("content", ["full", "redacted", "none"])
def test_each_request_is_logged_with_its_content_as_the_mode_allows(
    fake: FakeOllama, tmp_path: Path, content: str
) -> None:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", content=content)
    try:
        prompt = f"my key is {SECRET} ok"
        assert gw.chat(prompt, headers=None).status_code == 200
        streamed = gw.http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": prompt}], "stream": True},
            headers={"x-request-id": "stream-1"},
        )
        assert streamed.status_code == 200
        rows = gw.rows(wait_for=2)
    finally:
        gw.close()
    assert len(rows) == 2
    for row, stream in zip(rows, (0, 1), strict=True):
        assert row["version"] == "v2" and row["digest"] == "ab" * 32
        assert row["route"] == "local" and row["finish_reason"] == "stop"
        assert row["stream"] == stream and row["error"] is None
        assert row["prompt_tokens"] == 8 and row["completion_tokens"] == 6
        assert row["latency_s"] > 0 and row["content_mode"] == content
    assert rows[0]["ttft_s"] is None and rows[1]["ttft_s"] > 0
    assert rows[1]["request_id"] == "stream-1"
    with sqlite3.connect(tmp_path / "log.db") as db:
        everything = "\n".join(line for line in db.iterdump())
    if content == "full":
        assert json.loads(rows[0]["prompt"]) == [{"role": "user", "content": prompt}]
        assert rows[0]["response"] == rows[1]["response"] == f"echo: my key is {SECRET} ok"
    elif content == "redacted":
        assert SECRET not in everything
        assert "[REDACTED:" in rows[0]["prompt"] and "[REDACTED:" in rows[1]["response"]
        assert rows[1]["response"].startswith("echo: my key is ")
    else:
        assert SECRET not in everything
        assert rows[0]["prompt"] is rows[0]["response"] is None


def test_feedback_is_stored_once_per_request_and_a_second_post_replaces_it(
    gateway: GatewayUnderTest,
) -> None:
    answer = gateway.chat("rate me")
    request_id = answer.headers["x-request-id"]
    # At once: the prediction may still be queued for the writer; feedback is written after it.
    first = gateway.http.post("/v1/feedback", json={"requestId": request_id, "score": 2})
    assert first.status_code == 200 and first.json()["status"] == "created"
    assert first.headers["x-request-id"]
    second = gateway.http.post(
        "/v1/feedback", json={"requestId": request_id, "score": 5, "comment": "better"}
    )
    assert second.status_code == 200 and second.json()["status"] == "updated"
    rows = gateway.rows("feedback")
    assert [(r["request_id"], r["score"], r["comment"], r["version"]) for r in rows] == [
        (request_id, 5, "better", "v2")
    ]
    # The histogram counts the first score of a request only.
    text = gateway.metrics()
    labels = {"deployment": "support", "version": "v2"}
    assert sample(text, "kubetune_feedback_score_count", **labels) == 1
    assert sample(text, "kubetune_feedback_score_bucket", **labels, le="2.0") == 1


def test_feedback_for_an_unknown_request_is_404(gateway: GatewayUnderTest) -> None:
    response = gateway.http.post("/v1/feedback", json={"requestId": "nobody", "score": 3})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "requestId"
    assert gateway.rows("feedback", wait_for=0) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"requestId": "r", "score": 0}, "score"),
        ({"requestId": "r", "score": 6}, "score"),
        ({"requestId": "r", "score": 4.5}, "score"),
        ({"requestId": "r", "score": True}, "score"),
        ({"requestId": "r"}, "score"),
        ({"score": 3}, "requestId"),
        ({"requestId": "r", "score": 3, "comment": 7}, "comment"),
    ],
)
def test_bad_feedback_is_422_naming_the_field(
    gateway: GatewayUnderTest, body: dict[str, object], field: str
) -> None:
    response = gateway.http.post("/v1/feedback", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == field and error["message"].startswith(field)


def _prediction(when: float, request_id: str) -> Prediction:
    return Prediction(when, request_id, "v1", None, "local", False, 0.1, None, 1, 1, "stop",
                      None, "p" * 2000, "r" * 2000)  # fmt: skip


def test_old_rows_are_deleted_at_start_and_the_file_is_bounded(tmp_path: Path) -> None:
    db_path = tmp_path / "log.db"
    settings = GatewaySettings(
        ollama_url="http://unused", model="m", db_path=db_path, content="full",
        retention_days=1, max_db_bytes=1 << 20,
    )  # fmt: skip
    db = connect(db_path)
    with db:
        db.execute(
            "INSERT INTO predictions (time, request_id, route, stream, finish_reason,"
            " content_mode) VALUES (?, 'old', 'local', 0, 'stop', 'full')",
            (time.time() - 2 * 86400,),
        )
    db.close()
    log = PredictionLog(settings, GatewayMetrics())
    log.start()
    try:
        for i in range(3000):  # 3000 x ~4 kB: 12 MB unbounded
            assert log.record(_prediction(time.time(), f"r{i}"))
        assert log.feedback("r2999", 4, None).result(30) == "created"
        with sqlite3.connect(db_path) as check:
            ids = [r[0] for r in check.execute("SELECT request_id FROM predictions")]
    finally:
        log.close()
    assert "old" not in ids and "r2999" in ids
    assert len(ids) < 1000  # the oldest were deleted to stay near 1 MiB
    assert db_path.stat().st_size < 3 << 20
