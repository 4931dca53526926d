"""The FineTuneJob controller's pure decisions: children matched by owner UID, phases that
only move forward, and a child the apiserver refuses said in status instead of retried
silently. The same behaviours on a real control plane: tests/integration/test_finetunejob_correctness.py."""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.constants import Phase, Reason
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler, owned_children
from kubetune.operator.reconcile.references import reference_problems
from kubetune.operator.reconcile.status import Observed, compute_status, transition_events
from kubetune.operator.settings import Settings

SPEC = {"baseModel": {"uri": "pvc://m/x"}, "dataset": {"source": {"uri": "pvc://d/x"}}}
NOW = "2026-11-22T10:00:00Z"


def _obj(name: str, uid: str, owner_uid: str | None) -> dict[str, Any]:
    refs = [{"uid": owner_uid, "name": "x", "kind": "K", "apiVersion": "v1"}] if owner_uid else []
    return {"metadata": {"name": name, "uid": uid, "ownerReferences": refs, "creationTimestamp": "2026-11-22T09:00:00Z"}}


def test_children_of_another_object_with_the_same_name_are_ignored() -> None:
    body = {"metadata": {"name": "bot", "uid": "new"}}
    old_job, orphan = _obj("bot-old-train", "j-old", "old"), _obj("bot-orphan-train", "j-orphan", None)
    old_pod = _obj("bot-old-train-x", "p-old", "j-old")
    assert owned_children(body, [old_job, orphan], [old_pod]) == (None, [])
    mine, my_pod = _obj("bot-new-train", "j-new", "new"), _obj("bot-new-train-y", "p-new", "j-new")
    assert owned_children(body, [old_job, mine, orphan], [old_pod, my_pod]) == (mine, [my_pod])


def _pod(phase: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-22T09:00:00Z"},
        "spec": {"nodeName": "n", "containers": [{"name": "trainer"}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": {}}]},
    }


def _active_job(failed: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "spec": {}, "status": {"active": 1, "failed": failed}}


def test_a_pod_that_finished_before_its_job_completes_keeps_the_job_running() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    running = compute_status(Observed(1, spec, job=_active_job(), pods=[_pod("Running")], job_name="j"), FineTuneJobStatus(), NOW)
    assert running.phase == Phase.RUNNING
    done = compute_status(Observed(1, spec, job=_active_job(), pods=[_pod("Succeeded")], job_name="j"), running, NOW)
    assert done.phase == Phase.RUNNING and "waiting for its Job to complete" in done.message
    assert transition_events(running, done) == []


def test_a_retry_after_a_failed_attempt_stays_running_and_says_why() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    running = compute_status(Observed(1, spec, job=_active_job(), pods=[_pod("Running")], job_name="j"), FineTuneJobStatus(), NOW)
    failed = _pod("Failed")
    failed["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 1}}
    retry = compute_status(Observed(1, spec, job=_active_job(failed=1), pods=[failed], job_name="j"), running, NOW)
    assert retry.phase == Phase.RUNNING and "Attempt 1 failed" in retry.message


class _EverythingExists:
    """CoreV1Api reads of the references check: every ConfigMap and claim exists."""

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> object:
        return object()


class _RefusingApi:
    """The KubeApi calls the reconciler makes; the apiserver's answer to the Job create is a
    422 (as seen for a 70-character name before label values were shortened)."""

    core = _EverythingExists()

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.patches: list[dict[str, Any]] = []

    def create_configmap(self, body: dict[str, Any]) -> None:
        pass

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiException(status=422, reason="Unprocessable Entity") from None

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any], uid: str | None = None) -> str:
        self.patches.append(status)
        return str(100 + len(self.patches))

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def test_a_refused_child_is_a_warning_and_a_status_not_an_exception() -> None:
    api = _RefusingApi()
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": SPEC, "status": {},
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "1"}}
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    status = reconciler.reconcile(body, None, [])
    assert (status.phase, status.reason) == (Phase.PENDING, Reason.CHILD_CREATE_FAILED)
    assert "refused to create the Job bot-u1-train (HTTP 422)" in (status.message or "")
    accepted = next(cd for cd in status.conditions if cd.type == "Accepted")
    assert (accepted.status, accepted.reason) == ("False", Reason.CHILD_CREATE_FAILED)
    assert api.events == [("Warning", Reason.CHILD_CREATE_FAILED)]
    again = reconciler.reconcile({**body, "metadata": {**body["metadata"], "resourceVersion": "101"}, "status": status.to_wire()}, None, [])
    assert again == status and len(api.events) == 1  # retried quietly: one Event, one status write


def test_create_container_config_error_is_explained_with_the_fix() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    pod = _pod("Pending")
    pod["metadata"]["namespace"] = "ml"
    pod["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "judge-key" not found'}
    }
    status = compute_status(Observed(1, spec, job=_active_job(), pods=[pod], job_name="j"), FineTuneJobStatus(), NOW)
    assert (status.phase, status.reason) == (Phase.PENDING, Reason.CONTAINER_CONFIG_ERROR)
    assert 'secret "judge-key" not found' in (status.message or "")
    assert "Create the missing Secret or ConfigMap (or add the key) in namespace ml" in (status.message or "")
    assert [e.type for e in transition_events(FineTuneJobStatus(), status)] == ["Warning"]


def test_missing_configmaps_keys_and_claims_are_each_named() -> None:
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "pvc://models/m"},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                    "general": {"source": {"configMap": {"name": "general", "key": "g.jsonl"}}}},
    })
    configmaps = {"general": ["other.jsonl"]}
    claims = {"kubetune-artifacts"}
    problems = reference_problems(spec, "ml", lambda ns, name: configmaps.get(name),
                                  lambda ns, name: name in claims)
    assert [p.reason for p in problems] == [Reason.CONFIGMAP_NOT_FOUND, Reason.CONFIGMAP_NOT_FOUND, Reason.PVC_NOT_FOUND]
    assert problems[0].message.startswith("dataset.source.configMap: ConfigMap 'data' not found in namespace 'ml'")
    assert "has no key 'g.jsonl' (its keys: other.jsonl)" in problems[1].message
    assert problems[2].message.startswith("baseModel.uri: PersistentVolumeClaim 'models' not found")
    configmaps["data"], configmaps["general"] = ["train.jsonl"], ["g.jsonl"]
    claims.add("models")
    assert reference_problems(spec, "ml", lambda ns, name: configmaps.get(name), lambda ns, name: name in claims) == []


def test_references_the_operator_may_not_read_are_not_judged() -> None:
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "pvc://models/m"},
                                           "dataset": {"source": {"configMap": {"name": "d", "key": "k"}}}})

    def forbidden(namespace: str, name: str) -> Any:
        raise PermissionError(name)

    assert reference_problems(spec, "ml", forbidden, forbidden) == []


def test_claims_attachable_to_one_node_only() -> None:
    from kubetune.operator.reconcile.references import single_node_only

    assert single_node_only(["ReadWriteOnce"]) and single_node_only(["ReadWriteOncePod"])
    assert not single_node_only(["ReadWriteMany"]) and not single_node_only(["ReadWriteOnce", "ReadWriteMany"])
    assert not single_node_only([])  # unknown: no affinity


def test_a_volume_the_kubelet_cannot_attach_or_mount_is_explained() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    pod = _pod("Pending")
    attach = ("FailedAttachVolume", 'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) other-train-x')
    status = compute_status(Observed(1, spec, job=_active_job(), pods=[pod], job_name="j", volume_event=attach),
                            FineTuneJobStatus(), NOW)
    assert (status.phase, status.reason) == (Phase.PENDING, Reason.VOLUME_NOT_READY)
    assert "Multi-Attach error" in (status.message or "") and "ReadWriteMany" in (status.message or "")
    mount = ("FailedMount", 'MountVolume.SetUp failed for volume "cm-0" : configmap "data" not found')
    status = compute_status(Observed(1, spec, job=_active_job(), pods=[pod], job_name="j", volume_event=mount),
                            FineTuneJobStatus(), NOW)
    assert 'configmap "data" not found' in (status.message or "") and "Create what the volume refers to" in (status.message or "")
    assert [e.type for e in transition_events(FineTuneJobStatus(), status)] == ["Warning"]


class _CountingCore:
    """CoreV1Api reads of the references check, counted: every reference exists."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        self.reads.append(("configmap", name))
        return type("CM", (), {"data": {"train.jsonl": "{}"}, "binary_data": None})()

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str) -> Any:
        self.reads.append(("claim", name))
        return object()

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads.append(("secret", name))
        return type("S", (), {"data": {"api-key": "eA=="}, "string_data": None})()


class _CreatingApi(_RefusingApi):
    def __init__(self) -> None:
        super().__init__()
        self.core = _CountingCore()  # type: ignore[assignment]
        self.created: list[str] = []

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body["metadata"]["name"])
        return body


def test_a_burst_of_jobs_naming_the_same_references_reads_each_once() -> None:
    api = _CreatingApi()
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    spec = {"baseModel": {"uri": "pvc://models/m"},
            "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
            "evaluation": {"judge": {"endpoint": "https://judge.example/v1", "model": "j",
                                     "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}}}}
    for i in range(5):
        body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": spec, "status": {},
                "metadata": {"name": f"bot-{i}", "namespace": "ml", "uid": f"u-{i}", "generation": 1, "resourceVersion": "1"}}
        reconciler.reconcile(body, None, [])
    assert len(api.created) == 5
    assert sorted(api.core.reads) == [("claim", "kubetune-artifacts"), ("claim", "models"),  # type: ignore[attr-defined]
                                      ("configmap", "data"), ("secret", "judge-key")]


def test_a_key_added_to_a_remembered_secret_is_seen_at_once() -> None:
    api = _CreatingApi()
    core = api.core
    keys = {"api-key": "eA=="}

    def read_secret(name: str, namespace: str) -> Any:
        core.reads.append(("secret", name))  # type: ignore[attr-defined]
        return type("S", (), {"data": dict(keys), "string_data": None})()

    core.read_namespaced_secret = read_secret  # type: ignore[attr-defined]
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]

    def run(i: int, key: str) -> Any:
        spec = {"baseModel": {"uri": "hf://org/m", "tokenSecretRef": {"name": "judge-key", "key": key}},
                "dataset": {"source": {"uri": "pvc://datasets/d.jsonl"}}}
        body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": spec, "status": {},
                "metadata": {"name": f"bot-{i}", "namespace": "ml", "uid": f"u-{i}", "generation": 1, "resourceVersion": "1"}}
        return reconciler.reconcile(body, None, [])

    assert run(0, "api-key").reason == Reason.PENDING  # found, and remembered
    keys["token"] = "eQ=="
    assert run(1, "token").reason == Reason.PENDING  # not refused on the remembered keys
    assert len(api.created) == 2


def test_a_status_write_refused_for_a_replaced_object_is_dropped_quietly() -> None:
    class _Replaced(_RefusingApi):
        def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any], uid: str | None = None) -> str:
            # what kube-apiserver 1.32 answers when the JSON patch's uid test fails
            exc = ApiException(status=422, reason="Unprocessable Entity")
            exc.body = ('{"kind":"Status","status":"Failure","message":"the server rejected our request due to an '
                        'error in our request","reason":"Invalid","details":{},"code":422}')
            raise exc

    api = _Replaced()
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": SPEC, "status": {},
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-old", "generation": 1, "resourceVersion": "1"}}
    status = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW).reconcile(body, None, [])  # type: ignore[arg-type]
    assert status.reason == Reason.CHILD_CREATE_FAILED and api.events == []  # computed, not written, no Event


def test_events_the_operator_may_not_list_leave_the_usual_message() -> None:
    class _NoEvents(_RefusingApi):
        def pod_warning_events(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
            raise ApiException(status=403, reason="Forbidden")

    pod = _pod("Pending")
    pod["metadata"].update(namespace="ml", uid="p-1")
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    job = {"metadata": {"name": "bot-u1-train", "uid": "j"}, "spec": {"suspend": False}, "status": {"active": 1}}
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": SPEC,
            "status": {"phase": "Pending", "jobName": "bot-u1-train"},
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "1"}}
    status = FineTuneJobReconciler(_NoEvents(), Settings(), clock=lambda: NOW).reconcile(body, job, [pod])  # type: ignore[arg-type]
    assert (status.phase, status.message) == (Phase.PENDING, "The trainer pod is starting.")


def test_pending_detail_is_written_at_most_once_per_hold_and_a_phase_change_at_once() -> None:
    api = _CreatingApi()
    reconciler = FineTuneJobReconciler(api, Settings(status_coalesce=30), clock=lambda: NOW)  # type: ignore[arg-type]
    requeued: list[tuple[tuple[str, str], float]] = []
    reconciler.requeue_after = lambda key, delay: requeued.append((key, delay))
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": SPEC, "status": {},
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "1"}}
    created = reconciler.reconcile(body, None, [])
    assert created.phase == Phase.PENDING and created.job_name and len(api.patches) == 1
    job = {"metadata": {"name": created.job_name, "uid": "j-1"}, "spec": {"suspend": False}, "status": {"active": 1}}
    starting = _pod("Pending")  # the pod created, not scheduled yet: detail within Pending
    del starting["spec"]["nodeName"]
    held = reconciler.reconcile(body, job, [starting])
    assert held == created and len(api.patches) == 1  # not written yet ...
    assert requeued and requeued[-1][0] == ("ml", "bot") and 29 < requeued[-1][1] <= 30  # ... but queued for later
    running = reconciler.reconcile(body, job, [_pod("Running")])
    assert running.phase == Phase.RUNNING and len(api.patches) == 2  # a phase change is written at once
    assert api.patches[-1]["phase"] == Phase.RUNNING


def test_pending_detail_held_back_is_written_when_the_hold_ends() -> None:
    api = _CreatingApi()
    reconciler = FineTuneJobReconciler(api, Settings(status_coalesce=0.05), clock=lambda: NOW)  # type: ignore[arg-type]
    reconciler.requeue_after = lambda key, delay: None
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": SPEC, "status": {},
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "1"}}
    created = reconciler.reconcile(body, None, [])
    job = {"metadata": {"name": created.job_name, "uid": "j-1"}, "spec": {"suspend": False}, "status": {"active": 1}}
    time.sleep(0.1)
    pod = _pod("Pending")
    del pod["spec"]["nodeName"]
    starting = reconciler.reconcile(body, job, [pod])
    assert starting.phase == Phase.PENDING and starting.message != created.message
    assert len(api.patches) == 2 and api.patches[-1]["message"] == starting.message
