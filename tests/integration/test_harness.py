"""The dev cluster itself: real apiserver validation, RBAC, scheduler, Job controller, GC,
kwok-simulated GPU nodes driven by pod annotations, and the local pod runner."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_dev import (
    EXIT_CODE_ANNOTATION,
    GPU_NODES,
    GPU_RESOURCE,
    LOCAL_NODE,
    LOCAL_RUNNER_LABEL,
    MESSAGE_ANNOTATION,
    OUTCOME_ANNOTATION,
    ComponentError,
    DevCluster,
    ToolchainError,
    local_pod_toleration,
    start_dev_cluster,
)
from kubetune_dev.control_plane import Ports, start_etcd
from kubetune_dev.tools import find_toolchain

pytestmark = pytest.mark.cluster

GROUP = "harness.kubetune.dev"


def _widget_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10}}},
                        "status": {"type": "object", "properties": {
                            "phase": {"type": "string"}}},
                    },
                }},
            }],
        },
    }


@pytest.fixture(scope="module")
def widgets(cluster: DevCluster) -> client.CustomObjectsApi:
    api = cluster.api_client()
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(_widget_crd())
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(f"widgets.{GROUP}")
        return any(c.type == "Established" and c.status == "True"
                   for c in crd.status.conditions or [])

    cluster.wait_for(established, what="the Widget CRD to be Established")
    return client.CustomObjectsApi(api)


def _widget(name: str, size: object) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": size}}


def test_crd_with_status_subresource_is_accepted(
        widgets: client.CustomObjectsApi, namespace: str) -> None:
    widgets.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", _widget("a", 3))
    widgets.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, "widgets", "a", {"status": {"phase": "Ready"}})
    # The main resource ignores status changes; only the subresource writes them.
    widgets.patch_namespaced_custom_object(
        GROUP, "v1", namespace, "widgets", "a", {"status": {"phase": "Ignored"}})
    widget = widgets.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "a")
    assert widget["status"] == {"phase": "Ready"}


def test_schema_violation_is_rejected_with_field_path(
        widgets: client.CustomObjectsApi, namespace: str) -> None:
    with pytest.raises(ApiException) as raised:
        widgets.create_namespaced_custom_object(
            GROUP, "v1", namespace, "widgets", _widget("too-big", 64))
    assert raised.value.status == 422
    assert "spec.size" in raised.value.body


def _job(name: str, *, gpus: int = 0, annotations: dict[str, str] | None = None,
         backoff_limit: int = 0) -> dict[str, Any]:
    resources = {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "train", "image": "kubetune/trainer:dev",
                                    "resources": resources}],
                },
            },
        },
    }


def _job_condition(cluster: DevCluster, namespace: str, name: str, kind: str) -> bool:
    job = client.BatchV1Api(cluster.api_client()).read_namespaced_job(name, namespace)
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


def _only_pod(cluster: DevCluster, namespace: str, job: str) -> Any:
    pods = cluster.wait_for(lambda: cluster.job_pods(namespace, job), what=f"a pod of {job}")
    assert len(pods) == 1
    return pods[0]


def test_gpu_job_runs_on_a_gpu_node_and_succeeds_with_message(
        cluster: DevCluster, namespace: str) -> None:
    client.BatchV1Api(cluster.api_client()).create_namespaced_job(
        namespace, _job("gpu-train", gpus=1))
    pod_name = _only_pod(cluster, namespace, "gpu-train").metadata.name
    pod = cluster.wait_for_pod_phase(namespace, pod_name, "Running")
    assert pod.spec.node_name in GPU_NODES

    # The test decides the outcome after the pod started.
    result = json.dumps({"phase": "Succeeded", "metrics": {"eval_loss": 0.42}})
    cluster.core().patch_namespaced_pod(pod_name, namespace, {"metadata": {"annotations": {
        OUTCOME_ANNOTATION: "succeed", MESSAGE_ANNOTATION: result}}})

    cluster.wait_for(lambda: _job_condition(cluster, namespace, "gpu-train", "Complete"),
                     timeout=60, what="Job gpu-train to complete")
    pod = cluster.core().read_namespaced_pod(pod_name, namespace)
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded"
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert json.loads(terminated.message) == json.loads(result)


@pytest.mark.parametrize(("outcome", "exit_code", "reason"), [
    ("oomkilled", None, "OOMKilled"),
    ("fail", "3", "Error"),
])
def test_job_pod_failure_is_reported(cluster: DevCluster, namespace: str, outcome: str,
                                     exit_code: str | None, reason: str) -> None:
    annotations = {OUTCOME_ANNOTATION: outcome}
    if exit_code:
        annotations[EXIT_CODE_ANNOTATION] = exit_code
    client.BatchV1Api(cluster.api_client()).create_namespaced_job(
        namespace, _job("doomed", gpus=2, annotations=annotations))
    cluster.wait_for(lambda: _job_condition(cluster, namespace, "doomed", "Failed"),
                     timeout=60, what="Job doomed to fail")
    pod = _only_pod(cluster, namespace, "doomed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert terminated.reason == reason
    assert terminated.exit_code == int(exit_code or 137)


def test_deleting_a_job_garbage_collects_its_pods(cluster: DevCluster, namespace: str) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, _job("forever", gpus=1))
    pod_name = _only_pod(cluster, namespace, "forever").metadata.name
    cluster.wait_for_pod_phase(namespace, pod_name, "Running")

    batch.delete_namespaced_job("forever", namespace, propagation_policy="Background")
    cluster.wait_for(lambda: not cluster.job_pods(namespace, "forever"), timeout=60,
                     what="the garbage collector to delete the Job's pods")


def test_service_account_without_rbac_is_forbidden(cluster: DevCluster, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    as_nobody = client.CoreV1Api(cluster.api_client_for_token(token))
    with pytest.raises(ApiException) as raised:
        as_nobody.list_namespaced_pod(namespace)
    assert raised.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in raised.value.body


def test_unschedulable_gpu_request_stays_pending(cluster: DevCluster, namespace: str) -> None:
    pod = {"metadata": {"name": "greedy"}, "spec": {"containers": [{
        "name": "train", "image": "kubetune/trainer:dev",
        "resources": {"limits": {GPU_RESOURCE: "64"}}}]}}
    cluster.core().create_namespaced_pod(namespace, pod)

    def unschedulable(pod: Any) -> bool:
        return any(c.type == "PodScheduled" and c.status == "False"
                   and c.reason == "Unschedulable" for c in pod.status.conditions or [])

    pod = cluster.wait_for_pod(namespace, "greedy", unschedulable, timeout=30,
                               what="the scheduler to mark greedy Unschedulable")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    assert "Insufficient nvidia.com/gpu" in next(
        c.message for c in pod.status.conditions if c.type == "PodScheduled")


def _local_pod(name: str, script: str, **extra: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "ignored", "command": ["python", "-c", script],
                 **extra}
    return {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never",
        "nodeSelector": {LOCAL_RUNNER_LABEL: "true"},
        "tolerations": [local_pod_toleration()],
        "automountServiceAccountToken": False,
        "containers": [container],
    }}


WRITE_RESULT = """
import json, os, pathlib
greeting = pathlib.Path("/etc/kubetune/greeting").read_text()
pathlib.Path("/data/out.txt").write_text(f"{greeting} from {os.environ['POD_NAME']}")
pathlib.Path("/dev/termination-log").write_text(json.dumps({"phase": "Succeeded"}))
print("wrote", os.getcwd())
"""


def test_local_runner_runs_a_real_command_with_volumes(
        cluster: DevCluster, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"greeting": "hello"}})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "artifacts"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    pod = _local_pod(
        "writer", WRITE_RESULT, workingDir="/tmp",
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        volumeMounts=[{"name": "artifacts", "mountPath": "/data"},
                      {"name": "settings", "mountPath": "/etc/kubetune", "readOnly": True}])
    pod["spec"]["volumes"] = [
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "artifacts"}},
        {"name": "settings", "configMap": {"name": "settings"}}]
    core.create_namespaced_pod(namespace, pod)

    done = cluster.wait_for_pod_phase(namespace, "writer", "Succeeded", "Failed", timeout=60)
    logs = cluster.local_pod_logs(namespace, "writer")
    assert done.status.phase == "Succeeded", logs
    assert done.spec.node_name == LOCAL_NODE
    terminated = done.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, json.loads(terminated.message)) == (0, {"phase": "Succeeded"})
    assert logs.strip() == "wrote /tmp"
    written = cluster.state_dir / "pvc" / namespace / "artifacts" / "out.txt"
    assert written.read_text() == "hello from writer"
    assert not os.path.exists("/data/out.txt")  # the bind mount was private to the pod


def test_local_runner_reports_failures_from_logs(cluster: DevCluster, namespace: str) -> None:
    pod = _local_pod("crasher", "import sys; print('boom: bad config'); sys.exit(3)",
                     terminationMessagePolicy="FallbackToLogsOnError")
    cluster.core().create_namespaced_pod(namespace, pod)
    done = cluster.wait_for_pod_phase(namespace, "crasher", "Succeeded", "Failed", timeout=60)
    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Failed"
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert terminated.message.strip() == "boom: bad config"


RETRY_ONCE = """
import pathlib, sys
attempts = pathlib.Path("/scratch/attempts")
done = int(attempts.read_text()) if attempts.exists() else 0
attempts.write_text(str(done + 1))
sys.exit(0 if done else 1)
"""


def test_local_runner_restarts_on_failure(cluster: DevCluster, namespace: str) -> None:
    pod = _local_pod("flaky", RETRY_ONCE, volumeMounts=[{"name": "scratch",
                                                         "mountPath": "/scratch"}])
    pod["spec"]["restartPolicy"] = "OnFailure"
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    cluster.core().create_namespaced_pod(namespace, pod)
    done = cluster.wait_for_pod_phase(namespace, "flaky", "Succeeded", "Failed", timeout=60)
    status = done.status.container_statuses[0]
    assert done.status.phase == "Succeeded"
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1


def test_local_runner_kills_deleted_pods(cluster: DevCluster, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_pod(namespace, _local_pod("sleeper", "import time; time.sleep(600)"))
    running = cluster.wait_for_pod_phase(namespace, "sleeper", "Running", timeout=60)
    pid = int(running.status.container_statuses[0].container_id.removeprefix("local://"))
    assert os.path.exists(f"/proc/{pid}")

    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    cluster.wait_for(gone, timeout=30, what="the deleted pod to disappear")
    assert not os.path.exists(f"/proc/{pid}")


def test_missing_binaries_fail_with_the_install_hint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ToolchainError, match=r"run hack/install-tools\.sh"):
        start_dev_cluster(tmp_path / "state")


def test_port_clash_names_the_component_and_the_fix(tmp_path: Path) -> None:
    tools = find_toolchain()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = dataclasses.replace(Ports.pick(), etcd_client=taken.getsockname()[1])
        with pytest.raises(ComponentError) as raised:
            start_etcd(tools, tmp_path, ports)
    message = str(raised.value)
    assert "etcd exited" in message
    assert "port is taken" in message
