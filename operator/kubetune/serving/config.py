"""The serve-agent's settings, and reading the deployment's serving.json.

Environment variables (each also a flag of ``kubetune serve-agent``, which wins):

  KUBETUNE_SERVING_CONFIG  the ServingConfig file (default /etc/kubetune-serving/serving.json)
  KUBETUNE_OLLAMA_URL      Ollama's base URL (default http://$POD_IP:11434)
  KUBETUNE_AGENT_LISTEN    host:port of /healthz, /readyz, /status (default $POD_IP:8081)
  KUBETUNE_CACHE_DIR       verified downloads (default /models/kubetune-cache)
  KUBETUNE_PVC_ROOT        where pvc://<claim> is mounted, as <root>/<claim> (default /mnt/pvc)
  POD_IP                   the pod's IP (downward API); 127.0.0.1 when unset
  HOSTNAME                 the pod's name, reported in /status
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kubetune.api.serving import (
    AGENT_PORT,
    CACHE_DIR,
    OLLAMA_PORT,
    PVC_MOUNT_ROOT,
    SERVING_CONFIG_DIR,
    SERVING_CONFIG_KEY,
    ServingConfig,
)

DEFAULT_CONFIG_PATH = f"{SERVING_CONFIG_DIR}/{SERVING_CONFIG_KEY}"


class ConfigError(Exception):
    """serving.json is missing or invalid; the message says which and why."""


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent is told; :meth:`from_env` documents the defaults."""

    config_path: Path
    ollama_url: str
    listen_host: str
    listen_port: int
    cache_dir: Path
    pvc_root: Path
    pod: str = ""
    poll_interval_s: float = 1.0
    """How often serving.json and Ollama are looked at."""
    recheck_interval_s: float = 30.0
    """How often the served alias answers a 1-token generation while ready."""
    max_backoff_s: float = 10.0
    """Longest wait between attempts while Ollama is unreachable."""
    version_max_backoff_s: float = 60.0
    """Longest wait before a version that failed (not permanently) is tried again."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        """Settings from the environment variables listed in this module's docstring."""
        env = os.environ if environ is None else environ
        pod_ip = env.get("POD_IP") or "127.0.0.1"
        host, port = parse_listen(env.get("KUBETUNE_AGENT_LISTEN") or f"{pod_ip}:{AGENT_PORT}")
        return cls(
            config_path=Path(env.get("KUBETUNE_SERVING_CONFIG") or DEFAULT_CONFIG_PATH),
            ollama_url=env.get("KUBETUNE_OLLAMA_URL")
            or f"http://{_url_host(pod_ip)}:{OLLAMA_PORT}",
            listen_host=host,
            listen_port=port,
            cache_dir=Path(env.get("KUBETUNE_CACHE_DIR") or CACHE_DIR),
            pvc_root=Path(env.get("KUBETUNE_PVC_ROOT") or PVC_MOUNT_ROOT),
            pod=env.get("HOSTNAME", ""),
        )


def parse_listen(value: str) -> tuple[str, int]:
    """``10.0.0.5:8081`` or ``[fd00::5]:8081`` -> (host, port); ValueError naming the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def read_serving_config(path: Path) -> tuple[ServingConfig, bytes]:
    """The ServingConfig in ``path`` and the bytes it was read from; ConfigError if missing or
    invalid (the message names the file and every invalid field)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist (is the ConfigMap mounted?)") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return ServingConfig.model_validate_json(raw), raw
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path} is not a valid ServingConfig: {problems}") from exc


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
