"""kopf entry point: decorators only, each handing off to the reconcile functions.

Run with `kubetune operator` (or `kopf run -m kubetune.operator.handlers`).

No kopf timers or daemons: they would put a finalizer on every FineTuneJob. A resync thread
reconciles running jobs every KUBETUNE_PROGRESS_INTERVAL seconds instead, so a missed event
never stalls a resource and live progress keeps flowing into status.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from kubetune.api import constants as c
from kubetune.operator.kube import KubeApi, load_client_config
from kubetune.operator.progress import scrape_progress
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler
from kubetune.operator.settings import Settings

log = logging.getLogger("kubetune.operator")

CHILD_SELECTOR = {c.LABEL_FINETUNEJOB: kopf.PRESENT}


class _Runtime:
    """What the handlers share: settings, the reconciler, and the kopf indexes (captured
    from the first handler call, since the resync thread is not a handler)."""

    settings: Settings
    reconciler: FineTuneJobReconciler

    def __init__(self) -> None:
        self.indexes: dict[str, kopf.Index[Any, Any]] = {}
        self.stop = threading.Event()


runtime = _Runtime()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf settings under our own API group; the reconciler and the resync thread."""
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events are enough; no per-handler noise
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    runtime.settings = Settings.from_env()
    load_client_config()
    runtime.reconciler = FineTuneJobReconciler(KubeApi(), runtime.settings)
    runtime.stop.clear()
    if runtime.settings.metrics_port:
        start_http_server(runtime.settings.metrics_port)
    threading.Thread(target=_resync_loop, name="kubetune-resync", daemon=True).start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    runtime.stop.set()


@kopf.index(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
def finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _snapshot(body)}


@kopf.index("batch", "v1", "jobs", labels=CHILD_SELECTOR)
def trainer_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_FINETUNEJOB]): _snapshot(body)}


@kopf.index("", "v1", "pods", labels=CHILD_SELECTOR)
def trainer_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_FINETUNEJOB]): _snapshot(body)}


@kopf.on.event(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
def finetunejob_changed(event: kopf.RawEvent, namespace: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
    _capture(kwargs)
    if event["type"] == "DELETED":
        runtime.reconciler.forget(body.metadata.uid or "")
        return
    _reconcile(namespace, name, _snapshot(body))


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_SELECTOR)
def trainer_job_changed(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _capture(kwargs)
    _reconcile(namespace, labels[c.LABEL_FINETUNEJOB])


@kopf.on.event("", "v1", "pods", labels=CHILD_SELECTOR)
def trainer_pod_changed(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _capture(kwargs)
    _reconcile(namespace, labels[c.LABEL_FINETUNEJOB])


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
    if not runtime.indexes:
        runtime.indexes = {k: kwargs[k] for k in ("finetunejobs", "trainer_jobs", "trainer_pods")}


def _first(index: kopf.Index[Any, Any], key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _reconcile(namespace: str, name: str, body: dict[str, Any] | None = None, scrape: bool = False) -> None:
    idx = runtime.indexes
    body = body or _first(idx["finetunejobs"], (namespace, name))
    if body is None:
        return  # a child whose FineTuneJob is gone: garbage collection removes it
    job = _first(idx["trainer_jobs"], (namespace, name))
    pods = list(idx["trainer_pods"].get((namespace, name)) or [])
    progress = None
    if scrape and runtime.settings.scrape_progress:
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running:
            progress = scrape_progress(running[-1], runtime.settings.scrape_timeout)
    try:
        runtime.reconciler.reconcile(body, job, pods, progress)
    except Exception:
        log.exception("reconcile of %s/%s failed; the next event or resync retries", namespace, name)


def _resync_loop() -> None:
    """Reconcile every unfinished FineTuneJob periodically (and scrape running trainers)."""
    while not runtime.stop.wait(runtime.settings.progress_interval):
        if not runtime.indexes:
            continue
        for key, store in list(runtime.indexes["finetunejobs"].items()):
            for body in list(store):
                if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                _reconcile(key[0], key[1], None, scrape=True)
