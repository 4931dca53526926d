"""compute_status: every outcome of a trainer Job maps to a phase, a reason and advice."""

from __future__ import annotations

from typing import Any

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus, TrainerResult
from kubetune.api.constants import Phase, Reason
from kubetune.api.trainer_result import GateResult, Progress
from kubetune.operator.reconcile.status import Observed, compute_status, transition_events

SPEC = FineTuneJobSpec.model_validate(
    {
        "baseModel": {"uri": "pvc://m/x"},
        "dataset": {"source": {"uri": "pvc://d/x"}},
        "method": "lora",
        "training": {"batchSize": 8},
    }
)
NOW = "2026-11-22T10:00:00Z"


def job(*conds: tuple[str, str], suspend: bool = False, failed: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "j-train"},
        "spec": {"suspend": suspend},
        "status": {
            "failed": failed,
            "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conds],
        },
    }


def pod(
    phase: str,
    *,
    terminated: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None,
    unschedulable: str | None = None,
    created: str = "2026-11-22T09:00:00Z",
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if terminated:
        state["terminated"] = terminated
    if waiting:
        state["waiting"] = waiting
    conditions = []
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    return {
        "metadata": {"name": f"p-{created}", "creationTimestamp": created},
        "spec": {
            "nodeName": None if unschedulable else "gpu-0",
            "containers": [{"name": "trainer", "image": "img:1"}],
        },
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": state}],
        },
    }


def status_of(obs: Observed, current: FineTuneJobStatus | None = None) -> FineTuneJobStatus:
    return compute_status(obs, current or FineTuneJobStatus(), NOW)


def obs(**kw: Any) -> Observed:
    return Observed(generation=2, spec=SPEC, job_name="j-train", **kw)


def cond(status: FineTuneJobStatus, ctype: str) -> str:
    return next(c.status for c in status.conditions if c.type == ctype)


def test_running_sets_start_time_and_conditions() -> None:
    s = status_of(
        obs(job=job(), pods=[pod("Running")], progress=Progress(step=5, total_steps=10, percent=50))
    )
    assert (
        s.phase == Phase.RUNNING and s.start_time == NOW and s.progress and s.progress.percent == 50
    )
    assert cond(s, "Running") == "True" and cond(s, "Scheduled") == "True"
    assert all(c.observed_generation == 2 for c in s.conditions) and s.observed_generation == 2


def test_success_reads_the_trainer_result() -> None:
    result = TrainerResult(
        phase="Succeeded", gate=GateResult(passed=False, reason="judge 3.1 < 4.0", judge_score=3.1)
    )
    term = {"exitCode": 0, "reason": "Completed", "message": result.to_termination_message()}
    s = status_of(obs(job=job(("Complete", "")), pods=[pod("Succeeded", terminated=term)]))
    assert s.phase == Phase.SUCCEEDED and s.completion_time == NOW
    assert s.gate and s.gate.judge_score == 3.1 and "FAILED" in (s.message or "")
    assert cond(s, "GatePassed") == "False" and cond(s, "Complete") == "True"
    reasons = [e.reason for e in transition_events(FineTuneJobStatus(phase="Running"), s)]
    assert reasons == [Reason.SUCCEEDED, Reason.GATE_FAILED]


def test_oom_killed_suggests_the_fixes() -> None:
    term = {"exitCode": 137, "reason": "OOMKilled"}
    s = status_of(
        obs(job=job(("Failed", "BackoffLimitExceeded")), pods=[pod("Failed", terminated=term)])
    )
    assert (s.phase, s.reason) == (Phase.FAILED, Reason.OOM_KILLED)
    assert (
        "qlora" in (s.message or "")
        and "batchSize" in (s.message or "")
        and "maxLength" in (s.message or "")
    )
    assert transition_events(FineTuneJobStatus(), s)[0].type == "Warning"


def test_unschedulable_explains_what_was_asked() -> None:
    s = status_of(
        obs(
            job=job(),
            pods=[
                pod(
                    "Pending",
                    unschedulable="0/6 nodes are available: 4 Insufficient nvidia.com/gpu.",
                )
            ],
        )
    )
    assert (s.phase, s.reason) == (Phase.PENDING, Reason.UNSCHEDULABLE)
    assert "Insufficient nvidia.com/gpu" in (s.message or "") and "resources.gpus" in (
        s.message or ""
    )
    assert cond(s, "Scheduled") == "False"


def test_image_pull_failure() -> None:
    s = status_of(
        obs(
            job=job(),
            pods=[pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "not found"})],
        )
    )
    assert s.reason == Reason.IMAGE_PULL and "img:1" in (s.message or "")


def test_deadline_exceeded() -> None:
    s = status_of(obs(job=job(("Failed", "DeadlineExceeded")), pods=[]))
    assert s.reason == Reason.DEADLINE_EXCEEDED and "activeDeadlineSeconds" in (s.message or "")


def test_trainer_failure_result_wins() -> None:
    result = TrainerResult(
        phase="Failed",
        reason="DataPolicyFailed",
        message="3 records contain secrets (train.jsonl:4)",
        stage="data",
    )
    term = {"exitCode": 3, "message": result.to_termination_message()}
    s = status_of(
        obs(job=job(("Failed", "PodFailurePolicy")), pods=[pod("Failed", terminated=term)])
    )
    assert (s.reason, s.message) == (
        "DataPolicyFailed",
        "3 records contain secrets (train.jsonl:4)",
    )


def test_retry_after_a_failed_attempt_is_reported() -> None:
    pods = [
        pod(
            "Failed",
            terminated={"exitCode": 137, "reason": "OOMKilled"},
            created="2026-11-22T09:00:00Z",
        ),
        pod("Running", created="2026-11-22T09:05:00Z"),
    ]
    s = status_of(obs(job=job(failed=1), pods=pods))
    assert s.phase == Phase.RUNNING and "Attempt 1 failed (OOMKilled)" in (s.message or "")


def test_suspended() -> None:
    s = status_of(obs(job=job(suspend=True), pods=[]))
    assert s.phase == Phase.SUSPENDED and cond(s, "Suspended") == "True"


def test_invalid_spec_is_a_failed_condition_not_a_crash() -> None:
    s = status_of(
        Observed(generation=1, spec=None, spec_error="Invalid spec: spec.lora.r: must be >= 1")
    )
    assert (s.phase, s.reason) == (Phase.FAILED, Reason.INVALID_SPEC)
    assert cond(s, "Accepted") == "False"


def test_job_deleted_mid_run_fails_instead_of_retraining() -> None:
    current = FineTuneJobStatus(phase="Running", job_name="j-train")
    s = compute_status(Observed(generation=1, spec=SPEC, job=None), current, NOW)
    assert (s.phase, s.reason) == (Phase.FAILED, Reason.JOB_DELETED)


def test_final_phase_is_final_and_status_is_stable() -> None:
    done = status_of(obs(job=job(("Complete", "")), pods=[]))
    again = compute_status(obs(job=None, pods=[]), done, "2030-01-01T00:00:00Z")
    assert again == done
    running = status_of(obs(job=job(), pods=[pod("Running")]))
    assert (
        compute_status(obs(job=job(), pods=[pod("Running")]), running, "2030-01-01T00:00:00Z")
        == running
    )
