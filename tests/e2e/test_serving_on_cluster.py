"""ModelDeployment end to end on the real control plane with real Ollama servers.

Two FineTuneJobs train tiny versions through the operator and the local pod runner; a
ModelDeployment serves them from two pods, each a real `ollama serve` (built from its Go module
by hack/build-ollama.sh) beside the real serve-agent, with its own IP and model store. The
tests run in order on one deployment (training and loading cost minutes): serve v1 → switch to
v2 and back under a steady request loop with no failed request → a corrupted GGUF is never
served → a version whose job is missing stays Pending → the operator killed mid-switch
converges without recording the switch twice → a served FineTuneJob cannot be deleted → deleting
the deployment removes everything it created.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.devcluster import DevCluster
from kubetune.operator.builders.serving import configmap_name
from kubetune.operator.reconcile.modeldeployment import FINALIZER
from tests.e2e.serving_cluster import (
    Md,
    RequestLoop,
    alias_digest,
    chat,
    f16_sha,
    post_json,
    train_versions,
)
from tests.integration.finetunejobs import Ftj, ensure_pvcs
from tests.integration.operator_process import OperatorProcess

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
        md.wait_status(lambda st: st.get("servedVersion") == "v4", "v4 served", operator=operator)
        served_at = time.monotonic()
        status = md.wait_status(
            lambda st: (st.get("rolledBack") or {}).get("toVersion") == "v2" and st.get("readyReplicas") == 2
            and st.get("servedVersion") == "v2", "rolled back to v2 on every pod", timeout=180, operator=operator)
        switched_at = time.monotonic()
        time.sleep(5)
    detection = switched_at - served_at
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


def test_scored_production_answers_export_as_the_next_fine_tune_data(
    cluster: DevCluster, ns: str, md: Md, tmp_path: Path
) -> None:
    scored = set()
    for ip in md.pod_ips():
        for i, score in enumerate((5, 1)):
            req = urllib.request.Request(
                f"http://{ip}:{s.GATEWAY_PORT}/v1/chat/completions",
                json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"order {i} of {ip}?"}],
                            "max_tokens": 3}).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                request_id = r.headers["x-request-id"]
            cluster.wait_for(lambda rid=request_id, ip=ip, score=score: post_json(  # the log writes in batches
                f"http://{ip}:{s.GATEWAY_PORT}/v1/feedback", {"requestId": rid, "score": score}),
                timeout=30, what="feedback accepted")
            if score == 5:
                scored.add(f"order {i} of {ip}?")
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
            print("export incomplete:", done.stderr[-500:])
            return None
        return got

    records = cluster.wait_for(export, timeout=180, what="an export with both pods' scored answers")
    asked = {r["messages"][0]["content"] for r in records}
    assert scored <= asked and not any(q.startswith("order 1 ") for q in asked)
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


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
        names = {d.metadata.name for d in apps.list_namespaced_deployment(ns).items}
        names |= {s.metadata.name for s in core.list_namespaced_service(ns).items}
        names |= {m.metadata.name for m in core.list_namespaced_config_map(ns).items}
        pods = md.pods()
        jobs = {j["metadata"]["name"] for j in job.api.list_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL)["items"]}
        return not ({MODEL, configmap_name(MODEL)} & names) and not pods and "job-a" not in jobs

    cluster.wait_for(gone, timeout=120, what="the deployment's children and the released job gone")
    assert FINALIZER not in (Ftj(cluster, ns, "job-b").get()["metadata"].get("finalizers") or [])
