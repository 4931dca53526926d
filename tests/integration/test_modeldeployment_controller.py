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
from kubetune.devcluster import DevCluster
from kubetune.operator.builders.serving import configmap_name
from kubetune.operator.kube import FIELD_MANAGER
from tests.integration.finetunejobs import install_crds
from tests.integration.operator_process import OperatorProcess

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
    dep = cluster.wait_for(lambda: next(iter(apps.list_namespaced_deployment(namespace).items), None),
                           timeout=60, what="Deployment")
    assert dep.metadata.name == "chat" and dep.spec.replicas == 2
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
