"""What each kind of write the FineTuneJob controller makes costs kube-apiserver and etcd.

    .venv/bin/python bench/apiserver_cost.py                # 500 of each, kubetune's CRDs as shipped
    .venv/bin/python bench/apiserver_cost.py --no-cel       # the same CRDs without their CEL rules

On a fresh dev cluster (no operator), 8 client threads make N of each request and the script
prints the CPU seconds kube-apiserver and etcd used per request (from /proc) and the wall time per
request. Explains bench/operator_scale.py: with 2 cores shared by everything, the apiserver's
CPU per FineTuneJob (its create, the status writes, the ConfigMap, the Job, the Events) bounds how
fast 1000 of them become Jobs. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import control_plane_cpu

from kubetune.api import constants as c
from kubetune.api.crdgen import render_all
from kubetune_dev import start_dev_cluster

STATUS = {
    "phase": "Pending", "reason": "Pending", "message": "Waiting for the trainer pod to be created.",
    "jobName": "x", "observedGeneration": 1,
    "conditions": [{"type": t, "status": "False", "reason": "Pending", "message": "", "observedGeneration": 1,
                    "lastTransitionTime": "2026-12-02T06:12:47Z"}
                   for t in ("Accepted", "Running", "Suspended", "Complete", "Failed", "Ready", "Reconciling", "Stalled")],
}


def _strip_cel(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        for value in node.values():
            _strip_cel(value)
    elif isinstance(node, list):
        for value in node:
            _strip_cel(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="requests of each kind (default 500)")
    parser.add_argument("--no-cel", action="store_true", help="install the CRDs without their CEL rules")
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="kubetune-apicost-") as tmp:
        cluster = start_dev_cluster(Path(tmp) / "cluster")
        try:
            ext = client.ApiextensionsV1Api(cluster.api_client())
            for text in render_all().values():
                crd = yaml.safe_load(text)
                if args.no_cel:
                    _strip_cel(crd)
                ext.create_custom_resource_definition(crd)
            time.sleep(5)  # established
            ns = cluster.create_namespace("cost")
            api = client.CustomObjectsApi(cluster.api_client())
            core, batch = cluster.core(), client.BatchV1Api(cluster.api_client())

            def measure(what: str, request: Any) -> None:
                before, start = control_plane_cpu(cluster), time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    list(pool.map(request, range(n)))
                cpu = (control_plane_cpu(cluster) - before) / n * 1000
                wall = (time.monotonic() - start) / n * 1000
                print(f"{what:44s} {cpu:6.1f} ms apiserver+etcd CPU   {wall:5.1f} ms wall (8 threads)", flush=True)

            def ftj(i: int) -> dict[str, Any]:
                return {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": f"job-{i:05d}"},
                        "spec": {"baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://d/d.jsonl"}},
                                 "resources": {"gpus": 0}}}

            uids: dict[int, str] = {}

            def create_ftj(i: int) -> None:
                uids[i] = api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, ftj(i))["metadata"]["uid"]

            print(f"{n} of each; CRDs {'without' if args.no_cel else 'with'} their CEL rules")
            measure("create FineTuneJob", create_ftj)
            measure("status JSON patch (uid test), as the operator", lambda i: api.patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, f"job-{i:05d}",
                [{"op": "test", "path": "/metadata/uid", "value": uids[i]}, {"op": "add", "path": "/status", "value": STATUS}],
                _content_type="application/json-patch+json"))
            measure("status merge patch", lambda i: api.patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, f"job-{i:05d}", {"status": {**STATUS, "phase": "Running"}},
                _content_type="application/merge-patch+json"))
            measure("get FineTuneJob", lambda i: api.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, f"job-{i:05d}"))
            measure("server-side apply ConfigMap (2 kB)", lambda i: core.patch_namespaced_config_map(
                f"spec-{i}", ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"spec-{i}"}, "data": {"spec.json": "x" * 2000}},
                field_manager="bench", force=True, _content_type="application/apply-patch+yaml"))
            measure("create Job (suspended: no pod)", lambda i: batch.create_namespaced_job(ns, {
                "metadata": {"name": f"j-{i}"},
                "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "b"}]}}}}))
            measure("create Event", lambda i: core.create_namespaced_event(ns, {
                "metadata": {"generateName": "e."}, "involvedObject": {"kind": "Pod", "name": "x", "namespace": ns},
                "reason": "R", "message": "m", "type": "Normal"}))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
