"""The gateway's OpenAI-compatible API against a fake Ollama (real HTTP, see
test_gateway_fake_ollama): relay, streaming, headers, metrics, errors and limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kubetune_dev.fake_ollama import FakeOllama, free_port
from tests.unit.test_gateway_fake_ollama import GatewayUnderTest, sample

DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def gateway(fake: FakeOllama, tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", upstream_timeout_s=1.0)
    yield gw
    gw.close()


def assert_stamped(response: httpx.Response) -> None:
    assert response.headers["x-kubetune-version"] == "v2"
    assert response.headers["x-kubetune-digest"] == DIGEST
    assert len(response.headers["x-request-id"]) >= 1


def sse_events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def test_a_completion_is_relayed_with_the_model_rewritten_to_the_alias(
    gateway: GatewayUnderTest, fake: FakeOllama
) -> None:
    response = gateway.chat("hello world", temperature=0)
    assert response.status_code == 200
    assert_stamped(response)
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello world"
    assert fake.requests[-1]["model"] == "support"
    assert fake.requests[-1]["temperature"] == 0
    assert "stream_options" not in fake.requests[-1]


def test_the_request_id_is_echoed_when_given_and_generated_when_not_usable(
    gateway: GatewayUnderTest,
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    given = gateway.http.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    bad = gateway.http.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": "no spaces; please"}
    )
    assert bad.headers["x-request-id"] != "no spaces; please"
    assert len(bad.headers["x-request-id"]) == 32


def test_a_stream_is_relayed_chunk_by_chunk_in_order_and_ends_with_done(
    gateway: GatewayUnderTest, fake: FakeOllama
) -> None:
    with gateway.http.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "one two three"}], "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_stamped(response)
        text = response.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [
        "echo:",
        " one",
        " two",
        " three",
        "",
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # Usage was asked of Ollama for the metrics, and its chunk not passed on.
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(c["choices"] for c in chunks)


def test_a_stream_keeps_the_usage_chunk_when_the_client_asked_for_it(
    gateway: GatewayUnderTest,
) -> None:
    response = gateway.chat("a b", stream=True, stream_options={"include_usage": True})
    events = sse_events(response.text)
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


def test_models_lists_the_deployment_model_only(gateway: GatewayUnderTest) -> None:
    response = gateway.http.get("/v1/models")
    assert response.status_code == 200
    assert_stamped(response)
    assert [m["id"] for m in response.json()["data"]] == ["support"]


def test_metrics_have_the_genai_series_labelled_by_deployment_and_version(
    gateway: GatewayUnderTest,
) -> None:
    assert gateway.chat("x y").status_code == 200
    assert gateway.chat("x y z", stream=True).status_code == 200
    assert gateway.chat("long").status_code == 200
    assert gateway.chat("fail").status_code == 502
    text = gateway.metrics()
    ours = {"deployment": "support", "version": "v2"}
    local = {**ours, "route": "local"}
    duration = "gen_ai_server_request_duration_seconds_count"
    assert sample(text, duration, **local, finish_reason="stop") == 2
    assert sample(text, duration, **local, finish_reason="length") == 1
    assert sample(text, duration, **local, finish_reason="error") == 1
    assert sample(text, "gen_ai_server_time_to_first_token_seconds_count", **ours) == 1
    assert sample(text, "gen_ai_server_time_per_output_token_seconds_count", **ours) == 1
    usage = "gen_ai_client_token_usage"
    assert sample(text, usage + "_count", **ours, gen_ai_token_type="input") == 3
    # echo: x y (3) + echo: x y z (4, from the stream's usage chunk) + echo: long (2)
    assert sample(text, usage + "_sum", **ours, gen_ai_token_type="output") == 9
    requests = "kubetune_gateway_requests_total"
    assert sample(text, requests, **local, finish_reason="stop") == 2
    assert sample(text, requests, **local, finish_reason="error") == 1
    assert sample(text, "kubetune_gateway_errors_total", **ours, error_type="upstream_status") == 1
    assert "x y z" not in text  # never prompt text
    assert "kubetune_feedback_score" in text


@pytest.mark.parametrize(
    ("content", "body", "status", "param"),
    [
        ("application/json", b"{not json", 400, None),
        ("application/json", b"[1, 2]", 422, None),
        ("application/json", b'{"messages": []}', 422, "messages"),
        ("application/json", b'{"model": "x"}', 422, "messages"),
    ],
)
def test_a_malformed_body_is_a_clear_4xx(
    gateway: GatewayUnderTest, content: str, body: bytes, status: int, param: str | None
) -> None:
    response = gateway.http.post(
        "/v1/chat/completions", content=body, headers={"content-type": content}
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "Traceback" not in response.text
    assert_stamped(response)


def test_a_body_above_one_mib_is_413_and_unknown_routes_404_and_405(
    gateway: GatewayUnderTest,
) -> None:
    big = gateway.chat("x" * (1 << 20))
    assert big.status_code == 413
    assert "1048576 bytes" in big.json()["error"]["message"]
    assert_stamped(big)
    just_under = gateway.chat("x " * 400_000)
    assert just_under.status_code == 200
    missing = gateway.http.get("/v1/nothing")
    assert missing.status_code == 404 and "/v1/nothing" in missing.json()["error"]["message"]
    wrong = gateway.http.get("/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    errors = {"deployment": "support", "version": "v2"}
    text = gateway.metrics()
    assert sample(text, "kubetune_gateway_errors_total", **errors, error_type="body_too_large") == 1
    assert sample(text, "kubetune_gateway_errors_total", **errors, error_type="bad_request") == 2


def test_upstream_errors_are_502_timeouts_504_and_refusals_relayed(
    gateway: GatewayUnderTest,
) -> None:
    failed = gateway.chat("fail")
    assert failed.status_code == 502
    assert failed.json()["error"]["type"] == "api_error"
    assert "model runner crashed" in failed.json()["error"]["message"]
    assert_stamped(failed)
    refused = gateway.chat("refuse")
    assert refused.status_code == 400 and "invalid message" in refused.json()["error"]["message"]
    slow = gateway.chat("slow")
    assert slow.status_code == 504 and "in time" in slow.json()["error"]["message"]
    slow_stream = gateway.chat("slow", stream=True)
    assert slow_stream.status_code == 504
    assert (
        sample(
            gateway.metrics(),
            "kubetune_gateway_errors_total",
            deployment="support",
            version="v2",
            error_type="upstream_timeout",
        )
        == 2
    )


def test_a_stream_cut_short_ends_with_an_error_event_and_no_done(
    gateway: GatewayUnderTest,
) -> None:
    response = gateway.chat("cut", stream=True)
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["message"].startswith("the model server")
    assert (
        sample(
            gateway.metrics(),
            "kubetune_gateway_errors_total",
            deployment="support",
            version="v2",
            error_type="upstream_protocol",
        )
        == 1
    )
    row = gateway.rows()[-1]
    assert row["finish_reason"] == "error" and row["error"] == "upstream_protocol"


def test_upstream_down_is_502_naming_the_cause(tmp_path: Path) -> None:
    gw = GatewayUnderTest(f"http://127.0.0.1:{free_port()}", tmp_path / "log.db")
    try:
        for stream in (False, True):
            response = gw.chat("hi", stream=stream)
            assert response.status_code == 502
            assert "unreachable" in response.json()["error"]["message"]
            assert_stamped(response)
        unreachable = {
            "deployment": "support",
            "version": "v2",
            "error_type": "upstream_unreachable",
        }
        assert sample(gw.metrics(), "kubetune_gateway_errors_total", **unreachable) == 2
        rows = gw.rows(wait_for=2)
        assert [(r["error"], r["finish_reason"]) for r in rows] == [
            ("upstream_unreachable", "error")
        ] * 2
    finally:
        gw.close()
