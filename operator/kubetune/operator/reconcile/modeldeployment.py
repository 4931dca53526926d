"""Reconcile one ModelDeployment: observe (spec, FineTuneJobs, pods and their serve-agents) →
decide what is served (:mod:`kubetune.operator.reconcile.serving`) → server-side apply the
ConfigMap, StatefulSet, Service and PodDisruptionBudget → patch status → Events.

The ConfigMap is written before the status, so an operator killed between the two converges
on its next run to the same decision without recording the switch twice: the switch is
recorded when the status's `servedVersion` changes, and that happens once.

A FineTuneJob that a ModelDeployment lists gets the finalizer `FINALIZER`; it is removed when
no ModelDeployment in the namespace lists the job any more. Deleting a served job is thus
blocked (it stays, with a deletionTimestamp, until no deployment lists it), so its artifacts
and the digest in its status cannot disappear under a serving deployment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.api.common import Condition
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.operator.builders import serving as b
from kubetune.operator.kube import ServingApi
from kubetune.operator.reconcile.finetunejob import describe_validation_error
from kubetune.operator.reconcile.serving import (
    MdReason,
    PodView,
    decide,
    resolve_version,
    rfc3339,
    statefulset_rollout,
)
from kubetune.operator.reconcile.traffic import TrafficWindows, rollback_reason, scrape_gateway
from kubetune.operator.settings import Settings

log = logging.getLogger(__name__)

FINALIZER = f"{c.GROUP}/served-by-modeldeployment"
REFRESH_S = 60.0  # children and finalizers are rewritten at least this often, changed or not

AgentReader = Callable[[dict[str, Any], float], PodView]


def read_agent(pod: dict[str, Any], timeout: float) -> PodView:
    """GET /status of the pod's serve-agent (HTTP on the pod IP)."""
    name = pod["metadata"]["name"]
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return PodView(name, None, "pod has no IP yet")
    try:
        with urllib.request.urlopen(f"http://{ip}:{s.AGENT_PORT}/status", timeout=timeout) as r:
            return PodView(name, s.AgentStatus.model_validate(json.loads(r.read())))
    except (OSError, urllib.error.URLError, ValueError, ValidationError) as exc:
        return PodView(name, None, f"serve-agent not answering ({exc})")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _live(pod: dict[str, Any]) -> bool:
    meta, status = pod["metadata"], pod.get("status") or {}
    return not meta.get("deletionTimestamp") and status.get("phase") in (None, "Pending", "Running")


class ModelDeploymentReconciler:
    def __init__(self, api: ServingApi, settings: Settings, agent_reader: AgentReader = read_agent) -> None:
        self.api = api
        self.settings = settings
        self.read_agent = agent_reader
        # Live traffic per ModelDeployment uid, kept in memory: after an operator restart the
        # rollback window starts again (it needs minRequests before it can judge).
        self.traffic: dict[str, TrafficWindows] = {}
        # What was last written, so that a resync (every few seconds, per deployment) costs no
        # API writes when nothing changed: key -> (digest of the desired state, when written).
        # Rewritten at least every REFRESH_S anyway, to heal a child edited or deleted by hand.
        self._written: dict[tuple[str, ...], tuple[str, float]] = {}

    def reconcile(self, namespace: str, name: str) -> None:
        md = self.api.get_modeldeployment(namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            self.sync_finalizers(namespace)  # children go by garbage collection
            return
        generation = md["metadata"].get("generation")
        current = ModelDeploymentStatus.model_validate(md.get("status") or {})
        try:
            spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
        except ValidationError as exc:
            msg = "Invalid spec: " + describe_validation_error(exc)
            self._invalid(md, current, generation, msg)
            return
        jobs = {v.fine_tune_job: self.api.get_finetunejob(namespace, v.fine_tune_job)
                for v in spec.versions if v.fine_tune_job is not None}
        resolved = [resolve_version(v, jobs.get(v.fine_tune_job) if v.fine_tune_job else None)
                    for v in spec.versions]
        selector = ",".join(f"{k}={v}" for k, v in b.selector_labels(name).items())
        pods = [p for p in self.api.list_pods(namespace, selector) if _live(p)]
        views = [self.read_agent(p, self.settings.scrape_timeout) for p in pods]
        unhealthy = self._traffic_verdict(md, spec, current, pods)
        now = rfc3339()
        rollout = statefulset_rollout(self.api.get_statefulset(namespace, name), spec.replicas)
        decision = decide(spec, generation, resolved, views, current, now, unhealthy, rollout)

        sources = [r.source for r in resolved if r.source is not None]
        config = b.serving_config(name, sources, decision.served, decision.keep_loaded)
        self._apply(b.build_configmap(md, config))
        # Serving pods were a Deployment before kubetune 0.2: the StatefulSet takes over.
        if (self._changed(("Deployment", namespace, name), "absent")
                and self.api.delete_owned_deployment(namespace, name, md["metadata"]["uid"])):
            log.info("%s/%s: replaced its serving Deployment by a StatefulSet", namespace, name)
        self._apply(b.build_statefulset(
            md, spec, b.pvc_claims(sources),
            agent_image=self.settings.serving_image,
            agent_command=self.settings.serve_agent_command,
            ollama_command=self.settings.ollama_command,
            image_pull_policy=self.settings.image_pull_policy,
            uid=self.settings.trainer_uid,
        ))
        self._apply(b.build_service(md))
        if spec.replicas > 1:
            self._apply(b.build_pdb(md))
        elif self._changed(("PodDisruptionBudget", namespace, name), "absent"):
            self.api.delete_pdb(namespace, name)
        if jobs and self._changed(("finalizers", namespace, name), ",".join(sorted(jobs))):
            self.sync_finalizers(namespace)

        status = decision.status.model_copy(update={"config_revision": config.revision, "service": name})
        new = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        old = current.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new != old:
            # Null out fields the new status no longer has (merge patch keeps absent keys).
            patch: dict[str, Any] = {k: None for k in old if k not in new}
            patch.update(new)
            self.api.patch_modeldeployment_status(namespace, name, patch)
        for type_, reason, message in decision.events:
            self.api.post_event(md, type_, reason, message)

    def _changed(self, key: tuple[str, ...], digest: str) -> bool:
        """Whether `digest` differs from what was last written under `key` (or that is stale);
        records it as written."""
        now = time.monotonic()
        last = self._written.get(key)
        if last is not None and last[0] == digest and now - last[1] < REFRESH_S:
            return False
        self._written[key] = (digest, now)
        return True

    def _apply(self, body: dict[str, Any]) -> None:
        """Server-side apply `body` unless this exact body was applied in the last REFRESH_S."""
        meta = body["metadata"]
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        key = (body["kind"], meta["namespace"], meta["name"])
        if self._changed(key, digest):
            try:
                self.api.apply(body)
            except Exception:
                self._written.pop(key, None)  # not written: try again next time
                raise

    def _traffic_verdict(self, md: dict[str, Any], spec: ModelDeploymentSpec,
                         current: ModelDeploymentStatus, pods: list[dict[str, Any]]) -> str | None:
        """Scrape every ready pod's gateway and judge the served version's window."""
        if not spec.rollback.enabled or current.served_version is None:
            return None
        windows = self.traffic.setdefault(md["metadata"]["uid"], TrafficWindows())
        window = float(spec.rollback.window_seconds)
        now = time.monotonic()
        names = []
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or not _ready(pod):
                continue
            names.append(pod["metadata"]["name"])
            sample = scrape_gateway(ip, s.GATEWAY_PORT, md["metadata"]["name"], now, self.settings.scrape_timeout)
            if sample is not None:
                windows.add(pod["metadata"]["name"], sample, window)
        windows.forget_pods(names)
        return rollback_reason(spec.rollback, windows.traffic(current.served_version, window, now))

    def forget(self, uid: str) -> None:
        self.traffic.pop(uid, None)

    def _invalid(self, md: dict[str, Any], current: ModelDeploymentStatus, generation: int | None,
                 msg: str) -> None:
        meta = md["metadata"]
        now = rfc3339()
        conds = [Condition(type="Stalled", status="True", reason=MdReason.INVALID_SPEC, message=msg[:1024],
                           observed_generation=generation, last_transition_time=now),
                 Condition(type="Ready", status="False", reason=MdReason.INVALID_SPEC, message=msg[:1024],
                           observed_generation=generation, last_transition_time=now)]
        if current.reason == MdReason.INVALID_SPEC and current.observed_generation == generation:
            return
        status = current.model_copy(update={"observed_generation": generation, "conditions": conds,
                                            "reason": MdReason.INVALID_SPEC, "message": msg[:1024]})
        self.api.patch_modeldeployment_status(meta["namespace"], meta["name"],
                                              status.model_dump(mode="json", by_alias=True, exclude_none=True))
        self.api.post_event(md, "Warning", MdReason.INVALID_SPEC, msg)

    def sync_finalizers(self, namespace: str) -> None:
        """FINALIZER on exactly the FineTuneJobs some live ModelDeployment in `namespace` lists."""
        listed: set[str] = set()
        for md in self.api.list_custom(c.MODELDEPLOYMENT_PLURAL, namespace):
            if md["metadata"].get("deletionTimestamp"):
                continue
            for v in (md.get("spec") or {}).get("versions") or []:
                if v.get("fineTuneJob"):
                    listed.add(v["fineTuneJob"])
        for job in self.api.list_custom(c.FINETUNEJOB_PLURAL, namespace):
            finalizers = list(job["metadata"].get("finalizers") or [])
            has = FINALIZER in finalizers
            want = job["metadata"]["name"] in listed
            if has == want or (want and job["metadata"].get("deletionTimestamp")):
                continue  # (no finalizer may be added to an object being deleted)
            new = [*finalizers, FINALIZER] if want else [f for f in finalizers if f != FINALIZER]
            try:
                self.api.set_finalizers(job, new)
            except ApiException as exc:
                if exc.status not in (404, 409):  # gone, or changed: the next pass redoes it
                    raise
