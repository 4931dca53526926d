"""Drift alerts from real gateway pods in Debian's real Prometheus.

The operator trains one tiny version and serves it from two pods of real Ollama beside the
real serve-agent and gateway (dev/kubetune_dev/serving_cluster.py). Prometheus scrapes both pods'
gateways at ``<pod IP>:8080/metrics`` every second and evaluates the rules of
:mod:`kubetune.serving.alerts` every second, with deploy/'s thresholds and only the windows
shortened (rate window 5 s, ``for:`` 2 s).

1. Healthy traffic through the gateways fills each pod's drift reference (the first requests a
   version serves) with short prompts, and feedback 5: the drift series appear in Prometheus
   for both pods, stay low, and no alert is pending or firing.
2. Drift: prompts twenty times longer, each answer rated 1 through ``POST /v1/feedback`` with
   the ``x-request-id`` the gateway gave it. The prompt-length PSI and the drift score cross
   their critical levels in Prometheus, and KubetuneLengthDrift, KubetuneFeedbackDrop and
   KubetuneDriftScoreHigh fire for the version, warning and critical.

The deployment sets small drift windows (``spec.drift``, passed to every pod's gateway), so
each pod fills its reference with a few dozen requests.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.serving.alerts import AlertThresholds, render_rule_file
from kubetune.serving.drift import DriftSettings
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import ensure_pvcs
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import Md, train_versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

MODEL = "support"
FAST = AlertThresholds(rate_window="5s", for_warning="2s", for_critical="2s")
DRIFT_ALERTS = ("KubetuneLengthDrift", "KubetuneFeedbackDrop", "KubetuneDriftScoreHigh")
# spec.drift of the deployment below: what the gateway in each pod runs with
WINDOWS = DriftSettings(reference_size=40, recent_size=40, reference_feedback=20, recent_feedback=20,
                        min_samples=20, min_feedback=10)
# Long prompts to push into each pod's recent window: 40 % of it moves the prompt-length PSI
# far past 0.25, and more than the recent feedback window, so its mean is all 1s.
DRIFTED = max(WINDOWS.recent_size * 2 // 5, WINDOWS.recent_feedback + 20)
WORKERS_PER_POD = 3
QUESTIONS = ("Where is my order", "How do I reset my password", "Can I change my plan", "Is my invoice ready")
PADDING = " Please also check my earlier orders, invoices, payment methods and shipping addresses."


@pytest.fixture(scope="module")
def md(cluster: DevCluster, ns: str, operator: OperatorProcess) -> Md:
    ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC)
    status = train_versions(cluster, ns, ["job-a"], operator)["job-a"]
    f16 = {a["kind"]: a for a in status["artifacts"] if a.get("quantization") == "f16"}
    # A uri version without a drift reference: its reference is its first requests (this test's
    # baseline traffic), so the drift injected afterwards is measured against that. (A
    # FineTuneJob version is measured against its test split: test_serving_on_cluster.py.)
    dep = Md.create(cluster, ns, MODEL, {
        "versions": [{"name": "v1", "uri": f16["gguf"]["uri"], "sha256": f16["gguf"]["sha256"],
                      "modelfileUri": f16["modelfile"]["uri"], "modelfileSha256": f16["modelfile"]["sha256"]}],
        "activeVersion": "v1",
        "replicas": 2,
        "logging": {"content": "none"},  # counts and timings are all drift needs; no scanner cost
        "drift": {"referenceRequests": WINDOWS.reference_size, "recentRequests": WINDOWS.recent_size,
                  "referenceFeedback": WINDOWS.reference_feedback, "recentFeedback": WINDOWS.recent_feedback,
                  "minSamples": WINDOWS.min_samples, "minFeedback": WINDOWS.min_feedback},
        "progressDeadlineSeconds": 240,
    })
    dep.wait_serving("v1", operator, timeout=420)
    return dep


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus(md: Md, tmp_path: Path) -> Iterator[httpx.Client]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH (Debian package prometheus)", pytrace=False)
    targets = [f"{ip}:{s.GATEWAY_PORT}" for ip in md.pod_ips()]
    assert len(targets) == 2, targets
    (tmp_path / "rules.yaml").write_text(render_rule_file(FAST))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited: {log_path.read_text()}", pytrace=False)
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait(ready, 20, "prometheus ready", log_path.read_text)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(check: Callable[[], bool], timeout: float, what: str, state: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f}s; last state: {state()}", pytrace=False)


def _query(prom: httpx.Client, expr: str) -> list[dict[str, Any]]:
    body = prom.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _values(prom: httpx.Client, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in _query(prom, expr)]


def _alerts(prom: httpx.Client) -> list[dict[str, Any]]:
    body = prom.get("/api/v1/alerts").json()
    assert body["status"] == "success", body
    return list(body["data"]["alerts"])


class Traffic:
    """Chat requests through each pod's gateway (the dev cluster has no kube-proxy, so the
    test calls pod IPs as the Service would), each answer then rated on the pod that gave it."""

    def __init__(self, ips: list[str]) -> None:
        self.ips = ips
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64))
        self.sent = 0

    def ask(self, ip: str, i: int, long: bool, score: int | None) -> None:
        question = f"{QUESTIONS[i % len(QUESTIONS)]} number {i}?" + (PADDING * 20 if long else "")
        r = self.http.post(
            f"http://{ip}:{s.GATEWAY_PORT}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": question}],
                  "max_tokens": 4, "temperature": 0, "seed": 1})
        assert r.status_code == 200, r.text
        assert r.headers["x-kubetune-version"] == "v1"
        if score is not None:
            fb = self.http.post(f"http://{ip}:{s.GATEWAY_PORT}/v1/feedback",
                                json={"requestId": r.headers["x-request-id"], "score": score})
            assert fb.status_code == 200, fb.text

    def run(self, count: int, long: bool, score: Callable[[int], int | None]) -> None:
        """``count`` requests on every pod, in parallel; request i is rated ``score(i)``."""
        with ThreadPoolExecutor(WORKERS_PER_POD * len(self.ips)) as pool:
            futures = [pool.submit(self.ask, ip, i, long, score(i)) for i in range(count) for ip in self.ips]
            for future in futures:
                future.result()
        self.sent += count * len(self.ips)


def test_drift_through_real_gateways_fires_the_alerts_in_prometheus(md: Md, prometheus: httpx.Client) -> None:
    started = time.monotonic()
    traffic = Traffic(md.pod_ips())

    # 1. healthy: fill each pod's reference with short prompts rated 5
    traffic.run(WINDOWS.reference_size, long=False,
                score=lambda i: 5 if i < WINDOWS.reference_feedback else None)
    healthy_at = time.monotonic()

    def both_pods_scored() -> bool:
        return len(_query(prometheus, f'kubetune_drift_score{{deployment="{MODEL}",version="v1"}}')) == 2

    _wait(both_pods_scored, 20, "kubetune_drift_score of v1 from both pods",
          lambda: _query(prometheus, "kubetune_drift_window_samples"))
    time.sleep(4)  # longer than for: plus a few evaluations
    assert max(_values(prometheus, "kubetune_drift_psi")) < FAST.psi_warning
    assert max(_values(prometheus, "kubetune_drift_score")) < FAST.drift_score_warning
    assert [a for a in _alerts(prometheus) if a["labels"]["alertname"] in DRIFT_ALERTS] == []

    # 2. drift: much longer prompts, every answer rated 1
    traffic.run(DRIFTED, long=True, score=lambda i: 1)
    drifted_at = time.monotonic()
    wanted = {(name, severity) for name in DRIFT_ALERTS for severity in ("warning", "critical")}

    def firing() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["severity"]) for a in _alerts(prometheus)
                if a["state"] == "firing" and a["labels"]["version"] == "v1"}

    _wait(lambda: wanted <= firing(), 30, "every drift alert firing for v1", lambda: sorted(firing()))
    fired_at = time.monotonic()

    psi = _values(prometheus, f'kubetune_drift_psi{{deployment="{MODEL}",signal="prompt_length"}}')
    assert len(psi) == 2 and min(psi) >= FAST.psi_critical, psi
    assert min(_values(prometheus, f'kubetune_drift_score{{deployment="{MODEL}"}}')) >= FAST.drift_score_critical
    drop = _values(prometheus, 'kubetune_feedback_mean{window="reference"} - ignoring(window) '
                               'kubetune_feedback_mean{window="recent"}')
    assert len(drop) == 2 and min(drop) >= FAST.feedback_drop_critical, drop
    for alert in _alerts(prometheus):
        if alert["labels"]["alertname"] in DRIFT_ALERTS:
            assert alert["labels"]["deployment"] == MODEL
            assert "support v1" in alert["annotations"]["summary"]
    print(f"{traffic.sent} requests; healthy phase {healthy_at - started:.0f}s, drift phase "
          f"{drifted_at - healthy_at:.0f}s, alerts firing {fired_at - drifted_at:.0f}s later")
