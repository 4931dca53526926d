"""The gateway in front of a real Ollama (v0.11.4) serving a tiny model through the serve-agent.

Reuses the serve-agent's Ollama test set-up (tests/integration/test_serve_agent_ollama.py): a
tiny random Llama exported as f16 GGUF, registered and aliased by the real agent. Then a chat
completion through the gateway, not streamed and streamed, answers, carries the version headers,
is measured with the usage Ollama reports (``stream_options.include_usage`` included) and is
logged; feedback on it is accepted.
"""

# ruff: noqa: F811  (the fixtures imported from the serve-agent tests are parameters here)
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from kubetune.serving.gateway import (
    GatewaySettings,
    ServedVersion,
    StaticVersion,
    start_gateway_thread,
)
from kubetune_dev.fake_ollama import free_port
from tests.integration.test_serve_agent_ollama import (  # noqa: F401 (fixtures)
    MODEL,
    Agent,
    Ollama,
    agent,
    artifact,
    ollama,
    pvc_root,
    ready_on,
)
from tests.unit.test_gateway_fake_ollama import sample

pytestmark = pytest.mark.slow


def test_chat_completions_through_the_gateway_answer_and_are_logged(
    agent: Agent,
    ollama: Ollama,
    pvc_root: Path,
    tmp_path: Path,
) -> None:
    v1 = artifact(pvc_root, "v1")
    agent.write_config("r1", [v1.version("v1")], "v1", ["v1"])
    agent.start()
    agent.wait(ready_on(agent, "v1", v1.sha256), "ready on v1", timeout=120)

    settings = GatewaySettings(
        ollama_url=ollama.url, model=MODEL, db_path=tmp_path / "log.db", content="full",
        listen_port=free_port(),
    )  # fmt: skip
    gateway = start_gateway_thread(settings, StaticVersion(ServedVersion("v1", v1.sha256)))
    url = f"http://127.0.0.1:{settings.listen_port}"
    body = {"model": "anything", "messages": [{"role": "user", "content": "Who are you?"}],
            "max_tokens": 6, "seed": 1, "temperature": 0}  # fmt: skip
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            plain = http.post("/v1/chat/completions", json=body)
            assert plain.status_code == 200, plain.text
            assert plain.headers["x-kubetune-version"] == "v1"
            assert plain.headers["x-kubetune-digest"] == v1.sha256
            answer = plain.json()
            text = answer["choices"][0]["message"]["content"]
            assert text and answer["usage"]["completion_tokens"] > 0

            streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200
            events = [e.removeprefix("data: ") for e in streamed.text.split("\n\n") if e]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert all(c["choices"] for c in chunks)  # the usage chunk was not asked for
            streamed_text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert streamed_text == text  # same seed, temperature 0

            feedback = http.post(
                "/v1/feedback",
                json={"requestId": streamed.headers["x-request-id"], "score": 4},
            )
            assert feedback.status_code == 200, feedback.text
            metrics = http.get("/metrics").text
    finally:
        gateway.stop()
    with sqlite3.connect(tmp_path / "log.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM predictions ORDER BY id").fetchall()
    assert [(r["stream"], r["version"], r["digest"], r["error"]) for r in rows] == [
        (0, "v1", v1.sha256, None),
        (1, "v1", v1.sha256, None),
    ]
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
    assert rows[0]["response"] == rows[1]["response"] == text
    # Ollama's usage reached the stream's row (it honours stream_options.include_usage).
    assert rows[1]["prompt_tokens"] == rows[0]["prompt_tokens"] > 0
    assert rows[1]["completion_tokens"] == rows[0]["completion_tokens"] > 0
    labels = {"deployment": MODEL, "version": "v1"}
    assert sample(metrics, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1
    assert sample(metrics, "gen_ai_client_token_usage_count", **labels,
                  gen_ai_token_type="input") == 2  # fmt: skip
