"""A fake Ollama for the gateway's tests and benchmark (bench/gateway.py); its own test is
tests/unit/test_gateway_fake_ollama.py.

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
import threading
import time
from typing import Any

from aiohttp import web


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
