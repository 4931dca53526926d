"""kopf entry point: decorators only. Run with `kubetune operator`.

Every watch event of a FineTuneJob, its trainer Job or its pods only adds the FineTuneJob's
key to a work queue (`workqueue.py`); worker threads reconcile each key from kopf's indexes,
which kopf fills before any handler runs. So a burst of events costs one reconcile per object,
and a restarted operator sees every child before it decides anything.

No kopf timers or daemons: they would put a finalizer on every FineTuneJob. A resync thread
re-queues unfinished jobs every KUBETUNE_PROGRESS_INTERVAL seconds instead (and scrapes live
progress), so a missed event never stalls a resource.

With leader election (leaderelection.py), every replica runs the watches, indexes and queues;
only the workers of the replica holding the Lease take keys, and every API write is refused
on the others. docs/operator.md says why and what is measured.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Hashable
from typing import Any, cast

import kopf
import kubernetes
from prometheus_client import start_http_server

from kubetune.api import constants as c
from kubetune.operator.kube import KubeApi, ServingApi, instrument_client, load_client_config
from kubetune.operator.leaderelection import LeaderElector, LeaseConfig
from kubetune.operator.probes import serve_probes
from kubetune.operator.progress import scrape_progress
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler, owned_children
from kubetune.operator.reconcile.modeldeployment import ModelDeploymentReconciler
from kubetune.operator.reconcile.provider_cancel import cancel_provider_job
from kubetune.operator.resync import ProgressScraper, run_periodically
from kubetune.operator.settings import Settings
from kubetune.operator.workqueue import WorkQueue, start_workers

log = logging.getLogger("kubetune.operator")

CHILD_SELECTOR = {c.LABEL_FINETUNEJOB: kopf.PRESENT}
# Server-side label selectors of kopf's watches. Handler label filters are client-side: without
# these kopf watched every Job and pod in the cluster and ran each of their events through its
# per-object machinery (with 1000 unrelated pods, most of the operator's CPU in
# bench/operator_scale.py). Every pod kubetune makes (trainer, serving, provider cancel) carries
# managed-by (tests/unit/test_watch_selectors.py).
WATCH_SELECTORS: dict[tuple[str, str] | tuple[str, str, str], str] = {
    ("batch", "v1", "jobs"): c.LABEL_FINETUNEJOB,
    ("v1", "pods"): f"{c.LABEL_MANAGED_BY}=kubetune",
}
INDEX_NAMES = ("finetunejobs", "trainer_jobs", "trainer_pods")


class _Runtime:
    """What the handlers and the worker threads share."""

    settings: Settings
    reconciler: FineTuneJobReconciler
    serving: ModelDeploymentReconciler

    def __init__(self) -> None:
        self.queue = WorkQueue("finetunejob")
        # ModelDeployments: their own queue and workers (they read through the API, not
        # indexes), and the keys of those that exist, for the resync and FineTuneJob events.
        self.serving_queue = WorkQueue("modeldeployment")
        self.deployments: set[tuple[str, str]] = set()
        # kopf hands its indexes to handlers only; the first handler call captures them here.
        self.indexes: dict[str, kopf.Index[Any, Any]] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.scraper: ProgressScraper | None = None  # progress scrapes, off the workers (resync.py)
        # Workers take keys only while this replica leads (always, without leader election).
        self.leading = threading.Event()
        self.elector: LeaderElector | None = None
        self.workers: list[threading.Thread] = []
        self.probe_url: str | None = None  # `kubetune operator --liveness URL`: /healthz and /readyz
        self.probe_runner: Any = None


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
def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """kopf settings under our own API group; the reconciler, its workers and the resync."""
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.posting.enabled = False  # our own Events are enough, and a standby must post none
    settings.watching.server_timeout = 300
    for resource, selector in WATCH_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector
    settings.watching.client_timeout = 330
    runtime.settings = Settings.from_env()
    load_client_config()
    # kopf hands the (still empty) indexes to startup handlers too; they fill as kopf lists.
    if all(k in kwargs for k in INDEX_NAMES):
        runtime.indexes = {k: kwargs[k] for k in INDEX_NAMES}
    runtime.elector = _elector(runtime.settings)
    may_write = runtime.elector.may_write if runtime.elector is not None else None
    instance = runtime.settings.identity
    runtime.reconciler = FineTuneJobReconciler(KubeApi(may_write=may_write, instance=instance), runtime.settings)
    runtime.reconciler.requeue_after = runtime.queue.add_after
    runtime.serving = ModelDeploymentReconciler(ServingApi(may_write=may_write, instance=instance),
                                                runtime.settings)
    runtime.stop.clear()
    if runtime.settings.metrics_port:
        start_http_server(runtime.settings.metrics_port)
    runtime.workers = [
        *start_workers(runtime.queue, _process, runtime.settings.workers, active=runtime.leading),
        *start_workers(runtime.serving_queue, _process_deployment, 2, active=runtime.leading),
    ]
    if runtime.scraper is not None:
        runtime.scraper.shutdown()
    runtime.scraper = ProgressScraper(
        lambda pod: scrape_progress(pod, runtime.settings.scrape_timeout),
        runtime.settings.workers, runtime.queue.add)
    threading.Thread(target=_resync_loop, name="kubetune-resync", daemon=True).start()
    threading.Thread(target=_serving_resync_loop, name="kubetune-serving-resync", daemon=True).start()
    threading.Thread(target=_ready_when_nothing_to_index, name="kubetune-readiness", daemon=True).start()
    if runtime.elector is not None:
        runtime.elector.start()
    else:
        runtime.leading.set()


@kopf.on.startup()
async def start_probes(**_: Any) -> None:
    """/healthz and /readyz (probes.py) when `kubetune operator --liveness URL` asks for them."""
    if runtime.probe_url:
        runtime.probe_runner = await serve_probes(runtime.probe_url, _healthy, _ready)


@kopf.on.cleanup()
async def stop_probes(**_: Any) -> None:
    if runtime.probe_runner is not None:
        await runtime.probe_runner.cleanup()
        runtime.probe_runner = None


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    runtime.stop.set()
    runtime.leading.clear()
    if runtime.elector is not None:
        runtime.elector.stop(release=True)  # a clean exit hands over at the standby's next retry
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
        if (body.get("spec") or {}).get("backend") == "openai":
            await asyncio.to_thread(cancel_provider_job, runtime.reconciler.api, runtime.settings, body)
        return
    # A job without a trainer Job yet goes first: creating children before refreshing statuses.
    status = body.get("status") or {}
    runtime.queue.add((namespace, name), urgent=not status.get("jobName") and not status.get("phase"))


@kopf.on.event(c.GROUP, c.VERSION, c.MODELDEPLOYMENT_PLURAL)
async def modeldeployment_changed(*, event: kopf.RawEvent, namespace: str | None, name: str,
                                  body: kopf.Body, **kwargs: Any) -> None:
    _capture(kwargs)
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        runtime.deployments.discard(key)
        runtime.serving.forget(body.metadata.uid or "")
    else:
        runtime.deployments.add(key)
    runtime.serving_queue.add(key)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MODELDEPLOYMENT: kopf.PRESENT})
async def serving_pod_changed(*, namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    _capture(kwargs)
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
    # kopf calls non-index handlers only once every indexed kind has been listed: from here on,
    # the indexes hold every FineTuneJob, trainer Job and trainer pod.
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
    progress = runtime.scraper.take(key) if runtime.scraper is not None else None
    runtime.reconciler.reconcile(body, job, pods, progress)


def _resync_loop() -> None:
    """Re-queue every unfinished FineTuneJob periodically and scrape its trainer's progress (a
    failing pass is logged; the loop goes on)."""
    run_periodically(_resync_once, lambda: runtime.settings.progress_interval, runtime.stop, "resync")


def _resync_once() -> None:
    if not runtime.ready.is_set() or not runtime.leading.is_set():
        return  # a standby scrapes nothing: it queues everything when it takes over
    idx = runtime.indexes
    for key, store in list(idx["finetunejobs"].items()):
        for body in list(store):
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            runtime.queue.add(key)
            if runtime.settings.scrape_progress and runtime.scraper is not None:
                _, pods = owned_children(body, list(idx["trainer_jobs"].get(key) or []),
                                         list(idx["trainer_pods"].get(key) or []))
                running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
                if running:
                    runtime.scraper.request(key, running[-1])


# -- leader election, readiness and liveness ----------------------------------------------------


def _elector(settings: Settings) -> LeaderElector | None:
    if not settings.leader_election:
        return None
    config = LeaseConfig(
        name=settings.lease_name, namespace=settings.lease_namespace, identity=settings.identity,
        lease_duration=settings.lease_duration, renew_deadline=settings.lease_renew_deadline,
        retry_period=settings.lease_retry_period,
    )
    return LeaderElector(config, kubernetes.client.ApiClient(),
                         on_started_leading=_started_leading, on_stopped_leading=_stopped_leading)


def _started_leading() -> None:
    """Take over with fresh reconcilers (what an earlier term remembered may be stale: the other
    replica wrote meanwhile) and a full pass over everything the indexes hold."""
    runtime.reconciler = FineTuneJobReconciler(runtime.reconciler.api, runtime.settings)
    runtime.reconciler.requeue_after = runtime.queue.add_after
    runtime.serving = ModelDeploymentReconciler(runtime.serving.api, runtime.settings)
    for key in list(runtime.indexes.get("finetunejobs", {}).keys()) if runtime.indexes else []:
        runtime.queue.add(key)
    for key in list(runtime.deployments):
        runtime.serving_queue.add(key)
    runtime.leading.set()


def _stopped_leading() -> None:
    runtime.leading.clear()  # workers take no new key; writes in flight are refused (may_write)


def _ready_when_nothing_to_index() -> None:
    """With no FineTuneJob and no ModelDeployment, no handler event ever says that kopf has
    listed everything: the indexes then hold nothing a reconcile needs, so the operator is
    ready. Checked every 2 s until ready."""
    api = kubernetes.client.CustomObjectsApi(instrument_client(kubernetes.client.ApiClient()))
    namespaces = runtime.settings.namespaces or (None,)
    while not runtime.ready.is_set() and not runtime.stop.is_set():
        try:
            empty = True
            for ns in namespaces:
                for plural in (c.FINETUNEJOB_PLURAL, c.MODELDEPLOYMENT_PLURAL):
                    listing = cast(dict[str, Any], (
                        api.list_cluster_custom_object(c.GROUP, c.VERSION, plural, limit=1) if ns is None
                        else api.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, plural, limit=1)))
                    empty = empty and not listing.get("items")
            if empty and len(runtime.indexes) == len(INDEX_NAMES) and not runtime.ready.is_set():
                runtime.ready.set()
                return
        except Exception as exc:
            log.warning("readiness: could not list FineTuneJobs and ModelDeployments: %s", exc)
        runtime.stop.wait(2)


def _healthy() -> tuple[bool, str]:
    if runtime.workers and not all(t.is_alive() for t in runtime.workers):
        return False, "a worker thread died"
    if runtime.elector is not None and not runtime.elector.alive() and not runtime.stop.is_set():
        return False, "the leader election thread died"
    return True, "ok"


def _ready() -> tuple[bool, str]:
    if not runtime.workers:
        return False, "starting"
    if not runtime.ready.is_set():
        return False, "kopf is still listing into the indexes"
    healthy, why = _healthy()
    if not healthy:
        return False, why
    if runtime.elector is None:
        return True, "ok (leader election off)"
    if not runtime.elector.observed_once.is_set():
        return False, "the leader Lease has not been read yet"
    return True, "ok (leader)" if runtime.leading.is_set() else "ok (standby)"
