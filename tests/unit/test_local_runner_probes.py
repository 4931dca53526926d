"""Probes of the local runner against real servers and processes, and the Ready condition."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune_dev.local_pod_probe import (
    Probe,
    ProbeTarget,
    ProbeWorker,
    container_probes,
    run_probe,
)
from kubetune_dev.local_pod_setup import UnsupportedPodSpec
from kubetune_dev.local_pod_status import ConditionTimes, ContainerState, pod_status_patch


class _Server:
    """An HTTP server on 127.0.0.1 answering every GET with ``status``."""

    def __init__(self) -> None:
        self.status = 503
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    yield served
    served.httpd.shutdown()


def _target(**ports: int) -> ProbeTarget:
    return ProbeTarget("127.0.0.1", os.getpid(), dict(os.environ), ports)


def test_defaults_are_the_kubelets() -> None:
    probes = container_probes({"readinessProbe": {"tcpSocket": {"port": 80}}})
    assert probes["readiness"] == Probe("readiness", "tcpSocket", {"port": 80}, 0.0, 10.0, 1.0,
                                        1, 3)
    with pytest.raises(UnsupportedPodSpec, match="grpc"):
        container_probes({"livenessProbe": {"grpc": {"port": 9000}}})


def test_http_get_passes_on_2xx_and_3xx_only(server: _Server) -> None:
    probe = Probe("readiness", "httpGet", {"path": "/readyz", "port": "http"})
    target = _target(http=server.port)
    for status, passed in ((200, True), (302, True), (404, False), (503, False)):
        server.status = status
        assert run_probe(probe, target)[0] is passed, status
    server.httpd.shutdown()
    server.httpd.server_close()
    passed, detail = run_probe(probe, target)
    assert not passed and "ConnectionRefusedError" in detail


def test_tcp_socket_and_exec() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert run_probe(Probe("liveness", "tcpSocket", {"port": port}), _target())[0]
    assert not run_probe(Probe("liveness", "tcpSocket", {"port": port}), _target())[0]
    assert run_probe(Probe("liveness", "exec", {"command": ["true"]}), _target())[0]
    passed, detail = run_probe(Probe("liveness", "exec", {"command": ["false"]}), _target())
    assert not passed and "exit 1" in detail
    slow = Probe("liveness", "exec", {"command": ["sleep", "5"]}, timeout=0.2)
    started = time.monotonic()
    passed, detail = run_probe(slow, _target())
    assert not passed and "timed out" in detail and time.monotonic() - started < 3


def test_results_count_after_their_thresholds(server: _Server) -> None:
    probe = Probe("readiness", "httpGet", {"port": server.port}, period=0.05,
                  success_threshold=2, failure_threshold=3)
    changes: list[bool] = []
    stop = threading.Event()
    ProbeWorker(probe, _target(), time.monotonic(), lambda passed, _: changes.append(passed),
                stop).start()
    try:
        for status, expected in ((503, [False]), (200, [False, True]), (503, [False, True, False])):
            server.status = status
            deadline = time.monotonic() + 5
            while changes != expected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert changes == expected
    finally:
        stop.set()


def test_ready_needs_every_probe_passing_and_patches_repeat_exactly() -> None:
    running = ContainerState("web", "img", started_at="2026-01-01T00:00:00Z",
                             readiness_passed=False)
    plain = ContainerState("side", "img", started_at="2026-01-01T00:00:00Z")
    times = ConditionTimes()

    def patch() -> dict[str, Any]:
        return pod_status_patch("Running", [running, plain], [], "t0", "198.19.0.7", times)

    def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in status["status"]["conditions"]}

    first = patch()
    assert first["status"]["podIP"] == "198.19.0.7"
    assert first["status"]["hostIP"] == "127.0.0.1"
    before = conditions(first)
    assert (before["Ready"]["status"], before["ContainersReady"]["status"]) == ("False", "False")
    assert [c["ready"] for c in first["status"]["containerStatuses"]] == [False, True]
    time.sleep(1.1)  # timestamps have whole seconds
    assert patch() == first  # nothing changed: the runner skips the patch
    running.readiness_passed = True
    after = conditions(patch())
    assert after["Ready"]["status"] == "True"
    assert after["Ready"]["lastTransitionTime"] != before["Ready"]["lastTransitionTime"]
    assert after["Initialized"] == before["Initialized"]  # unchanged, time kept
    running.startup_passed = False  # a startup probe not passed yet: neither started nor ready
    assert running.to_status()["started"] is False and running.to_status()["ready"] is False
