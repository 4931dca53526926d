"""Reconcile one FineTuneJob: observe → build desired children → apply → compute status → patch.

Level-triggered and idempotent: it may run any number of times, from any event, after any
restart, and converges to the same children and the same status.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from pydantic import ValidationError

from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus, Progress
from kubetune.operator.builders.names import training_job_name
from kubetune.operator.builders.training_job import (
    build_spec_configmap,
    build_training_job,
    mutable_job_fields,
)
from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES
from kubetune.operator.reconcile.status import Observed, compute_status, transition_events
from kubetune.operator.settings import Settings

log = logging.getLogger(__name__)


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


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FineTuneJobReconciler:
    """Keeps FineTuneJobs' children and status true. Safe to call from many threads."""

    def __init__(self, api: KubeApi, settings: Settings, clock: Callable[[], str] = now_rfc3339) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # The last status this process wrote, per uid, with the resourceVersion the patch got:
        # events and index snapshots older than that carry a stale status.
        self._written: dict[str, tuple[int, dict[str, Any]]] = {}

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted FineTuneJob."""
        with self._locks_guard:
            self._locks.pop(uid, None)
        self._written.pop(uid, None)

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
        written = self._written.get(body["metadata"]["uid"])
        rv = int(body["metadata"].get("resourceVersion") or 0)
        if written is not None and written[0] > rv:  # resourceVersions of one object are etcd revisions
            raw = written[1]
        try:
            return FineTuneJobStatus.model_validate(raw)
        except ValidationError:
            log.warning("ignoring unreadable status of %s", body["metadata"]["name"])
            return FineTuneJobStatus()

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
        job_name = training_job_name(name)

        if spec is not None and current.phase not in ("Succeeded", "Failed"):
            job = self._apply_children(body, spec, job, current)
        if job is None and current.job_name and current.phase not in ("Succeeded", "Failed"):
            job = self.api.read_job(ns, job_name)  # the watch cache may lag; confirm before declaring it gone

        observed = Observed(
            generation=int(meta.get("generation") or 1),
            spec=spec,
            spec_error=spec_error,
            job=job,
            pods=[p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")] if job else [],
            job_name=job_name if job is not None else None,
            progress=progress,
        )
        new = compute_status(observed, current, self.clock())
        if new != current:
            wire = new.to_wire()
            patch = {k: None for k in current.to_wire() if k not in wire} | wire
            version = self.api.patch_finetunejob_status(ns, name, patch)
            self._written[meta["uid"]] = (version, wire)
            owner = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": dict(meta)}
            for event in transition_events(current, new):
                self.api.post_event(owner, event.type, event.reason, event.message)
        return new

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
            configmap = build_spec_configmap(name, ns, spec)
            desired = build_training_job(name, ns, spec, self.settings)
            owner = kopf.Body(cast(kopf.RawBody, dict(body)))
            kopf.adopt(configmap, owner=owner)
            kopf.adopt(desired, owner=owner)
            self.api.create_configmap(configmap)
            return self.api.create_job(desired)
        wanted = mutable_job_fields(spec)
        have = {k: (job.get("spec") or {}).get(k) for k in wanted}
        if have.get("suspend") is None:
            have["suspend"] = False
        if have != wanted:
            self.api.patch_job(ns, job["metadata"]["name"], wanted)
            job = {**job, "spec": {**(job.get("spec") or {}), **wanted}}
        return job
