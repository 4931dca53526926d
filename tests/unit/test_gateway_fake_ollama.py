"""The gateway under test in front of the fake Ollama (kubetune_dev.fake_ollama, which the
benchmark bench/gateway.py uses too), and the test that keeps the fake honest: it answers a
completion and a stream as Ollama v0.11.4 does. The real Ollama is tested in
tests/integration/test_gateway_ollama.py."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kubetune_dev.fake_ollama import FakeOllama, free_port


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
