"""A whole FineTuneJob on the real control plane: the operator creates the Job, the local pod
runner executes the real trainer entrypoint (`python -m kubetune_trainer run`), which prepares
the ConfigMap dataset, trains a tiny model, evaluates it, exports GGUF, and the result lands in
the FineTuneJob's status with sha256-bearing artifacts that match the files on the volume."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune_dev import LOCAL_NODE, DevCluster, local_pod_toleration
from kubetune_dev.finetunejobs import apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"


@pytest.fixture(scope="module")
def real_operator(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    env = {
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, "-m", "kubetune_trainer"]),
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_SCRAPE_PROGRESS": "true",  # the local runner's pods answer on 127.0.0.1
    }
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()


def test_finetunejob_trains_evaluates_and_exports_through_the_operator(
    cluster: DevCluster, real_operator: OperatorProcess, namespace: str
) -> None:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC)
    cluster.core().create_namespaced_config_map(
        namespace, {"metadata": {"name": "support-data"}, "data": {"train.jsonl": DATA.read_text()}}
    )
    spec: dict[str, Any] = {
        "baseModel": {"uri": "builtin://tiny-llama"},
        "method": "lora",
        "dataset": {"source": {"configMap": {"name": "support-data", "key": "train.jsonl"}}, "format": "chat"},
        "dataPolicy": {"dedup": "exact"},
        "lora": {"r": 8, "alpha": 16},
        "training": {"maxSteps": 30, "learningRate": 3e-3, "batchSize": 8, "gradientAccumulationSteps": 1,
                     "maxLength": 128, "evalSteps": 10, "gradientCheckpointing": False},
        # A 13M-parameter random model trained for 30 steps: q4_k_m agrees with it on ~0.75 of
        # the reference tokens. The 0.9 default is meant for real models; this test enforces
        # the threshold at a bar a tiny model can meet.
        "evaluation": {"metrics": ["exact_match", "rouge_l"], "maxNewTokens": 8, "maxExamples": 12,
                       "gate": {"minQuantizedAgreement": 0.5}},
        "export": {"gguf": ["f16", "q4_k_m"]},
        "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE},
                      "tolerations": [local_pod_toleration()]},
        "backoffLimit": 0,
    }
    ftj = apply_ftj(cluster, namespace, spec, name="support-router")
    seen_steps: list[int] = []

    def finished(status: dict[str, Any]) -> bool:
        step = (status.get("progress") or {}).get("step")
        if status.get("phase") == "Running" and step:
            seen_steps.append(step)
        return status.get("phase") in ("Succeeded", "Failed")

    status = ftj.wait_status(finished, "finished", timeout=900, operator=real_operator)
    pod = ftj.pods()[0]
    logs = cluster.local_pod_logs(namespace, pod.metadata.name)
    assert status["phase"] == "Succeeded", f"{status.get('reason')}: {status.get('message')}\n{logs[-3000:]}"
    assert pod.spec.node_name == LOCAL_NODE

    assert status["data"]["format"] == "chat" and status["data"]["train"] > 0 and status["data"]["test"] > 0
    assert status["evaluation"]["fineTuned"]["exactMatch"] is not None
    assert status["training"]["steps"] == 30 and status["training"]["finalTrainLoss"] > 0
    assert status["gate"]["passed"] in (True, False) and status["diagnosis"]["verdict"]
    assert seen_steps, "no live progress reached status while the trainer ran"

    volume = cluster.state_dir / "pvc" / namespace / c.DEFAULT_ARTIFACTS_PVC
    ggufs = {a["quantization"]: a for a in status["artifacts"] if a["kind"] == "gguf"}
    assert set(ggufs) == {"f16", "q4_k_m"}
    for artifact in ggufs.values():
        prefix = f"pvc://{c.DEFAULT_ARTIFACTS_PVC}/"
        assert artifact["uri"].startswith(prefix)
        local = volume / artifact["uri"][len(prefix):]
        data = local.read_bytes()
        assert len(data) == artifact["sizeBytes"]
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
    cluster.wait_for(lambda: {"Training", "Succeeded"} <= {e.reason for e in ftj.events()}, what="events")


def test_data_policy_failure_fails_at_once_without_retries(
    cluster: DevCluster, real_operator: OperatorProcess, namespace: str
) -> None:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC)
    leaked = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"Ticket {i}: my card was charged twice"},
                                 {"role": "assistant", "content": "billing"}]})
        for i in range(20)
    ) + "\n" + json.dumps({"messages": [{"role": "user", "content": "use key sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"},
                                         {"role": "assistant", "content": "ok"}]}) + "\n"
    cluster.core().create_namespaced_config_map(
        namespace, {"metadata": {"name": "leaky"}, "data": {"train.jsonl": leaked}}
    )
    spec: dict[str, Any] = {
        "baseModel": {"uri": "builtin://tiny-llama"},
        "dataset": {"source": {"configMap": {"name": "leaky", "key": "train.jsonl"}}},
        "dataPolicy": {"action": "fail"},
        "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE},
                      "tolerations": [local_pod_toleration()]},
        "backoffLimit": 2,
    }
    ftj = apply_ftj(cluster, namespace, spec, name="leaky-data")
    status = ftj.wait_phase("Failed", real_operator, timeout=300)
    assert status["reason"] == "DataPolicyFailed", status
    assert "train.jsonl:21" in status["message"]
    assert "AbCdEfGhIjKlMnOpQrStUvWxYz" not in json.dumps(status)  # the secret is never echoed
    assert len(ftj.pods()) == 1  # podFailurePolicy: no retry can fix the data
