"""A distillation FineTuneJob on the real control plane: the teacher's API key goes from a
Secret, by reference, into the trainer pod the operator creates (the local pod runner executes
the real trainer), the teacher stand-in (tests/judge_server.py, on 127.0.0.1) sees it on every
request, the student trains on the teacher's labels, and status carries the teacher's usage and
the teacher-vs-student comparison, while the key is in no status field, Event, pod spec, log
line or file on the volume."""

from __future__ import annotations

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
from tests.judge_server import FakeJudgeServer, Reply

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"
KEY = "sk-teacher-cluster-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    env = {
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, "-m", "kubetune_trainer"]),
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
    }
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()


def test_a_distill_finetunejob_reaches_the_teacher_with_the_secret_and_never_shows_it(
    cluster: DevCluster, operator: OperatorProcess, namespace: str
) -> None:
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    labels = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in records}
    prompts = "".join(json.dumps({"messages": r["messages"][:1]}) + "\n" for r in records)
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC)
    core = cluster.core()
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "prompts"}, "data": {"prompts.jsonl": prompts}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "teacher"}, "stringData": {"api-key": KEY}}
    )

    def teacher(body: dict[str, Any]) -> Reply:
        return Reply(content=labels[body["messages"][-1]["content"]])

    with FakeJudgeServer(responder=teacher, api_key=KEY, model="oracle") as server:
        spec: dict[str, Any] = {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "method": "lora",
            "objective": "distill",
            "teacher": {
                "endpoint": server.url,
                "model": "oracle",
                "apiKeySecretRef": {"name": "teacher", "key": "api-key"},
                "maxTokens": 8,
            },
            "dataset": {"source": {"configMap": {"name": "prompts", "key": "prompts.jsonl"}},
                        "format": "chat"},
            "dataPolicy": {"dedup": "exact"},
            "training": {"maxSteps": 20, "learningRate": 3e-3, "batchSize": 8,
                         "gradientAccumulationSteps": 1, "maxLength": 64, "evalSteps": 10,
                         "gradientCheckpointing": False},
            "evaluation": {"metrics": ["exact_match", "rouge_l"], "maxNewTokens": 4,
                           "maxExamples": 12,
                           "gate": {"minExactMatch": 0.0, "minQuantizedAgreement": 0.0}},
            "export": {"gguf": ["f16"]},
            "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": LOCAL_NODE},
                          "tolerations": [local_pod_toleration()]},
            "backoffLimit": 0,
        }
        ftj = apply_ftj(cluster, namespace, spec, name="support-distill")
        status = ftj.wait_status(lambda s: s.get("phase") in ("Succeeded", "Failed"), "finished",
                                 timeout=900, operator=operator)
        pod = ftj.pods()[0]
        logs = cluster.local_pod_logs(namespace, pod.metadata.name)
        assert status["phase"] == "Succeeded", (
            f"{status.get('reason')}: {status.get('message')}\n{logs[-3000:]}"
        )
        # The Secret reached the pod's environment and the teacher's Authorization header.
        assert len(server.requests) == 240
        assert set(server.auth_headers) == {f"Bearer {KEY}"}

    teacher_usage = status["data"]["teacher"]
    assert teacher_usage["model"] == "oracle" and teacher_usage["answered"] == 240
    assert teacher_usage.get("failed", 0) == 0 and teacher_usage.get("rejected", 0) == 0
    comparison = status["evaluation"]["teacher"]
    assert comparison["teacherSize"] == "remote" and comparison["scores"]["exactMatch"] == 1.0
    assert comparison["studentSizeBytes"] > 0

    env = [e for e in pod.spec.containers[0].env if e.name == c.ENV_TEACHER_API_KEY]
    assert len(env) == 1 and env[0].value is None
    assert env[0].value_from.secret_key_ref.name == "teacher"
    everything = [json.dumps(ftj.get()), operator.log_tail(10_000_000), logs]
    everything += [str(e.message) for e in ftj.events()]
    everything.append(json.dumps(cluster.api_client().sanitize_for_serialization(pod)))
    volume = cluster.state_dir / "pvc" / namespace / c.DEFAULT_ARTIFACTS_PVC
    files = [p for p in volume.rglob("*") if p.is_file()]
    assert any("teacher" in p.parts for p in files)
    everything += [p.read_bytes().decode("utf-8", "replace") for p in files]
    assert not any(KEY in text for text in everything)
