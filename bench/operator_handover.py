"""How long two operator replicas take to hand over when the leader dies, on the dev cluster.

    .venv/bin/python bench/operator_handover.py --runs 3

Starts a fresh dev cluster (real kube-apiserver, controller-manager, scheduler, etcd), two
`kubetune operator` processes with leader election on (Lease `kubetune-operator`, default
timings: lease 10 s, renew deadline 7 s, retry 2 s), then for each run:
  - SIGKILLs the leader (a crashed or evicted pod) and creates a FineTuneJob at once;
  - prints the seconds until the standby holds the Lease, and until that FineTuneJob has a
    status (the new leader reconciles);
  - starts a fresh standby in place of the killed one.
Then the same once with SIGTERM (a rolling update: the leader releases the Lease on exit).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubetune.api import constants as c
from kubetune.api.crdgen import render_all
from kubetune_dev import DevCluster, start_dev_cluster

LEASE = "kubetune-operator"


class Replica:
    """One `kubetune operator` process with leader election on, its log in a file."""

    def __init__(self, cluster: DevCluster, namespace: str, identity: str, workdir: Path, probe_port: int) -> None:
        self.identity = identity
        self.probe_port = probe_port
        self._log: IO[bytes] = (workdir / f"{identity}.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1",
               "KUBETUNE_OPERATOR_METRICS_PORT": "0", "KUBETUNE_NAMESPACES": namespace,
               "KUBETUNE_LEADER_ELECTION": "true", "POD_NAMESPACE": namespace, "POD_NAME": identity}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator", "--liveness",
             f"http://127.0.0.1:{probe_port}/healthz"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def signal(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)
        self._log.close()


def install_crds(cluster: DevCluster) -> None:
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for text in render_all().values():
        crd = yaml.safe_load(text)
        ext.create_custom_resource_definition(crd)
        cluster.wait_for(lambda n=crd["metadata"]["name"]: any(
            cd.type == "Established" and cd.status == "True"
            for cd in (ext.read_custom_resource_definition(n).status.conditions or [])),
            what="CRD established")


def holder(cluster: DevCluster, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(LEASE, namespace)
    except client.ApiException:
        return None
    return lease.spec.holder_identity if lease.spec else None


def wait(predicate: Any, timeout: float = 120) -> float:
    """Seconds until predicate() is true (polled every 50 ms); inf on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    return float("inf")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="SIGKILL handovers to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetune-handover-") as tmp:
        workdir = Path(tmp)
        cluster = start_dev_cluster(workdir / "cluster")
        replicas: list[Replica] = []
        try:
            install_crds(cluster)
            ns = cluster.create_namespace("handover")
            api = client.CustomObjectsApi(cluster.api_client())
            serial = iter(range(1000))

            def start(identity: str) -> Replica:
                replica = Replica(cluster, ns, identity, workdir, free_port())
                replicas.append(replica)
                if wait(replica.ready, 120) == float("inf"):
                    raise SystemExit(f"{identity} not ready in 120 s: see {workdir}/{identity}.log")
                return replica

            leader = start(f"op-{next(serial)}")
            wait(lambda: holder(cluster, ns) == leader.identity)
            standby = start(f"op-{next(serial)}")
            rows = []
            for run in range(args.runs + 1):
                graceful = run == args.runs
                time.sleep(3)  # the standby has seen a few renewals
                name = f"ftj-{run}"
                body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": name},
                        "spec": {"baseModel": {"uri": "pvc://models/m"},
                                 "dataset": {"source": {"uri": "pvc://datasets/d.jsonl"}}}}
                gone = time.monotonic()  # (a SIGTERMed leader takes a moment to exit: counted)
                leader.signal(signal.SIGTERM if graceful else signal.SIGKILL)
                api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, body)
                taken = wait(lambda who=standby.identity: holder(cluster, ns) == who) != float("inf")
                lease_s = time.monotonic() - gone if taken else float("inf")
                wait(lambda n=name: bool(api.get_namespaced_custom_object(
                    c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, n).get("status")))
                status_s = time.monotonic() - gone
                rows.append(("SIGTERM" if graceful else "SIGKILL", lease_s, status_s))
                print(f"{rows[-1][0]:>8}  lease taken {lease_s:5.1f} s  first status {status_s:5.1f} s", flush=True)
                leader, standby = standby, start(f"op-{next(serial)}")
            killed = [r for r in rows if r[0] == "SIGKILL"]
            for label, index in (("lease taken", 1), ("first status", 2)):
                values = [r[index] for r in killed]
                print(f"SIGKILL {label}: min {min(values):.1f} s, median {statistics.median(values):.1f} s, "
                      f"max {max(values):.1f} s over {len(values)} runs")
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.signal(signal.SIGKILL)
            cluster.stop()


if __name__ == "__main__":
    main()
