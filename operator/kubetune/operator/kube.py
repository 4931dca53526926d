"""The few Kubernetes API calls the operator makes, behind one small class.

Kept apart from the reconcile logic so that logic reads as observe → build → apply → status.

Every write carries the field manager `kubetune-operator`, so `managedFields` says which fields
the operator owns: children it converges (ConfigMaps, Deployments, Services, PDBs) are
server-side applied; a trainer Job is created once (see `create_job`); status goes through the
status subresource. The operator never writes a spec of its own resources.

With leader election on, every write first asks `may_write()`: a replica that does not hold the
Lease (a standby, or a leader that could not renew in time) raises NotLeaderError instead of
writing, so a non-leader never creates a Job, posts an Event or writes a status.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from kubetune.api import constants as c
from kubetune.operator.metrics import API_REQUESTS, REST_CLIENT_REQUESTS
from kubetune.operator.workqueue import Abandon

log = logging.getLogger(__name__)

FIELD_MANAGER = "kubetune-operator"
_APPLY: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": "application/apply-patch+yaml"}
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NotLeaderError(Abandon):
    """A write refused because this replica does not hold the leader Lease (any more)."""


def load_client_config() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


def request_verb(method: str, url: str, headers: dict[str, str] | None) -> str:
    """The Kubernetes verb of a REST request (get, list, watch, create, update, patch, apply, delete)."""
    method = method.upper()
    if method == "PATCH":
        content_type = (headers or {}).get("Content-Type", "")
        return "apply" if content_type.startswith("application/apply-patch") else "patch"
    if method != "GET":
        return {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(method, method.lower())
    parts = urllib.parse.urlsplit(url)
    if "watch=true" in parts.query:
        return "watch"
    segments = [s for s in parts.path.split("/") if s]
    # /api/v1/... or /apis/<group>/<version>/...; then [namespaces/<ns>/]<resource>[/<name>[/<sub>]]
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    return "list" if len(rest) == 1 else "get"


def instrument_client(
    client: kubernetes.client.ApiClient, may_write: Callable[[], bool] | None = None
) -> kubernetes.client.ApiClient:
    """Count every request of `client` in rest_client_requests_total{verb,code}; with
    `may_write`, refuse (NotLeaderError) each write it does not allow. Idempotent per client."""
    if getattr(client, "_kubetune_instrumented", False):
        if may_write is not None:
            client._kubetune_may_write = may_write  # type: ignore[attr-defined]
        return client
    call_api = client.call_api
    client._kubetune_may_write = may_write  # type: ignore[attr-defined]

    def counted(method: str, url: str, header_params: dict[str, str] | None = None,
                *args: Any, **kwargs: Any) -> Any:
        verb = request_verb(method, url, header_params)
        allowed = client._kubetune_may_write  # type: ignore[attr-defined]
        if method.upper() in _WRITES and allowed is not None and not allowed():
            raise NotLeaderError(f"not the leader: {verb} {urllib.parse.urlsplit(url).path} not sent")
        code = "<error>"
        try:
            response = call_api(method, url, header_params, *args, **kwargs)
            code = str(response.status)
            return response
        except ApiException as exc:
            code = str(exc.status) if exc.status else "<error>"
            raise
        finally:
            REST_CLIENT_REQUESTS.labels(verb, code).inc()

    client.call_api = counted  # type: ignore[method-assign]
    client._kubetune_instrumented = True  # type: ignore[attr-defined]
    return client


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw response. Reconcilers ask for raw responses (`_preload_content=False`):
    the client's model deserialisation costs more CPU than the request itself."""
    return json.loads(_drain(response))  # type: ignore[no-any-return]


def _drain(response: Any) -> bytes:
    """Read a raw response whole, which hands its connection back to the pool. An unread one
    keeps it, and the next request pays for a new TLS handshake."""
    data: bytes = response.data
    response.release_conn()
    return data


class KubeApi:
    """Apply, create-if-absent, status and event calls used by the reconcilers.

    `may_write` (the leader election's) is asked before every write; None allows all.
    `instance` (this replica's identity) goes into the Events it posts as reportingInstance.
    """

    def __init__(self, client: kubernetes.client.ApiClient | None = None, *,
                 may_write: Callable[[], bool] | None = None, instance: str = "") -> None:
        self.client = instrument_client(client or kubernetes.client.ApiClient(), may_write)
        self.instance = instance
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    @staticmethod
    def _count(verb: str, resource: str) -> None:
        API_REQUESTS.labels(verb, resource).inc()

    def create_configmap(self, body: dict[str, Any]) -> None:
        """Server-side apply a ConfigMap (created, or brought to `body` if it exists)."""
        self._count("apply", "configmaps")
        meta = body["metadata"]
        body = {"apiVersion": "v1", "kind": "ConfigMap", **body}
        _drain(self.core.patch_namespaced_config_map(meta["name"], meta["namespace"], body, _preload_content=False, **_APPLY))

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Job, or return the existing one with that name.

        Created, not server-side applied: a Job is the record of one run, not a state to
        converge. Applying over an existing Job would fail on its immutable pod template when
        the desired one differs (a newer operator, changed settings), and with `force` it would
        take over a same-named Job that belongs to an earlier FineTuneJob or was orphaned, and
        report that run as this one's. Its mutable fields are patched by `patch_job`.
        """
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        self._count("create", "jobs")
        try:
            created = self.batch.create_namespaced_job(ns, body, field_manager=FIELD_MANAGER, _preload_content=False)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self.read_job(ns, name)
            if existing is None:
                raise
            return existing
        return _json(created)

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job, or None when it does not exist."""
        self._count("get", "jobs")
        try:
            job = self.batch.read_namespaced_job(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(job)

    def patch_job(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> None:
        """Merge-patch the mutable fields of a Job's spec (null removes a field)."""
        self._count("patch", "jobs")
        _drain(self.batch.patch_namespaced_job(name, namespace, {"spec": spec_patch}, field_manager=FIELD_MANAGER,
                                               _content_type="application/merge-patch+json", _preload_content=False))

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any],
                                 uid: str | None = None) -> str:
        """Patch the status subresource; returns the object's new resourceVersion.

        Without `uid`: a merge patch (None removes a field). With `uid`: `status` is the whole
        new status, written by a JSON patch whose first operation tests metadata.uid, so the
        write fails (422) instead of landing on a newer object of the same name (the status
        subresource ignores metadata in a merge patch: a uid there is no precondition)."""
        self._count("patch", "finetunejobs/status")
        body: Any = {"status": status}
        extra: dict[str, Any] = {}
        if uid:
            body = [{"op": "test", "path": "/metadata/uid", "value": uid},
                    {"op": "add", "path": "/status", "value": {k: v for k, v in status.items() if v is not None}}]
            extra["_content_type"] = "application/json-patch+json"
        patched = self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, name, body,
            field_manager=FIELD_MANAGER, _preload_content=False, **extra,
        )
        return str(_json(patched)["metadata"]["resourceVersion"])  # opaque: compared for equality only

    def pod_warning_events(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
        """Warning Events of one pod (the kubelet's FailedMount, FailedAttachVolume...)."""
        self._count("list", "events")
        selector = f"involvedObject.kind=Pod,involvedObject.name={name},type=Warning"
        if uid:
            selector += f",involvedObject.uid={uid}"
        listing = _json(self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False))
        return list(listing.get("items") or [])

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on `owner`; failures are logged, never raised (events are best effort)."""
        meta = owner["metadata"]
        now = dt.datetime.now(dt.UTC)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion", c.API_VERSION),
                "kind": owner.get("kind", c.FINETUNEJOB_KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubetune-operator"},
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "reportingComponent": "kubetune-operator",
            **({"reportingInstance": self.instance[:128]} if self.instance else {}),
        }
        self._count("create", "events")
        try:
            _drain(self.core.create_namespaced_event(meta["namespace"], event, field_manager=FIELD_MANAGER, _preload_content=False))  # type: ignore[arg-type]
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)


class ServingApi(KubeApi):
    """The calls of the ModelDeployment controller: reads, server-side apply of its children
    (field manager `kubetune-operator`), status, and the finalizer on served FineTuneJobs."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None, *,
                 may_write: Callable[[], bool] | None = None, instance: str = "") -> None:
        super().__init__(client, may_write=may_write, instance=instance)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.policy = kubernetes.client.PolicyV1Api(self.client)

    def _get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._count("get", plural)
        try:
            return _json(self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, plural, name, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_modeldeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_custom(c.MODELDEPLOYMENT_PLURAL, namespace, name)

    def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_custom(c.FINETUNEJOB_PLURAL, namespace, name)

    def list_custom(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        self._count("list", plural)
        listing = _json(self.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, plural, _preload_content=False))
        return list(listing.get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._count("list", "pods")
        listing = _json(self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False))
        return list(listing.get("items") or [])

    def apply(self, body: dict[str, Any]) -> None:
        """Server-side apply one child (ConfigMap, Deployment, Service, PodDisruptionBudget)."""
        kind, ns, name = body["kind"], body["metadata"]["namespace"], body["metadata"]["name"]
        self._count("apply", kind.lower())
        call = {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "Service": self.core.patch_namespaced_service,
            "Deployment": self.apps.patch_namespaced_deployment,
            "StatefulSet": self.apps.patch_namespaced_stateful_set,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
        }[kind]
        _drain(call(name, ns, body, _preload_content=False, **_APPLY))

    def get_statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The StatefulSet, or None when it does not exist."""
        self._count("get", "statefulsets")
        try:
            return _json(self.apps.read_namespaced_stateful_set(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_owned_deployment(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the Deployment `name` if `owner_uid` owns it (never someone else's of the same
        name); whether one was deleted."""
        self._count("get", "deployments")
        try:
            found = _json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        meta = found["metadata"]
        if not any(o.get("uid") == owner_uid for o in meta.get("ownerReferences") or []):
            return False
        self._count("delete", "deployments")
        body = {"preconditions": {"uid": meta["uid"]}, "propagationPolicy": "Background"}
        try:
            _drain(self.apps.delete_namespaced_deployment(name, namespace, body=body, _preload_content=False))  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def delete_pdb(self, namespace: str, name: str) -> None:
        self._count("delete", "poddisruptionbudgets")
        try:
            _drain(self.policy.delete_namespaced_pod_disruption_budget(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_modeldeployment_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._count("patch", "modeldeployments/status")
        _drain(self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.MODELDEPLOYMENT_PLURAL, name, {"status": status},
            field_manager=FIELD_MANAGER, _preload_content=False))

    def set_finalizers(self, obj: dict[str, Any], finalizers: list[str]) -> None:
        """Replace a FineTuneJob's finalizers, failing (409) if it changed since it was read."""
        meta = obj["metadata"]
        self._count("patch", "finetunejobs")
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        _drain(self.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, meta["namespace"], c.FINETUNEJOB_PLURAL, meta["name"], patch,
            field_manager=FIELD_MANAGER, _preload_content=False))
