"""Secrets a FineTuneJob references are checked before its Job exists: `secret_problems` (shared
by the operator and `kubetune validate --kubeconfig`), and the reconciler failing the job with
reason SecretNotFound instead of creating a Job whose pod would hold a GPU and never start."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubetune.api import FineTuneJobSpec
from kubetune.api.constants import Reason
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler, secret_problems
from kubetune.operator.settings import Settings

SPEC = {
    "baseModel": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct", "tokenSecretRef": {"name": "hf-token"}},
    "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
    "evaluation": {
        "judge": {
            "endpoint": "https://judge.example/v1",
            "model": "judge-model",
            "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
        }
    },
}
NOW = "2026-11-22T10:00:00Z"


def keys_from(secrets: dict[str, list[str]]) -> Any:
    def keys(namespace: str, name: str) -> list[str] | None:
        assert namespace == "ml"
        return secrets.get(name)

    return keys


def test_every_present_secret_and_key_passes() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    assert secret_problems(spec, "ml", keys_from({"hf-token": ["token"], "judge-key": ["api-key"]})) == []


def test_a_missing_secret_and_a_missing_key_are_each_named() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    problems = secret_problems(spec, "ml", keys_from({"judge-key": ["token", "url"]}))
    assert problems == [
        "baseModel.tokenSecretRef: Secret 'hf-token' not found in namespace 'ml'; create it with key "
        "'token' (kubectl create secret generic hf-token -n ml --from-literal=token=...)",
        "evaluation.judge.apiKeySecretRef: Secret 'judge-key' in namespace 'ml' has no key 'api-key' "
        "(its keys: token, url); add the key, or set evaluation.judge.apiKeySecretRef.key to one of them",
    ]


def test_a_secret_that_may_not_be_read_is_not_judged() -> None:
    def forbidden(namespace: str, name: str) -> list[str] | None:
        raise PermissionError(name)

    assert secret_problems(FineTuneJobSpec.model_validate(SPEC), "ml", forbidden) == []


def test_a_spec_without_secrets_reads_none() -> None:
    spec = FineTuneJobSpec.model_validate({**SPEC, "baseModel": {"uri": "pvc://m/x"}, "evaluation": {}})
    assert secret_problems(spec, "ml", keys_from({})) == []


class _Secret:
    def __init__(self, data: dict[str, str]) -> None:
        self.data, self.string_data = data, None


class FakeCore:
    def __init__(self, secrets: dict[str, dict[str, str]], forbidden: bool = False) -> None:
        self.secrets, self.forbidden, self.reads = secrets, forbidden, 0

    def read_namespaced_secret(self, name: str, namespace: str) -> _Secret:
        self.reads += 1
        if self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        if name not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return _Secret(self.secrets[name])

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        raise AssertionError("the spec references no ConfigMap")

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> object:
        return object()  # every claim exists: this file is about Secrets


class FakeApi:
    """The KubeApi calls the reconciler makes, recorded."""

    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.jobs: list[dict[str, Any]] = []
        self.configmaps: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    def create_configmap(self, body: dict[str, Any]) -> None:
        self.configmaps.append(body)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.jobs.append(body)
        return body

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs if j["metadata"]["name"] == name), None)

    def patch_job(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> None:
        pass

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any], uid: str | None = None) -> str:
        self.patches.append(status)
        return str(len(self.patches) + 100)

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def _body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "support", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "1"},
        "spec": SPEC,
        "status": status or {},
    }


def test_missing_secret_fails_the_job_and_creates_no_job() -> None:
    api = FakeApi(FakeCore({"hf-token": {"token": "x"}}))
    status = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW).reconcile(_body(), None, [])  # type: ignore[arg-type]
    assert api.jobs == [] and api.configmaps == []
    assert (status.phase, status.reason) == ("Failed", Reason.SECRET_NOT_FOUND) == ("Failed", "SecretNotFound")
    assert status.message == (
        "The trainer Job was not created: evaluation.judge.apiKeySecretRef: Secret 'judge-key' not "
        "found in namespace 'ml'; create it with key 'api-key' (kubectl create secret generic "
        "judge-key -n ml --from-literal=api-key=...). Then delete and re-create this FineTuneJob."
    )
    conditions = {cd.type: cd for cd in status.conditions}
    assert (conditions["Accepted"].status, conditions["Accepted"].reason) == ("False", "SecretNotFound")
    assert (conditions["Failed"].status, conditions["Failed"].reason) == ("True", "SecretNotFound")
    assert [(t, r) for t, r, _ in api.events] == [("Warning", "SecretNotFound")]
    assert api.patches[-1]["reason"] == "SecretNotFound"


def test_a_failed_job_is_not_checked_or_started_again() -> None:
    api = FakeApi(FakeCore({}))
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    failed = reconciler.reconcile(_body(), None, [])
    reads = api.core.reads
    api.core.secrets = {"hf-token": {"token": "x"}, "judge-key": {"api-key": "y"}}  # created too late
    again = reconciler.reconcile({**_body(failed.to_wire()), "metadata": {**_body()["metadata"], "resourceVersion": "200"}}, None, [])
    assert again.phase == "Failed" and again.reason == "SecretNotFound"
    assert api.jobs == [] and api.core.reads == reads


def test_present_secrets_let_the_job_be_created() -> None:
    api = FakeApi(FakeCore({"hf-token": {"token": "x"}, "judge-key": {"api-key": "y"}}))
    status = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW).reconcile(_body(), None, [])  # type: ignore[arg-type]
    assert len(api.jobs) == 1 and status.phase == "Pending" and status.reason == Reason.PENDING


@pytest.mark.parametrize("secrets", [{}, {"hf-token": {"token": "x"}}])
def test_without_rbac_on_secrets_the_job_is_created(secrets: dict[str, dict[str, str]]) -> None:
    api = FakeApi(FakeCore(secrets, forbidden=True))
    FineTuneJobReconciler(api, Settings(), clock=lambda: NOW).reconcile(_body(), None, [])  # type: ignore[arg-type]
    assert len(api.jobs) == 1
