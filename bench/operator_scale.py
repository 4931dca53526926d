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
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

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


def reconciler_requests(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rest_client_requests_total{"))


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

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(n)))
    deadline = start + 600
    while time.monotonic() < deadline:
        if len(core.list_namespaced_pod(ns, label_selector="bench=plain").items) >= n:
            return time.monotonic() - start
        time.sleep(0.5)
    return None


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
        baseline = plain_job_baseline(cluster, n)
        ns = cluster.create_namespace("bench")
        # ReadWriteMany, as a platform running 1000 trainers at once has: on a ReadWriteOnce
        # artifacts claim the operator keeps every trainer on the claim's one node (pod
        # affinity), where only 110 pods fit, and the rest wait Pending.
        ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC, "models", "datasets", access_mode="ReadWriteMany")
        port = free_port()
        operator = OperatorProcess(cluster.kubeconfig, workdir / f"operator-{n}.log", {
            "KUBETUNE_OPERATOR_METRICS_PORT": str(port),
            "KUBETUNE_PROGRESS_INTERVAL": "30",
        })
        operator.start()
        time.sleep(3)  # let kopf list and watch before the burst
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

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        applied = time.monotonic() - start
        jobs_at = running_at = None
        deadline = start + 600
        while time.monotonic() < deadline and running_at is None:
            operator.check_alive()
            if jobs_at is None:
                count = len(batch.list_namespaced_job(ns, label_selector=c.LABEL_FINETUNEJOB).items)
                if count >= n:
                    jobs_at = time.monotonic() - start
            items = api.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL)["items"]
            if sum(1 for i in items if (i.get("status") or {}).get("phase") == "Running") >= n:
                running_at = time.monotonic() - start
            time.sleep(0.5)
        row = {
            "jobs": n,
            "apply_s": round(applied, 1),
            "all_jobs_created_s": round(jobs_at, 1) if jobs_at else "timeout",
            "all_running_s": round(running_at, 1) if running_at else "timeout",
            "plain_jobs_pods_s": round(baseline, 1) if baseline else "timeout",
            "ratio": round(jobs_at / baseline, 2) if jobs_at and baseline else None,
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
