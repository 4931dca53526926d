"""A fake Ollama for the gateway's tests and benchmark, and the tests that keep it honest.

:class:`FakeOllama` stands in for Ollama's OpenAI-compatible ``/v1/chat/completions`` only
where speed and determinism matter (unit tests of the gateway's relay, metrics and log, and the
overhead benchmark): it is a real aiohttp server on a free port, speaking real HTTP, that
answers at once and always the same way. It copies Ollama v0.11.4's wire format
(``openai/openai.go``): a chat completion with ``usage``; a stream of ``data: <chunk>\\n\\n``
events, the last content chunk carrying ``finish_reason``, then, when
``stream_options.include_usage`` was asked, one chunk with ``choices: []`` and ``usage``, then
``data: [DONE]``; errors as ``{"error": {"message", "type", ...}}``. The real Ollama is tested in
tests/integration/test_gateway_ollama.py.

What it answers: ``echo: <words of the last message>``, one chunk per word. A last message of
``fail`` -> HTTP 500; ``refuse`` -> HTTP 400; ``slow`` -> no answer for 5 s; ``long`` -> finish
reason ``length``; ``cut`` -> a stream that stops after one chunk without ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeOllama:
    """A real HTTP server in its own thread and event loop; ``requests`` keeps each body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-ollama", daemon=True)

    def start(self) -> FakeOllama:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake Ollama did not start")
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if len(self.requests) > 1000:  # the benchmark sends many
            del self.requests[:500]
        last = str(body["messages"][-1].get("content", ""))
        if last == "fail":
            return web.json_response(
                {"error": {"message": "model runner crashed", "type": "api_error"}}, status=500
            )
        if last == "refuse":
            return web.json_response(
                {"error": {"message": "invalid message", "type": "invalid_request_error"}},
                status=400,
            )
        if last == "slow":
            await asyncio.sleep(5)
        words = ["echo:", *last.split()]
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        reason = "length" if last == "long" else "stop"
        usage = {
            "prompt_tokens": 3
            + sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_ollama"}  # fmt: skip
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": reason,
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n".encode()

        for i, token in enumerate(tokens):
            await response.write(
                chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": token},
                            "finish_reason": None,
                        }
                    ]
                )
            )
            if last == "cut" and i == 0:
                return response
        await response.write(
            chunk(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": reason,
                    }
                ]
            )
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(chunk([], usage=usage))
        await response.write(b"data: [DONE]\n\n")
        return response


class GatewayUnderTest:
    """A gateway on its own thread in front of ``upstream``, its log at ``db``."""

    def __init__(self, upstream: str, db: Path, served: Any = None, **settings: Any) -> None:
        from kubetune.serving.gateway import (
            GatewaySettings,
            ServedVersion,
            StaticVersion,
            start_gateway_thread,
        )

        self.db = db
        self.settings = GatewaySettings(
            ollama_url=upstream, model="support", db_path=db, listen_port=free_port(), **settings
        )
        self.url = f"http://127.0.0.1:{self.settings.listen_port}"
        self.thread = start_gateway_thread(
            self.settings, StaticVersion(served or ServedVersion("v2", "ab" * 32))
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def chat(self, content: str, **body: Any) -> httpx.Response:
        return self.http.post(
            "/v1/chat/completions",
            json={"model": "whatever", "messages": [{"role": "user", "content": content}], **body},
        )

    def rows(self, table: str = "predictions", wait_for: int = 1) -> list[sqlite3.Row]:
        """The rows of ``table`` once there are ``wait_for`` (the writer is asynchronous)."""
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(self.db) as db:
                db.row_factory = sqlite3.Row
                rows = db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            if len(rows) >= wait_for or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def close(self) -> None:
        self.http.close()
        self.thread.stop()


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` in Prometheus text, None when absent."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_the_fake_answers_a_completion_and_a_stream_as_ollama_does() -> None:
    fake = FakeOllama().start()
    try:
        message = {"messages": [{"role": "user", "content": "hi there"}], "model": "m"}
        answer = httpx.post(fake.url + "/v1/chat/completions", json=message).json()
        assert answer["choices"][0]["message"]["content"] == "echo: hi there"
        assert answer["usage"]["completion_tokens"] == 3
        streamed = httpx.post(
            fake.url + "/v1/chat/completions",
            json={**message, "stream": True, "stream_options": {"include_usage": True}},
        ).text
        events = [e for e in streamed.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"] == []  # the usage chunk
        assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "stop"
    finally:
        fake.stop()
