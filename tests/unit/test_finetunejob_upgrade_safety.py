"""Upgrade safety of the FineTuneJob controller (#11): a finished job stays finished when a
newer operator validates more strictly, activeDeadlineSeconds edits reach the Job, and
resourceVersions are compared for equality only."""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.constants import Phase, Reason
from kubetune.operator.builders.training_job import mutable_job_fields
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler, read_status
from kubetune.operator.reconcile.status import Observed, compute_status
from kubetune.operator.settings import Settings

SPEC = {"baseModel": {"uri": "pvc://m/x"}, "dataset": {"source": {"uri": "pvc://d/x"}}}
NOW = "2026-11-22T10:00:00Z"
SUCCEEDED = {"phase": "Succeeded", "reason": "Succeeded", "message": "done", "jobName": "bot-abc123-train",
             "observedGeneration": 1, "completionTime": "2026-11-22T09:00:00Z"}


def test_a_finished_job_stays_finished_when_its_spec_no_longer_validates() -> None:
    current = FineTuneJobStatus.model_validate(SUCCEEDED)
    obs = Observed(generation=1, spec=None, spec_error="Invalid spec: training.maxSteps: a newer, stricter rule")
    assert compute_status(obs, current, NOW) == current


def test_a_status_the_model_cannot_read_keeps_its_phase() -> None:
    # e.g. written by a newer kubetune with a value this one does not know
    raw = {**SUCCEEDED, "gate": {"passed": "maybe"}, "artifacts": [{"kind": 7}]}
    status = read_status(raw, "bot")
    assert (status.phase, status.job_name, status.completion_time) == ("Succeeded", "bot-abc123-train", "2026-11-22T09:00:00Z")
    assert read_status({"phase": "Succeeded", "startTime": 12}, "bot").phase == "Succeeded"


class _Api:
    """The reconciler's KubeApi calls; every write recorded. Returns opaque resourceVersions."""

    core = None

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []

    def create_configmap(self, body: dict[str, Any]) -> None:
        raise AssertionError("a finished job creates nothing")

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a finished job creates nothing")

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def patch_job(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> None:
        self.jobs.append(spec_patch)

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any], uid: str | None = None) -> str:
        self.patches.append(status)
        return f"opaque-{len(self.patches)}"

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass


def _body(status: dict[str, Any], rv: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": spec or SPEC, "status": status,
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": rv}}


def test_a_succeeded_job_whose_trainer_job_is_gone_is_never_started_again_by_a_stricter_operator() -> None:
    api = _Api()
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    unreadable = {**SUCCEEDED, "progress": {"percent": 250}}
    status = reconciler.reconcile(_body(unreadable, "x7"), None, [])
    assert status.phase == Phase.SUCCEEDED and api.patches == []


def test_resource_versions_are_compared_for_equality_only() -> None:
    api = _Api()
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    job = {"metadata": {"name": "bot-u1-train", "uid": "j"}, "spec": {"suspend": False},
           "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pending = {"phase": "Pending", "reason": Reason.PENDING, "jobName": "bot-u1-train", "observedGeneration": 1}
    done = reconciler.reconcile(_body(pending, "zz-9"), job, [])
    assert done.phase == Phase.SUCCEEDED and len(api.patches) == 1
    # The index still holds the snapshot the write was based on: its status is not believed.
    assert reconciler.reconcile(_body(pending, "zz-9"), job, []) == done and len(api.patches) == 1
    # A snapshot with another resourceVersion and the same old status (someone else wrote in
    # between, e.g. a spec edit) predates the write too.
    assert reconciler.reconcile(_body(pending, "aa-1"), job, []) == done and len(api.patches) == 1
    # The write's own resourceVersion: the index has caught up.
    assert reconciler.reconcile(_body(done.to_wire(), "opaque-1"), job, []) == done and len(api.patches) == 1


def test_active_deadline_edits_reach_the_job() -> None:
    spec = FineTuneJobSpec.model_validate({**SPEC, "activeDeadlineSeconds": 3600})
    assert mutable_job_fields(spec)["activeDeadlineSeconds"] == 3600
    api = _Api()
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    job = {"metadata": {"name": "bot-u1-train", "uid": "j"}, "spec": {"suspend": False, "activeDeadlineSeconds": 7200},
           "status": {"active": 1}}
    running = {"phase": "Running", "reason": Reason.TRAINING, "jobName": "bot-u1-train", "observedGeneration": 1}
    reconciler.reconcile(_body(running, "1", {**SPEC, "activeDeadlineSeconds": 3600}), job, [])
    assert api.jobs == [{"suspend": False, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": None}]


def test_a_snapshot_of_an_earlier_own_write_is_stale_after_two_quick_writes() -> None:
    # Seen on the dev cluster as a second "Training" event: write 1 (Pending), write 2 (Running)
    # based on the stale creation snapshot, then the index delivers write 1's snapshot.
    api = _Api()
    events: list[str] = []
    api.post_event = lambda owner, type_, reason, message: events.append(reason)  # type: ignore[method-assign]
    reconciler = FineTuneJobReconciler(api, Settings(), clock=lambda: NOW)  # type: ignore[arg-type]
    job = {"metadata": {"name": "bot-u1-train", "uid": "j"}, "spec": {"suspend": False}, "status": {"active": 1}}
    pod = {"metadata": {"name": "p", "creationTimestamp": NOW, "ownerReferences": [{"uid": "j"}]},
           "spec": {"nodeName": "n", "containers": [{"name": "trainer"}]},
           "status": {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {}}]}}
    pending = reconciler.reconcile(_body({}, "1"), job, [])
    assert pending.phase == Phase.PENDING
    running = reconciler.reconcile(_body({}, "1"), job, [pod])
    assert running.phase == Phase.RUNNING and len(api.patches) == 2
    assert reconciler.reconcile(_body(pending.to_wire(), "opaque-1"), job, [pod]) == running
    assert len(api.patches) == 2 and events.count("Training") == 1
    assert reconciler.reconcile(_body(running.to_wire(), "opaque-2"), job, [pod]) == running
    assert len(api.patches) == 2
