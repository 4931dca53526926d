"""Fallback routing: a second FakeOllama (real HTTP) stands in for the OpenAI-compatible
provider of spec.fallback; the local one fails, is slow or refuses as its magic words say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.operator.builders.serving import FALLBACK_API_KEY_ENV, _fallback_args, _fallback_env
from kubetune.serving.gateway.settings import FallbackSettings
from kubetune_dev.fake_ollama import FakeOllama, free_port
from tests.unit.test_gateway_fake_ollama import GatewayUnderTest, sample

LABELS = {"deployment": "support", "version": "v2"}
KEY = "sk-test-secret-key"


class Provider(FakeOllama):
    """The fallback provider: answers ``big: <last message>`` (streamed or not, OpenAI's wire
    format) whatever the words, and keeps each request's Authorization header."""

    def __init__(self) -> None:
        super().__init__()
        self.authorization: list[str] = []

    async def _chat(self, request):  # type: ignore[no-untyped-def]
        import json

        from aiohttp import web

        self.authorization.append(request.headers.get("Authorization", ""))
        body = await request.json()
        self.requests.append(body)
        content = "big: " + str(body["messages"][-1]["content"])
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            return web.json_response({
                "id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": usage,
            })  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for choices in (
            [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
            [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        ):
            await response.write(f"data: {json.dumps({'choices': choices})}\n\n".encode())
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture(scope="module")
def local() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    server = Provider()
    server.start()
    yield server
    server.stop()


def gateway_with(
    local_url: str, provider_url: str, tmp_path: Path, **fallback: object
) -> GatewayUnderTest:
    settings = FallbackSettings(
        url=provider_url + "/v1", model="gpt-big", api_key=KEY,
        **{"timeout_s": 1.0, **fallback},  # type: ignore[arg-type]
    )  # fmt: skip
    return GatewayUnderTest(local_url, tmp_path / "log.db", fallback=settings, content="full")


@pytest.fixture
def gateway(local: FakeOllama, provider: Provider, tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gw = gateway_with(local.url, provider.url, tmp_path)
    yield gw
    gw.close()


def test_a_local_error_is_answered_by_the_fallback_and_counted_and_logged(
    gateway: GatewayUnderTest, provider: Provider
) -> None:
    response = gateway.chat("fail")
    assert response.status_code == 200
    assert response.headers["x-kubetune-route"] == "fallback"
    assert response.headers["x-kubetune-version"] == "v2"
    assert response.json()["choices"][0]["message"]["content"] == "big: fail"
    assert provider.requests[-1]["model"] == "gpt-big"
    text = gateway.metrics()
    assert sample(text, "kubetune_gateway_fallbacks_total", **LABELS, reason="error") == 1
    assert sample(text, "kubetune_gateway_requests_total", **LABELS, route="fallback",
                  finish_reason="stop") == 1  # fmt: skip
    # the version failed all the same: rollback must still see it
    assert sample(text, "kubetune_gateway_errors_total", **LABELS, error_type="upstream_status") == 1
    (row,) = gateway.rows()
    assert row["route"] == "fallback" and row["error"] is None
    assert row["response"] == "big: fail"


def test_a_local_answer_is_never_replaced_and_a_client_mistake_is_relayed(
    gateway: GatewayUnderTest, provider: Provider
) -> None:
    before = len(provider.requests)
    ok = gateway.chat("hello")
    assert ok.status_code == 200 and "x-kubetune-route" not in ok.headers
    assert gateway.chat("refuse").status_code == 400  # Ollama's 4xx: the client's request
    assert len(provider.requests) == before


def test_a_slow_local_model_times_out_to_the_fallback_streamed_too(
    gateway: GatewayUnderTest,
) -> None:
    response = gateway.chat("slow")
    assert response.status_code == 200
    assert response.headers["x-kubetune-route"] == "fallback"
    with gateway.http.stream(
        "POST", "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "slow"}], "stream": True},
    ) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        assert streamed.headers["x-kubetune-route"] == "fallback"
        body = streamed.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    assert sample(gateway.metrics(), "kubetune_gateway_fallbacks_total", **LABELS,
                  reason="timeout") == 2  # fmt: skip


def test_the_api_key_is_never_logged_nor_exported_in_metrics(gateway: GatewayUnderTest) -> None:
    assert gateway.chat("fail").status_code == 200
    gateway.rows()
    assert KEY.encode() not in gateway.db.read_bytes()
    assert KEY not in gateway.metrics()
    assert KEY not in repr(gateway.settings)


def test_when_both_fail_the_client_gets_the_local_error(
    local: FakeOllama, tmp_path: Path
) -> None:
    gw = gateway_with(local.url, f"http://127.0.0.1:{free_port()}", tmp_path)
    try:
        response = gw.chat("fail")
        assert response.status_code == 502
        assert "x-kubetune-route" not in response.headers
        assert "500" in response.json()["error"]["message"]
        assert sample(gw.metrics(), "kubetune_gateway_errors_total", **LABELS,
                      error_type="fallback_failed") == 1  # fmt: skip
        assert gw.chat("hello").status_code == 200
    finally:
        gw.close()


def test_a_refusal_falls_back_only_when_listed_and_a_failing_fallback_keeps_the_local_answer(
    local: FakeOllama, provider: Provider, tmp_path: Path
) -> None:
    refuser = RefusingOllama().start()
    try:
        (tmp_path / "a").mkdir()
        gw = gateway_with(refuser.url, provider.url, tmp_path / "a", on=frozenset({"error"}))
        try:
            assert "x-kubetune-route" not in gw.chat("hello").headers  # refusal not listed
        finally:
            gw.close()
        (tmp_path / "b").mkdir()
        gw = gateway_with(refuser.url, provider.url, tmp_path / "b",
                          on=frozenset({"error", "refusal"}))  # fmt: skip
        try:
            answer = gw.chat("hello")
            assert answer.headers["x-kubetune-route"] == "fallback"
            assert answer.json()["choices"][0]["message"]["content"] == "big: hello"
            assert sample(gw.metrics(), "kubetune_gateway_fallbacks_total", **LABELS,
                          reason="refusal") == 1  # fmt: skip
        finally:
            gw.close()
        (tmp_path / "c").mkdir()
        gw = gateway_with(refuser.url, f"http://127.0.0.1:{free_port()}", tmp_path / "c",
                          on=frozenset({"refusal"}))  # fmt: skip
        try:
            kept = gw.chat("hello")
            assert kept.status_code == 200 and "x-kubetune-route" not in kept.headers
            assert kept.json()["choices"][0]["message"]["content"].startswith("I can't")
        finally:
            gw.close()
    finally:
        refuser.stop()


class RefusingOllama(FakeOllama):
    """A local model that refuses everything (non-streamed)."""

    async def _chat(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        body = await request.json()
        return web.json_response({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "I can't help with that."}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        })  # fmt: skip


def test_the_builder_passes_the_key_as_a_secret_env_var_never_as_an_argument() -> None:
    spec = ModelDeploymentSpec.model_validate({
        "versions": [{"name": "v1", "fineTuneJob": "job"}],
        "fallback": {"endpoint": "https://api.example.com/v1", "model": "big",
                     "apiKeySecretRef": {"name": "provider", "key": "apiKey"},
                     "on": ["error", "refusal"]},
    })  # fmt: skip
    args = _fallback_args(spec)
    assert args == [
        "--fallback-url", "https://api.example.com/v1", "--fallback-model", "big",
        "--fallback-timeout-seconds", "30", "--fallback-on", "error,refusal",
        "--fallback-api-key-env", FALLBACK_API_KEY_ENV,
    ]  # fmt: skip
    assert _fallback_env(spec) == [{
        "name": FALLBACK_API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "provider", "key": "apiKey"}},
    }]  # fmt: skip
    plain = ModelDeploymentSpec.model_validate({"versions": [{"name": "v1", "fineTuneJob": "j"}]})
    assert _fallback_args(plain) == [] and _fallback_env(plain) == []
