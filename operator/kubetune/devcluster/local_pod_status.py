"""Pod status patches the local runner sends, built like the kubelet's (pure functions)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.devcluster.local_pod_setup import LOCAL_IP

MAX_MESSAGE_BYTES = 4096  # the kubelet's per-container limit
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
Status = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    """What the runner knows about one container between status patches."""

    name: str
    image: str
    restart_count: int = 0
    started_at: str | None = None
    pid: int | None = None
    terminated: Status | None = None
    last_terminated: Status | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""

    def to_status(self) -> Status:
        status: Status = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "restartCount": self.restart_count,
            "ready": self.terminated is None and self.started_at is not None,
            "started": self.terminated is None and self.started_at is not None,
        }
        if self.pid is not None:
            status["containerID"] = f"local://{self.pid}"
        if self.terminated is not None:
            status["state"] = {"terminated": self.terminated}
        elif self.started_at is not None:
            status["state"] = {"running": {"startedAt": self.started_at}}
        else:
            waiting = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            status["state"] = {"waiting": waiting}
        if self.last_terminated is not None:
            status["lastState"] = {"terminated": self.last_terminated}
        return status


def termination_message(exit_code: int, message_file: Path, log_file: Path,
                        policy: str) -> str:
    """The message the kubelet would report: the file, else (on failure) the log tail."""
    try:
        message = message_file.read_bytes()[:MAX_MESSAGE_BYTES]
    except FileNotFoundError:
        message = b""
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        try:
            lines = log_file.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
        except FileNotFoundError:
            lines = []
        message = b"\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message.decode(errors="replace")


def terminated_state(exit_code: int, message: str, started_at: str, pid: int | None,
                     reason: str | None = None) -> Status:
    state: Status = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": now(),
    }
    if message:
        state["message"] = message
    if pid is not None:
        state["containerID"] = f"local://{pid}"
    return state


def _conditions(initialized: bool, ready: bool, reason: str | None = None) -> list[Status]:
    def condition(kind: str, status: bool) -> Status:
        entry: Status = {"type": kind, "status": "True" if status else "False",
                         "lastTransitionTime": now()}
        if not status and reason:
            entry["reason"] = reason
        return entry

    return [condition("PodReadyToStartContainers", True), condition("Initialized", initialized),
            condition("ContainersReady", ready), condition("Ready", ready)]


def pod_status_patch(phase: str, containers: list[ContainerState],
                     init_containers: list[ContainerState], start_time: str) -> Status:
    """A strategic-merge patch of the whole pod status for the given container states."""
    initialized = all(c.terminated is not None and c.terminated["exitCode"] == 0
                      for c in init_containers)
    terminal = phase in ("Succeeded", "Failed")
    ready = not terminal and initialized and all(
        c.started_at is not None and c.terminated is None for c in containers)
    reason = "PodCompleted" if terminal else ("ContainersNotReady" if initialized
                                              else "ContainersNotInitialized")
    status: Status = {
        "phase": phase,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": start_time,
        "conditions": _conditions(initialized, ready, reason),
        "containerStatuses": [c.to_status() for c in containers],
    }
    if init_containers:
        status["initContainerStatuses"] = [c.to_status() for c in init_containers]
    return {"status": status}
