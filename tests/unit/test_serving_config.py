"""serve-agent settings and serving.json: defaults from the pod's environment, a missing or
invalid file reported as such (the last good config kept and still served), and the
endpoints answering before Ollama is there."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.serving import AgentStatus
from kubetune.serving.agent import ServeAgent
from kubetune.serving.config import (
    AgentSettings,
    ConfigError,
    parse_listen,
    read_serving_config,
)
from kubetune.serving.server import start_http_server

SHA = "cd" * 32
CONFIG = {
    "model": "support",
    "revision": "r1",
    "versions": [{"name": "v1", "ggufUri": "pvc://models/support/v1.gguf", "sha256": SHA}],
    "served": "v1",
    "keepLoaded": ["v1"],
}


def test_defaults_follow_the_pod_ip() -> None:
    settings = AgentSettings.from_env({"POD_IP": "10.1.2.3", "HOSTNAME": "support-0"})
    assert settings.ollama_url == "http://10.1.2.3:11434"
    assert (settings.listen_host, settings.listen_port) == ("10.1.2.3", 8081)
    assert settings.config_path == Path("/etc/kubetune-serving/serving.json")
    assert settings.cache_dir == Path("/models/kubetune-cache")
    assert settings.pvc_root == Path("/mnt/pvc")
    assert settings.pod == "support-0"


def test_environment_overrides_and_ipv6() -> None:
    settings = AgentSettings.from_env(
        {
            "POD_IP": "fd00::5",
            "KUBETUNE_SERVING_CONFIG": "/tmp/s.json",
            "KUBETUNE_PVC_ROOT": "/data",
            "KUBETUNE_CACHE_DIR": "/cache",
        }
    )
    assert settings.ollama_url == "http://[fd00::5]:11434"
    assert (settings.listen_host, settings.listen_port) == ("fd00::5", 8081)
    assert settings.config_path == Path("/tmp/s.json")
    assert (settings.pvc_root, settings.cache_dir) == (Path("/data"), Path("/cache"))
    assert AgentSettings.from_env({}).listen_host == "127.0.0.1"


@pytest.mark.parametrize("value", ["8081", "host:", "host:http", "host:70000"])
def test_listen_needs_host_and_port(value: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(value)


def test_reads_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(CONFIG))
    config, raw = read_serving_config(path)
    assert config.versions[0].gguf_uri == "pvc://models/support/v1.gguf"
    assert raw == path.read_bytes()


def test_missing_config_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist \(is the ConfigMap mounted"):
        read_serving_config(tmp_path / "serving.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a valid ServingConfig: \\(document\\): Invalid JSON"),
        (json.dumps({**CONFIG, "servd": "v1"}), "servd: Extra inputs are not permitted"),
        (
            json.dumps({**CONFIG, "versions": [{**CONFIG["versions"][0], "sha256": "abc"}]}),
            "versions.0.sha256: String should match pattern",
        ),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "serving.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        read_serving_config(path)


# --- the agent and its endpoints, with no Ollama listening --------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> ServeAgent:
    settings = AgentSettings(
        config_path=tmp_path / "serving.json",
        ollama_url="http://127.0.0.1:9",  # discard port: nothing answers
        listen_host="127.0.0.1",
        listen_port=0,
        cache_dir=tmp_path / "cache",
        pvc_root=tmp_path / "pvc",
    )
    return ServeAgent(settings)


@pytest.fixture
def endpoint(agent: ServeAgent) -> Iterator[str]:
    server = start_http_server(agent, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_without_config_the_agent_is_alive_but_not_ready(agent: ServeAgent, endpoint: str) -> None:
    agent.reconcile_once()
    assert _get(f"{endpoint}/healthz") == (200, "ok\n")
    code, text = _get(f"{endpoint}/readyz")
    assert code == 503
    assert "serving.json does not exist" in text
    code, body = _get(f"{endpoint}/status")
    status: dict[str, Any] = json.loads(body)
    assert code == 200
    assert status["ready"] is False and status["ollamaReachable"] is False
    assert status["revision"] is None
    AgentStatus.model_validate(status)  # camelCase JSON reads back into the contract
    assert _get(f"{endpoint}/nope")[0] == 404


def test_an_invalid_config_keeps_the_last_good_one(agent: ServeAgent, tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(CONFIG))
    agent.reconcile_once()
    status = agent.status()
    assert status.revision == "r1" and [v.name for v in status.versions] == ["v1"]
    assert "unreachable" in status.message  # nothing listens at the Ollama URL

    path.write_text('{"model": "support", "revision": "r2", "versions": "oops"}')
    agent.reconcile_once()
    status = agent.status()
    assert status.revision == "r1"  # the last good config is still what the agent holds
    assert "not a valid ServingConfig: versions" in status.message
    assert "holding revision r1" in status.message

    path.unlink()
    agent.reconcile_once()
    assert "does not exist" in agent.status().message


def test_unreachable_ollama_backs_off_up_to_the_cap(agent: ServeAgent, tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(CONFIG))
    delays = [agent.reconcile_once() for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert agent.status().ollama_reachable is False


def test_status_is_safe_to_read_while_the_loop_runs(agent: ServeAgent, tmp_path: Path) -> None:
    (tmp_path / "serving.json").write_text(json.dumps(CONFIG))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            agent.status()
    finally:
        agent.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()
