"""Least privilege, proven: the chart installed with helm on the dev control plane, then the real
operator run with nothing but a bound token of the chart's ServiceAccount (TokenRequest API)
through a whole flow — a FineTuneJob that references a Secret and claims trains a tiny model
(the real trainer, on the local pod runner) and Succeeds; a ModelDeployment serves it with real
Ollama and a serve-agent (Ready; the chart's PodMonitor selects its pod and port), gets a
PodDisruptionBudget at two replicas and loses it at one, and is deleted (the served job's
finalizer is removed). No request of the operator
is refused: its log holds no 403 / Forbidden. What the identity may do is compared with
docs/install.md by tests/integration/test_chart.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import apply_ftj, ensure_pvcs
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import DATA, Md, operator_env, tiny_version_spec
from tests.integration.chart import (
    CHART,
    RELEASE_NAMESPACE,
    helm,
    helm_env,
    install_chart,
    service_account_kubeconfig,
    uninstall_chart,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

IDENTITY = "least-privilege-0"
LEASE = "kubetune-operator"
REFUSED = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
SERVED_FINALIZER = f"{c.GROUP}/served-by-modeldeployment"


@pytest.fixture(scope="module")
def operator_as_service_account(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The chart installed, and the operator running with the chart's ServiceAccount token."""
    home = tmp_path_factory.mktemp("least-privilege")
    env = helm_env(home / "helm")
    install_chart(cluster, env)
    kubeconfig = service_account_kubeconfig(cluster, home / "operator.kubeconfig")
    proc = OperatorProcess(kubeconfig, home / "operator.log", {
        **operator_env(),
        # As in the chart's pod: the Lease in the release namespace, this replica's identity.
        "POD_NAMESPACE": RELEASE_NAMESPACE,
        "POD_NAME": IDENTITY,
        "KUBETUNE_LEADER_ELECTION": "true",
    })
    proc.start()
    yield proc
    proc.stop()
    uninstall_chart(cluster, env)


def _pods_the_pod_monitor_scrapes(cluster: DevCluster, ns: str, helm_home: Path) -> list[str]:
    """Names of the pods in `ns` that the chart's rendered PodMonitor selects and that have its
    endpoint's named port."""
    rendered = helm(helm_env(helm_home), "template", "kubetune", str(CHART), "--kube-version", "1.32.13",
                    "--set", "monitoring.podMonitor.enabled=true", "--show-only", "templates/podmonitor.yaml").stdout
    monitor = yaml.safe_load(rendered)
    selector = monitor["spec"]["selector"]
    terms = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    terms += [e["key"] for e in selector.get("matchExpressions", []) if e["operator"] == "Exists"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    pods = cluster.core().list_namespaced_pod(ns, label_selector=",".join(terms)).items
    return [p.metadata.name for p in pods
            if p.metadata.deletion_timestamp is None
            and any(cp.name == port for ct in p.spec.containers for cp in ct.ports or [])]


def _finalizers(api: client.CustomObjectsApi, ns: str, name: str) -> list[str]:
    obj: dict[str, Any] = api.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, name)
    return list(obj["metadata"].get("finalizers") or [])


def test_a_finetunejob_to_a_served_modeldeployment_under_the_charts_service_account(
        cluster: DevCluster, ns: str, operator_as_service_account: OperatorProcess, tmp_path: Path) -> None:
    operator = operator_as_service_account
    core = cluster.core()
    ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC)  # referenced claims are checked (get) before the Job
    core.create_namespaced_config_map(ns, {"metadata": {"name": "support-data"},
                                           "data": {"train.jsonl": DATA.read_text()}})
    # A referenced Secret: the operator reads its key names (secrets get) before the Job.
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"token": "unused"}})
    spec = tiny_version_spec(seed=1)
    spec["baseModel"]["tokenSecretRef"] = {"name": "hf-token", "key": "token"}
    job = apply_ftj(cluster, ns, spec, name="least-privilege")
    status = job.wait_status(lambda s: s.get("phase") in ("Succeeded", "Failed"), "finished",
                             timeout=1200, operator=operator)
    assert status["phase"] == "Succeeded", f"{status.get('reason')}: {status.get('message')}"
    assert any(a["kind"] == "gguf" and a.get("quantization") == "f16" for a in status.get("artifacts") or []), status

    md = Md.create(cluster, ns, "chat", {
        "versions": [{"name": "v1", "fineTuneJob": job.name, "quantization": "f16"}], "replicas": 1})
    md.wait_serving("v1", operator, timeout=600)
    api = client.CustomObjectsApi(cluster.api_client())
    assert SERVED_FINALIZER in _finalizers(api, ns, job.name)
    # The chart's PodMonitor (monitoring.podMonitor) selects these serving pods and their port.
    assert _pods_the_pod_monitor_scrapes(cluster, ns, tmp_path) == [p.metadata.name for p in md.pods()]

    # Two replicas get a PodDisruptionBudget (created by server-side apply), one loses it.
    md.patch_spec({"replicas": 2})
    policy = client.PolicyV1Api(cluster.api_client())
    budget = cluster.wait_for(lambda: next(iter(policy.list_namespaced_pod_disruption_budget(ns).items), None),
                              timeout=120, what="a PodDisruptionBudget at two replicas")
    assert budget.spec.max_unavailable == 1
    md.patch_spec({"replicas": 1})
    cluster.wait_for(lambda: not policy.list_namespaced_pod_disruption_budget(ns).items,
                     timeout=120, what="the PodDisruptionBudget deleted at one replica")
    api.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELDEPLOYMENT_PLURAL, "chat")
    cluster.wait_for(lambda: SERVED_FINALIZER not in _finalizers(api, ns, job.name),
                     timeout=120, what="the served job's finalizer removed")

    # The identity held the Lease in the release namespace (get, create, update on leases).
    lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(LEASE, RELEASE_NAMESPACE)
    assert lease.spec.holder_identity == IDENTITY
    operator.check_alive()
    log = operator.log_path.read_text(errors="replace")
    refused = [line for line in log.splitlines() if REFUSED.search(line)]
    assert not refused, "requests the chart's RBAC refused:\n" + "\n".join(refused[:20])
