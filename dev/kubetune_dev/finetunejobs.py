"""Helpers for tests and benchmarks (bench/operator_scale.py, bench/serving.py) that drive
FineTuneJobs on the dev cluster: install the generated CRDs, bind PVCs, apply a FineTuneJob and
read it and its children."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import yaml
from kubernetes import client
from kubernetes.client import ApiException

from kubetune.api import constants as c
from kubetune.api.crdgen import render_all
from kubetune.operator.builders.names import label_value
from kubetune_dev import MESSAGE_ANNOTATION, OUTCOME_ANNOTATION, DevCluster
from kubetune_dev.operator_process import OperatorProcess


def install_crds(cluster: DevCluster) -> None:
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for text in render_all().values():
        crd = yaml.safe_load(text)
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
        name: str = crd["metadata"]["name"]

        def established(n: str = name) -> bool:
            status = ext.read_custom_resource_definition(n).status
            return any(cond.type == "Established" and cond.status == "True"
                       for cond in ((status.conditions if status else None) or []))

        cluster.wait_for(established, what=f"CRD {name} established")


class Ftj:
    """A FineTuneJob under test, with the helpers that read it and its children."""

    def __init__(self, cluster: DevCluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.api = client.CustomObjectsApi(cluster.api_client())
        self.batch = client.BatchV1Api(cluster.api_client())
        self.core = cluster.core()

    def get(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.get_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, c.FINETUNEJOB_PLURAL, self.name))

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def patch_spec(self, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(c.GROUP, c.VERSION, self.namespace, c.FINETUNEJOB_PLURAL, self.name, {"spec": patch})

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60, operator: OperatorProcess | None = None) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            if operator is not None:
                operator.check_alive()
            status = self.status()
            return status if predicate(status) else None

        try:
            return self.cluster.wait_for(probe, timeout=timeout, what=f"{self.name}: {what}")
        except Exception:
            print("last status:", json.dumps(self.status(), indent=1))
            if operator is not None:
                print(operator.log_tail())
            raise

    def wait_phase(self, phase: str, operator: OperatorProcess, timeout: float = 60) -> dict[str, Any]:
        return self.wait_status(lambda s: s.get("phase") == phase, f"phase {phase}", timeout, operator)

    def jobs(self) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.namespace, label_selector=self.selector).items)

    @property
    def selector(self) -> str:
        """Selects its children, and those of an earlier object of the same name."""
        return f"{c.LABEL_FINETUNEJOB}={label_value(self.name)}"

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items)

    def running_pod(self) -> Any:
        return self.cluster.wait_for(
            lambda: next((p for p in self.pods() if p.status.phase == "Running"), None), what=f"{self.name}: a Running pod"
        )

    def end_pod(self, pod: Any, outcome: str, message: str | None = None) -> None:
        annotations = {OUTCOME_ANNOTATION: outcome}
        if message is not None:
            annotations[MESSAGE_ANNOTATION] = message
        self.core.patch_namespaced_pod(pod.metadata.name, self.namespace, {"metadata": {"annotations": annotations}})

    def events(self) -> list[Any]:
        return list(self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={self.name}").items)


def apply_ftj(cluster: DevCluster, namespace: str, spec: dict[str, Any], name: str | None = None) -> Ftj:
    name = name or f"ftj-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)
    return Ftj(cluster, namespace, name)


def ensure_pvcs(cluster: DevCluster, namespace: str, *names: str, access_mode: str = "ReadWriteOnce") -> None:
    core = cluster.core()
    for name in names:
        claim: Any = {
            "metadata": {"name": name},
            "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": "1Gi"}}},
        }
        core.create_namespaced_persistent_volume_claim(namespace, claim)
    for name in names:

        def bound(n: str = name) -> bool:
            status = core.read_namespaced_persistent_volume_claim(n, namespace).status
            return status is not None and status.phase == "Bound"

        cluster.wait_for(bound, what=f"PVC {name} bound")
