"""Serving figures: a ModelDeployment on the dev cluster with real Ollama pods.

    .venv/bin/python bench/serving.py                 # 2 replicas, 10 switches
    .venv/bin/python bench/serving.py --switches 20 --replicas 3

Starts the dev control plane with the local pod runner (hack/ tools must be installed:
`make tools`), runs the real operator, trains two tiny versions through it (FineTuneJobs on the
local runner), then creates a ModelDeployment serving them from `--replicas` pods, each a real
`ollama serve` (hack/build-ollama.sh) beside the real serve-agent. Prints:

- time from both FineTuneJobs Succeeded to the first version Ready on every pod (fetch,
  sha256, register, load, 1-token generation, alias, readiness seen by the operator);
- switch time: from the `activeVersion` patch to the status reporting the new version Ready
  on every pod (the aliases re-pointed and checked), p50/p95 over `--switches` alternating
  switches (v1 -> v2 -> v1 ...);
- failed requests during the switches, under a steady loop of chat completions round-robin
  over the pods (target 0), with the request count and latency p50/p95;
- serve-agent memory: RSS of each kubetune container process, and of each Ollama server.

Figures depend on the machine's load (the operator resyncs every second here; a kubelet's
ConfigMap refresh, ~1 min on a real cluster, is ~1 s on the local runner). Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from statistics import quantiles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubetune.api import constants as c
from kubetune_dev import start_dev_cluster
from kubetune_dev.finetunejobs import ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import Md, RequestLoop, operator_env, train_versions


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return quantiles(values, n=100, method="inclusive")[q - 1]


def _rss_mib(pattern: str) -> list[float]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if pattern not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kubetune-serving-bench-"))
    cluster = start_dev_cluster(workdir / "cluster")
    operator = OperatorProcess(cluster.kubeconfig, workdir / "operator.log", operator_env())
    try:
        install_crds(cluster)
        operator.start()
        ns = cluster.create_namespace(f"bench-{uuid.uuid4().hex[:6]}")
        ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC)
        t0 = time.monotonic()
        train_versions(cluster, ns, ["job-a", "job-b"], operator)
        trained = time.monotonic()
        print(f"two tiny versions trained through the operator in {trained - t0:.0f} s")
        md = Md.create(cluster, ns, "support", {
            "versions": [{"name": "v1", "fineTuneJob": "job-a", "quantization": "f16"},
                         {"name": "v2", "fineTuneJob": "job-b", "quantization": "f16"}],
            "activeVersion": "v1", "replicas": args.replicas})
        md.wait_serving("v1", operator, timeout=600)
        ready = time.monotonic()
        print(f"FineTuneJobs Succeeded -> v1 Ready on {args.replicas} pods: {ready - trained:.1f} s")

        switch_times: list[float] = []
        with RequestLoop(md.pod_ips(), "support") as load:
            for i in range(args.switches):
                target = "v2" if i % 2 == 0 else "v1"
                start = time.monotonic()
                md.patch_spec({"activeVersion": target})
                md.wait_serving(target, operator, timeout=300)
                switch_times.append(time.monotonic() - start)
                time.sleep(1)
        print(f"switch (patch -> Ready on every pod), {len(switch_times)} switches: "
              f"p50 {_pct(switch_times, 50):.2f} s, p95 {_pct(switch_times, 95):.2f} s, "
              f"max {max(switch_times):.2f} s")
        print(f"requests during the switches: {load.ok} ok, {len(load.failures)} failed; latency "
              f"p50 {_pct(load.latencies, 50) * 1000:.0f} ms, p95 {_pct(load.latencies, 95) * 1000:.0f} ms")
        for failure in load.failures[:5]:
            print("  failed:", failure)
        agents = _rss_mib("serve-agent")
        ollamas = _rss_mib("ollama serve")
        runners = _rss_mib("ollama runner")
        print("serve-agent RSS (MiB): " + ", ".join(f"{x:.0f}" for x in agents))
        print("ollama serve RSS (MiB): " + ", ".join(f"{x:.0f}" for x in ollamas))
        print("ollama runner RSS (MiB, one per loaded version): " + ", ".join(f"{x:.0f}" for x in runners))
    finally:
        operator.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
