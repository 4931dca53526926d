"""kopf's own coordination (peering) measured on the dev cluster: why the operator elects on a Lease.

    .venv/bin/python bench/kopf_peering.py

Starts a fresh dev cluster, installs kopf's KopfPeering CRD (kopf does not ship it installed),
and runs minimal kopf 1.45 operators with peering on, each recording when its handler sees a
labelled ConfigMap. Prints:
  1. two operators with the same priority (two replicas of one Deployment): how many probe
     ConfigMaps each handled in 20 s;
  2. priorities 100 and 0, the first SIGKILLed: seconds until the second handles a probe, for
     peering lifetimes 60 s (kopf's default) and 15 s.
Compare with bench/operator_handover.py (the Lease). Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubetune_dev import DevCluster, start_dev_cluster

OPERATOR = textwrap.dedent('''
    import asyncio, sys, time
    import kopf

    namespace, priority, lifetime, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    @kopf.on.startup()
    def configure(settings, **_):
        settings.peering.lifetime = lifetime
        settings.posting.enabled = False

    @kopf.on.event("", "v1", "configmaps", labels={"probe": kopf.PRESENT})
    def seen(name, **_):
        with open(out, "a") as f:
            f.write(f"{time.time()} {name}\\n")

    asyncio.run(kopf.operator(namespaces=[namespace], peering_name="default", priority=priority))
''')

PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {"group": "kopf.dev", "scope": "Namespaced",
             "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"status": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


class Peer:
    def __init__(self, cluster: DevCluster, workdir: Path, namespace: str, priority: int, lifetime: int) -> None:
        self.out = workdir / f"{namespace}-{priority}.seen"
        self.out.touch()
        script = workdir / "peer.py"
        script.write_text(OPERATOR)
        log = (workdir / f"{namespace}-{priority}.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        self.process = subprocess.Popen(
            [sys.executable, str(script), namespace, str(priority), str(lifetime), str(self.out)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def seen(self) -> list[tuple[float, str]]:
        return [(float(t), n) for t, n in (line.split() for line in self.out.read_text().splitlines())]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def probe(cluster: DevCluster, namespace: str, name: str) -> None:
    cluster.core().create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": {"probe": "1"}}})


def peering_namespace(cluster: DevCluster, name: str) -> str:
    ns = cluster.create_namespace(name)
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(
        "kopf.dev", "v1", ns, "kopfpeerings", {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                               "metadata": {"name": "default"}})
    return ns


def same_priority(cluster: DevCluster, workdir: Path) -> None:
    ns = peering_namespace(cluster, "same-priority")
    peers = [Peer(cluster, workdir, ns, 0, 60)]
    time.sleep(10)
    peers.append(Peer(cluster, workdir, ns, 0, 60))  # a second replica with the same priority
    time.sleep(10)
    start = time.time()
    for i in range(20):
        probe(cluster, ns, f"probe-{i}")
        time.sleep(1)
    counts = [sum(1 for t, _ in p.seen() if t >= start) for p in peers]
    print(f"same priority: probes handled in 20 s by the first and the second replica: {counts} (of 20)")
    for p in peers:
        p.kill()


def failover(cluster: DevCluster, workdir: Path, lifetime: int) -> None:
    ns = peering_namespace(cluster, f"failover-{lifetime}")
    high = Peer(cluster, workdir, ns, 100, lifetime)
    time.sleep(8)
    low = Peer(cluster, workdir, ns, 0, lifetime)
    time.sleep(8)
    probe(cluster, ns, "before")
    time.sleep(5)
    print(f"lifetime {lifetime} s: before the kill, high handled {len(high.seen())}, low {len(low.seen())}")
    high.kill()
    killed = time.time()
    i = 0
    while time.time() - killed < lifetime + 60 and not low.seen():
        probe(cluster, ns, f"after-{i}")
        i += 1
        time.sleep(1)
    first = min((t for t, _ in low.seen()), default=float("inf"))
    print(f"lifetime {lifetime} s: the priority-0 peer handled its first probe {first - killed:.1f} s after "
          "the priority-100 peer was SIGKILLed")
    low.kill()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kubetune-peering-") as tmp:
        workdir = Path(tmp)
        cluster = start_dev_cluster(workdir / "cluster")
        try:
            ext = client.ApiextensionsV1Api(cluster.api_client())
            ext.create_custom_resource_definition(PEERING_CRD)
            cluster.wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in (
                ext.read_custom_resource_definition("kopfpeerings.kopf.dev").status.conditions or [])),
                what="KopfPeering CRD")
            same_priority(cluster, workdir)
            for lifetime in (60, 15):
                failover(cluster, workdir, lifetime)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
