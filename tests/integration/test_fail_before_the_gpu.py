"""Fail before the GPU is spent, on a real control plane: the apiserver rejects each spec rule
with the same words as pydantic; the operator fails a FineTuneJob whose Secret or key is missing
without creating its Job; `kubetune validate --kubeconfig` finds the same missing Secret."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import constants as c
from kubetune.cli import main
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from tests.spec_rules import MINIMAL, RULES

pytestmark = pytest.mark.cluster

STAND_IN = Path(__file__).with_name("stand_in_trainer.py")
JUDGE_WITH_KEY = {
    "endpoint": "https://judge.example/v1",
    "model": "judge-model",
    "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
}


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> DevCluster:
    install_crds(cluster)
    return cluster


@pytest.fixture(scope="module")
def operator(crds: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    env = {
        "KUBETUNE_OPERATOR_METRICS_PORT": "0",
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
    }
    proc = OperatorProcess(crds.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()


def _create(cluster: DevCluster, namespace: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": f"x-{uuid.uuid4().hex[:6]}"}, "spec": spec}
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)


@pytest.mark.parametrize(("patch", "loc", "message", "fix"), RULES, ids=[r[2].split(":")[0] for r in RULES])
def test_the_apiserver_rejects_each_rule_with_the_same_words(
    crds: DevCluster, namespace: str, patch: dict[str, Any], loc: str, message: str, fix: dict[str, Any]
) -> None:
    with pytest.raises(ApiException) as info:
        _create(crds, namespace, {**MINIMAL, **patch})
    assert info.value.status == 422, info.value.body
    # The body is JSON: Go escapes <, > and & in it, so compare the decoded message.
    assert message in json.loads(str(info.value.body))["message"]
    _create(crds, namespace, {**MINIMAL, **fix})


def test_the_apiserver_accepts_the_defaults(crds: DevCluster, namespace: str) -> None:
    api = client.CustomObjectsApi(crds.api_client())
    body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": "defaults"}, "spec": MINIMAL}
    created: dict[str, Any] = api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)  # type: ignore[assignment]
    spec = created["spec"]
    assert spec["evaluation"]["gate"] == {"minQuantizedAgreement": 0.9}
    assert spec["export"]["gguf"] == ["q4_k_m"] and spec["export"]["merge"] is True


def _gpu_spec() -> dict[str, Any]:
    return {
        "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
        "evaluation": {"judge": JUDGE_WITH_KEY},
    }


@pytest.fixture
def ns(cluster: DevCluster, namespace: str) -> str:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets")
    return namespace


def _secret(cluster: DevCluster, namespace: str, data: dict[str, str]) -> None:
    cluster.core().create_namespaced_secret(
        namespace, {"metadata": {"name": "judge-key"}, "stringData": data}  # type: ignore[arg-type]
    )


def test_a_missing_secret_fails_the_job_before_its_job_exists(cluster: DevCluster, operator: OperatorProcess, ns: str) -> None:
    ftj = apply_ftj(cluster, ns, _gpu_spec())
    status = ftj.wait_phase("Failed", operator)
    assert status["reason"] == "SecretNotFound"
    assert status["message"] == (
        "The trainer Job was not created: evaluation.judge.apiKeySecretRef: Secret 'judge-key' not "
        f"found in namespace '{ns}'; create it with key 'api-key' (kubectl create secret generic "
        f"judge-key -n {ns} --from-literal=api-key=...). Then delete and re-create this FineTuneJob."
    )
    assert ftj.jobs() == [] and ftj.pods() == []
    conditions = {cd["type"]: cd for cd in status["conditions"]}
    assert conditions["Accepted"]["status"] == "False" and conditions["Accepted"]["reason"] == "SecretNotFound"
    cluster.wait_for(lambda: any(e.reason == "SecretNotFound" and e.type == "Warning" for e in ftj.events()),
                     what="a SecretNotFound warning event")


def test_a_missing_key_is_named_with_the_keys_there_are(cluster: DevCluster, operator: OperatorProcess, ns: str) -> None:
    _secret(cluster, ns, {"token": "sk-x"})
    ftj = apply_ftj(cluster, ns, _gpu_spec())
    status = ftj.wait_phase("Failed", operator)
    assert status["reason"] == "SecretNotFound"
    assert (
        f"evaluation.judge.apiKeySecretRef: Secret 'judge-key' in namespace '{ns}' has no key 'api-key' "
        "(its keys: token); add the key, or set evaluation.judge.apiKeySecretRef.key to one of them"
    ) in status["message"]
    assert ftj.jobs() == []


def test_a_present_secret_lets_the_job_start(cluster: DevCluster, operator: OperatorProcess, ns: str) -> None:
    _secret(cluster, ns, {"api-key": "sk-x"})
    ftj = apply_ftj(cluster, ns, _gpu_spec())
    cluster.wait_for(lambda: ftj.jobs() or None, what=f"{ftj.name}: its Job")
    assert ftj.status().get("reason") != "SecretNotFound"


def test_validate_with_a_kubeconfig_checks_the_secrets(
    cluster: DevCluster, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND,
           "metadata": {"name": "j", "namespace": namespace}, "spec": {**MINIMAL, "evaluation": {"judge": JUDGE_WITH_KEY}}}
    path = tmp_path / "ftj.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", "--kubeconfig", str(cluster.kubeconfig), str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path} (document 1): spec.evaluation.judge.apiKeySecretRef: Secret 'judge-key' not found in "
        f"namespace '{namespace}'; create it with key 'api-key' (kubectl create secret generic judge-key "
        f"-n {namespace} --from-literal=api-key=...)"
    ]
    _secret(cluster, namespace, {"api-key": "sk-x"})
    assert main(["validate", "--kubeconfig", str(cluster.kubeconfig), str(path)]) == 0
