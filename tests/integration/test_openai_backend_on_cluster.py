"""backend openai on the real control plane: the operator runs the real trainer entrypoint
(`python -m kubetune_trainer run`) in a CPU pod through the local pod runner, which fine-tunes
on a local stand-in for OpenAI's API (tests/openai_provider_server.py, reached on 127.0.0.1 as
the local runner's pods reach the host); the API key comes from a Secret and appears in nothing
the run produced. The apiserver refuses the provider rules' violations with the models' words."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api import constants as c
from kubetune_dev import LOCAL_NODE, DevCluster, local_pod_toleration
from kubetune_dev.finetunejobs import Ftj, apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from tests.openai_provider_server import FakeOpenAIProvider, Lifecycle
from tests.provider_spec_rules import PROVIDER_RULE_CASES

pytestmark = pytest.mark.cluster

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"
KEY = "sk-proj-clusterTEST0123456789abcdefghijklmnopqrstuvw"


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> DevCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def operator(crds: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    cluster = crds
    env = {
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, "-m", "kubetune_trainer"]),
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_SCRAPE_PROGRESS": "true",  # the local runner's pods answer on 127.0.0.1
        "KUBETUNE_PROGRESS_INTERVAL": "2",  # live progress reaches status while the job runs
    }
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()


def _setup(cluster: DevCluster, namespace: str) -> None:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC)
    core = cluster.core()
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "support-data"}, "data": {"train.jsonl": DATA.read_text()}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "openai"}, "stringData": {"api-key": KEY}}
    )


def _spec(server: FakeOpenAIProvider) -> dict[str, Any]:
    return {
        "backend": "openai",
        "provider": {
            "model": "gpt-4o-mini-2024-07-18",
            "apiKeySecretRef": {"name": "openai", "key": "api-key"},
            "endpoint": server.url,
            "suffix": "support-router",
            "pollIntervalSeconds": 0.2,
        },
        "dataset": {"source": {"configMap": {"name": "support-data", "key": "train.jsonl"}},
                    "format": "chat"},
        "dataPolicy": {"dedup": "exact"},
        "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE},
                      "tolerations": [local_pod_toleration()]},
        "backoffLimit": 1,
    }


def _pod_logs(cluster: DevCluster, namespace: str) -> str:
    """Every local pod's log in `namespace`, deleted pods included (to explain a failure)."""
    folder = cluster.state_dir / "pods" / namespace
    names = sorted(d.name for d in folder.iterdir()) if folder.is_dir() else []
    return "\n".join(f"--- {n}\n{cluster.local_pod_logs(namespace, n)[-3000:]}" for n in names)


def _wait_provider(cluster: DevCluster, server: FakeOpenAIProvider, namespace: str,
                   condition: Any, what: str, timeout: float = 120) -> None:
    """Wait for `condition` on the stand-in; on a timeout, print what the pods logged."""
    try:
        cluster.wait_for(condition, timeout=timeout, what=what)
    except Exception:
        print(_pod_logs(cluster, namespace))
        print("provider requests:", server.requests[-20:])
        print("provider jobs:", {j.id: (j.status, [e["message"] for e in j.events][-5:])
                                 for j in server.jobs.values()})
        raise


def _everything(cluster: DevCluster, ftj: Ftj, operator: OperatorProcess) -> str:
    """Status, Events, pod specs and logs, the operator's log and every file on the volume."""
    parts = [json.dumps(ftj.get()), operator.log_tail(10_000_000)]
    parts += [str(e.message) for e in ftj.events()]
    for pod in ftj.pods():
        parts.append(json.dumps(cluster.api_client().sanitize_for_serialization(pod)))
        parts.append(cluster.local_pod_logs(ftj.namespace, pod.metadata.name))
    volume = cluster.state_dir / "pvc" / ftj.namespace / c.DEFAULT_ARTIFACTS_PVC
    parts += [p.read_bytes().decode("utf-8", "replace") for p in volume.rglob("*") if p.is_file()]
    return "\n".join(parts)


def test_an_openai_finetunejob_succeeds_with_the_provider_model_recorded(
    cluster: DevCluster, operator: OperatorProcess, namespace: str
) -> None:
    _setup(cluster, namespace)
    with FakeOpenAIProvider(api_key=KEY) as server:
        ftj = apply_ftj(cluster, namespace, _spec(server), name="support-openai")
        status = ftj.wait_status(lambda s: s.get("phase") in ("Succeeded", "Failed"), "finished",
                                 timeout=300, operator=operator)
        pod = ftj.pods()[0]
        logs = cluster.local_pod_logs(namespace, pod.metadata.name)
        assert status["phase"] == "Succeeded", f"{status.get('reason')}: {status.get('message')}\n{logs[-3000:]}"
        job = server.only_job()

    assert pod.spec.node_name == LOCAL_NODE
    assert "nvidia.com/gpu" not in json.dumps(cluster.api_client().sanitize_for_serialization(pod.spec))
    models = [a for a in status["artifacts"] if a["kind"] == "provider-model"]
    assert [a["name"] for a in models] == [f"ft:gpt-4o-mini-2024-07-18:org-kubetune:support-router:{job.id[-8:]}"]
    assert status["training"]["trainedTokens"] == 12345 and status["training"]["steps"] == 30
    assert status["data"]["train"] > 0 and status["data"]["test"] > 0
    # Evaluated through the chat API: the fine-tuned model beats the base on the test split.
    evaluation = status["evaluation"]
    assert evaluation["examples"] == status["data"]["test"]
    assert evaluation["fineTuned"]["rougeL"] > evaluation["base"]["rougeL"]
    assert status["gate"]["passed"] is True, status["gate"]
    volume = cluster.state_dir / "pvc" / namespace / c.DEFAULT_ARTIFACTS_PVC
    record = json.loads((volume / namespace / "support-openai" / "provider" / "model.json").read_text())
    assert record["model"] == models[0]["name"] and record["job"] == job.id
    assert KEY not in _everything(cluster, ftj, operator)


def test_a_failed_provider_job_fails_the_finetunejob_at_once_with_its_error_code(
    cluster: DevCluster, operator: OperatorProcess, namespace: str
) -> None:
    _setup(cluster, namespace)
    failing = Lifecycle(statuses=("validating_files", "queued", "failed"),
                        error_code="invalid_training_file",
                        error_message="Line 3: the assistant message has no content.")
    with FakeOpenAIProvider(api_key=KEY, default=failing) as server:
        ftj = apply_ftj(cluster, namespace, _spec(server), name="support-openai-bad")
        status = ftj.wait_phase("Failed", operator, timeout=300)
        job = server.only_job()
    assert status["reason"] == c.Reason.PROVIDER_JOB_FAILED, status
    assert f"{job.id} failed: invalid_training_file: Line 3: the assistant message has no content." in status["message"]
    assert len(ftj.pods()) == 1  # permanent: the Job's podFailurePolicy retries nothing
    assert KEY not in _everything(cluster, ftj, operator)


@pytest.mark.parametrize(
    ("spec", "message", "fix"), PROVIDER_RULE_CASES, ids=[m.split(":")[0] for _, m, _ in PROVIDER_RULE_CASES]
)
def test_the_apiserver_refuses_provider_rule_violations_with_the_same_words(
    crds: DevCluster, namespace: str, spec: dict[str, Any], message: str, fix: dict[str, Any]
) -> None:
    api = client.CustomObjectsApi(crds.api_client())

    def create(body_spec: dict[str, Any], name: str) -> None:
        body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND,
                "metadata": {"name": name}, "spec": body_spec}
        api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)

    with pytest.raises(ApiException) as info:
        create(spec, "broken")
    assert info.value.status == 422, info.value.body
    assert message in json.loads(str(info.value.body))["message"]
    create(fix, "fixed")


def test_suspend_pauses_the_provider_job_and_resume_continues_the_same_job(
    cluster: DevCluster, operator: OperatorProcess, namespace: str
) -> None:
    _setup(cluster, namespace)
    long_run = Lifecycle(statuses=("queued", *["running"] * 10, "succeeded"), total_steps=100)
    with FakeOpenAIProvider(api_key=KEY, default=long_run) as server:
        server.hold_running = True  # until it has been suspended and resumed
        ftj = apply_ftj(cluster, namespace, _spec(server), name="support-openai-suspend")
        _wait_provider(cluster, server, namespace,
                       lambda: any(j.status == "running" for j in server.jobs.values()),
                       "the provider job running")
        # The provider's metrics events, scraped from the pod, are the FineTuneJob's progress.
        live = ftj.wait_status(
            lambda s: s.get("phase") == "Running" and (s.get("progress") or {}).get("step", 0) > 0,
            "live progress", timeout=60, operator=operator)["progress"]
        assert live["totalSteps"] == 100 and live["step"] == 10 and live["percent"] == 10
        assert live["loss"] > 0 and live["evalLoss"] > 0 and live["etaSeconds"] > 0
        ftj.patch_spec({"suspend": True})
        ftj.wait_phase("Suspended", operator, timeout=60)
        _wait_provider(cluster, server, namespace, lambda: server.only_job().status == "paused",
                       "the provider job paused by the stopped pod")
        cluster.wait_for(lambda: not ftj.pods(), timeout=60, what="the pod gone")
        job = server.only_job()
        position = job.position
        server.hold_running = False
        time.sleep(1)  # a paused job does not move however often it is read
        assert job.position == position and job.status == "paused"

        ftj.patch_spec({"suspend": False})
        status = ftj.wait_status(lambda s: s.get("phase") in ("Succeeded", "Failed"), "finished",
                                 timeout=300, operator=operator)
        assert status["phase"] == "Succeeded", f"{status.get('reason')}: {status.get('message')}"
        assert server.only_job() is job and job.position > position
        assert len(server.files) == 2  # uploaded once, before the suspension
        messages = [e["message"] for e in job.events]
        assert messages.index("Fine-tuning job paused") < messages.index("Fine-tuning job resumed")
    assert [a["name"] for a in status["artifacts"] if a["kind"] == "provider-model"] == [
        f"ft:gpt-4o-mini-2024-07-18:org-kubetune:support-router:{job.id[-8:]}"
    ]
    assert KEY not in _everything(cluster, ftj, operator)


def test_deleting_a_running_openai_finetunejob_cancels_the_provider_job(
    cluster: DevCluster, operator: OperatorProcess, namespace: str
) -> None:
    _setup(cluster, namespace)
    with FakeOpenAIProvider(api_key=KEY) as server:
        server.hold_running = True  # it would still be training when deleted
        ftj = apply_ftj(cluster, namespace, _spec(server), name="support-openai-deleted")
        _wait_provider(cluster, server, namespace,
                       lambda: any(j.status == "running" for j in server.jobs.values()),
                       "the provider job running")
        ftj.wait_status(lambda s: bool(s.get("jobName")), "jobName recorded", operator=operator)
        ftj.api.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL,
                                                ftj.name)
        _wait_provider(cluster, server, namespace, lambda: server.only_job().status == "cancelled",
                       "the provider job cancelled after the FineTuneJob's deletion")
        job = server.only_job()
        batch = client.BatchV1Api(cluster.api_client())
        cancel_jobs = [j for j in batch.list_namespaced_job(namespace).items
                       if j.metadata.name.endswith("-cancel")]
    assert len(cancel_jobs) == 1 and not cancel_jobs[0].metadata.owner_references
    assert "Fine-tuning job cancelled" in [e["message"] for e in job.events]
    name = cancel_jobs[0].metadata.name
    pods = [p for p in cluster.core().list_namespaced_pod(namespace).items
            if p.metadata.name.startswith(name)]
    assert pods and pods[0].spec.node_name == LOCAL_NODE
    logs = cluster.wait_for(
        lambda: (text := cluster.local_pod_logs(namespace, pods[0].metadata.name))
        and f"cancelled provider job {job.id}" in text and text,
        timeout=60, what="the cancel pod's log line")
    assert KEY not in logs
