"""The FineTuneJob controller against a real kube-apiserver, controller-manager and scheduler.

Trainer pods on kwok's simulated GPU nodes end as the test decides (annotations, see
kubetune_dev.simulation); pods on `kubetune-local` really run (local pod runner).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from kubetune.api import TrainerResult
from kubetune.api import constants as c
from kubetune.api.trainer_result import GateResult
from kubetune.operator.builders.names import spec_configmap_name, training_job_name
from kubetune_dev import (
    GPU_NODES,
    LOCAL_NODE,
    DevCluster,
    local_pod_toleration,
)
from kubetune_dev.finetunejobs import apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

STAND_IN = Path(__file__).with_name("stand_in_trainer.py")


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> DevCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def operator(
    crds: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {
        # kwok's pod IPs are loopback addresses nobody listens on: scrapes fail fast, harmlessly.
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
    }
    proc = OperatorProcess(
        crds.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env
    )
    proc.start()
    yield proc
    proc.stop()


def gpu_spec(**extra: Any) -> dict[str, Any]:
    return {
        "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
        **extra,
    }


@pytest.fixture
def ns(cluster: DevCluster, namespace: str) -> str:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets")
    return namespace


def result_message(**kw: Any) -> str:
    return TrainerResult(
        phase="Succeeded",
        gate=GateResult(passed=True, reason="judge 4.5 >= 4.0", judge_score=4.5),
        artifacts=[
            {
                "name": "model-q4_k_m.gguf",
                "kind": "gguf",
                "uri": "pvc://kubetune-artifacts/x/model-q4_k_m.gguf",
                "sizeBytes": 4_900_000_000,
                "sha256": "ab" * 32,
                "quantization": "q4_k_m",
            }
        ],
        manifest_uri="pvc://kubetune-artifacts/x/manifest.json",
        **kw,
    ).to_termination_message()


def test_success_lands_the_trainer_result_in_status(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec())
    pod = ftj.running_pod()
    assert pod.spec.node_name in GPU_NODES
    container = pod.spec.containers[0]
    assert container.resources.limits[c.GPU_RESOURCE] == "1"
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.security_context.run_as_non_root is True
    status = ftj.wait_phase("Running", operator)
    uid = ftj.get()["metadata"]["uid"]
    assert status["startTime"] and status["jobName"] == training_job_name(ftj.name, uid)
    # Children are adopted: owner references make them go with the FineTuneJob.
    job = ftj.jobs()[0]
    assert (
        job.metadata.owner_references[0].name == ftj.name
        and job.metadata.owner_references[0].controller
    )
    cm = ftj.core.read_namespaced_config_map(spec_configmap_name(ftj.name, uid), ns)
    assert json.loads(cm.data[c.SPEC_FILE_NAME])["lora"]["r"] == 16

    ftj.end_pod(pod, "succeed", result_message())
    status = ftj.wait_phase("Succeeded", operator)
    assert status["gate"] == {"passed": True, "reason": "judge 4.5 >= 4.0", "judgeScore": 4.5}
    assert status["artifacts"][0]["sha256"] == "ab" * 32
    assert status["completionTime"] and status["observedGeneration"] == 1
    conditions = {cd["type"]: cd for cd in status["conditions"]}
    assert (
        conditions["Complete"]["status"] == "True" and conditions["GatePassed"]["status"] == "True"
    )
    assert all(cd["observedGeneration"] == 1 for cd in status["conditions"])
    # Events are posted right after the status patch: wait for them rather than race them.
    cluster.wait_for(
        lambda: {"Training", "Succeeded", "GatePassed"} <= {e.reason for e in ftj.events()},
        what="Training, Succeeded and GatePassed events",
    )
    # kubectl shows the printer columns.
    out = cluster.kubectl("get", "ftj", ftj.name, "-n", ns).stdout
    assert "Succeeded" in out and "pvc://models/qwen2.5-7b" in out and "4.5" in out


def test_oom_killed_fails_with_advice(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec(method="lora", backoffLimit=0))
    ftj.end_pod(ftj.running_pod(), "oomkilled")
    status = ftj.wait_phase("Failed", operator)
    assert status["reason"] == "OOMKilled"
    assert "qlora" in status["message"] and "maxLength" in status["message"]
    cluster.wait_for(
        lambda: any(e.reason == "OOMKilled" and e.type == "Warning" for e in ftj.events()),
        what="an OOMKilled warning event",
    )


def test_unschedulable_gpu_request_stays_pending_with_the_reason(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec(resources={"gpus": 16}))
    status = ftj.wait_status(
        lambda s: s.get("reason") == "Unschedulable", "reason Unschedulable", operator=operator
    )
    assert status["phase"] == "Pending"
    assert "nvidia.com/gpu" in status["message"] and "resources.gpus" in status["message"]


def test_deleted_mid_run_takes_its_children_along(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec())
    ftj.running_pod()
    ftj.wait_phase("Running", operator)
    uid = ftj.get()["metadata"]["uid"]
    ftj.api.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, ftj.name)
    cluster.wait_for(
        lambda: not ftj.jobs() and not ftj.pods(), timeout=60, what="Job and pods garbage-collected"
    )
    with pytest.raises(ApiException) as info:
        ftj.core.read_namespaced_config_map(spec_configmap_name(ftj.name, uid), ns)
    assert info.value.status == 404


def test_operator_restart_mid_run_neither_duplicates_nor_loses(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec())
    pod = ftj.running_pod()
    before = ftj.wait_phase("Running", operator)
    operator.kill()
    operator.start()
    ftj.end_pod(pod, "succeed", result_message())
    after = ftj.wait_phase("Succeeded", operator)
    assert len(ftj.jobs()) == 1
    assert after["startTime"] == before["startTime"]
    cluster.wait_for(
        lambda: "Succeeded" in {e.reason for e in ftj.events()}, what="the Succeeded event"
    )
    assert [e.reason for e in ftj.events()].count("Training") == 1


def test_suspend_and_resume(cluster: DevCluster, operator: OperatorProcess, ns: str) -> None:
    ftj = apply_ftj(cluster, ns, gpu_spec())
    ftj.running_pod()
    ftj.wait_phase("Running", operator)
    ftj.patch_spec({"suspend": True})
    ftj.wait_phase("Suspended", operator)
    assert ftj.jobs()[0].spec.suspend is True
    cluster.wait_for(
        lambda: not [p for p in ftj.pods() if p.status.phase == "Running"],
        what="pods removed while suspended",
    )
    ftj.patch_spec({"suspend": False})
    ftj.wait_phase("Running", operator)
    assert len(ftj.jobs()) == 1


def test_spec_the_schema_cannot_catch_fails_with_invalid_spec(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    # float16 compute on CPU passes the CRD schema but not the API model's cross-field rules.
    ftj = apply_ftj(
        cluster, ns, gpu_spec(resources={"gpus": 0}, quantization={"computeDtype": "float16"})
    )
    status = ftj.wait_phase("Failed", operator)
    assert status["reason"] == "InvalidSpec" and "computeDtype" in status["message"]
    assert not ftj.jobs()


def test_trainer_pod_runs_on_the_local_runner(
    cluster: DevCluster, operator: OperatorProcess, ns: str
) -> None:
    spec = gpu_spec(
        resources={
            "gpus": 0,
            "nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE},
            "tolerations": [local_pod_toleration()],
        }
    )
    ftj = apply_ftj(cluster, ns, spec)
    status = ftj.wait_phase("Succeeded", operator, timeout=120)
    pod = ftj.pods()[0]
    assert pod.spec.node_name == LOCAL_NODE
    artifact = status["artifacts"][0]
    assert artifact["uri"] == f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/{ns}/{ftj.name}/model-f16.gguf"
    local = (
        cluster.state_dir / "pvc" / ns / c.DEFAULT_ARTIFACTS_PVC / ns / ftj.name / "model-f16.gguf"
    )
    assert local.is_file() and len(local.read_bytes()) == artifact["sizeBytes"]
    assert "stand-in trainer wrote" in cluster.local_pod_logs(ns, pod.metadata.name)
