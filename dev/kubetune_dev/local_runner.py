"""The local pod runner: a minimal kubelet for the node ``kubetune-local`` (dev/test tool).

Pods that opt in (toleration for the ``kubetune.dev/local-runner=true:NoSchedule`` taint and
``nodeSelector: {kubetune.dev/local-runner: "true"}``) are scheduled by the real scheduler to
``kubetune-local``; this process watches them and runs each container's command as a local
process (see :mod:`kubetune_dev.local_pod_run`). kwok keeps the node Ready but leaves
its pods alone. The runner also provisions PersistentVolumes for claims
(:mod:`kubetune_dev.local_storage`).

Every pod gets its own IP for as long as it runs (``status.podIP``, and the downward API's
``status.podIP``): an address of ``--pod-cidr`` made local on ``lo``, so that replicas can
listen on the same port and Services list them (see :mod:`kubetune_dev.local_pod_network`).
A test finds a pod's IP in its status and its files with ``DevCluster.local_pod_dir`` (logs:
``<container>.log``; volumes: ``volumes/<name>``).

Run: ``python -m kubetune_dev.local_runner --kubeconfig K --state-dir D``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import urllib3
from kubernetes import client, watch

from kubetune_dev.kube import api_client_from_kubeconfig, as_dict
from kubetune_dev.local_pod_network import POD_CIDR, PodAddresses, ensure_local_network
from kubetune_dev.local_pod_run import PodRun
from kubetune_dev.local_storage import run_provisioner
from kubetune_dev.simulation import LOCAL_NODE

log = logging.getLogger("kubetune_dev.local_runner")


class LocalRunner:
    """Keeps one PodRun per live pod on the node; finishes deletions like the kubelet."""

    def __init__(self, core: client.CoreV1Api, state_dir: Path, node: str,
                 apiserver: tuple[str, int], addresses: PodAddresses,
                 ready_file: Path | None = None) -> None:
        self.core = core
        self.addresses = addresses
        self.ready_file = ready_file
        self.state_dir = state_dir
        self.node = node
        self.apiserver = apiserver
        self.runs: dict[str, PodRun] = {}
        self.finished: set[str] = set()
        self.created_paths: list[str] = []
        self.lock = threading.Lock()

    def serve(self, stop: threading.Event) -> None:
        """List and watch the node's pods until ``stop``; retry while the apiserver is away."""
        while not stop.is_set():
            try:
                self._list_and_watch(stop)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                log.info("apiserver not reachable (%s); retrying", error)
                stop.wait(0.5)
            except client.ApiException as error:
                if error.status not in (410, 429, 500, 503):  # 410: resource version too old
                    raise
                log.info("apiserver answered %s; listing again", error.status)
                stop.wait(0.5)

    def _list_and_watch(self, stop: threading.Event) -> None:
        selector = f"spec.nodeName={self.node}"
        api = self.core.api_client
        listing = as_dict(api, self.core.list_pod_for_all_namespaces(field_selector=selector))
        for pod in listing["items"]:
            self.reconcile(pod)
        if self.ready_file is not None:
            self.ready_file.touch()  # tells the starter that pods are being watched
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            self.core.list_pod_for_all_namespaces, field_selector=selector,
            resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=30)
        for event in stream:
            if stop.is_set():
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                self.reconcile(as_dict(api, event["object"]))

    def reconcile(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            threading.Thread(target=self._finish_deletion, args=(pod,), daemon=True).start()
            return
        phase = (pod.get("status") or {}).get("phase")
        with self.lock:
            if uid in self.runs or uid in self.finished or phase in ("Succeeded", "Failed"):
                return
            # A pod the runner ran before it restarted keeps its IP where it can.
            pod_ip = self.addresses.allocate(uid, (pod.get("status") or {}).get("podIP"))
            run = PodRun(self.core, pod, self.state_dir, self.apiserver, pod_ip, self._on_exit)
            self.runs[uid] = run
        log.info("pod %s/%s: starting", meta["namespace"], meta["name"])
        run.start()

    def _finish_deletion(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with self.lock:
            run = self.runs.get(meta["uid"])
        if run is not None:
            run.kill(float(meta.get("deletionGracePeriodSeconds") or 0))
        with contextlib.suppress(client.ApiException):
            # With a body, the apiserver ignores query parameters: the grace period goes in it.
            options = client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"]))
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=options)
        log.info("pod %s/%s: deleted", meta["namespace"], meta["name"])

    def _on_exit(self, run: PodRun) -> None:
        with self.lock:
            self.runs.pop(run.uid, None)
            self.finished.add(run.uid)
            self.addresses.release(run.uid)  # its processes are gone: nothing listens there
            self.created_paths.extend(run.created_paths)
            idle = not self.runs
        if idle:
            self.remove_created_paths()

    def remove_created_paths(self) -> None:
        """Remove mount points made for pods, once no pod can still be using them."""
        with self.lock:
            paths, self.created_paths = self.created_paths, []
        for path in reversed(paths):
            with contextlib.suppress(OSError):
                if os.path.isdir(path):
                    os.rmdir(path)  # only if empty
                elif os.path.getsize(path) == 0:
                    os.unlink(path)

    def shutdown(self) -> None:
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            run.kill(grace=2)
        self.remove_created_paths()


def _apiserver_address(api: client.ApiClient) -> tuple[str, int]:
    url = urlparse(api.configuration.host)
    return url.hostname or "127.0.0.1", url.port or 443


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node-name", default=LOCAL_NODE)
    parser.add_argument("--ready-file", type=Path, help="touched once pods are watched")
    parser.add_argument("--pod-cidr", default=POD_CIDR,
                        help="pod IPs come from here; routed to lo if not local yet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Commands resolve on PATH with this interpreter's bin first (the venv's python).
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    api = api_client_from_kubeconfig(args.kubeconfig)
    core = client.CoreV1Api(api)
    addresses = PodAddresses(ensure_local_network(args.pod_cidr))
    runner = LocalRunner(core, args.state_dir.resolve(), args.node_name, _apiserver_address(api),
                         addresses, args.ready_file)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    provisioner = threading.Thread(target=run_provisioner, daemon=True,
                                   args=(core, args.state_dir.resolve(), stop))
    provisioner.start()
    try:
        runner.serve(stop)
    finally:
        stop.set()
        runner.shutdown()
        log.info("local runner stopped")


if __name__ == "__main__":
    main()
