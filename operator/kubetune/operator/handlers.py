"""kopf entry point: decorators only. Run with `kubetune operator`.

Every watch event of a FineTuneJob, its trainer Job or its pods only adds the FineTuneJob's
key to a work queue (`workqueue.py`); worker threads reconcile each key from kopf's indexes,
which kopf fills before any handler runs. So a burst of events costs one reconcile per object,
and a restarted operator sees every child before it decides anything.

No kopf timers or daemons: they would put a finalizer on every FineTuneJob. A resync thread
re-queues unfinished jobs every KUBETUNE_PROGRESS_INTERVAL seconds instead (and scrapes live
progress), so a missed event never stalls a resource.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from kubetune.api import constants as c
from kubetune.operator.kube import KubeApi, ServingApi, load_client_config
from kubetune.operator.progress import scrape_progress
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler, owned_children
from kubetune.operator.reconcile.modeldeployment import ModelDeploymentReconciler
from kubetune.operator.settings import Settings
from kubetune.operator.workqueue import WorkQueue, start_workers

log = logging.getLogger("kubetune.operator")

CHILD_SELECTOR = {c.LABEL_FINETUNEJOB: kopf.PRESENT}
INDEX_NAMES = ("finetunejobs", "trainer_jobs", "trainer_pods")


class _Runtime:
    """What the handlers and the worker threads share."""

    settings: Settings
    reconciler: FineTuneJobReconciler
    serving: ModelDeploymentReconciler

    def __init__(self) -> None:
        self.queue = WorkQueue()
        # ModelDeployments: their own queue and workers (they read through the API, not
        # indexes), and the keys of those that exist, for the resync and FineTuneJob events.
        self.serving_queue = WorkQueue()
        self.deployments: set[tuple[str, str]] = set()
        # kopf hands its indexes to handlers only; the first handler call captures them here.
        self.indexes: dict[str, kopf.Index[Any, Any]] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.scrape_due: set[Hashable] = set()


runtime = _Runtime()


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a deep-copied "diff base" of every object on every event, for create/update
    handlers to diff against. We register none (reconcile is level-triggered), so it was pure
    cost: a quarter of the operator's CPU with 1000 FineTuneJobs. Nothing is built or stored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings under our own API group; the reconciler, its workers and the resync."""
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.level = logging.WARNING  # our own Events are enough; no per-handler noise
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    runtime.settings = Settings.from_env()
    load_client_config()
    runtime.reconciler = FineTuneJobReconciler(KubeApi(), runtime.settings)
    runtime.stop.clear()
    if runtime.settings.metrics_port:
        start_http_server(runtime.settings.metrics_port)
    start_workers(runtime.queue, _process, runtime.settings.workers)
    threading.Thread(target=_resync_loop, name="kubetune-resync", daemon=True).start()
    runtime.serving = ModelDeploymentReconciler(ServingApi(), runtime.settings)
    start_workers(runtime.serving_queue, _process_deployment, 2)
    threading.Thread(target=_serving_resync_loop, name="kubetune-serving-resync", daemon=True).start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    runtime.stop.set()
    runtime.queue.shutdown()
    runtime.serving_queue.shutdown()


@kopf.index(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
def finetunejobs(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _snapshot(body)}


# A child's change enqueues its FineTuneJob straight from the index function: one kopf
# invocation per event instead of two. (Keys enqueued before the indexes are captured wait
# in the queue: workers start once the first FineTuneJob event has handed the indexes over.)


def _owner_key(namespace: str | None, labels: kopf.Labels, annotations: kopf.Annotations) -> tuple[str | None, str]:
    # The annotation has the full name; the label is shortened when the name is over 63 characters.
    return (namespace, annotations.get(c.ANNOTATION_FINETUNEJOB) or labels[c.LABEL_FINETUNEJOB])


@kopf.index("batch", "v1", "jobs", labels=CHILD_SELECTOR)
def trainer_jobs(*, namespace: str | None, labels: kopf.Labels, annotations: kopf.Annotations,
                 body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels, annotations)
    runtime.queue.add(key)
    return {key: _snapshot(body)}


@kopf.index("", "v1", "pods", labels=CHILD_SELECTOR)
def trainer_pods(*, namespace: str | None, labels: kopf.Labels, annotations: kopf.Annotations,
                 body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = _owner_key(namespace, labels, annotations)
    runtime.queue.add(key)
    return {key: _snapshot(body)}


@kopf.on.event(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
async def finetunejob_changed(*, event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
    _capture(kwargs)
    # A served job's phase, gate or artifacts decide what its ModelDeployments may serve.
    for key in [k for k in runtime.deployments if k[0] == namespace]:
        runtime.serving_queue.add(key)
    if event["type"] == "DELETED":
        runtime.reconciler.forget(body.metadata.uid or "")
        return
    # A job without a trainer Job yet goes first: creating children before refreshing statuses.
    status = body.get("status") or {}
    runtime.queue.add((namespace, name), urgent=not status.get("jobName") and not status.get("phase"))


@kopf.on.event(c.GROUP, c.VERSION, c.MODELDEPLOYMENT_PLURAL)
async def modeldeployment_changed(*, event: kopf.RawEvent, namespace: str | None, name: str,
                                  body: kopf.Body, **_: Any) -> None:
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        runtime.deployments.discard(key)
        runtime.serving.forget(body.metadata.uid or "")
    else:
        runtime.deployments.add(key)
    runtime.serving_queue.add(key)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MODELDEPLOYMENT: kopf.PRESENT})
async def serving_pod_changed(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    runtime.serving_queue.add((namespace or "", labels[c.LABEL_MODELDEPLOYMENT]))


def _process_deployment(key: Hashable) -> None:
    namespace, name = cast(tuple[str, str], key)
    runtime.serving.reconcile(namespace, name)


def _serving_resync_loop() -> None:
    """Re-read every ModelDeployment's serve-agents periodically: what an agent reports
    (a version fetched, verified, loaded) changes no Kubernetes object until the pod's
    readiness does, so events alone would miss it."""
    while not runtime.stop.wait(runtime.settings.serving_resync):
        for key in list(runtime.deployments):
            runtime.serving_queue.add(key)


# ---------------------------------------------------------------------------------------------

_META_KEYS = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp",
              "deletionTimestamp", "labels", "annotations", "ownerReferences")


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    """What the reconciler reads of an object. Indexes hold one per FineTuneJob, Job and pod,
    so metadata is trimmed (managedFields alone is often half an object)."""
    meta = body.metadata
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _META_KEYS if k in meta},
        "spec": dict(body.spec),
        "status": dict(body.status),
    }


def _capture(kwargs: dict[str, Any]) -> None:
    if not runtime.ready.is_set():
        runtime.indexes = {k: kwargs[k] for k in INDEX_NAMES}
        runtime.ready.set()


def _process(key: Hashable) -> None:
    """Reconcile one FineTuneJob from the indexes (a worker thread)."""
    runtime.ready.wait()
    idx = runtime.indexes
    bodies = list(idx["finetunejobs"].get(key) or [])
    if not bodies:
        return  # deleted: garbage collection removes its children
    for body in bodies:  # two while one was deleted and re-created under its name: each owns its children
        _reconcile(body, key)


def _reconcile(body: dict[str, Any], key: Hashable) -> None:
    idx = runtime.indexes
    job, pods = owned_children(body, list(idx["trainer_jobs"].get(key) or []),
                               list(idx["trainer_pods"].get(key) or []))
    progress = None
    if key in runtime.scrape_due and runtime.settings.scrape_progress:
        runtime.scrape_due.discard(key)
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running:
            progress = scrape_progress(running[-1], runtime.settings.scrape_timeout)
    runtime.reconciler.reconcile(body, job, pods, progress)


def _resync_loop() -> None:
    """Re-queue every unfinished FineTuneJob periodically, asking for a progress scrape."""
    while not runtime.stop.wait(runtime.settings.progress_interval):
        if not runtime.ready.is_set():
            continue
        for key, store in list(runtime.indexes["finetunejobs"].items()):
            if any((b.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for b in store):
                runtime.scrape_due.add(key)
                runtime.queue.add(key)
