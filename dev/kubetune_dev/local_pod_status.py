"""Pod status patches the local runner sends, built like the kubelet's.

A container is ``started`` while it runs and its startupProbe (if any) has passed, and ``ready``
while it is started and its readinessProbe (if any) passes (see
:mod:`kubetune_dev.local_pod_probe`); the pod's ContainersReady and Ready conditions
follow its containers, with ``lastTransitionTime`` kept until their status changes, so the same
states give the same patch and the runner can skip patches that change nothing.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_dev.local_pod_setup import HOST_IP

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
    # Results of this run of the container's probes; None: the container has no such probe.
    startup_passed: bool | None = None
    readiness_passed: bool | None = None

    @property
    def running(self) -> bool:
        return self.terminated is None and self.started_at is not None

    @property
    def started(self) -> bool:
        return self.running and self.startup_passed is not False

    @property
    def ready(self) -> bool:
        return self.started and self.readiness_passed is not False

    def to_status(self) -> Status:
        status: Status = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.started,
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


class ConditionTimes:
    """``lastTransitionTime`` of each pod condition: now() when its status changes, else kept."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bool, str]] = {}

    def condition(self, kind: str, status: bool, reason: str | None = None) -> Status:
        seen = self._seen.get(kind)
        if seen is None or seen[0] != status:
            seen = self._seen[kind] = (status, now())
        entry: Status = {"type": kind, "status": "True" if status else "False",
                         "lastTransitionTime": seen[1]}
        if not status and reason:
            entry["reason"] = reason
        return entry


def pod_status_patch(phase: str, containers: list[ContainerState],
                     init_containers: list[ContainerState], start_time: str, pod_ip: str,
                     times: ConditionTimes) -> Status:
    """A strategic-merge patch of the whole pod status for the given container states."""
    initialized = all(c.terminated is not None and c.terminated["exitCode"] == 0
                      for c in init_containers)
    terminal = phase in ("Succeeded", "Failed")
    ready = not terminal and initialized and all(c.ready for c in containers)
    reason = "PodCompleted" if terminal else ("ContainersNotReady" if initialized
                                              else "ContainersNotInitialized")
    status: Status = {
        "phase": phase,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "conditions": [times.condition("PodReadyToStartContainers", True),
                       times.condition("Initialized", initialized, reason),
                       times.condition("ContainersReady", ready, reason),
                       times.condition("Ready", ready, reason)],
        "containerStatuses": [c.to_status() for c in containers],
    }
    if init_containers:
        status["initContainerStatuses"] = [c.to_status() for c in init_containers]
    return {"status": status}
