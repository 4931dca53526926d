"""ModelDeployment end to end on the real control plane with real Ollama servers.

Two FineTuneJobs train tiny versions through the operator and the local pod runner; a
ModelDeployment serves them from two pods, each a real `ollama serve` (built from its Go module
by hack/build-ollama.sh) beside the real serve-agent, with its own IP and model store. The
tests run in order on one deployment (training and loading cost minutes): serve v1 → switch to
v2 and back under a steady request loop with no failed request → a corrupted GGUF is never
served → a version whose job is missing stays Pending → the operator killed mid-switch
converges without recording the switch twice → a version failing live traffic is rolled back →
a version whose answers drift from its FineTuneJob's test split is rolled back → a failing
version is answered by the fallback → scored answers export → a pod's prediction log survives
its replacement → a served FineTuneJob cannot be deleted → deleting the deployment removes
everything it created, prediction-log claims included.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes import client

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.operator.builders.serving import configmap_name
from kubetune.operator.reconcile.modeldeployment import FINALIZER
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import Ftj, ensure_pvcs
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import (
    Md,
    RequestLoop,
    alias_digest,
    chat,
    f16_sha,
    post_json,
    train_versions,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

MODEL = "support"


@pytest.fixture(scope="module")
def trained(cluster: DevCluster, ns: str, operator: OperatorProcess) -> dict[str, dict[str, Any]]:
    ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC)
    statuses = train_versions(cluster, ns, ["job-a", "job-b"], operator)
    assert f16_sha(statuses["job-a"]) != f16_sha(statuses["job-b"])
    return statuses


@pytest.fixture(scope="module")
def md(cluster: DevCluster, ns: str, operator: OperatorProcess, trained: dict[str, dict[str, Any]]) -> Md:
    dep = Md.create(cluster, ns, MODEL, {
        "versions": [
            {"name": "v1", "fineTuneJob": "job-a", "quantization": "f16"},
            {"name": "v2", "fineTuneJob": "job-b", "quantization": "f16"},
        ],
        "activeVersion": "v1",
        "replicas": 2,
        "progressDeadlineSeconds": 240,
    })
    dep.wait_serving("v1", operator, timeout=420)
    return dep


def _digests(dep: Md) -> set[str | None]:
    return {alias_digest(ip, MODEL) for ip in dep.pod_ips()}


def test_two_real_ollama_pods_serve_the_active_version(
    md: Md, trained: dict[str, dict[str, Any]]
) -> None:
    status = md.status()
    sha_a = f16_sha(trained["job-a"])
    assert status["servedDigest"] == sha_a and status["readyReplicas"] == 2
    ips = md.pod_ips()
    assert len(set(ips)) == 2, f"two pods, two servers: {ips}"
    assert _digests(md) == {sha_a}
    for ip in ips:
        answer = chat(ip, MODEL)
        assert answer["choices"][0]["message"]["role"] == "assistant"
        # The same through the pod's gateway (the Service's http port), which says who answered.
        req = urllib.request.Request(
            f"http://{ip}:{s.GATEWAY_PORT}/v1/chat/completions",
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["x-kubetune-version"] == "v1" and r.headers["x-kubetune-digest"] == sha_a
            assert r.headers["x-request-id"] and json.loads(r.read())["choices"]
    v1 = next(v for v in status["versions"] if v["name"] == "v1")
    assert v1["ready"] and v1["sha256Verified"] and v1["gated"] is True and v1["podsReady"] == 2
    assert [(h.get("fromVersion"), h["toVersion"]) for h in status["history"]] == [(None, "v1")]


def test_switch_and_rollback_under_load_fail_no_request(
    md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    sha_a, sha_b = f16_sha(trained["job-a"]), f16_sha(trained["job-b"])
    with RequestLoop(md.pod_ips(), MODEL) as load:
        time.sleep(2)
        md.patch_spec({"activeVersion": "v2"})
        md.wait_serving("v2", operator)
        assert _digests(md) == {sha_b}
        time.sleep(2)
        md.patch_spec({"activeVersion": "v1"})
        md.wait_serving("v1", operator)
        assert _digests(md) == {sha_a}
        time.sleep(2)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    history = md.status()["history"]
    assert [(h.get("fromVersion"), h["toVersion"], h["reason"]) for h in history[-2:]] == [
        ("v1", "v2", "ActiveVersionChanged"), ("v2", "v1", "Rollback")]
    reasons = {e.reason for e in md.events()}
    assert {"VersionServed", "RolledBack"} <= reasons


def test_a_corrupted_gguf_is_never_served_and_degrades(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    gguf = next(a for a in trained["job-b"]["artifacts"] if a["kind"] == "gguf")
    prefix = f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/"
    volume = cluster.state_dir / "pvc" / ns / c.DEFAULT_ARTIFACTS_PVC
    corrupt = volume / "corrupt" / "model.gguf"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    # The pinned digest is that of a file no pod holds yet (job-b's GGUF plus padding), so the
    # agents must fetch it (a digest Ollama already holds is served from Ollama's own verified
    # copy, whatever the URI); the bytes at the URI then have one region flipped.
    good = (volume / gguf["uri"][len(prefix):]).read_bytes() + b"\0" * 32
    pinned = hashlib.sha256(good).hexdigest()
    middle = len(good) // 2
    corrupt.write_bytes(good[:middle] + bytes(b ^ 0xFF for b in good[middle:middle + 64]) + good[middle + 64:])
    versions = md.get()["spec"]["versions"]
    md.patch_spec({"versions": [*versions, {"name": "v3", "uri": f"{prefix}corrupt/model.gguf",
                                             "sha256": pinned}], "activeVersion": "v3"})
    status = md.wait_status(lambda st: st.get("phase") == "Degraded", "Degraded", operator=operator)
    v3 = next(v for v in status["versions"] if v["name"] == "v3")
    assert v3["phase"] == "Failed" and "checksum" in v3["message"] and not v3["sha256Verified"]
    assert status["servedVersion"] == "v1" and _digests(md) == {f16_sha(trained["job-a"])}
    cond = {x["type"]: x for x in status["conditions"]}
    assert cond["Degraded"]["status"] == "True" and "v3" in cond["Degraded"]["message"]
    assert md.get()["spec"]["activeVersion"] == "v3", "the spec is never rewritten"
    assert any(e.type == "Warning" and "v3" in (e.message or "") for e in md.events())
    md.patch_spec({"versions": versions, "activeVersion": "v1"})
    md.wait_serving("v1", operator)


def test_a_version_whose_job_is_missing_stays_pending_while_the_old_one_serves(
    md: Md, operator: OperatorProcess
) -> None:
    versions = md.get()["spec"]["versions"]
    md.patch_spec({"versions": [*versions, {"name": "v9", "fineTuneJob": "no-such-job"}], "activeVersion": "v9"})
    status = md.wait_status(
        lambda st: any(v["name"] == "v9" and v.get("reason") == "JobNotFound" for v in st.get("versions", [])),
        "v9 Pending", operator=operator)
    assert status["servedVersion"] == "v1" and status["phase"] == "Progressing"
    assert all(chat(ip, MODEL)["choices"] for ip in md.pod_ips())
    md.patch_spec({"versions": versions, "activeVersion": "v1"})
    md.wait_serving("v1", operator)


def test_operator_killed_mid_switch_converges_without_a_duplicate_switch(
    md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    before = len(md.status()["history"])
    md.patch_spec({"activeVersion": "v2"})
    time.sleep(1.5)
    operator.kill()
    operator.start()
    md.wait_serving("v2", operator)
    time.sleep(3)  # a few more resyncs
    history = md.status()["history"]
    assert [(h.get("fromVersion"), h["toVersion"]) for h in history[before:]] == [("v1", "v2")]
    assert _digests(md) == {f16_sha(trained["job-b"])}


# A version that loads and passes the agent's 1-token check (its prompt is "Hi") but whose
# template fails on every real conversation: a real Ollama answering 500 to chat requests.
FAULTY_MODELFILE = (
    'TEMPLATE """{{ range .Messages }}{{ if eq .Content "Hi" }}{{ .Content }}'
    '{{ else }}{{ index $.Messages 99 }}{{ end }}{{ end }}"""\n'
)


def _rolled_back(md: Md, operator: OperatorProcess, bad: str, good: str) -> tuple[dict[str, Any], float, float]:
    """Wait for `bad` to be served, then for the automatic rollback to `good` on every pod; the
    status, the seconds between, and when the rollback was complete (monotonic)."""
    md.wait_status(lambda st: st.get("servedVersion") == bad, f"{bad} served", operator=operator)
    served_at = time.monotonic()
    status = md.wait_status(
        lambda st: (st.get("rolledBack") or {}).get("toVersion") == good and st.get("readyReplicas") == 2
        and st.get("servedVersion") == good, f"rolled back to {good} on every pod", timeout=180, operator=operator)
    switched_at = time.monotonic()
    return status, switched_at - served_at, switched_at


def test_a_version_that_fails_live_traffic_is_rolled_back_automatically(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    md.wait_serving("v2", operator)
    gguf = next(a for a in trained["job-b"]["artifacts"] if a["kind"] == "gguf")
    volume = cluster.state_dir / "pvc" / ns / c.DEFAULT_ARTIFACTS_PVC
    modelfile = volume / "faulty" / "Modelfile"
    modelfile.parent.mkdir(parents=True, exist_ok=True)
    modelfile.write_text(FAULTY_MODELFILE)
    versions = md.get()["spec"]["versions"]
    md.patch_spec({
        "versions": [*versions, {
            "name": "v4", "uri": gguf["uri"], "sha256": gguf["sha256"],
            "modelfileUri": f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/faulty/Modelfile",
            "modelfileSha256": hashlib.sha256(modelfile.read_bytes()).hexdigest()}],
        "activeVersion": "v4",
        "rollback": {"windowSeconds": 10, "minRequests": 5, "maxErrorRate": 0.2},
    })
    with RequestLoop(md.pod_ips(), MODEL, port=s.GATEWAY_PORT) as load:
        status, detection, switched_at = _rolled_back(md, operator, "v4", "v2")
        time.sleep(5)
    print(f"\nautomatic rollback: {detection:.1f} s from v4 served to v2 back on every pod; "
          f"{len(load.failures)} failed while v4 served, {load.ok} ok")
    assert load.failures, "the faulty version failed no request: the test proves nothing"
    assert [t for t in load.failure_times if t > switched_at + 1] == [], "requests failed after the rollback"
    last = status["history"][-1]
    assert (last["fromVersion"], last["toVersion"], last["reason"]) == ("v4", "v2", "AutomaticRollback")
    assert "error rate" in last["message"]
    cond = {x["type"]: x["status"] for x in status["conditions"]}
    assert cond["RolledBack"] == "True" and status["phase"] == "Degraded"
    assert md.get()["spec"]["activeVersion"] == "v4", "the spec is never rewritten"
    assert any(e.reason == "RolledBack" and "v4" in (e.message or "") for e in md.events())
    time.sleep(3)
    assert md.status()["servedVersion"] == "v2", "it stays rolled back until the spec changes"
    md.patch_spec({"versions": versions, "activeVersion": "v2"})
    md.wait_serving("v2", operator)


def _gateway_sample(ip: str, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://{ip}:{s.GATEWAY_PORT}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_version_whose_answers_drift_from_its_test_split_is_rolled_back_automatically(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    """Drift against the FineTuneJob's test split (drift-reference.json, exported by the real
    trainer): v5 and v6 serve job-b's GGUF with its exported Modelfile, v5 answering at most as
    many tokens as evaluation generated (PARAMETER num_predict 4), v6 up to 40 (a version whose
    answers drift). Both are measured against job-b's test split from their first request; the
    traffic is that test split's own prompts. v6 is rolled back to v5 on the drift score."""
    md.wait_serving("v2", operator)
    artifacts = {a["kind"]: a for a in trained["job-b"]["artifacts"] if a.get("quantization") in (None, "f16")}
    reference, gguf, modelfile = artifacts["drift-reference"], artifacts["gguf"], artifacts["modelfile"]
    volume = cluster.state_dir / "pvc" / ns / c.DEFAULT_ARTIFACTS_PVC
    prefix = f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/"
    ref = json.loads((volume / reference["uri"][len(prefix):]).read_text())
    predictions = volume / artifacts["predictions"]["uri"][len(prefix):]
    prompts = tuple(json.loads(line)["prompt"] for line in predictions.read_text().splitlines() if line.strip())
    assert len(ref["promptTokens"]) == len(prompts) >= 2

    # The FineTuneJob version carries its job's reference all the way to the gateway.
    for ip in md.pod_ips():
        chat(ip, MODEL, port=s.GATEWAY_PORT, content=prompts[0])
        assert _gateway_sample(ip, "kubetune_drift_window_samples", version="v2", window="reference") == len(prompts)

    exported = (volume / modelfile["uri"][len(prefix):]).read_text()
    specs = []
    for name, num_predict in (("v5", 4), ("v6", 40)):
        path = volume / "drift" / name / "Modelfile"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(exported + f"PARAMETER num_predict {num_predict}\n")
        specs.append({
            "name": name, "uri": gguf["uri"], "sha256": gguf["sha256"],
            "modelfileUri": f"{prefix}drift/{name}/Modelfile",
            "modelfileSha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "driftReferenceUri": reference["uri"], "driftReferenceSha256": reference["sha256"]})
    versions = md.get()["spec"]["versions"]
    md.patch_spec({
        "versions": [*versions, *specs], "activeVersion": "v5",
        "drift": {"minSamples": 8, "recentRequests": 16},
        "rollback": {"windowSeconds": 10, "minRequests": 5, "maxDriftScore": 0.5},
    })
    md.wait_serving("v5", operator)
    with RequestLoop(md.pod_ips(), MODEL, port=s.GATEWAY_PORT, prompts=prompts, max_tokens=None) as load:
        deadline = time.monotonic() + 60
        while load.ok < 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert load.failures == [], f"v5 failed requests: {load.failures[:3]}"
        healthy = [_gateway_sample(ip, "kubetune_drift_score", version="v5") for ip in md.pod_ips()]
        print(f"\nv5 (answers as long as evaluation's) drift score per pod: {healthy}; reference {ref}")
        assert all(x is not None and x < 0.5 for x in healthy), "the healthy version already drifts:\n" + "\n".join(
            line for ip in md.pod_ips() for line in urllib.request.urlopen(
                f"http://{ip}:{s.GATEWAY_PORT}/metrics", timeout=10).read().decode().splitlines()
            if 'version="v5"' in line and ("kubetune_" in line or "token_usage_sum" in line or "_count" in line))
        assert md.status()["servedVersion"] == "v5"

        md.patch_spec({"activeVersion": "v6"})
        status, detection, _ = _rolled_back(md, operator, "v6", "v5")
        time.sleep(5)
    print(f"drift rollback: {detection:.1f} s from v6 served to v5 back on every pod "
          f"(window 10 s); {len(load.failures)} failed, {load.ok} ok")
    assert load.failures == [], "a drifting version answers: no request may fail"
    last = status["history"][-1]
    assert (last["fromVersion"], last["toVersion"], last["reason"]) == ("v6", "v5", "AutomaticRollback")
    assert "drift score" in last["message"]
    assert md.get()["spec"]["activeVersion"] == "v6", "the spec is never rewritten"
    md.patch_spec({"versions": versions, "activeVersion": "v2", "rollback": None, "drift": None})
    md.wait_serving("v2", operator)


class _FallbackModel(BaseHTTPRequestHandler):
    """A real HTTP server speaking OpenAI's chat completions (the stronger model a deployment
    falls back to), recording what it was asked and with which key."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        answer = json.dumps({
            "id": "chatcmpl-fallback", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Answered by the fallback."}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        return


def test_a_failing_version_is_answered_by_the_fallback_with_the_key_from_its_secret(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess, trained: dict[str, dict[str, Any]]
) -> None:
    """spec.fallback on the cluster: the served version errors on every real question (a
    template Ollama fails to execute), and every client still gets a 200 from the fallback, sent
    the API key from the Secret (by reference: the pod spec holds no key), counted with
    route="fallback" on the gateway's /metrics and logged with that route."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FallbackModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FallbackModel.calls.clear()
    key = "sk-test-" + hashlib.sha256(ns.encode()).hexdigest()[:20]
    cluster.core().create_namespaced_secret(ns, {"metadata": {"name": "fallback-key"}, "stringData": {"apiKey": key}})
    md.wait_serving("v2", operator)
    gguf = next(a for a in trained["job-b"]["artifacts"] if a["kind"] == "gguf")
    volume = cluster.state_dir / "pvc" / ns / c.DEFAULT_ARTIFACTS_PVC
    modelfile = volume / "faulty" / "Modelfile"
    versions = md.get()["spec"]["versions"]
    try:
        md.patch_spec({
            "versions": [*versions, {
                "name": "v4", "uri": gguf["uri"], "sha256": gguf["sha256"],
                "modelfileUri": f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/faulty/Modelfile",
                "modelfileSha256": hashlib.sha256(modelfile.read_bytes()).hexdigest()}],
            "activeVersion": "v4",
            "fallback": {"endpoint": f"http://127.0.0.1:{server.server_port}/v1", "model": "stronger",
                         "apiKeySecretRef": {"name": "fallback-key", "key": "apiKey"},
                         "timeoutSeconds": 20, "on": ["error"]},
        })
        # The new pod template (fallback settings) rolls the pods; then v4 is served everywhere.
        cluster.wait_for(lambda: (all("--fallback-url" in " ".join(p.spec.containers[1].args) for p in md.pods())
                         and len(md.pods()) == 2) or None, timeout=300, what="both pods with the fallback")
        md.wait_serving("v4", operator)
        answers = []
        for ip in md.pod_ips():
            for i in range(3):
                answers.append(chat(ip, MODEL, port=s.GATEWAY_PORT, content=f"Where is parcel {i}?"))
        assert [a["choices"][0]["message"]["content"] for a in answers] == ["Answered by the fallback."] * 6
        assert len(_FallbackModel.calls) >= 6
        assert {call["auth"] for call in _FallbackModel.calls} == {f"Bearer {key}"}
        assert {call["body"]["model"] for call in _FallbackModel.calls} == {"stronger"}
        for ip in md.pod_ips():
            fallbacks = _gateway_sample(ip, "gen_ai_server_request_duration_seconds_count", route="fallback",
                                        version="v4")
            assert fallbacks is not None and fallbacks >= 3
        for pod in md.pods():  # the key only by reference
            env = {e.name: e for e in pod.spec.containers[1].env}
            ref = next(e for e in env.values() if e.value_from and e.value_from.secret_key_ref)
            assert ref.value_from.secret_key_ref.name == "fallback-key" and ref.value is None
            assert key not in json.dumps(client.ApiClient().sanitize_for_serialization(pod))
    finally:
        md.patch_spec({"versions": versions, "activeVersion": "v2", "fallback": None})
        server.shutdown()
    md.wait_serving("v2", operator)


def test_scored_production_answers_export_as_the_next_fine_tune_data(
    cluster: DevCluster, ns: str, md: Md, tmp_path: Path
) -> None:
    scored = set()
    for ip in md.pod_ips():
        for i, score in enumerate((5, 5, 1)):
            req = urllib.request.Request(
                f"http://{ip}:{s.GATEWAY_PORT}/v1/chat/completions",
                json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"order {i} of {ip}?"}],
                            "max_tokens": 8}).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                request_id = r.headers["x-request-id"]
                answer = json.loads(r.read())["choices"][0]["message"]["content"]
            cluster.wait_for(lambda rid=request_id, ip=ip, score=score: post_json(  # the log writes in batches
                f"http://{ip}:{s.GATEWAY_PORT}/v1/feedback", {"requestId": rid, "score": score}),
                timeout=30, what="feedback accepted")
            # An empty (whitespace) answer is no training example: the export leaves it out.
            if score == 5 and answer.strip():
                scored.add(f"order {i} of {ip}?")
    assert len(scored) >= 2, "the tiny model answered only whitespace: nothing to export"
    out = tmp_path / "next.jsonl"

    def export() -> list[dict[str, Any]] | None:
        # A pod the apiserver's proxy cannot reach is a warning, not an error (on a loaded
        # machine one may time out): export again until both pods' answers are in.
        done = subprocess.run(
            [sys.executable, "-m", "kubetune.cli", "predictions", "export", "--kubeconfig", str(cluster.kubeconfig),
             "-n", ns, "--deployment", MODEL, "--min-score", "4", "--since", "1h", "--out", str(out)],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        got = [json.loads(line) for line in out.read_text().splitlines()]
        if not scored <= {r["messages"][0]["content"] for r in got}:
            print("export incomplete:", done.stderr[-500:], f"{len(got)} records, e.g.",
                  [r["messages"][0]["content"] for r in got[:4]], "wanted", sorted(scored))
            return None
        return got

    records = cluster.wait_for(export, timeout=180, what="an export with both pods' scored answers")
    asked = {r["messages"][0]["content"] for r in records}
    assert scored <= asked and not any(q.startswith("order 2 ") for q in asked)
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_a_pods_prediction_log_and_feedback_survive_its_replacement(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess
) -> None:
    """The log is on the pod's own claim (predictions-<name>-<ordinal>): a pod deleted and
    re-created by the StatefulSet finds the predictions and acknowledged feedback it had."""
    pod = sorted(md.pods(), key=lambda p: p.metadata.name)[0]
    ip, name = pod.status.pod_ip, pod.metadata.name
    req = urllib.request.Request(
        f"http://{ip}:{s.GATEWAY_PORT}/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "kept across restarts?"}],
                    "max_tokens": 2}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        request_id = r.headers["x-request-id"]
    cluster.wait_for(lambda: post_json(f"http://{ip}:{s.GATEWAY_PORT}/v1/feedback",
                                       {"requestId": request_id, "score": 4}),
                     timeout=30, what="feedback accepted")
    cluster.core().delete_namespaced_pod(name, ns)
    cluster.wait_for(lambda: next((p for p in md.pods() if p.metadata.name == name
                                   and p.metadata.uid != pod.metadata.uid), None),
                     timeout=120, what=f"{name} re-created")
    md.wait_serving("v2", operator)
    new_ip = next(p.status.pod_ip for p in md.pods() if p.metadata.name == name)
    with urllib.request.urlopen(f"http://{new_ip}:{s.GATEWAY_PORT}/v1/predictions?since=1h", timeout=30) as r:
        rows = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    kept = [x for x in rows if x.get("requestId") == request_id]
    assert kept, f"the prediction of {request_id} was lost with its pod"
    assert kept[0]["score"] == 4, kept[0]


def test_a_served_job_cannot_be_deleted_and_deleting_the_deployment_cleans_up(
    cluster: DevCluster, ns: str, md: Md, operator: OperatorProcess
) -> None:
    job = Ftj(cluster, ns, "job-a")
    assert FINALIZER in job.get()["metadata"]["finalizers"]
    job.api.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, "job-a")
    time.sleep(2)
    kept = job.get()
    assert kept["metadata"].get("deletionTimestamp") and kept["status"]["phase"] == "Succeeded"

    md.api.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELDEPLOYMENT_PLURAL, MODEL)
    apps = client.AppsV1Api(cluster.api_client())
    core = cluster.core()

    def gone() -> bool:
        names = {d.metadata.name for d in apps.list_namespaced_stateful_set(ns).items}
        names |= {s.metadata.name for s in core.list_namespaced_service(ns).items}
        names |= {p.metadata.name for p in core.list_namespaced_persistent_volume_claim(ns).items
                  if p.metadata.name.startswith(f"predictions-{MODEL}-")}
        names |= {m.metadata.name for m in core.list_namespaced_config_map(ns).items}
        pods = md.pods()
        jobs = {j["metadata"]["name"] for j in job.api.list_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL)["items"]}
        claims = {f"predictions-{MODEL}-0", f"predictions-{MODEL}-1"}
        return not ({MODEL, configmap_name(MODEL)} & names) and not (claims & names) and not pods \
            and "job-a" not in jobs

    cluster.wait_for(gone, timeout=120, what="the deployment's children and the released job gone")
    assert FINALIZER not in (Ftj(cluster, ns, "job-b").get()["metadata"].get("finalizers") or [])
