"""How the operator copes with many FineTuneJobs at once, on the dev cluster.

    .venv/bin/python bench/operator_scale.py --jobs 100 1000

For each N: start a fresh dev cluster (real kube-apiserver, controller-manager, scheduler,
etcd; kwok GPU nodes scaled so every trainer pod fits), start the operator, apply N
FineTuneJobs at once, and print:
  - seconds until every trainer Job exists,
  - seconds until every FineTuneJob's status shows Running,
  - the operator's peak RSS (VmHWM),
  - Kubernetes API requests the reconcilers made per FineTuneJob (from the operator's /metrics),
  - CPU seconds the operator used (to tell an operator bottleneck from an apiserver one).
And, on the same cluster before the operator starts, the built-in baseline: N plain Jobs
created with 8 client threads, and the seconds until kube-controller-manager's Job controller has
made every pod (`plain_jobs_pods_s`); `ratio` is all_jobs_created_s / plain_jobs_pods_s (the
operator's FineTuneJob -> Job against the Job controller's Job -> Pod, same count, same cluster).
Targets on a 2-core machine: ratio <= 1.5, operator RSS under 300 MB.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, watch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubetune.api import constants as c
from kubetune_dev import GPU_NODES, start_dev_cluster
from kubetune_dev.finetunejobs import ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.simulation import GPUS_PER_NODE, _node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu(cluster: Any) -> float:
    """CPU seconds kube-apiserver and etcd have used so far."""
    total = 0.0
    for process in cluster.processes:
        if process.name in ("kube-apiserver", "etcd") and process.popen is not None:
            total += cpu_seconds(process.popen.pid)
    return total


def operator_ready(port: int) -> bool:
    try:
        return bool(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200)
    except OSError:
        return False


def reconciler_requests(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rest_client_requests_total{"))


class Arrivals:
    """When each object of one kind first matched `predicate`, as a watch reports it (in a
    thread). Listing 1000 Jobs and 1000 FineTuneJobs every half second cost the apiserver, on a
    2-core machine, a good part of what it had for the operator's own writes; a watch sends each
    change once (and the Job controller's baseline is timed the same way)."""

    def __init__(self, list_fn: Any, *args: Any, predicate: Any = None, **kwargs: Any) -> None:
        self.first: dict[str, float] = {}
        self._stopped = False
        self._predicate = predicate or (lambda obj: True)
        self._watch = watch.Watch()
        version = list_fn(*args, limit=1, **kwargs)
        version = version["metadata"]["resourceVersion"] if isinstance(version, dict) else version.metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(list_fn, args, kwargs, version), daemon=True)
        self._thread.start()

    def _run(self, list_fn: Any, args: Any, kwargs: Any, version: str) -> None:
        try:
            for event in self._watch.stream(list_fn, *args, resource_version=version, deserialize=False,
                                            timeout_seconds=900, **kwargs):
                obj = event["object"]
                name = obj["metadata"]["name"]
                if event["type"] in ("ADDED", "MODIFIED") and name not in self.first and self._predicate(obj):
                    self.first[name] = time.monotonic()
        except Exception as exc:  # stop() cuts the stream; anything else shows as a timeout
            if not self._stopped:
                print(f"watch ended: {exc!r}", file=sys.stderr)

    def wait(self, n: int, start: float, deadline: float, alive: Any = None) -> float | None:
        """Seconds from `start` until `n` objects matched, None at the deadline."""
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            if len(self.first) >= n:
                return sorted(self.first.values())[n - 1] - start
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def plain_job_baseline(cluster: Any, n: int) -> float | None:
    """Seconds from creating `n` plain Jobs until the Job controller made all their pods."""
    ns = cluster.create_namespace("bench-plain")
    batch = client.BatchV1Api(cluster.api_client())
    core = cluster.core()

    def create(i: int) -> None:
        batch.create_namespaced_job(ns, {
            "metadata": {"name": f"plain-{i:05d}", "labels": {"bench": "plain"}},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {"bench": "plain"}},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]}}},
        })

    pods = Arrivals(core.list_namespaced_pod, ns, label_selector="bench=plain")
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(n)))
    try:
        return pods.wait(n, start, start + 600)
    finally:
        pods.stop()


def run(n: int, workdir: Path) -> dict[str, Any]:
    cluster = start_dev_cluster(workdir / f"cluster-{n}")
    operator = None
    try:
        install_crds(cluster)
        # The 6 standard nodes hold 110 pods each; add CPU nodes so every trainer pod (and every
        # pod of the plain-Job baseline) fits.
        core = cluster.core()
        for i in range(2 * (n // 100 + 1)):
            core.create_node(_node(f"bench-cpu-{i}", {}, {"cpu": "64", "memory": "256Gi", "pods": "110"}))
        # Taint the GPU nodes as real GPU pools are (the operator's trainer pods that ask for a
        # GPU tolerate it): else CPU-only pods take their 110 pod slots and GPU pods stay Pending.
        for name in GPU_NODES:
            core.patch_node(name, {"spec": {"taints": [
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}})
        cp_before = control_plane_cpu(cluster)
        baseline = plain_job_baseline(cluster, n)
        cp_baseline = control_plane_cpu(cluster) - cp_before
        ns = cluster.create_namespace("bench")
        # ReadWriteMany, as a platform running 1000 trainers at once has: on a ReadWriteOnce
        # artifacts claim the operator keeps every trainer on the claim's one node (pod
        # affinity), where only 110 pods fit, and the rest wait Pending.
        ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets", access_mode="ReadWriteMany")
        port, probes = free_port(), free_port()
        operator = OperatorProcess(cluster.kubeconfig, workdir / f"operator-{n}.log", {
            "KUBETUNE_OPERATOR_METRICS_PORT": str(port),
            "KUBETUNE_PROGRESS_INTERVAL": "30",
        }, args=["--liveness", f"http://127.0.0.1:{probes}/healthz"])
        operator.start()
        # The burst meets a running operator, as on a cluster: ready (kopf has listed every
        # watched kind), plus a moment. A burst during kopf's first listing costs it a
        # readiness toggle per new object, each waking every waiting worker.
        ready_by = time.monotonic() + 120
        while not operator_ready(probes):
            operator.check_alive()
            if time.monotonic() > ready_by:
                raise RuntimeError(f"the operator was not ready within 120 s; its log:\n{operator.log_tail()}")
            time.sleep(0.5)
        time.sleep(2)
        api = client.CustomObjectsApi(cluster.api_client())
        batch = client.BatchV1Api(cluster.api_client())
        # Every pod must fit somewhere: ask for GPUs only while the simulated nodes have them.
        gpu_slots = len(GPU_NODES) * GPUS_PER_NODE

        def create(i: int) -> None:
            gpus = 1 if i < gpu_slots else 0
            body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND, "metadata": {"name": f"job-{i:05d}"},
                    "spec": {"baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://datasets/d.jsonl"}},
                             "resources": {"gpus": gpus}}}
            api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, body)

        jobs = Arrivals(batch.list_namespaced_job, ns, label_selector=c.LABEL_FINETUNEJOB)
        running = Arrivals(api.list_namespaced_custom_object, c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL,
                           predicate=lambda obj: (obj.get("status") or {}).get("phase") == "Running")
        cp_before = control_plane_cpu(cluster)
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        applied = time.monotonic() - start
        jobs_at = jobs.wait(n, start, start + 600, operator.check_alive)
        cp_jobs = control_plane_cpu(cluster) - cp_before
        running_at = running.wait(n, start, start + 600, operator.check_alive)
        jobs.stop()
        running.stop()
        row = {
            "jobs": n,
            "apply_s": round(applied, 1),
            "all_jobs_created_s": round(jobs_at, 1) if jobs_at else "timeout",
            "all_running_s": round(running_at, 1) if running_at else "timeout",
            "plain_jobs_pods_s": round(baseline, 1) if baseline else "timeout",
            "ratio": round(jobs_at / baseline, 2) if jobs_at and baseline else None,
            # kube-apiserver + etcd CPU-s while the baseline ran, and until every trainer Job existed
            "apiserver_etcd_cpu_s": f"{cp_baseline:.0f}/{cp_jobs:.0f}",
            "operator_peak_rss_mb": round(peak_rss_mb(operator.process.pid), 1) if operator.process else None,
            "operator_cpu_s": round(cpu_seconds(operator.process.pid), 1) if operator.process else None,
            "api_requests_per_job": round(reconciler_requests(port) / n, 2),
        }
        # Kept with --workdir: what the reconcilers waited for (durations, requests by verb).
        (workdir / f"operator-{n}.metrics").write_text(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        return row
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workdir", type=Path, help="keep the clusters' and the operator's logs and "
                        "/metrics here (default: a temporary directory, removed)")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        rows = [run(n, args.workdir) for n in args.jobs]
    else:
        with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
            rows = [run(n, Path(tmp)) for n in args.jobs]
    keys = list(rows[0])
    print("  ".join(f"{k:>22}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]!s:>22}" for k in keys))


if __name__ == "__main__":
    main()
