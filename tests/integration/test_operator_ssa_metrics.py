"""Who writes what, and what the operator reports, on the real apiserver.

- Field ownership: after a FineTuneJob and a ModelDeployment have been reconciled, every
  managedFields entry the operator could have made (FineTuneJob and ModelDeployment status,
  the Job, the ConfigMaps, the serving StatefulSet, the Service, the PodDisruptionBudget, the
  Events) names
  `kubetune-operator`; the only other writers are the user (spec) and kube-controller-manager
  (Job and StatefulSet status).
- The KubeApi calls are idempotent on objects that exist: a Job is not re-applied over its
  immutable template, a ConfigMap is re-applied.
- /metrics (a real scrape) has the controller-runtime and client-go names; /healthz and
  /readyz answer.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api import constants as c
from kubetune.operator.kube import FIELD_MANAGER, KubeApi
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from tests.integration.test_operator_ha import free_port, probe

pytestmark = pytest.mark.cluster

STAND_IN = Path(__file__).with_name("stand_in_trainer.py")
SHA = "ab" * 32


@pytest.fixture
def operator(cluster: DevCluster, namespace: str, tmp_path: Path) -> Iterator[tuple[OperatorProcess, int, int]]:
    install_crds(cluster)
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets")
    metrics, probes = free_port(), free_port()
    proc = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", {
        "KUBETUNE_OPERATOR_METRICS_PORT": str(metrics),
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
        "KUBETUNE_NAMESPACES": namespace,
        "KUBETUNE_SERVING_RESYNC": "1",
        "KUBETUNE_LEADER_ELECTION": "true",
        "POD_NAMESPACE": namespace,
        "POD_NAME": "op-ssa",
    }, args=["--liveness", f"http://127.0.0.1:{probes}/healthz"])
    proc.start()
    yield proc, metrics, probes
    proc.stop()


def entries(obj: Any) -> list[dict[str, Any]]:
    """The managedFields of a client model or a dict, as dicts."""
    if isinstance(obj, dict):
        return list(obj["metadata"].get("managedFields") or [])
    return [{"manager": e.manager, "operation": e.operation, "subresource": e.subresource,
             "fieldsV1": e.fields_v1} for e in obj.metadata.managed_fields or []]


def managers(obj: Any) -> set[tuple[str, str, str]]:
    """(manager, operation, subresource) of every managedFields entry."""
    return {(e["manager"], e["operation"], e.get("subresource") or "") for e in entries(obj)}


def foreign_writes(obj: Any) -> list[tuple[str, str, list[str]]]:
    """Entries not by the operator that touch more than status and metadata.annotations:
    (manager, subresource, top-level fields)."""
    found = []
    for e in entries(obj):
        if e["manager"] == FIELD_MANAGER or e.get("subresource") == "status":
            continue
        fields = e.get("fieldsV1") or {}
        top = sorted(fields)
        meta = sorted(fields.get("f:metadata") or {})
        if top != ["f:metadata"] or meta != ["f:annotations"]:
            found.append((e["manager"], e.get("subresource") or "", top + meta))
    return found


def test_every_write_of_the_operator_carries_its_field_manager(
    cluster: DevCluster, namespace: str, operator: tuple[OperatorProcess, int, int]
) -> None:
    proc, _, _ = operator
    ftj = apply_ftj(cluster, namespace, {
        "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
    })
    ftj.end_pod(ftj.running_pod(), "succeed")
    ftj.wait_phase("Succeeded", proc, timeout=90)
    custom = client.CustomObjectsApi(cluster.api_client())
    custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, {
        "apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND, "metadata": {"name": "chat"},
        "spec": {"versions": [{"name": "v1", "uri": "https://models.example/v1.gguf", "sha256": SHA}],
                 "replicas": 2},
    })
    md = cluster.wait_for(lambda: (m := custom.get_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "chat")).get("status") and m,
        timeout=60, what="ModelDeployment status")
    apps, core = client.AppsV1Api(cluster.api_client()), cluster.core()
    workload = cluster.wait_for(lambda: next(iter(apps.list_namespaced_stateful_set(namespace).items), None),
                                timeout=60, what="serving StatefulSet")

    ours = {FIELD_MANAGER}
    controller_manager = {"kube-controller-manager"}
    # Custom resources: the user wrote the spec (the test's client), the operator the status.
    for obj in (ftj.get(), md):
        status_writers = {m for m, _, sub in managers(obj) if sub == "status"}
        assert status_writers == ours, managers(obj)
        for e in entries(obj):  # never a spec
            assert e["manager"] != FIELD_MANAGER or "f:spec" not in (e.get("fieldsV1") or {}), e
    # Children: the operator's, but for what the built-in controllers own (their status).
    job = ftj.jobs()[0]
    assert {m for m, _, sub in managers(job) if sub != "status"} <= ours, managers(job)
    assert {m for m, _, sub in managers(job) if sub == "status"} <= controller_manager
    assert not foreign_writes(job), foreign_writes(job)
    assert (FIELD_MANAGER, "Apply", "") in managers(workload)
    assert {m for m, _, sub in managers(workload) if sub == "status"} <= controller_manager
    assert not foreign_writes(workload), foreign_writes(workload)
    configmaps = [cm for cm in core.list_namespaced_config_map(namespace).items
                  if cm.metadata.name != "kube-root-ca.crt"]
    assert len(configmaps) == 2  # the FineTuneJob's spec and the deployment's serving config
    for cm in configmaps:
        assert managers(cm) == {(FIELD_MANAGER, "Apply", "")}, (cm.metadata.name, managers(cm))
    service = core.read_namespaced_service("chat", namespace)
    assert {m for m, _, _ in managers(service)} == ours
    pdb = client.PolicyV1Api(cluster.api_client()).read_namespaced_pod_disruption_budget("chat", namespace)
    assert {m for m, _, sub in managers(pdb) if sub != "status"} == ours
    events = [e for e in core.list_namespaced_event(namespace).items
              if e.involved_object.kind in (c.FINETUNEJOB_KIND, c.MODELDEPLOYMENT_KIND)]
    assert events and all({m for m, _, _ in managers(e)} == ours for e in events)


def test_creating_an_existing_job_returns_it_and_a_configmap_is_reapplied(
    cluster: DevCluster, namespace: str
) -> None:
    api = KubeApi(cluster.api_client())
    owner = kopf.Body({"apiVersion": "v1", "kind": "ConfigMap",  # any owner object will do
                       "metadata": core_owner(cluster, namespace)})
    cm: dict[str, Any] = {"metadata": {"name": "spec-x", "namespace": namespace}, "data": {"a": "1"}}
    kopf.adopt(cm, owner=owner)
    api.create_configmap(cm)
    api.create_configmap({**cm, "data": {"a": "2"}})
    got = cluster.core().read_namespaced_config_map("spec-x", namespace)
    assert got.data == {"a": "2"} and managers(got) == {(FIELD_MANAGER, "Apply", "")}

    name = "x-trainer"
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
        "spec": {"suspend": True, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "trainer", "image": "trainer:1", "command": ["true"]}]}}},
    }
    first = api.create_job(job)
    # A newer operator would build another template: the pod template of a Job is immutable,
    # so the existing run is returned as it is, never re-applied.
    changed = json.loads(json.dumps(job))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "trainer:2"
    again = api.create_job(changed)
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:1"
    api.patch_job(namespace, name, {"activeDeadlineSeconds": 600})
    patched = client.BatchV1Api(cluster.api_client()).read_namespaced_job(name, namespace)
    assert patched.spec.active_deadline_seconds == 600
    assert {m for m, _, sub in managers(patched) if sub != "status"} == {FIELD_MANAGER}


def core_owner(cluster: DevCluster, namespace: str) -> dict[str, Any]:
    owner = cluster.core().create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    return {"name": "owner", "namespace": namespace, "uid": owner.metadata.uid}


def test_metrics_and_probes_of_a_running_operator(
    cluster: DevCluster, namespace: str, operator: tuple[OperatorProcess, int, int]
) -> None:
    proc, metrics, probes = operator
    ftj = apply_ftj(cluster, namespace, {
        "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
    })
    ftj.wait_phase("Running", proc, timeout=90)
    cluster.wait_for(lambda: probe(probes, "/readyz")[0] == 200 or None, timeout=30, what="ready")
    assert probe(probes, "/readyz") == (200, "ok (leader)")
    assert probe(probes, "/healthz") == (200, "ok")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    # The leader renews its Lease every 2 s (an update): scrape once one has happened.
    renewed = ("rest_client_requests_total", (("code", "200"), ("verb", "update")))
    samples = cluster.wait_for(lambda: (got := scrape()).get(renewed) and got, timeout=30, what="a Lease renewal")

    def value(metric: str, **labels: str) -> float:
        found = [v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items()]
        assert found, f"{metric}{labels} not in /metrics: " + ", ".join(
            f"{n}{dict(ls)}={v}" for (n, ls), v in samples.items() if n == metric)
        return sum(found)

    assert value("controller_runtime_reconcile_total", controller="finetunejob", result="success") >= 1
    assert value("controller_runtime_reconcile_errors_total", controller="finetunejob") == 0
    assert value("controller_runtime_reconcile_time_seconds_count", controller="finetunejob") >= 1
    assert value("controller_runtime_reconcile_time_seconds_bucket", controller="modeldeployment", le="+Inf") >= 0
    assert value("controller_runtime_max_concurrent_reconciles", controller="finetunejob") == 8
    assert value("workqueue_depth", name="finetunejob") >= 0
    assert value("workqueue_adds_total", name="finetunejob") >= 1
    assert value("workqueue_queue_duration_seconds_count", name="finetunejob") >= 1
    assert value("workqueue_work_duration_seconds_count", name="finetunejob") >= 1
    assert value("workqueue_unfinished_work_seconds", name="finetunejob") >= 0
    assert value("workqueue_longest_running_processor_seconds", name="modeldeployment") >= 0
    assert value("workqueue_retries_total", name="finetunejob") == 0  # a leader abandons nothing
    assert value("rest_client_requests_total", verb="create", code="201") >= 1  # the Job, Events
    assert value("rest_client_requests_total", verb="apply") >= 1  # the spec ConfigMap
    assert value("rest_client_requests_total", verb="patch", code="200") >= 1  # status
    assert value("rest_client_requests_total", verb="update", code="200") >= 1  # the Lease
    assert value("leader_election_master_status", name="kubetune-operator") == 1
    assert len(ftj.jobs()) == 1
