"""The rendered alert rules and dashboard queries in Debian's real Prometheus server.

A small HTTP server (prometheus-client's) exports the gateway's own series
(:class:`~kubetune.serving.gateway.metrics.GatewayMetrics`: request and error counters, the
latency, time-to-first-token, token-usage and feedback histograms) with traffic made up here,
and a real :class:`~kubetune.serving.drift.DriftTracker` fed request by request; it stands in
for the gateway in the serving pods, which Prometheus would scrape the same way. Both versions
also see the client's mistakes (``bad_request``) and dropped log writes, which are no failures. Prometheus scrapes it
every second and evaluates the rules from :func:`kubetune.serving.alerts.render_rule_file`
every second, with the thresholds of deploy/ and only the windows shortened (rate window 5 s,
``for:`` 2 s).

1. Two versions of ``support`` serve healthy traffic: once Prometheus has drift gauges for both
   and has evaluated the rules, no alert is pending or firing.
2. v2 goes bad (40 % errors, 90 s answers, prompts ten times longer, refusals, feedback 2/5):
   every alert fires for v2, warning and critical, through Prometheus's /api/v1/alerts, and
   still none for v1.
3. Every Grafana panel's query runs on Prometheus's /api/v1/query without error and returns data.

Needs Debian's ``prometheus`` package (the server and promtool); without it the test fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server

from kubetune.serving.alerts import AlertThresholds, render_dashboard, render_rule_file
from kubetune.serving.drift import DriftSettings, DriftTracker
from kubetune.serving.gateway.metrics import GatewayMetrics

DEPLOYMENT = "support"
FAST = AlertThresholds(rate_window="5s", for_warning="2s", for_critical="2s")
ALERTS = (
    "KubetuneErrorRateHigh",
    "KubetuneLatencyP95High",
    "KubetuneLengthDrift",
    "KubetuneFeedbackDrop",
    "KubetuneDriftScoreHigh",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], timeout: float, what: str, state: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout:.0f}s; last state: {state()}", pytrace=False)


class StandInGateway:
    """The gateway's /metrics with traffic made up here; ``sick`` turns v2 bad."""

    def __init__(self) -> None:
        # the gateway's own series definitions, so the names here are the names it exports
        self.metrics = GatewayMetrics()
        self.registry = self.metrics.registry
        self.drift = DriftTracker(
            DEPLOYMENT,
            DriftSettings(
                reference_size=200,
                recent_size=100,
                reference_feedback=40,
                recent_feedback=20,
                min_samples=50,
                min_feedback=10,
            ),
        )
        self.drift.register(self.registry)
        self.sick = threading.Event()
        self._stop = threading.Event()
        self._count = {
            "v1": 0,
            "v2": 0,
        }  # per version, so each sees the same cycle of lengths and scores
        for version in ("v1", "v2"):
            self.metrics.errors.labels(DEPLOYMENT, version, "upstream_status")  # 0 from the start
            for _ in range(200):  # the reference window: the first requests after promotion
                self._request(version, bad=False)

    def _request(self, version: str, bad: bool) -> None:
        self._count[version] += 1
        i = self._count[version]
        prompt = (20 + i % 50) * (10 if bad else 1)
        completion = 100 + i % 40
        answer = "I'm sorry, I can't help with that." if bad and i % 3 == 0 else "Here is how."
        score = 2 if bad else 4 + i % 2
        m, failed = self.metrics, bad and i % 5 < 2
        reason = "error" if failed else "stop"
        m.requests.labels(DEPLOYMENT, version, "local", reason).inc()
        if failed:
            m.errors.labels(DEPLOYMENT, version, "upstream_status").inc()
        if i % 10 == 0:  # the client's mistakes and dropped log writes are no failed requests
            m.errors.labels(DEPLOYMENT, version, "bad_request").inc()
            m.errors.labels(DEPLOYMENT, version, "log_dropped").inc()
        m.request_duration.labels(DEPLOYMENT, version, "local", reason).observe(90 if bad else 1.5)
        m.time_to_first_token.labels(DEPLOYMENT, version).observe(3 if bad else 0.2)
        m.token_usage.labels(DEPLOYMENT, version, "input").observe(prompt)
        m.token_usage.labels(DEPLOYMENT, version, "output").observe(completion)
        m.feedback_score.labels(DEPLOYMENT, version).observe(score)
        self.drift.observe(version, prompt, completion, answer, feedback=score)

    def _traffic(self) -> None:
        while not self._stop.wait(0.02):  # about 50 requests per second per version
            self._request("v1", bad=False)
            self._request("v2", bad=self.sick.is_set())

    def __enter__(self) -> str:
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self._thread = threading.Thread(target=self._traffic, daemon=True)
        self._thread.start()
        return f"127.0.0.1:{self._server.server_port}"

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gateway() -> Iterator[tuple[StandInGateway, str]]:
    stand_in = StandInGateway()
    with stand_in as target:
        yield stand_in, target


@pytest.fixture
def prometheus(gateway: tuple[StandInGateway, str], tmp_path: Path) -> Iterator[httpx.Client]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH (Debian package prometheus)", pytrace=False)
    (tmp_path / "rules.yaml").write_text(render_rule_file(FAST))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [gateway[1]]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}", pytrace=False
            )
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait(ready, 20, "prometheus ready", lambda: (tmp_path / "prometheus.log").read_text())
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _alerts(client: httpx.Client) -> list[dict[str, Any]]:
    body = client.get("/api/v1/alerts").json()
    assert body["status"] == "success", body
    return list(body["data"]["alerts"])


def _query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def test_alerts_fire_on_a_drifting_version_and_dashboard_queries_run(
    gateway: tuple[StandInGateway, str], prometheus: httpx.Client
) -> None:
    stand_in, _ = gateway
    started = time.monotonic()

    # 1. healthy: wait until Prometheus has the drift gauges and error rates of both versions
    # and has evaluated the rules on them a few times; nothing may be pending or firing
    def healthy_data() -> bool:
        scores = _query(prometheus, "kubetune_drift_score")
        rates = _query(prometheus, "rate(kubetune_gateway_requests_total[5s])")
        return len(scores) == 2 and len(rates) == 2

    _wait(
        healthy_data,
        20,
        "drift gauges and request rates of v1 and v2",
        lambda: _query(prometheus, "kubetune_drift_score"),
    )
    time.sleep(4)  # longer than for: + a few evaluations
    assert _alerts(prometheus) == []

    # 2. v2 goes bad: every alert fires for it, warning and critical; v1 stays quiet
    stand_in.sick.set()
    wanted = {(name, severity) for name in ALERTS for severity in ("warning", "critical")}

    def firing_for_v2() -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"]["severity"])
            for a in _alerts(prometheus)
            if a["state"] == "firing" and a["labels"]["version"] == "v2"
        }

    _wait(
        lambda: wanted <= firing_for_v2(),
        30,
        "every alert firing for v2",
        lambda: sorted(firing_for_v2()),
    )
    alerts = _alerts(prometheus)
    assert not [a for a in alerts if a["labels"]["version"] == "v1"], alerts
    for alert in alerts:
        assert alert["labels"]["deployment"] == DEPLOYMENT
        assert "support v2" in alert["annotations"]["summary"]
        assert "ModelDeployment support version v2" in alert["annotations"]["description"]
    psi = [a for a in alerts if a["labels"]["alertname"] == "KubetuneLengthDrift"]
    assert {a["labels"]["signal"] for a in psi} >= {"prompt_length"}

    # 3. every dashboard query runs and returns series (so no metric name is misspelt)
    dashboard = json.loads(render_dashboard(FAST))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$deployment", ".*")
                .replace("$version", ".*")
                .replace("$__rate_interval", "10s")
            )
            assert _query(prometheus, expr), f"panel {panel['title']!r}: no data for {expr}"
    assert time.monotonic() - started < 60
