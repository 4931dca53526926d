"""Operator configuration: every environment variable the operator reads, in one place."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from kubetune.api import constants as c


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Operator settings.

    Environment variables:
      KUBETUNE_TRAINER_IMAGE       trainer image used when a spec has no `image` (default DEFAULT_TRAINER_IMAGE)
      KUBETUNE_IMAGE_PULL_POLICY   imagePullPolicy of trainer containers (default IfNotPresent)
      KUBETUNE_TRAINER_UID         non-root UID/GID the trainer runs as (default 1000)
      KUBETUNE_NAMESPACES          comma-separated namespaces to watch (default: all)
      KUBETUNE_SCRAPE_PROGRESS     scrape trainer pods' /metrics for live progress (default true)
      KUBETUNE_PROGRESS_INTERVAL   seconds between progress scrapes and resyncs (default 30)
      KUBETUNE_SCRAPE_TIMEOUT      seconds one scrape may take (default 2)
      KUBETUNE_GPU_TOLERATION      add a toleration for the `nvidia.com/gpu` taint to GPU pods (default true)
      KUBETUNE_WORKERS             reconcile worker threads (default 8)
      KUBETUNE_OPERATOR_METRICS_PORT  port of the operator's own /metrics (default 8080; 0 disables)
      KUBETUNE_TRAINER_COMMAND     JSON list replacing the trainer container's command, for images whose
                                   Python is not `python` (default ["python", "-m", "kubetune_trainer"])
      KUBETUNE_SERVING_IMAGE       image of the serve-agent container in serving pods (default DEFAULT_SERVING_IMAGE)
      KUBETUNE_SERVE_AGENT_COMMAND JSON list: the serve-agent container's command (default ["kubetune", "serve-agent"])
      KUBETUNE_OLLAMA_COMMAND      JSON list: the Ollama container's command (default ["ollama", "serve"];
                                   the local pod runner's tests point it at the Ollama built by hack/)
      KUBETUNE_SERVING_RESYNC      seconds between re-reads of every ModelDeployment's serve-agents (default 5)
    """

    trainer_image: str = c.DEFAULT_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    trainer_uid: int = 1000
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    scrape_progress: bool = True
    progress_interval: float = 30.0
    scrape_timeout: float = 2.0
    gpu_toleration: bool = True
    trainer_command: tuple[str, ...] = ("python", "-m", "kubetune_trainer")
    metrics_port: int = 8080
    workers: int = 8
    serving_image: str = c.DEFAULT_SERVING_IMAGE
    serve_agent_command: tuple[str, ...] = ("kubetune", "serve-agent")
    ollama_command: tuple[str, ...] = ("ollama", "serve")
    serving_resync: float = 5.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment."""
        namespaces = tuple(n.strip() for n in os.environ.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            trainer_image=os.environ.get("KUBETUNE_TRAINER_IMAGE", c.DEFAULT_TRAINER_IMAGE),
            image_pull_policy=os.environ.get("KUBETUNE_IMAGE_PULL_POLICY", "IfNotPresent"),
            trainer_uid=int(os.environ.get("KUBETUNE_TRAINER_UID", "1000")),
            namespaces=namespaces,
            scrape_progress=_env_bool("KUBETUNE_SCRAPE_PROGRESS", True),
            progress_interval=float(os.environ.get("KUBETUNE_PROGRESS_INTERVAL", "30")),
            scrape_timeout=float(os.environ.get("KUBETUNE_SCRAPE_TIMEOUT", "2")),
            gpu_toleration=_env_bool("KUBETUNE_GPU_TOLERATION", True),
            trainer_command=_command("KUBETUNE_TRAINER_COMMAND", cls.trainer_command),
            serving_image=os.environ.get("KUBETUNE_SERVING_IMAGE", c.DEFAULT_SERVING_IMAGE),
            serve_agent_command=_command("KUBETUNE_SERVE_AGENT_COMMAND", cls.serve_agent_command),
            ollama_command=_command("KUBETUNE_OLLAMA_COMMAND", cls.ollama_command),
            serving_resync=float(os.environ.get("KUBETUNE_SERVING_RESYNC", "5")),
            metrics_port=int(os.environ.get("KUBETUNE_OPERATOR_METRICS_PORT", "8080")),
            workers=int(os.environ.get("KUBETUNE_WORKERS", "8")),
        )


def _command(variable: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(variable)
    if not raw:
        return default
    command = json.loads(raw)
    if not isinstance(command, list) or not command or not all(isinstance(x, str) for x in command):
        raise ValueError(f"{variable} must be a JSON list of strings, got {raw!r}")
    return tuple(command)
