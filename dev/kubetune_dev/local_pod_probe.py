"""Container probes on the local node (startup, readiness, liveness), run as the kubelet runs them.

Each probe of a running container has its own thread (:class:`ProbeWorker`). It waits
``initialDelaySeconds`` from the container's start, then checks every ``periodSeconds`` with a
``timeoutSeconds`` limit; a result counts once it repeats ``successThreshold`` (passing) or
``failureThreshold`` (failing) times in a row. Unset fields take the kubelet's defaults (the
apiserver fills them in anyway): delay 0, period 10 s, timeout 1 s, thresholds 1 and 3.

- ``httpGet``: GET ``scheme://host:port/path`` (host defaults to the pod IP; HTTPS is not
  verified); a status from 200 to 399 passes. Redirects are not followed.
- ``tcpSocket``: a TCP connection to ``host:port`` (host defaults to the pod IP) passes.
- ``exec``: the command runs in the container's mount namespace (``nsenter --mount``), with
  its environment and working directory; exit code 0 passes.
- ``grpc`` is not supported: the pod fails with a message saying so.

A readiness probe starts as failing (the container is not ready until it passes); liveness and
readiness probes wait until a startup probe has passed, as with the kubelet. A liveness or
startup probe that fails kills the container and the runner restarts it as the pod's
``restartPolicy`` says.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubetune_dev.local_pod_setup import UnsupportedPodSpec, expand

log = logging.getLogger(__name__)
PROBE_FIELDS = {"startup": "startupProbe", "readiness": "readinessProbe",
                "liveness": "livenessProbe"}
HANDLERS = ("exec", "httpGet", "tcpSocket")
USER_AGENT = "kube-probe/1.32"
MAX_DETAIL_CHARS = 512


@dataclass(frozen=True)
class Probe:
    """One probe of a container spec with the kubelet's defaults filled in."""

    kind: str  # startup, readiness or liveness
    handler: str  # exec, httpGet or tcpSocket
    action: dict[str, Any]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, kind: str, spec: dict[str, Any]) -> Probe:
        handlers = [name for name in HANDLERS if name in spec]
        if not handlers:
            raise UnsupportedPodSpec(
                f"{PROBE_FIELDS[kind]} {sorted(spec)}: the local runner supports "
                "exec, httpGet and tcpSocket probes")
        return cls(kind=kind, handler=handlers[0], action=spec[handlers[0]],
                   initial_delay=float(spec.get("initialDelaySeconds", 0)),
                   period=float(spec.get("periodSeconds", 10)),
                   timeout=float(spec.get("timeoutSeconds", 1)),
                   success_threshold=int(spec.get("successThreshold", 1)),
                   failure_threshold=int(spec.get("failureThreshold", 3)))


def container_probes(container: dict[str, Any]) -> dict[str, Probe]:
    """The probes a container spec declares, by kind (startup, readiness, liveness)."""
    return {kind: Probe.from_spec(kind, container[name])
            for kind, name in PROBE_FIELDS.items() if container.get(name)}


@dataclass(frozen=True)
class ProbeTarget:
    """What a probe needs to know about the container it checks."""

    pod_ip: str
    pid: int  # the container's main process: exec probes enter its mount namespace
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


def _port(value: int | str, target: ProbeTarget) -> int:
    if isinstance(value, int) or value.isdigit():
        return int(value)
    if value not in target.ports:
        raise LookupError(f"the container has no port named {value!r}")
    return target.ports[value]


def _http_get(action: dict[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    host = action.get("host") or target.pod_ip
    port = _port(action["port"], target)
    path = action.get("path") or "/"
    connection: http.client.HTTPConnection
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        connection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
    try:
        connection.request("GET", path if path.startswith("/") else f"/{path}", headers=headers)
        response = connection.getresponse()
        body = response.read(MAX_DETAIL_CHARS).decode(errors="replace")
    finally:
        connection.close()
    passed = 200 <= response.status < 400
    return passed, f"HTTP probe to {host}:{port}{path}: status {response.status} {body!r}"


def _tcp_socket(action: dict[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    host = action.get("host") or target.pod_ip
    port = _port(action["port"], target)
    with socket.create_connection((host, port), timeout=timeout):
        return True, f"TCP probe to {host}:{port}: connected"


def _exec(action: dict[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    command = [expand(part, target.env) for part in action.get("command") or []]
    if not command:
        return False, "exec probe without a command"
    nsenter = shutil.which("nsenter") or "nsenter"
    argv = [nsenter, f"--target={target.pid}", "--mount", "--wd", "--", *command]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=target.env, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return False, f"exec probe {command}: timed out after {timeout:g} s"
    text = output.decode(errors="replace").strip()[-MAX_DETAIL_CHARS:]
    return process.returncode == 0, f"exec probe {command}: exit {process.returncode} {text!r}"


def run_probe(probe: Probe, target: ProbeTarget) -> tuple[bool, str]:
    """Check ``probe`` once against ``target``: (passed, what happened)."""
    check = {"httpGet": _http_get, "tcpSocket": _tcp_socket, "exec": _exec}[probe.handler]
    try:
        return check(probe.action, target, probe.timeout)
    except (OSError, LookupError, http.client.HTTPException) as error:
        return False, f"{probe.handler} probe: {type(error).__name__}: {error}"


class ProbeWorker:
    """Runs one probe of one container run until ``stop`` is set.

    ``on_change(passed, detail)`` is called when the counted result changes (readiness and
    startup: unknown at first; startup stops after passing; liveness: passing at first, and it
    stops after failing, since the container is then killed). ``gate`` (the startup probe
    passed) is waited for before the first check.
    """

    def __init__(self, probe: Probe, target: ProbeTarget, started: float,
                 on_change: Callable[[bool, str], None], stop: threading.Event,
                 gate: threading.Event | None = None) -> None:
        self.probe = probe
        self.target = target
        self.started = started  # time.monotonic() of the container's start
        self.on_change = on_change
        self.stop = stop
        self.gate = gate
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"{probe.kind}-probe-{target.pid}")

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while self.gate is not None and not self.gate.wait(0.1):
            if self.stop.is_set():
                return
        delay = self.started + self.probe.initial_delay - time.monotonic()
        if delay > 0 and self.stop.wait(delay):
            return
        # Liveness passes until proven otherwise. Readiness and startup are unknown at first
        # (the container is neither ready nor started meanwhile), so that their first counted
        # failure is reported too (an Unhealthy event says why a pod is not ready).
        counted: bool | None = True if self.probe.kind == "liveness" else None
        last, streak = counted, 0
        while not self.stop.is_set():
            passed, detail = run_probe(self.probe, self.target)
            if self.stop.is_set():
                return  # the container ended while the probe ran: its result means nothing
            streak = streak + 1 if passed == last else 1
            last = passed
            log.debug("%s probe of pid %d: %s", self.probe.kind, self.target.pid, detail)
            needed = self.probe.success_threshold if passed else self.probe.failure_threshold
            if passed != counted and streak >= needed:
                counted = passed
                try:
                    self.on_change(passed, detail)
                except Exception:  # keep probing: the next change is reported again
                    log.exception("%s probe of pid %d: result not handled", self.probe.kind,
                                  self.target.pid)
                if (self.probe.kind == "startup" and passed) or \
                        (self.probe.kind != "readiness" and not passed):
                    return
            self.stop.wait(self.probe.period)
