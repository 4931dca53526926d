"""Reconcile one FineTuneJob: observe → build desired children → apply → compute status → patch.

Level-triggered and idempotent: it may run any number of times, from any event, after any
restart, and converges to the same children and the same status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune.api.constants import Phase, Reason
from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.trainer_contract import RESULT_FILE_NAME, Progress, TrainerResult
from kubetune.operator.builders.training_job import (
    build_spec_configmap,
    build_training_job,
    mutable_job_fields,
    output_path,
)
from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES
from kubetune.operator.reconcile.preflight import Preflight
from kubetune.operator.reconcile.references import (
    Problem,
    read_claim_access_modes,
    read_configmap_keys,
    read_secret_keys,
    reference_problems,
    secret_problems,
    single_node_only,
)
from kubetune.operator.reconcile.status import Observed, compute_status, transition_events
from kubetune.operator.settings import Settings

log = logging.getLogger(__name__)

# secret_problems and read_secret_keys live in references.py; `kubetune validate` imports them here.
__all__ = ["FineTuneJobReconciler", "owned_children", "read_secret_keys", "secret_problems"]


def describe_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field by its camelCase path."""
    lines = []
    for err in exc.errors():
        path = ".".join([prefix, *(str(p) for p in err["loc"])])
        lines.append(f"{path}: {err['msg']}")
    return "; ".join(lines)


def parse_spec(raw: Mapping[str, Any]) -> tuple[FineTuneJobSpec | None, str | None]:
    """(spec, None) or (None, actionable message) for a FineTuneJob's spec."""
    try:
        return FineTuneJobSpec.model_validate(dict(raw)), None
    except ValidationError as exc:
        return None, "Invalid spec: " + describe_validation_error(exc)


def _relabel(status: FineTuneJobStatus, old: str, new: str) -> FineTuneJobStatus:
    """`status` with the reason `old` replaced by `new` in status.reason and the conditions."""
    conditions = [
        cd.model_copy(update={"reason": new}) if cd.reason == old else cd
        for cd in status.conditions
    ]
    reason = new if status.reason == old else status.reason
    return status.model_copy(update={"reason": reason, "conditions": conditions})


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether `obj` has an owner reference to the object with UID `uid`."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def owned_children(
    body: Mapping[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The trainer Job of the FineTuneJob `body` and that Job's pods, among `jobs` and `pods`
    found by its name. Matched by owner UID, never by name: a FineTuneJob deleted and
    re-created under the same name, or one whose children were orphaned, leaves Jobs and pods
    carrying the same name label that belong to another object."""
    uid = body["metadata"]["uid"]
    mine = [j for j in jobs if owned_by(j, uid)]
    if not mine:
        return None, []
    job = max(mine, key=lambda j: j["metadata"].get("creationTimestamp") or "")
    return job, [p for p in pods if owned_by(p, job["metadata"]["uid"])]


class ChildCreateError(Exception):
    """The apiserver refused a child (ConfigMap or Job) of a FineTuneJob; the message says which
    and why, in the apiserver's words."""


def _refusal(kind: str, name: str, exc: ApiException) -> ChildCreateError:
    try:
        detail = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        detail = exc.reason
    return ChildCreateError(f"The apiserver refused to create the {kind} {name} (HTTP {exc.status}): {detail}")


# Status fields a phase decision rests on: kept when a newer operator cannot read the rest of
# a status an older one wrote (a stricter model), so a finished job stays finished.
_CORE_STATUS_FIELDS = ("phase", "reason", "message", "jobName", "observedGeneration", "startTime",
                       "completionTime")


def read_status(raw: Mapping[str, Any], name: str) -> FineTuneJobStatus:
    """The status as the model reads it; when the model refuses it (written by another version
    of kubetune), its phase, reason, Job name and times alone, so that a finished job is never
    started again. Fields left out are not written back: status patches are merges."""
    try:
        return FineTuneJobStatus.model_validate(dict(raw))
    except ValidationError as exc:
        log.warning("status of %s: keeping its phase only, the rest is unreadable: %s", name,
                    describe_validation_error(exc, "status"))
    core = {k: raw[k] for k in _CORE_STATUS_FIELDS if k in raw}
    try:
        return FineTuneJobStatus.model_validate(core)
    except ValidationError:
        phase = raw.get("phase")
        return FineTuneJobStatus(phase=phase) if phase in Phase.ALL else FineTuneJobStatus()


@dataclass(frozen=True)
class _Written:
    """The last status this process wrote and what is known to predate it. resourceVersions are
    opaque (only equality means anything), so a snapshot is stale when its resourceVersion, or
    (after someone else's write in between, e.g. a spec edit) its status, is one this process
    had already seen or written before: the chain grows with each write until the index shows
    the last one, and is dropped then."""

    version: str  # the resourceVersion the last write produced
    wire: dict[str, Any]
    older_versions: frozenset[str] = frozenset()
    older_statuses: tuple[dict[str, Any], ...] = ()

    def is_stale(self, body: Mapping[str, Any]) -> bool:
        rv = str(body["metadata"].get("resourceVersion") or "")
        if rv == self.version:
            return False
        return rv in self.older_versions or dict(body.get("status") or {}) in self.older_statuses

    def after(self, version: str, wire: dict[str, Any], body: Mapping[str, Any]) -> _Written:
        """The record of a further write, made while the index still showed `body`."""
        return _Written(
            version, wire,
            self.older_versions | {self.version, str(body["metadata"].get("resourceVersion") or "")},
            (*self.older_statuses, self.wire, dict(body.get("status") or {})),
        )


# How long a referenced Secret, ConfigMap or claim that was found is taken to exist still.
REFERENCE_CACHE_SECONDS = 30.0
_T = TypeVar("_T")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FineTuneJobReconciler:
    """Keeps FineTuneJobs' children and status true. Safe to call from many threads."""

    def __init__(
        self, api: KubeApi, settings: Settings, clock: Callable[[], str] = now_rfc3339
    ) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self.preflight = Preflight(api.core, settings.gpu_prices_configmap)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # (kind, namespace, name) -> (when read, keys or access modes) of references found
        self._references: dict[tuple[str, str, str], tuple[float, Any]] = {}
        # The last status this process wrote, per uid, and how to tell the snapshots that are
        # older than that write (the index lags behind our own patches).
        self._written: dict[str, _Written] = {}
        # When this process last wrote each FineTuneJob's status (monotonic), and where to ask
        # for a later reconcile of a write held back (the operator's work queue).
        self._written_at: dict[str, float] = {}
        self.requeue_after: Callable[[tuple[str, str], float], None] | None = None

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted FineTuneJob."""
        with self._locks_guard:
            self._locks.pop(uid, None)
        self._written.pop(uid, None)
        self._written_at.pop(uid, None)

    def reconcile(
        self,
        body: Mapping[str, Any],
        job: dict[str, Any] | None,
        pods: list[dict[str, Any]],
        progress: Progress | None = None,
    ) -> FineTuneJobStatus:
        """Bring one FineTuneJob's children and status in line; returns the status written."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return FineTuneJobStatus.model_validate(body.get("status") or {})
        RECONCILES.inc()
        with self._lock(meta["uid"]), RECONCILE_ERRORS.count_exceptions(), RECONCILE_SECONDS.time():
            return self._reconcile_locked(body, job, pods, progress)

    def _current_status(self, body: Mapping[str, Any]) -> FineTuneJobStatus:
        raw = dict(body.get("status") or {})
        uid = body["metadata"]["uid"]
        written = self._written.get(uid)
        if written is not None:
            if written.is_stale(body):
                raw = written.wire
            else:
                self._written.pop(uid, None)  # the index has caught up with the write
        return read_status(raw, body["metadata"]["name"])

    def _reconcile_locked(
        self,
        body: Mapping[str, Any],
        job: dict[str, Any] | None,
        pods: list[dict[str, Any]],
        progress: Progress | None,
    ) -> FineTuneJobStatus:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        spec, spec_error = parse_spec(body.get("spec") or {})
        current = self._current_status(body)

        # Checked once, before the Job exists: a missing Secret would otherwise leave the pod
        # holding its GPU in CreateContainerConfigError, or fail the job after training.
        missing: tuple[str, str] | None = None  # (reason, message)
        planned: dict[str, Any] = {}  # status.preflight and status.cost, before the Job exists
        refused: str | None = None
        if spec is not None and current.phase not in Phase.FINAL:
            if job is None and not current.job_name:
                missing = self._missing_references(ns, spec)
                if missing is None:  # memory and cost before any GPU time; WontFit stops here
                    missing, preflight, cost = self.preflight.check(body, spec)
                    planned = {"preflight": preflight, "cost": cost}
            if missing is None:
                try:
                    job = self._apply_children(body, spec, job, current)
                except ChildCreateError as exc:
                    refused = str(exc)
                    log.warning("%s/%s: %s", ns, name, refused)
        if job is None and current.job_name and current.phase not in Phase.FINAL:
            # The watch cache may lag: confirm before declaring the Job gone.
            job = self.api.read_job(ns, current.job_name)
            if job is not None and not owned_by(job, meta["uid"]):
                job = None
        recovered: TrainerResult | None = None
        unrecovered = ""
        if job is None and current.job_name and current.phase not in Phase.FINAL and spec is not None:
            recovered, unrecovered = self._read_result_file(ns, name, spec)

        observed = Observed(
            generation=int(meta.get("generation") or 1),
            spec=spec,
            spec_error=spec_error or (missing[1] if missing else None),
            job=job,
            pods=[p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
            if job
            else [],
            job_name=job["metadata"]["name"] if job is not None else None,
            progress=progress,
            create_error=refused,
            recovered=recovered,
            unrecovered=unrecovered,
            volume_event=self._volume_event(pods) if job is not None and current.phase not in Phase.FINAL else None,
        )
        new = compute_status(observed, current, self.clock())
        new = self.preflight.account(ns, spec, current, new.model_copy(update=planned))
        if missing is not None:
            new = _relabel(new, Reason.INVALID_SPEC, missing[0])
        if new != current and (delay := self._hold_back(meta["uid"], current, new)) > 0:
            assert self.requeue_after is not None
            self.requeue_after((ns, name), delay)
            return current
        if new != current:
            wire = new.to_wire()
            patch = {k: None for k in current.to_wire() if k not in wire} | wire
            try:
                # The UID makes the patch fail rather than land on a newer object of the same
                # name, when this one was deleted and re-created since it was read.
                version = self.api.patch_finetunejob_status(ns, name, patch, uid=meta["uid"])
            except ApiException as exc:
                # A failed JSON-patch test (the uid) is a 422 without causes; a status the
                # schema refuses would list them and is raised.
                if exc.status == 404 or (exc.status == 422 and "rejected our request" in str(exc.body)):
                    log.info("%s/%s (uid %s) is gone or replaced: status not written", ns, name, meta["uid"])
                    return new
                raise
            previous = self._written.get(meta["uid"]) or _Written("", {})
            self._written[meta["uid"]] = previous.after(version, wire, body)
            self._written_at[meta["uid"]] = time.monotonic()
            owner = {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": dict(meta),
            }
            for event in transition_events(current, new):
                self.api.post_event(owner, event.type, event.reason, event.message)
        return new

    def _hold_back(self, uid: str, current: FineTuneJobStatus, new: FineTuneJobStatus) -> float:
        """Seconds to hold a status write back, 0 to write now. While a job stays Pending with
        its Job created, what changes is detail (the pod created, scheduled, its containers
        starting), often several times within a second or two; those writes are coalesced to at
        most one per `settings.status_coalesce` seconds, and the reconcile is queued again for
        when the hold ends. A phase change (Running, Failed, ...) is written at once. With 1000
        jobs starting together this halves the status writes, which compete at the apiserver
        with the Job and pod creations (bench/operator_scale.py)."""
        if self.settings.status_coalesce <= 0 or self.requeue_after is None:
            return 0.0
        if not (current.phase == new.phase == Phase.PENDING and current.job_name
                and new.job_name == current.job_name):
            return 0.0
        last = self._written_at.get(uid)
        if last is None:
            return 0.0
        return max(0.0, last + self.settings.status_coalesce - time.monotonic())

    def _reference_problems(self, namespace: str, spec: FineTuneJobSpec) -> list[Problem]:
        problems = [Problem(Reason.SECRET_NOT_FOUND, m) for m in secret_problems(spec, namespace, self._secret_keys)]
        return problems + reference_problems(spec, namespace, self._configmap_keys, self._claim_exists)

    def _missing_references(self, namespace: str, spec: FineTuneJobSpec) -> tuple[str, str] | None:
        """(reason, status message) when a referenced Secret, ConfigMap (or a key of one) or
        PersistentVolumeClaim is missing, else None. The reason is that of the first problem."""
        problems = self._reference_problems(namespace, spec)
        if problems:
            # A remembered reference may have lost a key since: judge only on fresh reads.
            with self._locks_guard:
                for key in [k for k in self._references if k[1] == namespace]:
                    del self._references[key]
            problems = self._reference_problems(namespace, spec)
        if not problems:
            return None
        message = (
            "The trainer Job was not created: "
            + "; ".join(p.message for p in problems)
            + ". Then delete and re-create this FineTuneJob."
        )
        return problems[0].reason, message

    def _cached(self, kind: str, namespace: str, name: str, read: Callable[[], _T | None]) -> _T | None:
        """`read()`, remembered for REFERENCE_CACHE_SECONDS when it found the object: a burst of
        FineTuneJobs naming one Secret, ConfigMap or claim reads it once, not once each. What is
        missing is never remembered, so it is read again at the next try."""
        key = (kind, namespace, name)
        now = time.monotonic()
        with self._locks_guard:
            hit = self._references.get(key)
        if hit is not None and now - hit[0] < REFERENCE_CACHE_SECONDS:
            return cast(_T, hit[1])
        value = read()
        if value is not None:
            with self._locks_guard:
                if len(self._references) > 10_000:
                    self._references.clear()
                self._references[key] = (now, value)
        return value

    def _configmap_keys(self, namespace: str, name: str) -> list[str] | None:
        try:
            return self._cached("configmap", namespace, name,
                                lambda: read_configmap_keys(self.api.core, namespace, name))
        except PermissionError:
            log.warning("cannot check ConfigMap %s/%s (forbidden): grant the operator get on configmaps", namespace, name)
            raise

    def _claim_modes(self, namespace: str, name: str) -> list[str] | None:
        return self._cached("claim", namespace, name,
                            lambda: read_claim_access_modes(self.api.core, namespace, name))

    def _claim_exists(self, namespace: str, name: str) -> bool:
        try:
            return self._claim_modes(namespace, name) is not None
        except PermissionError:
            log.warning("cannot check PersistentVolumeClaim %s/%s (forbidden): grant the operator get on "
                        "persistentvolumeclaims", namespace, name)
            raise

    def _secret_keys(self, namespace: str, name: str) -> list[str] | None:
        try:
            return self._cached("secret", namespace, name,
                                lambda: read_secret_keys(self.api.core, namespace, name))
        except PermissionError:
            # Without `get` on secrets the kubelet still reports a missing Secret, only later.
            log.warning(
                "cannot check Secret %s/%s (forbidden): grant the operator get on secrets",
                namespace,
                name,
            )
            raise

    def _volume_event(self, pods: list[dict[str, Any]]) -> tuple[str, str] | None:
        """The latest FailedMount / FailedAttachVolume event of the newest trainer pod, when it is
        scheduled and still waiting to start (the kubelet says why only in Events). One list call,
        made only for a pod in that state."""
        live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
        if not live:
            return None
        pod = max(live, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
        status = pod.get("status") or {}
        if status.get("phase") != "Pending" or not (pod.get("spec") or {}).get("nodeName"):
            return None
        states = [s.get("state") or {} for s in status.get("containerStatuses") or []]
        if any("running" in s or "terminated" in s for s in states):
            return None
        if any((s.get("waiting") or {}).get("reason") not in (None, "ContainerCreating") for s in states):
            return None  # the kubelet's reason in the pod status says more
        meta = pod["metadata"]
        try:
            events = self.api.pod_warning_events(meta["namespace"], meta["name"], meta.get("uid") or "")
        except ApiException as exc:  # an explanation never blocks the reconcile (e.g. no `list events`)
            log.warning("cannot list events of pod %s/%s (HTTP %s): status says less", meta["namespace"], meta["name"], exc.status)
            return None
        volume = [e for e in events if e.get("reason") in ("FailedMount", "FailedAttachVolume")]
        if not volume:
            return None
        last = max(volume, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return str(last.get("reason")), str(last.get("message") or "")

    def _single_node_claim(self, namespace: str, spec: FineTuneJobSpec) -> bool:
        """Whether the artifacts claim is ReadWriteOnce (unknown when it may not be read: no)."""
        try:
            modes = self._claim_modes(namespace, spec.export.output.pvc_name)
        except PermissionError:
            return False
        return single_node_only(modes or [])

    def _read_result_file(
        self, namespace: str, name: str, spec: FineTuneJobSpec
    ) -> tuple[TrainerResult | None, str]:
        """The trainer's full result from result.json on the artifact volume, when the operator
        can read that volume (KUBETUNE_CLAIMS_ROOT); else None and why, for the status."""
        claim, folder = spec.export.output.pvc_name, output_path(spec, namespace, name)
        where = f"pvc://{claim}/{folder}/{RESULT_FILE_NAME}"
        if not self.settings.claims_root:
            return None, (f"its result is in {where}, on a volume the operator cannot read (set "
                          "KUBETUNE_CLAIMS_ROOT where it can, and it is read from there).")
        base = (Path(self.settings.claims_root) / namespace / claim).resolve()
        path = (base / folder / RESULT_FILE_NAME).resolve()
        if not path.is_relative_to(base):  # export.output.path must not lead out of the claim
            return None, f"{where} is outside the claim."
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None, f"{where} does not exist (the trainer did not get to write it)."
        except OSError as exc:
            return None, f"{where} could not be read ({exc.strerror})."
        try:
            return TrainerResult.model_validate_json(text), ""
        except ValidationError as exc:
            return None, f"{where} is not a trainer result: {describe_validation_error(exc, 'result')}."

    def _apply_children(
        self,
        body: Mapping[str, Any],
        spec: FineTuneJobSpec,
        job: dict[str, Any] | None,
        current: FineTuneJobStatus,
    ) -> dict[str, Any] | None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if job is None:
            if current.job_name:
                return None  # created before and gone now: the status says so, nothing is re-run
            uid = meta["uid"]
            configmap = build_spec_configmap(name, ns, spec, uid=uid)
            desired = build_training_job(name, ns, spec, self.settings, uid=uid,
                                         single_node_claim=self._single_node_claim(ns, spec))
            owner = kopf.Body(cast(kopf.RawBody, dict(body)))
            kopf.adopt(configmap, owner=owner)
            kopf.adopt(desired, owner=owner)
            for kind, child in (("ConfigMap", configmap), ("Job", desired)):
                try:
                    if kind == "ConfigMap":
                        self.api.create_configmap(child)
                    else:
                        created = self.api.create_job(child)
                except ApiException as exc:
                    # 4xx: invalid, forbidden (RBAC, quota, admission policy). Said in status
                    # and an Event; retried on the next resync. 5xx goes to the work queue.
                    if exc.status is not None and 400 <= exc.status < 500:
                        raise _refusal(kind, child["metadata"]["name"], exc) from exc
                    raise
            if not owned_by(created, uid):
                raise ChildCreateError(
                    f"A Job named {created['metadata']['name']} already exists and belongs to another "
                    "object; delete it, or re-create this FineTuneJob (a new UID gives a new Job name)."
                )
            return created
        wanted = mutable_job_fields(spec)
        have = {k: (job.get("spec") or {}).get(k) for k in wanted}
        if have.get("suspend") is None:
            have["suspend"] = False
        if have != wanted:
            self.api.patch_job(ns, job["metadata"]["name"], wanted)
            job = {**job, "spec": {**(job.get("spec") or {}), **wanted}}
        return job
