"""Compute a FineTuneJob's status from what was observed. Pure: no API calls, no clock.

Inputs are the spec (or why it is invalid), the trainer Job and its pods as the apiserver
returned them, and the current status; the output is the new status and the Events that its
transitions deserve. Every message says what to do next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune.api.common import Condition
from kubetune.api.constants import ConditionType, Phase, Reason
from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.trainer_contract import PERMANENT_FAILURE_EXIT_CODE, Progress, TrainerResult
from kubetune.operator.builders.training_job import TRAINER_CONTAINER

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class Observed:
    """What the operator saw of one FineTuneJob and its children."""

    generation: int
    spec: FineTuneJobSpec | None
    spec_error: str | None = None
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    job_name: str | None = None
    progress: Progress | None = None
    create_error: str | None = None  # why the apiserver refused a child, when it did
    # When the trainer Job is gone: the result read from result.json, or why it could not be.
    recovered: TrainerResult | None = None
    unrecovered: str = ""
    # The latest FailedMount / FailedAttachVolume event of the trainer pod still waiting to start.
    volume_event: tuple[str, str] | None = None  # (event reason, message)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Verdict:
    phase: str
    reason: str
    message: str
    result: TrainerResult | None = None
    scheduled: bool | None = None  # None: unknown / not applicable


def _true_condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def _latest_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not pods:
        return None
    return max(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )


def _trainer_state(pod: dict[str, Any] | None) -> dict[str, Any]:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return status.get("state") or {}
    return {}


def _terminated(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trainer container's termination record in the newest pod that has one."""
    for pod in sorted(
        pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True
    ):
        term = _trainer_state(pod).get("terminated")
        if term:
            return term  # type: ignore[no-any-return]
    return None


def parse_result(message: str | None) -> TrainerResult | None:
    """The trainer's result from a termination message; None when it is not one (e.g. logs)."""
    if not message:
        return None
    try:
        return TrainerResult.from_termination_message(message)
    except (ValueError, json.JSONDecodeError):
        return None


def oom_message(spec: FineTuneJobSpec | None) -> str:
    """Actionable advice for an out-of-memory kill."""
    tips = []
    if spec is None or spec.method != "qlora":
        tips.append("use method: qlora (4-bit base weights)")
    if spec is not None and spec.training.batch_size > 1:
        tips.append(
            f"lower training.batchSize (now {spec.training.batch_size}) and raise "
            "training.gradientAccumulationSteps to keep the effective batch"
        )
    if spec is not None:
        tips.append(f"shorten training.maxLength (now {spec.training.max_length})")
        tips.append(f"raise resources.memory (now {spec.resources.memory or 'unset'})")
    return (
        "The trainer was killed for running out of memory (OOMKilled). Try: "
        + "; ".join(tips)
        + "."
    )


def _failed_verdict(obs: Observed, job_failed: dict[str, Any]) -> Verdict:
    term = _terminated(obs.pods) or {}
    result = parse_result(term.get("message"))
    job_reason = job_failed.get("reason", "")
    if term.get("reason") == "OOMKilled":
        return Verdict(Phase.FAILED, Reason.OOM_KILLED, oom_message(obs.spec), result)
    if result is not None and result.phase == "Failed":
        return Verdict(
            Phase.FAILED,
            result.reason or Reason.TRAINER_FAILED,
            result.message or "The trainer failed.",
            result,
        )
    if job_reason == "DeadlineExceeded":
        deadline = obs.spec.active_deadline_seconds if obs.spec else None
        return Verdict(
            Phase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"The job ran longer than activeDeadlineSeconds ({deadline}s) and was stopped. Raise "
            "activeDeadlineSeconds, or lower training.epochs / training.maxSteps; a new job resumes "
            "nothing, so size the deadline for the whole run.",
        )
    code = term.get("exitCode")
    detail = (term.get("message") or "").strip()
    tail = f" Last output: {detail[-1500:]}" if detail else ""
    if job_reason == "BackoffLimitExceeded":
        return Verdict(
            Phase.FAILED,
            Reason.BACKOFF_LIMIT,
            f"The trainer failed {(obs.job or {}).get('status', {}).get('failed', '?')} time(s) "
            f"(last exit code {code}); backoffLimit reached. Check the pod logs.{tail}",
        )
    if code == PERMANENT_FAILURE_EXIT_CODE:
        return Verdict(
            Phase.FAILED, Reason.TRAINER_FAILED, f"The trainer reported a permanent failure.{tail}"
        )
    message = job_failed.get("message") or "The trainer Job failed."
    return Verdict(
        Phase.FAILED, job_reason or Reason.TRAINER_FAILED, f"{message} (exit code {code}).{tail}"
    )


def _active_verdict(obs: Observed) -> Verdict:
    pod = _latest_pod(obs.pods)
    retry_note = ""
    failed = ((obs.job or {}).get("status") or {}).get("failed") or 0
    if failed:
        term = (
            _terminated([p for p in obs.pods if (p.get("status") or {}).get("phase") == "Failed"])
            or {}
        )
        why = term.get("reason") or f"exit code {term.get('exitCode')}"
        retry_note = f" Attempt {failed} failed ({why}); retrying from the last checkpoint."
    if pod is not None and (pod.get("status") or {}).get("phase") == "Succeeded":
        # The Job controller marks the Job Complete a moment after its pod succeeds.
        return Verdict(
            Phase.RUNNING, Reason.TRAINING, "The trainer finished; waiting for its Job to complete.",
            scheduled=True,
        )
    if pod is None or (pod.get("status") or {}).get("phase") == "Failed":
        return Verdict(
            Phase.PENDING, Reason.PENDING, "Waiting for the trainer pod to be created." + retry_note
        )
    status = pod.get("status") or {}
    if status.get("phase") == "Running":
        return Verdict(
            Phase.RUNNING, Reason.TRAINING, "The trainer is running." + retry_note, scheduled=True
        )
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            spec = obs.spec
            want = ""
            if spec is not None:
                want = f" The pod asks for {spec.resources.gpus} GPU(s)"
                if spec.resources.gpu_product:
                    want += f" of product {spec.resources.gpu_product}"
                if spec.resources.node_selector:
                    want += f" on nodes labelled {spec.resources.node_selector}"
                want += "; lower resources.gpus, change gpuProduct/nodeSelector, or add capacity."
            return Verdict(
                Phase.PENDING,
                Reason.UNSCHEDULABLE,
                f"No node can run the trainer pod: {cond.get('message', '').strip()}.{want}{retry_note}",
                scheduled=False,
            )
    waiting = _trainer_state(pod).get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        image = (pod.get("spec") or {}).get("containers", [{}])[0].get("image", "?")
        return Verdict(
            Phase.PENDING,
            Reason.IMAGE_PULL,
            f"Cannot pull the trainer image {image!r} ({waiting.get('reason')}: {waiting.get('message', '')}). "
            "Check spec.image (or the operator's KUBETUNE_TRAINER_IMAGE) and the registry credentials.",
            scheduled=True,
        )
    if waiting.get("reason") == Reason.CONTAINER_CONFIG_ERROR:
        namespace = (pod.get("metadata") or {}).get("namespace", "its namespace")
        return Verdict(
            Phase.PENDING,
            Reason.CONTAINER_CONFIG_ERROR,
            f"The trainer container cannot be created: {waiting.get('message', '').strip()}. "
            f"Create the missing Secret or ConfigMap (or add the key) in namespace {namespace}, "
            "or fix the reference in the spec; the pod starts by itself once it exists." + retry_note,
            scheduled=True,
        )
    if obs.volume_event is not None:
        reason, message = obs.volume_event
        fix = ("The claim is ReadWriteOnce and attached to another node: wait for the pod there to "
               "finish, or use a ReadWriteMany claim." if "Multi-Attach" in message else
               "Create what the volume refers to (kubectl describe pod shows the volumes), or fix the spec.")
        return Verdict(
            Phase.PENDING,
            Reason.VOLUME_NOT_READY,
            f"The trainer pod cannot start: {reason}: {message.strip()} {fix}" + retry_note,
            scheduled=True,
        )
    scheduled = bool((pod.get("spec") or {}).get("nodeName"))
    return Verdict(
        Phase.PENDING,
        Reason.PENDING,
        "The trainer pod is starting." + retry_note,
        scheduled=scheduled or None,
    )


def _recovered_verdict(result: TrainerResult, job_name: str) -> Verdict:
    note = f" (read from result.json: the trainer Job {job_name} was deleted before the operator saw it finish)"
    if result.phase == "Succeeded":
        return Verdict(Phase.SUCCEEDED, Reason.SUCCEEDED, "Training, evaluation and export finished." + note, result)
    return Verdict(Phase.FAILED, result.reason or Reason.TRAINER_FAILED,
                   (result.message or "The trainer failed.") + note, result)


def decide(obs: Observed, current: FineTuneJobStatus) -> Verdict | None:
    """The phase the observations imply; None when the current final phase must stay."""
    if current.phase in Phase.FINAL:
        # A finished job never changes phase again, even when a newer operator's stricter
        # validation refuses the spec it ran with.
        return None
    if obs.spec_error is not None:
        return Verdict(Phase.FAILED, Reason.INVALID_SPEC, obs.spec_error)
    if obs.job is None:
        if obs.create_error is not None:
            return Verdict(
                Phase.PENDING,
                Reason.CHILD_CREATE_FAILED,
                obs.create_error + " The operator tries again at every resync.",
            )
        if current.job_name and obs.recovered is not None:
            return _recovered_verdict(obs.recovered, current.job_name)
        if current.job_name and obs.spec is not None and obs.spec.ttl_seconds_after_finished is not None:
            return Verdict(
                Phase.FAILED,
                Reason.RESULT_LOST,
                f"The trainer Job {current.job_name} is gone (ttlSecondsAfterFinished: "
                f"{obs.spec.ttl_seconds_after_finished} removes it after it finishes) and the operator did not "
                f"read its result before: {obs.unrecovered} Artifacts on the volume are kept; raise "
                "ttlSecondsAfterFinished so a restarting operator has time to read the next result.",
            )
        if current.job_name:
            return Verdict(
                Phase.FAILED,
                Reason.JOB_DELETED,
                f"The trainer Job {current.job_name} was deleted before it finished. "
                "Delete and re-create the FineTuneJob to train again (checkpoints on the artifact volume are reused).",
            )
        return Verdict(Phase.PENDING, Reason.CREATED, "Creating the trainer Job.")
    complete = _true_condition(obs.job, "Complete")
    if complete is not None:
        result = parse_result((_terminated(obs.pods) or {}).get("message"))
        gate = ""
        if result is not None and result.gate is not None:
            gate = (
                " Quality gate passed."
                if result.gate.passed
                else f" Quality gate FAILED: {result.gate.reason}"
            )
        return Verdict(
            Phase.SUCCEEDED,
            Reason.SUCCEEDED,
            "Training, evaluation and export finished." + gate,
            result,
        )
    job_failed = _true_condition(obs.job, "Failed")
    if job_failed is not None:
        return _failed_verdict(obs, job_failed)
    if (obs.job.get("spec") or {}).get("suspend"):
        return Verdict(
            Phase.SUSPENDED,
            Reason.SUSPENDED,
            "Suspended (spec.suspend: true); set it to false to resume from the last checkpoint.",
        )
    return _active_verdict(obs)


def _condition(
    previous: list[Condition],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> Condition:
    old = next((c for c in previous if c.type == ctype), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def _conditions(
    obs: Observed, verdict: Verdict, current: FineTuneJobStatus, now: str
) -> list[Condition]:
    prev = current.conditions
    gen = obs.generation
    phase = verdict.phase
    out: list[Condition] = []

    def add(ctype: str, ok: bool, reason: str, message: str = "") -> None:
        out.append(_condition(prev, ctype, "True" if ok else "False", reason, message, gen, now))

    invalid = verdict.reason in (Reason.INVALID_SPEC, Reason.CHILD_CREATE_FAILED)
    add(
        ConditionType.ACCEPTED,
        not invalid,
        verdict.reason if invalid else Reason.CREATED,
        verdict.message if invalid else "",
    )
    if verdict.scheduled is not None:
        add(
            ConditionType.SCHEDULED,
            verdict.scheduled,
            Reason.SCHEDULED if verdict.scheduled else verdict.reason,
            "" if verdict.scheduled else verdict.message,
        )
    else:
        old = next((c for c in prev if c.type == ConditionType.SCHEDULED), None)
        if old is not None:
            out.append(old.model_copy(update={"observed_generation": gen}))
    add(ConditionType.RUNNING, phase == Phase.RUNNING, verdict.reason)
    add(
        ConditionType.SUSPENDED,
        phase == Phase.SUSPENDED,
        Reason.SUSPENDED if phase == Phase.SUSPENDED else Reason.RESUMED,
    )
    add(
        ConditionType.COMPLETE,
        phase == Phase.SUCCEEDED,
        verdict.reason if phase == Phase.SUCCEEDED else "NotComplete",
    )
    add(
        ConditionType.FAILED,
        phase == Phase.FAILED,
        verdict.reason if phase == Phase.FAILED else "NotFailed",
        verdict.message if phase == Phase.FAILED else "",
    )
    gate = verdict.result.gate if verdict.result is not None else current.gate
    if gate is not None:
        add(
            ConditionType.GATE_PASSED,
            gate.passed,
            Reason.GATE_PASSED if gate.passed else Reason.GATE_FAILED,
            gate.reason,
        )
    # kstatus: Pending and Running are InProgress (Reconciling), Succeeded is Current (Ready),
    # Failed is Failed (Stalled: no retry of this generation changes it). Suspended is none of
    # them; Ready=False makes kstatus read InProgress, as `kubectl wait --for=condition=Ready`
    # keeps waiting.
    active = phase in (Phase.PENDING, Phase.RUNNING)
    add(ConditionType.READY, phase == Phase.SUCCEEDED, verdict.reason,
        "" if phase == Phase.SUCCEEDED else verdict.message)
    add(ConditionType.RECONCILING, active, verdict.reason, verdict.message if active else "")
    add(ConditionType.STALLED, phase == Phase.FAILED, verdict.reason,
        verdict.message if phase == Phase.FAILED else "")
    return out


def compute_status(obs: Observed, current: FineTuneJobStatus, now: str) -> FineTuneJobStatus:
    """The status to write, given what was observed at time `now` (RFC 3339)."""
    verdict = decide(obs, current)
    if verdict is None:
        if current.observed_generation == obs.generation:
            return current
        return current.model_copy(update={"observed_generation": obs.generation})
    if current.phase == Phase.RUNNING and verdict.phase == Phase.PENDING:
        # Phases only move forward: a retry after a failed attempt (a new pod being created or
        # scheduled) is still a running job; the reason and message say what it waits for.
        verdict = replace(verdict, phase=Phase.RUNNING)
    update: dict[str, Any] = {
        "phase": verdict.phase,
        "reason": verdict.reason,
        "message": verdict.message,
        "observed_generation": obs.generation,
        "job_name": obs.job_name or current.job_name,
    }
    if verdict.phase == Phase.RUNNING and current.start_time is None:
        update["start_time"] = now
    if verdict.phase in Phase.FINAL:
        update["completion_time"] = ((obs.job or {}).get("status") or {}).get(
            "completionTime"
        ) or now
    if verdict.phase == Phase.RUNNING and obs.progress is not None:
        update["progress"] = obs.progress
    result = verdict.result
    if result is not None:
        update.update(
            data=result.data or current.data,
            training=result.training or current.training,
            evaluation=result.evaluation or current.evaluation,
            diagnosis=result.diagnosis or current.diagnosis,
            gate=result.gate or current.gate,
            artifacts=result.artifacts or current.artifacts,
            manifest_uri=result.manifest_uri or current.manifest_uri,
        )
        if verdict.phase == Phase.SUCCEEDED:
            progress = current.progress or Progress()
            update["progress"] = progress.model_copy(update={"percent": 100})
    new = current.model_copy(update=update)
    return new.model_copy(update={"conditions": _conditions(obs, verdict, current, now)})


def transition_events(old: FineTuneJobStatus, new: FineTuneJobStatus) -> list[Event]:
    """Events for what changed between two statuses (phase, reason, gate)."""
    events: list[Event] = []
    if (old.phase, old.reason) != (new.phase, new.reason) and new.phase is not None:
        warning = new.phase == Phase.FAILED or new.reason in (
            Reason.UNSCHEDULABLE,
            Reason.IMAGE_PULL,
            Reason.CHILD_CREATE_FAILED,
            Reason.CONTAINER_CONFIG_ERROR,
            Reason.VOLUME_NOT_READY,
        )
        events.append(
            Event(
                "Warning" if warning else "Normal",
                new.reason or new.phase,
                new.message or new.phase,
            )
        )
    if new.gate is not None and (old.gate is None or old.gate.passed != new.gate.passed):
        events.append(
            Event(
                "Normal" if new.gate.passed else "Warning",
                Reason.GATE_PASSED if new.gate.passed else Reason.GATE_FAILED,
                new.gate.reason or ("passed" if new.gate.passed else "failed"),
            )
        )
    return events
