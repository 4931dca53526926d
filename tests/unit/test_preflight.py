"""check_judge_endpoint against a real HTTP server on loopback: each way a judge endpoint can be
wrong gives one exact, actionable message, and the API key never appears in it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.preflight import JudgeEndpoint, JudgeUnreachableError, check_judge_endpoint

KEY = "sk-test-0123456789"
# (method, path, Authorization header) -> (status, JSON body, seconds to wait first)
Route = Callable[[str, str, str | None], tuple[int, Any, float]]


class JudgeStandIn:
    """An HTTP server on 127.0.0.1 answering as `route` says; records the requests."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                stand_in.requests.append((self.command, self.path, auth, body))
                status, payload, wait = stand_in.route(self.command, self.path, auth)
                time.sleep(wait)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> JudgeStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def openai_like(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
    """Like api.openai.com: a key is required, and a refused key is echoed (masked badly)."""
    if auth != f"Bearer {KEY}":
        shown = (auth or "").removeprefix("Bearer ")
        return 401, {"error": {"message": f"Incorrect API key provided: {shown}."}}, 0
    if (method, path) == ("GET", "/v1/models"):
        return 200, {"object": "list", "data": [{"id": "judge-model"}, {"id": "other"}]}, 0
    return 404, {"error": {"message": f"no route {path}"}}, 0


def _spec(endpoint: str, *, secret: bool = True, model: str = "judge-model") -> FineTuneJobSpec:
    judge: dict[str, Any] = {"endpoint": endpoint, "model": model}
    if secret:
        judge["apiKeySecretRef"] = {"name": "judge-key", "key": "api-key"}
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "pvc://models/m"},
            "dataset": {"source": {"uri": "pvc://data/train.jsonl"}},
            "evaluation": {"judge": judge},
        }
    )


@pytest.fixture
def openai() -> Iterator[JudgeStandIn]:
    with JudgeStandIn(openai_like) as server:
        yield server


def test_no_judge_means_nothing_to_check() -> None:
    spec = FineTuneJobSpec.model_validate(
        {"baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://d/t.jsonl"}}}
    )
    assert check_judge_endpoint(spec) is None


def test_a_working_endpoint_lists_its_models(openai: JudgeStandIn) -> None:
    found = check_judge_endpoint(_spec(openai.base), api_key=KEY)
    assert found == JudgeEndpoint(f"{openai.base}/models", "judge-model", ("judge-model", "other"))
    assert found.lists_model is True
    assert openai.requests == [("GET", "/v1/models", f"Bearer {KEY}", b"")]
    unlisted = check_judge_endpoint(_spec(openai.base, model="gpt-5"), api_key=KEY)
    assert unlisted is not None and unlisted.lists_model is False


def test_the_key_comes_from_the_environment(
    openai: JudgeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(c.ENV_JUDGE_API_KEY, KEY)
    assert check_judge_endpoint(_spec(openai.base)) is not None


def test_a_refused_key_names_the_secret_and_never_shows_the_key(openai: JudgeStandIn) -> None:
    wrong = "sk-wrong-key-42"
    with pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(openai.base), api_key=wrong)
    assert str(info.value) == (
        f"evaluation.judge.apiKeySecretRef: {openai.base}/models refused the API key from Secret "
        "'judge-key' key 'api-key' (HTTP 401: Incorrect API key provided: ***.); put a valid key "
        "there, with access to model 'judge-model'"
    )
    assert info.value.reason == c.Reason.JUDGE_UNREACHABLE == "JudgeUnreachable"


def test_no_key_configured_says_to_set_the_secret(
    openai: JudgeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(c.ENV_JUDGE_API_KEY, raising=False)
    with pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(openai.base, secret=False))
    assert str(info.value) == (
        f"evaluation.judge.apiKeySecretRef: {openai.base}/models answered HTTP 401: Incorrect API "
        "key provided: .; no API key is configured: set evaluation.judge.apiKeySecretRef to a "
        "Secret key holding it"
    )


def test_a_wrong_base_url_is_told_from_a_missing_route(openai: JudgeStandIn) -> None:
    base = openai.base.removesuffix("/v1")  # the usual mistake: /v1 left out
    with pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(base), api_key=KEY)
    assert str(info.value) == (
        f"evaluation.judge.endpoint: no OpenAI-compatible API at {base}: GET /models and "
        "POST /chat/completions answered HTTP 404: no route /chat/completions; give the API's "
        "base URL, usually ending in /v1 (e.g. https://api.openai.com/v1), and check "
        "evaluation.judge.model"
    )
    assert [(m, p) for m, p, _, _ in openai.requests] == [
        ("GET", "/models"),
        ("POST", "/chat/completions"),
    ]
    # The probe carries no messages: rejected before any inference, it costs no tokens.
    assert json.loads(openai.requests[1][3]) == {
        "model": "judge-model",
        "messages": [],
        "max_tokens": 1,
    }


def test_a_proxy_without_models_route_still_passes() -> None:
    def proxy(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
        if path == "/v1/chat/completions":
            return 400, {"error": {"message": "messages: must not be empty"}}, 0
        return 404, {"detail": "Not Found"}, 0

    with JudgeStandIn(proxy) as server:
        found = check_judge_endpoint(_spec(server.base), api_key=KEY)
    assert found == JudgeEndpoint(f"{server.base}/chat/completions", "judge-model", None)
    assert found.lists_model is None


def test_a_failing_judge_fails_the_check() -> None:
    def broken(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
        return 503, {"error": {"message": "upstream overloaded"}}, 0

    with JudgeStandIn(broken) as server, pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(server.base), api_key=KEY)
    assert str(info.value) == (
        f"evaluation.judge.endpoint: GET {server.base}/models answered HTTP 503: upstream "
        "overloaded; the judge is failing or this is not an OpenAI-compatible API"
    )


def test_a_web_page_is_not_an_api() -> None:
    def website(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
        return 200, "<html>welcome</html>", 0  # JSON-encoded: a string, not an object

    with JudgeStandIn(website) as server, pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(server.base), api_key=KEY)
    assert str(info.value) == (
        f"evaluation.judge.endpoint: GET {server.base}/models answered HTTP 200 but not with a "
        "JSON object, so this is not an OpenAI-compatible API; give the API's base URL, usually "
        "ending in /v1 (e.g. https://api.openai.com/v1)"
    )


def test_rate_limited_is_reachable() -> None:
    def busy(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
        return 429, {"error": {"message": "slow down"}}, 0

    with JudgeStandIn(busy) as server:
        assert check_judge_endpoint(_spec(server.base), api_key=KEY) == JudgeEndpoint(
            f"{server.base}/models", "judge-model", None
        )


def test_a_slow_judge_times_out() -> None:
    def slow(method: str, path: str, auth: str | None) -> tuple[int, Any, float]:
        return 200, {"data": []}, 1.0

    with JudgeStandIn(slow) as server, pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(server.base), timeout=0.3, api_key=KEY)
    assert str(info.value) == (
        f"evaluation.judge.endpoint: GET {server.base}/models did not answer within 0.3s; check "
        "the URL and that the trainer pod can reach it (DNS, NetworkPolicy, egress proxy)"
    )


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    base = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeUnreachableError) as info:
        check_judge_endpoint(_spec(base), timeout=2, api_key=KEY)
    message = str(info.value)
    assert message.startswith(f"evaluation.judge.endpoint: cannot reach {base}/models: ")
    assert "Connection refused" in message
    assert message.endswith(
        "; check the URL and that the trainer pod can reach it (DNS, NetworkPolicy, egress proxy)"
    )
