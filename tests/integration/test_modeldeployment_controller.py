"""The ModelDeployment controller against the real apiserver, without serving pods: admission of
digest-pinned versions, children by server-side apply, the PodDisruptionBudget following
`replicas`, and status while no pod has reported. (Serving with real Ollama: tests/e2e.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.operator.builders.serving import configmap_name
from kubetune.operator.kube import FIELD_MANAGER
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import install_crds
from kubetune_dev.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster]

SHA = "ab" * 32


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log",
                           {"KUBETUNE_OPERATOR_METRICS_PORT": "0", "KUBETUNE_SERVING_RESYNC": "1"})
    proc.start()
    yield proc
    proc.stop()


def _create(cluster: DevCluster, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND, "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(  # type: ignore[no-any-return]
        c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, body)


def test_a_uri_version_without_sha256_is_rejected_by_the_apiserver(cluster: DevCluster, namespace: str) -> None:
    install_crds(cluster)
    with pytest.raises(client.ApiException) as err:
        _create(cluster, namespace, "bare", {"versions": [{"name": "v1", "uri": "https://models.example/v1.gguf"}]})
    assert err.value.status == 422
    assert "must be pinned by its sha256" in json.loads(err.value.body)["message"]


def test_children_are_applied_and_the_pdb_follows_replicas(
    cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    _create(cluster, namespace, "chat", {
        "versions": [{"name": "v1", "uri": "https://models.example/v1.gguf", "sha256": SHA}],
        "replicas": 2,
    })
    apps = client.AppsV1Api(cluster.api_client())
    policy = client.PolicyV1Api(cluster.api_client())
    core = cluster.core()
    dep = cluster.wait_for(lambda: next(iter(apps.list_namespaced_stateful_set(namespace).items), None),
                           timeout=60, what="StatefulSet")
    assert dep.metadata.name == "chat" and dep.spec.replicas == 2
    assert dep.spec.pod_management_policy == "Parallel" and dep.spec.service_name == "chat"
    assert [t.metadata.name for t in dep.spec.volume_claim_templates] == ["predictions"]
    mounts = {m.name: m.mount_path for m in dep.spec.template.spec.containers[1].volume_mounts}
    assert mounts["predictions"] == s.PREDICTIONS_DIR
    # The StatefulSet controller makes one prediction-log claim per pod, bound by the dev
    # cluster's provisioner: predictions and feedback outlive their pod.
    claims = cluster.wait_for(
        lambda: (lambda bound: bound if len(bound) >= 2 else None)(sorted(
            c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items
            if c.status.phase == "Bound")),
        timeout=60, what="the two prediction-log claims bound")
    assert claims == ["predictions-chat-0", "predictions-chat-1"]
    assert any(m.manager == FIELD_MANAGER and m.operation == "Apply" for m in dep.metadata.managed_fields)
    assert dep.metadata.owner_references[0].kind == c.MODELDEPLOYMENT_KIND
    pod = dep.spec.template.spec
    assert [x.name for x in pod.containers] == ["ollama", "kubetune"]
    assert pod.automount_service_account_token is False and pod.security_context.run_as_non_root
    assert dep.spec.template.spec.containers[0].image == c.DEFAULT_OLLAMA_IMAGE
    cm = core.read_namespaced_config_map(configmap_name("chat"), namespace)
    config = s.ServingConfig.model_validate_json(cm.data[s.SERVING_CONFIG_KEY])
    assert [(v.name, v.sha256) for v in config.versions] == [("v1", SHA)] and config.served is None
    ports = {p.name: p.port for p in core.read_namespaced_service("chat", namespace).spec.ports}
    assert ports == {"http": s.GATEWAY_PORT, "ollama": s.OLLAMA_PORT}  # the gateway first
    assert policy.read_namespaced_pod_disruption_budget("chat", namespace).spec.max_unavailable == 1

    api = client.CustomObjectsApi(cluster.api_client())
    api.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "chat",
                                       {"spec": {"replicas": 1}})
    cluster.wait_for(lambda: not policy.list_namespaced_pod_disruption_budget(namespace).items,
                     timeout=60, what="PDB removed at replicas 1")
    status = cluster.wait_for(
        lambda: (api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL,
                                                  "chat").get("status") or {}).get("phase") and
        api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "chat")["status"],
        timeout=60, what="status")
    assert status["phase"] == "Pending" and "servedVersion" not in status
    cond = {x["type"]: x["status"] for x in status["conditions"]}
    assert cond["Ready"] == "False" and cond["Reconciling"] == "True"


def test_a_legacy_serving_deployment_is_replaced_and_a_foreign_one_left_alone(
    cluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    """Serving pods were a Deployment before the StatefulSet: the operator deletes the one it
    owns, and never a Deployment of the same name that another owner (or nobody) holds."""
    apps = client.AppsV1Api(cluster.api_client())
    api = client.CustomObjectsApi(cluster.api_client())
    template = {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "theirs"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}}, "template": template}})
    _create(cluster, namespace, "theirs", {"versions": [{"name": "v1", "uri": "https://m/v1.gguf", "sha256": SHA}]})
    _create(cluster, namespace, "legacy", {"versions": [{"name": "v1", "uri": "https://m/v1.gguf", "sha256": SHA}]})
    md = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "legacy")
    cluster.wait_for(lambda: next((x for x in apps.list_namespaced_stateful_set(namespace).items
                                   if x.metadata.name == "theirs"), None), timeout=60, what="theirs' StatefulSet")
    owner = {"apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND, "name": "legacy",
             "uid": md["metadata"]["uid"], "controller": True}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "legacy", "ownerReferences": [owner]},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}}, "template": template}})
    operator.stop()
    operator.start()  # a new operator: the upgrade
    cluster.wait_for(lambda: "legacy" not in {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items},
                     timeout=60, what="the owned legacy Deployment deleted")
    assert "theirs" in {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}


def test_the_prediction_log_volume_cannot_change_under_its_claims(cluster: DevCluster, namespace: str) -> None:
    install_crds(cluster)
    _create(cluster, namespace, "fixed", {"versions": [{"name": "v1", "uri": "https://m/v1.gguf", "sha256": SHA}],
                                          "logging": {"content": "none"}})
    api = client.CustomObjectsApi(cluster.api_client())
    with pytest.raises(client.ApiException) as err:
        api.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "fixed",
                                           {"spec": {"logging": {"volumeSize": "10Gi"}}})
    assert err.value.status == 422
    assert "logging.volumeSize" in json.loads(err.value.body)["message"]
    api.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, "fixed",
                                       {"spec": {"logging": {"retentionDays": 7}}})  # the rest may change
