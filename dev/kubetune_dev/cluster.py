"""A whole dev cluster: control plane, kwok nodes and the local runner, started and stopped.

>>> cluster = start_dev_cluster(Path("/tmp/kubetune-dev"))
>>> cluster.core().list_node()
>>> cluster.stop()          # stops every process and deletes the state dir
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

from kubetune_dev import control_plane, kwok
from kubetune_dev.kube import api_client_from_kubeconfig, create_unless_exists
from kubetune_dev.local_pod_run import local_pod_logs, pod_dir
from kubetune_dev.local_storage import storage_class_manifest
from kubetune_dev.pki import (
    ADMIN_USER,
    CONTROLLER_MANAGER_USER,
    SCHEDULER_USER,
    generate_credentials,
    write_kubeconfig,
)
from kubetune_dev.processes import ComponentError, ManagedProcess
from kubetune_dev.tools import Toolchain, find_toolchain
from kubetune_dev.waiting import WaitTimeout, wait_until

T = TypeVar("T")
INFO_FILE = "cluster.json"
RUNNER_READY_FILE = "local-runner.ready"
# Stop clients before the servers they talk to.
STOP_ORDER = ("local-runner", "kwok", "kube-scheduler", "kube-controller-manager",
              "kube-apiserver", "etcd")


@dataclass
class DevCluster:
    """A running dev cluster. ``kubeconfig`` is cluster-admin (``system:masters``)."""

    state_dir: Path
    kubeconfig: Path
    server: str
    ca_cert: Path
    tools: Toolchain
    processes: list[ManagedProcess] = field(default_factory=list)
    startup_seconds: float = 0.0
    startup_timings: dict[str, float] = field(default_factory=dict)  # step -> s since start

    # -- clients -------------------------------------------------------------------------

    def api_client(self) -> client.ApiClient:
        """A new admin ApiClient for this cluster (callers may close it)."""
        return api_client_from_kubeconfig(self.kubeconfig)

    def api_client_for_token(self, token: str) -> client.ApiClient:
        """An ApiClient that authenticates with ``token`` (e.g. a ServiceAccount's)."""
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_cert)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; raises on a non-zero exit."""
        return subprocess.run([str(self.tools.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)

    # -- helpers for tests ---------------------------------------------------------------

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float = 30,
                 what: str = "condition") -> T:
        """Poll ``probe`` until it returns a truthy value (bounded); see waiting.wait_until."""
        return wait_until(probe, timeout=timeout, what=what)

    def create_namespace(self, name: str, timeout: float = 30) -> str:
        """Create namespace ``name`` and wait for its ``default`` ServiceAccount (pods need it)."""
        core = self.core()
        create_unless_exists(core.create_namespace, {"metadata": {"name": name}})
        self.wait_for(lambda: core.read_namespaced_service_account("default", name),
                      timeout=timeout, what=f"ServiceAccount {name}/default")
        return name

    def wait_for_pod(self, namespace: str, name: str, predicate: Callable[[Any], bool],
                     *, timeout: float = 60, what: str = "") -> Any:
        """Poll pod ``namespace/name`` until ``predicate(pod)``; return the V1Pod."""
        core = self.core()

        def probe() -> Any:
            pod = core.read_namespaced_pod(name, namespace)
            return pod if predicate(pod) else None

        return self.wait_for(probe, timeout=timeout, what=what or f"pod {namespace}/{name}")

    def wait_for_pod_phase(self, namespace: str, name: str, *phases: str,
                           timeout: float = 60) -> Any:
        return self.wait_for_pod(namespace, name, lambda pod: pod.status.phase in phases,
                                 timeout=timeout, what=f"pod {namespace}/{name} in {phases}")

    def job_pods(self, namespace: str, job: str) -> list[Any]:
        return list(self.core().list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items)

    def local_pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """Output of a pod that ran on the local runner (``kubectl logs`` does not work)."""
        return local_pod_logs(self.state_dir, namespace, name, container)

    def local_pod_dir(self, namespace: str, name: str) -> Path:
        """Where the local runner keeps a pod's files: ``<container>.log``, volumes under
        ``volumes/<volume>`` (ConfigMap files there are symlinks through ``..data``)."""
        return pod_dir(self.state_dir, namespace, name)

    def check_alive(self) -> None:
        """Raise ComponentError if any component process has died."""
        for process in self.processes:
            process.check_alive()

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, keep_state: bool = False) -> None:
        """Stop every process (local runner first, etcd last); delete the state dir."""
        for process in sorted(self.processes, key=lambda p: STOP_ORDER.index(p.name)):
            process.stop()
        self.processes.clear()
        if not keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _start_local_runner(state_dir: Path, kubeconfig: Path,
                        die_with_parent: bool) -> ManagedProcess:
    process = ManagedProcess("local-runner", [
        sys.executable, "-m", "kubetune_dev.local_runner",
        f"--kubeconfig={kubeconfig}", f"--state-dir={state_dir}",
        f"--ready-file={state_dir / RUNNER_READY_FILE}",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    return process


def start_dev_cluster(state_dir: Path, *, die_with_parent: bool = False) -> DevCluster:
    """Start a dev cluster whose files all live in ``state_dir`` (created; must be unused).

    With ``die_with_parent`` every process is killed by the kernel when the calling process
    dies (test sessions); without it the cluster outlives its starter (``cluster.sh up``).

    Raises ToolchainError (missing binaries: run hack/install-tools.sh) or ComponentError
    (a component died or did not become healthy; the message names it, its log and a fix).
    On failure every process started so far is stopped.
    """
    started = time.monotonic()
    tools = find_toolchain()
    state_dir = state_dir.resolve()
    if (state_dir / "pids").is_dir() and any((state_dir / "pids").iterdir()):
        raise ComponentError(f"{state_dir} holds a running cluster: run hack/cluster.sh down")
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = control_plane.Ports.pick()
    creds = generate_credentials(tools.openssl, state_dir / "pki")
    server = f"https://127.0.0.1:{ports.apiserver}"

    def kubeconfig_for(user: str, file: str) -> Path:
        return write_kubeconfig(state_dir / file, server, creds.ca_cert, user, creds.tokens[user])

    admin = kubeconfig_for(ADMIN_USER, "kubeconfig")
    cluster = DevCluster(state_dir, admin, server, creds.ca_cert, tools)
    timings = cluster.startup_timings

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started, 2)

    try:
        # The runner first: its Python start-up overlaps the control plane's (it retries).
        runner = _start_local_runner(state_dir, admin, die_with_parent)
        cluster.processes.append(runner)
        tied = {"die_with_parent": die_with_parent}
        cluster.processes.append(control_plane.start_etcd(tools, state_dir, ports, **tied))
        mark("etcd healthy")
        cluster.processes.append(
            control_plane.start_apiserver(tools, state_dir, ports, creds, **tied))
        mark("kube-apiserver ready")
        manager = control_plane.start_controller_manager(
            tools, state_dir, ports, creds,
            kubeconfig_for(CONTROLLER_MANAGER_USER, "controller-manager.kubeconfig"), **tied)
        scheduler = control_plane.start_scheduler(
            tools, state_dir, ports, creds,
            kubeconfig_for(SCHEDULER_USER, "scheduler.kubeconfig"), **tied)
        kwok_process = kwok.start_kwok(tools, state_dir, ports, admin, **tied)
        cluster.processes += [manager, scheduler, kwok_process]

        core = cluster.core()
        node_names = kwok.register_nodes(core)
        create_unless_exists(client.StorageV1Api(core.api_client).create_storage_class,
                             storage_class_manifest())
        # Everything starts at once; these waits overlap.
        kwok.wait_kwok_healthy(kwok_process, ports)
        kwok.wait_nodes_ready(core, node_names, kwok_process)
        mark("nodes Ready")
        wait_until(lambda: _alive_and(runner, (state_dir / RUNNER_READY_FILE).exists),
                   timeout=30, what="the local runner to list pods", fatal=(ComponentError,))
        mark("local runner watching")
        cluster.create_namespace("default")  # proves the controller manager works
        mark("default ServiceAccount")
        control_plane.wait_controllers_healthy(manager, scheduler, ports, creds)
        mark("controller-manager and scheduler healthy")
    except WaitTimeout as error:
        cluster.stop(keep_state=True)  # keep the logs the message points to
        raise ComponentError(f"dev cluster start: {error}; logs: {state_dir / 'logs'}") from error
    except BaseException:
        cluster.stop(keep_state=True)
        raise
    cluster.startup_seconds = time.monotonic() - started
    (state_dir / INFO_FILE).write_text(json.dumps({
        "kubeconfig": str(admin), "server": server,
        "startup_seconds": round(cluster.startup_seconds, 1), "startup_timings": timings,
    }, indent=1))
    return cluster


def _alive_and(process: ManagedProcess, ready: Callable[[], bool]) -> bool:
    process.check_alive()
    return ready()
