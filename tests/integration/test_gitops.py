"""GitOps on the real control plane: every example survives `kubectl apply --server-side` twice
without a change and `kubectl diff --server-side` stays empty after the operator reconciled it;
statuses the running operator writes read as expected by kstatus (sigs.k8s.io/cli-utils, what
Flux and kpt run) and by the Argo CD health checks in deploy/argocd (under gopher-lua, Argo CD's
interpreter), through kubetune-check. tests/unit/test_gitops_health.py covers the phases a
serving pod's agent must report; tests/e2e/test_gitops_serving.py judges a deployment that real
Ollama pods serve."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import Ftj, apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.tools import REPO_ROOT
from tests.integration.test_finetunejob_controller import gpu_spec, result_message
from tests.kubetune_check import FINETUNEJOB_HEALTH, MODELDEPLOYMENT_HEALTH, argo_health, kstatus

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
EXAMPLES_NAMESPACE = "ml"  # the namespace most examples name
STAND_IN = REPO_ROOT / "tests" / "integration" / "stand_in_trainer.py"
KUBECTL_MANAGER = "kubectl"  # kubectl apply --server-side's default field manager


def _kubectl(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with its exit status kept (diff exits 1 when it finds a difference)."""
    return subprocess.run([str(cluster.tools.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=60)


def _example_object(path: Path) -> tuple[str, str]:
    doc = yaml.safe_load(path.read_text())
    return doc["kind"], doc["metadata"]["name"]


def _live(cluster: DevCluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _apply(cluster: DevCluster, path: Path) -> str:
    return cluster.kubectl("apply", "--server-side", "-n", EXAMPLES_NAMESPACE, "-f", str(path)).stdout


def _diff(cluster: DevCluster, path: Path) -> subprocess.CompletedProcess[str]:
    return _kubectl(cluster, "diff", "--server-side", "-n", EXAMPLES_NAMESPACE, "-f", str(path))


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> DevCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def examples_namespace(crds: DevCluster) -> Iterator[str]:
    name = crds.create_namespace(EXAMPLES_NAMESPACE)
    yield name
    crds.core().delete_namespace(name)


@pytest.fixture(scope="module")
def operator(crds: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", {
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_SERVING_RESYNC": "1",
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
    })
    proc.start()
    yield proc
    proc.stop()


def test_examples_are_found() -> None:
    kinds = {_example_object(p)[0] for p in EXAMPLES}
    assert kinds == {c.FINETUNEJOB_KIND, c.MODELDEPLOYMENT_KIND} and len(EXAMPLES) >= 4


# Runs before the operator fixture starts (module fixtures start on first use, tests run in file
# order): nothing but the two applies can change the objects, so resourceVersion must stay.
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_second_server_side_apply_changes_nothing(cluster: DevCluster, examples_namespace: str, path: Path) -> None:
    kind, name = _example_object(path)
    _apply(cluster, path)
    first = _live(cluster, kind, name, examples_namespace)
    _apply(cluster, path)
    second = _live(cluster, kind, name, examples_namespace)
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["generation"] == first["metadata"]["generation"] == 1
    diff = _diff(cluster, path)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_diff_stays_empty_after_the_operator_reconciled(
    cluster: DevCluster, examples_namespace: str, operator: OperatorProcess, path: Path
) -> None:
    kind, name = _example_object(path)
    _apply(cluster, path)

    def reconciled() -> dict[str, Any] | None:
        operator.check_alive()
        obj = _live(cluster, kind, name, examples_namespace)
        status = obj.get("status") or {}
        return obj if status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("phase") else None

    before = cluster.wait_for(reconciled, timeout=90, what=f"{kind} {name} reconciled")
    diff = _diff(cluster, path)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
    _apply(cluster, path)
    after = _live(cluster, kind, name, examples_namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"], json.dumps(after, indent=1)
    # Only the applier owns spec fields: the operator writes status (and metadata), never spec,
    # so a GitOps tool's next apply never conflicts with it.
    for entry in after["metadata"]["managedFields"]:
        if entry["manager"] != KUBECTL_MANAGER:
            assert "f:spec" not in entry.get("fieldsV1", {}), entry


@pytest.fixture
def ns(cluster: DevCluster, namespace: str) -> str:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets")
    return namespace


def _judge(ftj: Ftj, want_kstatus: str, want_health: str) -> dict[str, Any]:
    obj = ftj.get()
    got = (kstatus(obj)["status"], argo_health(FINETUNEJOB_HEALTH, obj)["status"])
    assert got == (want_kstatus, want_health), json.dumps(obj.get("status"), indent=1)
    return obj


def test_finetunejob_phases_read_as_kstatus_and_argo_cd_expect(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    stuck = apply_ftj(cluster, ns, gpu_spec(resources={"gpus": 16}))
    stuck.wait_status(lambda s: s.get("reason") == "Unschedulable", "Unschedulable", operator=operator)
    _judge(stuck, "InProgress", "Progressing")

    ok = apply_ftj(cluster, ns, gpu_spec())
    pod = ok.running_pod()
    ok.wait_phase("Running", operator)
    _judge(ok, "InProgress", "Progressing")
    ok.end_pod(pod, "succeed", result_message())
    ok.wait_phase("Succeeded", operator)
    _judge(ok, "Current", "Healthy")

    oom = apply_ftj(cluster, ns, gpu_spec(method="lora", backoffLimit=0))
    oom.end_pod(oom.running_pod(), "oomkilled")
    oom.wait_phase("Failed", operator)
    assert kstatus(_judge(oom, "Failed", "Degraded"))["message"] == oom.status()["message"]

    paused = apply_ftj(cluster, ns, gpu_spec())
    paused.running_pod()
    paused.wait_phase("Running", operator)
    paused.patch_spec({"suspend": True})
    paused.wait_phase("Suspended", operator)
    _judge(paused, "InProgress", "Suspended")


def test_an_unobserved_generation_is_in_progress_until_the_operator_sees_it(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec())
    pod = ftj.running_pod()
    ftj.wait_phase("Running", operator)
    ftj.end_pod(pod, "succeed", result_message())
    ftj.wait_phase("Succeeded", operator)
    _judge(ftj, "Current", "Healthy")
    operator.kill()  # a spec edit while no operator runs stays unobserved
    try:
        ftj.patch_spec({"activeDeadlineSeconds": 7200})
        obj = _judge(ftj, "InProgress", "Progressing")
        assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"] + 1
    finally:
        operator.start()
    ftj.wait_status(lambda s: s.get("observedGeneration") == 2, "generation 2 observed", operator=operator)
    _judge(ftj, "Current", "Healthy")


def _modeldeployment(cluster: DevCluster, namespace: str, name: str, job: str) -> dict[str, Any]:
    manifest = {"apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND, "metadata": {"name": name},
                "spec": {"versions": [{"name": "v1", "fineTuneJob": job}], "replicas": 1}}
    api = client.CustomObjectsApi(cluster.api_client())
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, manifest)

    def written() -> dict[str, Any] | None:
        obj: dict[str, Any] = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace,
                                                               c.MODELDEPLOYMENT_PLURAL, name)
        status = obj.get("status") or {}
        return obj if status.get("observedGeneration") == obj["metadata"]["generation"] else None

    return cluster.wait_for(written, timeout=60, what=f"ModelDeployment {name} status")  # type: ignore[no-any-return]


def test_modeldeployment_waiting_for_a_job_is_in_progress_and_for_a_failed_one_is_failed(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    running = apply_ftj(cluster, ns, gpu_spec())
    running.wait_phase("Running", operator)
    failed = apply_ftj(cluster, ns, gpu_spec(method="lora", backoffLimit=0))
    failed.end_pod(failed.running_pod(), "oomkilled")
    failed.wait_phase("Failed", operator)

    waiting = _modeldeployment(cluster, ns, "waiting", running.name)
    assert waiting["status"]["phase"] == "Pending"
    assert kstatus(waiting)["status"] == "InProgress"
    assert argo_health(MODELDEPLOYMENT_HEALTH, waiting)["status"] == "Progressing"

    stalled = _modeldeployment(cluster, ns, "stalled", failed.name)
    assert stalled["status"]["phase"] == "Pending"
    assert kstatus(stalled)["status"] == "Failed"
    health = argo_health(MODELDEPLOYMENT_HEALTH, stalled)
    assert health["status"] == "Degraded" and failed.name in health["message"]
