"""A local OpenAI-compatible chat-completions server that plays an LLM judge in tests.

It stands in for a real OpenAI-compatible judge service (OpenAI's cloud, or any hosted judge
model), which cannot run here: no internet, no GPU. It speaks the same protocol over real HTTP
on 127.0.0.1 — `POST /v1/chat/completions` with the real response shape, `usage` included,
`GET /v1/models` listing `model` (what the trainer's start-up check asks), and OpenAI-style
error bodies — so the judge client is exercised through the `openai` package, its HTTP stack,
timeouts and status handling exactly as in production.

Replies are scripted per example: `script` maps a marker (a substring searched for in the
request's messages) to a list of replies given in turn, the last one repeating. Requests that
match no marker get `default`, or what `responder` returns. The server records every request,
counts requests per marker, tracks requests in flight (and their maximum) and checks the
bearer token when `api_key` is set.

    with FakeJudgeServer({"case-429": [Reply(status=429, headers={"Retry-After": "1"}), Reply()]}) as srv:
        client = OpenAI(base_url=srv.url, api_key="k")
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted reply."""

    content: str | None = '{"score": 4, "reason": "Correct with a minor omission."}'
    """Assistant message content (status 200)."""
    status: int = 200
    """HTTP status; non-200 replies carry an OpenAI-style error body."""
    delay: float = 0.0
    """Seconds to wait before answering (aborted early if the client hangs up)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. Retry-After."""
    refusal: str | None = None
    """The message's `refusal` field."""
    finish_reason: str = "stop"
    raw: bytes | None = None
    """Send these bytes as the whole 200 body instead of a chat completion (a broken server)."""
    prompt_tokens: int = 50
    completion_tokens: int = 12


def verdict(score: int, reason: str = "scripted") -> Reply:
    """A well-formed verdict reply."""
    return Reply(content=json.dumps({"score": score, "reason": reason}))


class FakeJudgeServer:
    """Threaded HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(
        self,
        script: dict[str, list[Reply]] | None = None,
        *,
        default: Reply | None = None,
        responder: Callable[[dict[str, Any]], Reply] | None = None,
        api_key: str | None = None,
        model: str = "judge-model",
    ) -> None:
        self.script = script or {}
        self.model = model
        self.model_list_requests = 0
        self.default = default or Reply()
        self.responder = responder
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.aborted = 0
        self._tokens_sent = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-judge", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL to hand to an OpenAI client (ends in /v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def total_tokens(self) -> int:
        """Prompt + completion tokens of every 200 reply sent so far."""
        with self._lock:
            return self._tokens_sent

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _choose(self, body: dict[str, Any]) -> tuple[str | None, Reply]:
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        for marker, replies in self.script.items():
            if marker in text:
                with self._lock:
                    n = self.counts[marker]
                    self.counts[marker] += 1
                return marker, replies[min(n, len(replies) - 1)]
        with self._lock:
            self.counts[""] += 1
        return None, self.responder(body) if self.responder else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self._send(404, _error(f"no route {self.path}", "unknown_url"))
                    return
                with server._lock:
                    server.model_list_requests += 1
                auth = self.headers.get("Authorization", "")
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    self._send(401, _error("Incorrect API key provided.", "invalid_api_key"))
                    return
                model = {
                    "id": server.model,
                    "object": "model",
                    "created": 0,
                    "owned_by": "kubetune-tests",
                }
                self._send(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(
                        404,
                        {
                            "error": {
                                "message": f"no route {self.path}",
                                "type": "invalid_request_error",
                            }
                        },
                    )
                    return
                auth = self.headers.get("Authorization", "")
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth_headers.append(auth)
                try:
                    body = json.loads(raw)
                    with server._lock:
                        server.requests.append(body)
                    if server.api_key is not None and auth != f"Bearer {server.api_key}":
                        self._send(401, _error("Incorrect API key provided.", "invalid_api_key"))
                        return
                    _, reply = server._choose(body)
                    if reply.delay and not self._wait(reply.delay):
                        with server._lock:
                            server.aborted += 1
                        return
                    self._reply(body, reply)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _wait(self, seconds: float) -> bool:
                """Sleep, returning False as soon as the client closes the connection."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                    if readable:
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                self.close_connection = True
                                return False
                        except OSError:
                            self.close_connection = True
                            return False
                return True

            def _reply(self, body: dict[str, Any], reply: Reply) -> None:
                if reply.raw is not None:
                    self._send_bytes(200, reply.raw, reply.headers)
                    return
                if reply.status != 200:
                    code = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                    self._send(
                        reply.status, _error(f"scripted HTTP {reply.status}", code), reply.headers
                    )
                    return
                with server._lock:
                    server._tokens_sent += reply.prompt_tokens + reply.completion_tokens
                    n = len(server.requests)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-fake{n}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "judge"),
                        "system_fingerprint": "fp_fake",
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": reply.content,
                                    "refusal": reply.refusal,
                                },
                                "logprobs": None,
                                "finish_reason": reply.finish_reason,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens,
                            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                        },
                    },
                    reply.headers,
                )

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), headers)

            def _send_bytes(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


def _error(message: str, code: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
