"""What a ModelDeployment serves, as pure functions: resolve each listed version to a GGUF and
its digest, read what every pod's serve-agent reports, decide the served version, and compute
the status and Events.

The rules (issue #9):
- The desired version is `spec.activeVersion`, or (unset) the newest listed version whose
  FineTuneJob passed its gate (`allowUngated` counts as passed; `uri` versions are pinned by
  their digest and count too).
- The served version changes to the desired one only once every live pod reports it Ready
  (registered, digest confirmed by Ollama, a 1-token generation succeeded). Until then the
  previous version keeps serving: there is never a gap.
- A version that fails permanently on any pod (checksum mismatch, a file Ollama cannot load),
  or is not ready everywhere within `progressDeadlineSeconds`, is Failed and never served; the
  deployment stays on the last good version with condition Degraded. The spec is never
  rewritten.
- Automatic rollback: when the served (desired) version's live traffic is unhealthy (error
  rate or drift over `spec.rollback`, :mod:`kubetune.operator.reconcile.traffic`), the last
  healthy version — the newest one served before it that is still ready everywhere — is served
  instead, with condition RolledBack; it holds until the spec changes (a new generation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api import serving as s
from kubetune.api.common import Condition
from kubetune.api.modeldeployment import (
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelVersion,
    RolledBack,
    SwitchRecord,
    VersionStatus,
)

HISTORY_LIMIT = 20


class MdReason:
    """CamelCase reasons of ModelDeployment conditions, versions and Events."""

    JOB_NOT_FOUND = "JobNotFound"
    JOB_NOT_FINISHED = "JobNotFinished"
    JOB_FAILED = "JobFailed"
    GATE_FAILED = "GateFailed"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    PROGRESSING = "Progressing"
    READY = "Ready"
    FAILED = "VersionFailed"
    DEADLINE = "ProgressDeadlineExceeded"
    SERVED = "VersionServed"
    ROLLED_BACK = "RolledBack"
    AUTOMATIC_ROLLBACK = "AutomaticRollback"
    NO_HEALTHY_VERSION = "NoHealthyVersionToRollBackTo"
    INVALID_SPEC = "InvalidSpec"
    NO_VERSION = "NoServableVersion"
    WAITING_FOR_PODS = "WaitingForPods"


@dataclass(frozen=True)
class Resolved:
    """One listed version: its serving source, or why it has none yet."""

    name: str
    source: s.ServingVersion | None
    gated: bool | None = None
    reason: str | None = None
    message: str = ""

    @property
    def eligible(self) -> bool:
        """May be promoted automatically (gate passed, allowUngated, or a pinned uri)."""
        return self.source is not None


def resolve_version(v: ModelVersion, job: dict[str, Any] | None) -> Resolved:
    """The GGUF, digest and Modelfile of `v`; `job` is its FineTuneJob (None: not found)."""
    if v.uri is not None:
        assert v.sha256 is not None  # the model and the CRD require it
        return Resolved(
            v.name,
            s.ServingVersion(
                name=v.name,
                gguf_uri=v.uri,
                sha256=v.sha256,
                modelfile_uri=v.modelfile_uri,
                modelfile_sha256=v.modelfile_sha256,
                drift_reference_uri=v.drift_reference_uri,
                drift_reference_sha256=v.drift_reference_sha256,
            ),
        )
    if job is None:
        return Resolved(v.name, None, None, MdReason.JOB_NOT_FOUND,
                        f"version {v.name}: FineTuneJob {v.fine_tune_job!r} not found in this namespace")
    status = job.get("status") or {}
    phase = status.get("phase")
    gate = status.get("gate") or {}
    gated = gate.get("passed") if gate else None
    if phase == "Failed":
        return Resolved(v.name, None, gated, MdReason.JOB_FAILED,
                        f"version {v.name}: FineTuneJob {v.fine_tune_job!r} failed "
                        f"({status.get('reason') or 'see its status'}); it has nothing to serve")
    if phase != "Succeeded":
        return Resolved(v.name, None, gated, MdReason.JOB_NOT_FINISHED,
                        f"version {v.name}: FineTuneJob {v.fine_tune_job!r} is {phase or 'Pending'}; "
                        "the version is prepared once it succeeds")
    if gated is False and not v.allow_ungated:
        return Resolved(v.name, None, gated, MdReason.GATE_FAILED,
                        f"version {v.name}: FineTuneJob {v.fine_tune_job!r} failed its quality gate "
                        f"({gate.get('reason') or 'see its status'}); set allowUngated: true to serve it anyway")
    artifacts = status.get("artifacts") or []
    gguf = next((a for a in artifacts if a.get("kind") == "gguf" and a.get("quantization") == v.quantization), None)
    if gguf is None:
        have = sorted(str(a.get("quantization")) for a in artifacts if a.get("kind") == "gguf")
        return Resolved(v.name, None, gated, MdReason.ARTIFACT_NOT_FOUND,
                        f"version {v.name}: FineTuneJob {v.fine_tune_job!r} exported no {v.quantization} GGUF "
                        f"(it has: {', '.join(have) or 'none'}); set quantization to one of them")
    modelfile = next((a for a in artifacts if a.get("kind") == "modelfile"
                      and a.get("quantization") == v.quantization), None)
    reference = next((a for a in artifacts if a.get("kind") == "drift-reference"), None)
    return Resolved(
        v.name,
        s.ServingVersion(
            name=v.name,
            gguf_uri=gguf["uri"],
            sha256=gguf["sha256"],
            size_bytes=gguf.get("sizeBytes"),
            modelfile_uri=modelfile["uri"] if modelfile else None,
            modelfile_sha256=modelfile["sha256"] if modelfile else None,
            drift_reference_uri=reference["uri"] if reference else None,
            drift_reference_sha256=reference["sha256"] if reference else None,
        ),
        gated,
    )


@dataclass(frozen=True)
class PodView:
    """One serving pod: its name, whether it is terminating, and its agent's report."""

    name: str
    agent: s.AgentStatus | None
    error: str = ""  # why the agent could not be read


@dataclass
class Decision:
    served: str | None
    keep_loaded: list[str]
    status: ModelDeploymentStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def desired_version(spec: ModelDeploymentSpec, resolved: Sequence[Resolved]) -> str | None:
    if spec.active_version is not None:
        return spec.active_version
    eligible = [r.name for r in resolved if r.eligible]
    return eligible[-1] if eligible else None


def _agent_state(pod: PodView, version: str, sha: str) -> s.AgentVersionState | None:
    if pod.agent is None:
        return None
    for st in pod.agent.versions:
        if st.name == version and st.sha256 == sha:
            return st
    return None


def _parse(t: str) -> dt.datetime:
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))


def _version_status(
    r: Resolved,
    pods: Sequence[PodView],
    previous: VersionStatus | None,
    now: str,
    deadline_seconds: int,
) -> VersionStatus:
    if r.source is None:
        return VersionStatus(name=r.name, phase="Pending", gated=r.gated, pods_total=len(pods),
                             reason=r.reason, message=r.message)
    sha = r.source.sha256
    states = [(p, _agent_state(p, r.name, sha)) for p in pods]
    ready = sum(1 for _, st in states if st is not None and st.phase == "Ready")
    verified = bool(pods) and all(st is not None and st.sha256_verified for _, st in states)
    base = {"name": r.name, "sha256": sha, "gated": r.gated, "pods_ready": ready,
            "pods_total": len(pods), "sha256_verified": verified}
    same = previous is not None and previous.sha256 == sha
    was_failed = same and previous is not None and previous.phase == "Failed"
    if was_failed and previous is not None:
        # Failed is final for this digest: a new sha256 (a new spec) starts it again.
        return previous.model_copy(update={"pods_ready": ready, "pods_total": len(pods)})
    failed = [(p, st) for p, st in states if st is not None and st.phase == "Failed" and st.permanent]
    if failed:
        pod, st = failed[0]
        return VersionStatus(**base, phase="Failed", reason=MdReason.FAILED,
                             message=f"version {r.name} failed at {st.step or 'an unknown step'} on pod "
                             f"{pod.name}: {st.message}")
    if pods and ready == len(pods):
        return VersionStatus(**base, phase="Ready", ready=True)
    since = previous.progressing_since if same and previous is not None and previous.progressing_since else now
    if pods and (_parse(now) - _parse(since)).total_seconds() > deadline_seconds:
        why = "; ".join(
            f"{p.name}: " + (f"{st.phase} at {st.step}: {st.message}" if st is not None and st.step
                             else (st.message or st.phase) if st is not None
                             else (p.error or "agent has not reported it"))
            for p, st in states if st is None or st.phase != "Ready"
        )
        return VersionStatus(**base, phase="Failed", progressing_since=since, reason=MdReason.DEADLINE,
                             message=f"version {r.name} was not ready on every pod within "
                             f"{deadline_seconds} s ({why})")
    waiting = [f"{p.name}: {st.phase}{' (' + st.message + ')' if st.message else ''}" if st is not None
               else f"{p.name}: {p.error or 'not reported yet'}" for p, st in states
               if st is None or st.phase != "Ready"]
    return VersionStatus(**base, phase="Progressing", progressing_since=since, reason=MdReason.PROGRESSING,
                         message=f"version {r.name}: {ready}/{len(pods)} pods ready"
                         + (f" ({'; '.join(waiting)})" if waiting else ""))


def statefulset_rollout(sts: dict[str, Any] | None, replicas: int) -> str | None:
    """Why the serving StatefulSet's pods are not all on its current template (None: they are),
    as kstatus reads a StatefulSet: its controller has seen the latest spec, every replica is
    updated, and the current revision is the update revision."""
    if sts is None:
        return "creating the serving StatefulSet"
    meta, status = sts.get("metadata") or {}, sts.get("status") or {}
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return "the StatefulSet controller has not seen the latest pod template yet"
    updated = status.get("updatedReplicas") or 0
    update_revision = status.get("updateRevision")
    if updated < replicas or (update_revision and status.get("currentRevision") != update_revision):
        return f"replacing pods with the current template: {updated}/{replicas} updated"
    return None


def _condition(current: Sequence[Condition], ctype: str, ok: bool, reason: str, message: str,
               generation: int | None, now: str) -> Condition:
    status = "True" if ok else "False"
    old = next((c for c in current if c.type == ctype), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(type=ctype, status=status, reason=reason, message=message[:1024],
                     observed_generation=generation, last_transition_time=since)


def decide(
    spec: ModelDeploymentSpec,
    generation: int | None,
    resolved: Sequence[Resolved],
    pods: Sequence[PodView],
    current: ModelDeploymentStatus,
    now: str,
    unhealthy: str | None = None,
    rollout: str | None = None,
) -> Decision:
    """The served version, the versions to keep loaded, the new status and the Events.

    `unhealthy`: why the served version's live traffic calls for an automatic rollback
    (:func:`kubetune.operator.reconcile.traffic.rollback_reason`), or None. `rollout`: why the
    pods are not all on the StatefulSet's current template yet (:func:`statefulset_rollout`),
    or None: the deployment is not Ready while its pods are being replaced.
    """
    by_name = {r.name: r for r in resolved}
    previous = {v.name: v for v in current.versions}
    versions = [_version_status(r, pods, previous.get(r.name), now, spec.progress_deadline_seconds)
                for r in resolved]
    vstat = {v.name: v for v in versions}
    wanted = desired_version(spec, resolved)
    served = current.served_version
    events: list[tuple[str, str, str]] = []

    def servable(name: str | None) -> bool:
        return name is not None and name in vstat and vstat[name].phase == "Ready"

    # An automatic rollback holds until the spec changes (a new generation tries again).
    rolled_back = current.rolled_back
    if rolled_back is not None and (rolled_back.generation != generation or not servable(rolled_back.to_version)):
        rolled_back = None
    if unhealthy is not None and rolled_back is None and served is not None and served == wanted:
        target = next((h.from_version for h in reversed(current.history)
                       if h.from_version not in (None, served) and servable(h.from_version)), None)
        if target is None:
            events.append(("Warning", MdReason.NO_HEALTHY_VERSION,
                           f"{served} is unhealthy ({unhealthy}) but no earlier version is ready to take over"))
        else:
            rolled_back = RolledBack(generation=generation or 0, from_version=served, to_version=target,
                                     reason=unhealthy[:1024], time=now)
    desired = rolled_back.to_version if rolled_back is not None else wanted

    # The served version stays while it is listed with the same digest; if it was removed,
    # the newest version ready everywhere takes over (never a gap when one exists).
    if served is not None:
        src = by_name.get(served)
        if src is None or src.source is None or (current.served_digest not in (None, src.source.sha256)):
            served = None
    reason = None
    if servable(desired) and desired != served and rolled_back is not None and desired == rolled_back.to_version:
        reason = MdReason.AUTOMATIC_ROLLBACK
        served = desired
    elif servable(desired) and desired != served:
        reason = "ActiveVersionChanged" if spec.active_version else "Promoted"
        old_index = next((i for i, r in enumerate(resolved) if r.name == current.served_version), None)
        new_index = next(i for i, r in enumerate(resolved) if r.name == desired)
        if old_index is not None and new_index < old_index:
            reason = "Rollback"
        served = desired
    elif served is None and current.served_version is not None:
        # The served version left the spec (or its digest changed): never a gap while another
        # version is ready. (On a first rollout only the desired version is served.)
        ready_now = [r.name for r in resolved if servable(r.name)]
        if ready_now:
            served, reason = ready_now[-1], "ServedVersionRemoved"

    history = list(current.history)
    served_digest = by_name[served].source.sha256 if served is not None and by_name[served].source else None  # type: ignore[union-attr]
    if served is not None and served != current.served_version and served_digest is not None:
        automatic = reason == MdReason.AUTOMATIC_ROLLBACK and rolled_back is not None
        history.append(SwitchRecord(time=now, from_version=current.served_version, to_version=served,
                                    digest=served_digest, reason=reason or "Promoted",
                                    message=rolled_back.reason if automatic and rolled_back else ""))
        history = history[-HISTORY_LIMIT:]
        events.append(("Warning" if automatic else "Normal",
                       MdReason.ROLLED_BACK if reason in ("Rollback", MdReason.AUTOMATIC_ROLLBACK) else MdReason.SERVED,
                       f"now serving {served} (sha256 {served_digest[:12]}…)"
                       + (f", was {current.served_version}" if current.served_version else "")
                       + f": {reason}" + (f": {rolled_back.reason}" if automatic and rolled_back else "")))
    for v in versions:
        old = previous.get(v.name)
        if v.phase == "Failed" and (old is None or old.phase != "Failed" or old.sha256 != v.sha256):
            events.append(("Warning", v.reason or MdReason.FAILED, v.message))

    # keep loaded: served first, then the desired one (being prepared), then the one before.
    keep: list[str] = []
    prior = history[-1].from_version if history else None
    for name in (served, desired, prior):
        if name is not None and name not in keep and name in by_name and by_name[name].source is not None:
            keep.append(name)
    keep = keep[: spec.max_loaded_models]

    agents_on_served = [p for p in pods if p.agent is not None and p.agent.ready
                        and p.agent.served == served and p.agent.served_digest == served_digest]
    desired_failed = wanted is not None and wanted in vstat and vstat[wanted].phase == "Failed"
    all_ready = served is not None and len(agents_on_served) == len(pods) and len(pods) >= spec.replicas
    if served is None:
        phase = "Pending"
        why = (vstat[desired].message if desired in vstat else "") if desired else ""
        msg = why or "no version is servable yet: list a version whose FineTuneJob succeeded"
        p_reason = MdReason.NO_VERSION
    elif desired_failed:
        phase, p_reason = "Degraded", MdReason.FAILED
        msg = f"{vstat[wanted].message}; still serving {served}"  # type: ignore[index]
    elif rolled_back is not None:
        phase, p_reason = "Degraded", MdReason.ROLLED_BACK
        msg = (f"rolled back from {rolled_back.from_version} to {rolled_back.to_version}: {rolled_back.reason}; "
               "it stays rolled back until the spec changes")
    elif served != desired:
        phase, p_reason = "Progressing", MdReason.PROGRESSING
        d = vstat.get(desired) if desired else None
        msg = f"serving {served} until {desired} is ready on every pod" + (f": {d.message}" if d and d.message else "")
    elif not all_ready:
        phase, p_reason = "Progressing", MdReason.WAITING_FOR_PODS
        msg = f"{len(agents_on_served)}/{max(len(pods), spec.replicas)} pods serve {served}"
    elif rollout is not None:
        phase, p_reason = "Progressing", MdReason.WAITING_FOR_PODS
        msg = f"serving {served}; {rollout}"
    else:
        phase, p_reason, msg = "Ready", MdReason.READY, f"serving {served} on {len(pods)} pods"
    conds = current.conditions
    # kstatus: Stalled (kstatus Failed) when the desired version failed, served or not, or was
    # rolled back: neither changes until the spec does, so a GitOps tool must not wait for it.
    # So is a desired version whose FineTuneJob failed or failed its gate (allowUngated unset),
    # or, with no activeVersion, every listed version being so.
    stuck = {v.name for v in versions if v.reason in (MdReason.JOB_FAILED, MdReason.GATE_FAILED)}
    desired_stuck = wanted in stuck if wanted is not None else bool(vstat) and set(vstat) <= stuck
    if desired_stuck and wanted is None:
        msg = "; ".join(v.message for v in versions if v.name in stuck)
    stalled = desired_failed or desired_stuck or rolled_back is not None
    reconciling = phase in ("Pending", "Progressing") and not stalled
    conditions = [
        _condition(conds, "Ready", phase == "Ready", p_reason, msg, generation, now),
        _condition(conds, "Reconciling", reconciling, p_reason, msg, generation, now),
        _condition(conds, "Stalled", stalled, p_reason if stalled else MdReason.READY,
                   msg if stalled else "", generation, now),
        _condition(conds, "Degraded", phase == "Degraded", p_reason if phase == "Degraded" else MdReason.READY,
                   msg if phase == "Degraded" else "", generation, now),
        _condition(conds, "RolledBack", rolled_back is not None,
                   MdReason.AUTOMATIC_ROLLBACK if rolled_back is not None else MdReason.READY,
                   msg if rolled_back is not None else "", generation, now),
    ]
    if phase == "Degraded" and current.phase != "Degraded":
        events.append(("Warning", MdReason.FAILED, msg))
    status = current.model_copy(update={
        "phase": phase,
        "observed_generation": generation,
        "conditions": conditions,
        "desired_version": wanted,
        "rolled_back": rolled_back,
        "served_version": served,
        "served_digest": served_digest,
        "replicas": len(pods),
        "ready_replicas": len(agents_on_served),
        "versions": versions,
        "history": history,
        "reason": p_reason,
        "message": msg[:1024],
    })
    return Decision(served=served, keep_loaded=keep, status=status, events=events)


def rfc3339(now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> str:
    return now().strftime("%Y-%m-%dT%H:%M:%SZ")
