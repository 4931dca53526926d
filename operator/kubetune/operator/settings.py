"""Operator configuration: every environment variable the operator reads, in one place."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import TypedDict

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
      KUBETUNE_STATUS_COALESCE_SECONDS  a Pending job's status detail (pod created, scheduled,
                                   starting) is written at most this often (default 3; 0: always)
      KUBETUNE_OPERATOR_METRICS_PORT  port of the operator's own /metrics (default 8080; 0 disables)
      KUBETUNE_TRAINER_COMMAND     JSON list replacing the trainer container's command, for images whose
                                   Python is not `python` (default ["python", "-m", "kubetune_trainer"])
      KUBETUNE_SERVING_IMAGE       image of the serve-agent container in serving pods (default DEFAULT_SERVING_IMAGE)
      KUBETUNE_SERVE_AGENT_COMMAND JSON list: the serve-agent container's command (default ["kubetune", "serve-agent"])
      KUBETUNE_OLLAMA_COMMAND      JSON list: the Ollama container's command (default ["ollama", "serve"];
                                   the local pod runner's tests point it at the Ollama built by hack/)
      KUBETUNE_SERVING_RESYNC      seconds between re-reads of every ModelDeployment's serve-agents (default 5)
      KUBETUNE_CLAIMS_ROOT         a folder where the operator can read PersistentVolumeClaims as
                                   <root>/<namespace>/<claim> (e.g. an NFS export behind the artifacts
                                   claims); when set, the result of a trainer Job deleted before it was
                                   read is recovered from result.json there (default: unset)
      KUBETUNE_GPU_PRICES_CONFIGMAP <namespace>/<name> of the ConfigMap of prices per GPU-hour by
                                   gpuProduct, for status.cost (default: none; docs/preflight.md)
      KUBETUNE_LEADER_ELECTION     only the replica holding the Lease reconciles (default: on when
                                   POD_NAMESPACE is set, i.e. in a pod; off for a single local process)
      KUBETUNE_LEASE_NAME          the Lease's name (default kubetune-operator)
      POD_NAMESPACE                the Lease's namespace (the chart sets it from the downward API)
      POD_NAME                     this replica's identity in the Lease (default: hostname_pid)
      KUBETUNE_LEASE_DURATION      seconds a standby waits after the leader's last renewal (default 10)
      KUBETUNE_LEASE_RENEW_DEADLINE seconds the leader keeps leading without a renewal (default 7)
      KUBETUNE_LEASE_RETRY_PERIOD  seconds between renewals and between a standby's tries (default 2)
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
    status_coalesce: float = 3.0
    serving_image: str = c.DEFAULT_SERVING_IMAGE
    serve_agent_command: tuple[str, ...] = ("kubetune", "serve-agent")
    ollama_command: tuple[str, ...] = ("ollama", "serve")
    serving_resync: float = 5.0
    claims_root: str = ""
    gpu_prices_configmap: str = ""
    leader_election: bool = False
    lease_name: str = "kubetune-operator"
    lease_namespace: str = ""
    identity: str = ""
    lease_duration: float = 10.0
    lease_renew_deadline: float = 7.0
    lease_retry_period: float = 2.0

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
            claims_root=os.environ.get("KUBETUNE_CLAIMS_ROOT", ""),
            gpu_prices_configmap=_namespaced("KUBETUNE_GPU_PRICES_CONFIGMAP"),
            metrics_port=int(os.environ.get("KUBETUNE_OPERATOR_METRICS_PORT", "8080")),
            workers=int(os.environ.get("KUBETUNE_WORKERS", "8")),
            status_coalesce=float(os.environ.get("KUBETUNE_STATUS_COALESCE_SECONDS", "3")),
            **_leader_election(),
        )


def _namespaced(variable: str) -> str:
    """`<namespace>/<name>` from `variable`; a bare name is in POD_NAMESPACE."""
    raw = os.environ.get(variable, "").strip()
    if not raw or "/" in raw:
        return raw
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if not namespace:
        raise ValueError(f"{variable}={raw!r} names no namespace: write <namespace>/{raw}, or set POD_NAMESPACE")
    return f"{namespace}/{raw}"


def _command(variable: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(variable)
    if not raw:
        return default
    command = json.loads(raw)
    if not isinstance(command, list) or not command or not all(isinstance(x, str) for x in command):
        raise ValueError(f"{variable} must be a JSON list of strings, got {raw!r}")
    return tuple(command)


class _LeaderElectionEnv(TypedDict):
    leader_election: bool
    lease_name: str
    lease_namespace: str
    identity: str
    lease_duration: float
    lease_renew_deadline: float
    lease_retry_period: float


def _leader_election() -> _LeaderElectionEnv:
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    enabled = _env_bool("KUBETUNE_LEADER_ELECTION", bool(namespace))
    if enabled and not namespace:
        raise ValueError(
            "KUBETUNE_LEADER_ELECTION is on but POD_NAMESPACE is not set: set POD_NAMESPACE to the "
            "namespace of the operator's Lease (in a pod: env valueFrom fieldRef metadata.namespace)"
        )
    timings: dict[str, float] = {}
    for key, variable, default in (("lease_duration", "KUBETUNE_LEASE_DURATION", "10"),
                                   ("lease_renew_deadline", "KUBETUNE_LEASE_RENEW_DEADLINE", "7"),
                                   ("lease_retry_period", "KUBETUNE_LEASE_RETRY_PERIOD", "2")):
        raw = os.environ.get(variable, default)
        try:
            timings[key] = float(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a number of seconds, got {raw!r}") from None
    if enabled and not (0 < timings["lease_retry_period"] < timings["lease_renew_deadline"]
                        < timings["lease_duration"]):
        raise ValueError(
            "leader election needs KUBETUNE_LEASE_RETRY_PERIOD < KUBETUNE_LEASE_RENEW_DEADLINE < "
            f"KUBETUNE_LEASE_DURATION (all > 0), got {timings['lease_retry_period']:g} < "
            f"{timings['lease_renew_deadline']:g} < {timings['lease_duration']:g}"
        )
    return _LeaderElectionEnv(
        leader_election=enabled,
        lease_name=os.environ.get("KUBETUNE_LEASE_NAME", "kubetune-operator"),
        lease_namespace=namespace,
        identity=os.environ.get("POD_NAME", "").strip() or f"{socket.gethostname()}_{os.getpid()}",
        lease_duration=timings["lease_duration"],
        lease_renew_deadline=timings["lease_renew_deadline"],
        lease_retry_period=timings["lease_retry_period"],
    )
