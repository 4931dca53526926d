"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Each ``start_*`` function launches one component with the flags a small real cluster uses
(RBAC on, service-account tokens signed with our key, leader election off because there is one
replica) and waits, bounded, until its health endpoint answers.
"""

from __future__ import annotations

import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubetune_dev.pki import ADMIN_USER, Credentials
from kubetune_dev.processes import ComponentError, ManagedProcess, free_port
from kubetune_dev.tools import Toolchain
from kubetune_dev.waiting import WaitTimeout, wait_until

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one cluster, picked free at start."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        ports = set[int]()
        while len(ports) < 6:
            ports.add(free_port())
        return cls(*sorted(ports))


def _get(url: str, ca_cert: Path | None = None, token: str | None = None) -> str:
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return str(response.read().decode())


def wait_healthy(process: ManagedProcess, url: str, *, timeout: float, expect: str,
                 ca_cert: Path | None = None, token: str | None = None) -> None:
    """Poll ``url`` until its body contains ``expect``; fail fast if the process dies."""

    def probe() -> bool:
        process.check_alive()
        return expect in _get(url, ca_cert, token)

    try:
        wait_until(probe, timeout=timeout, what=f"{process.name} at {url}", interval=0.1,
                   fatal=(ComponentError,))
    except WaitTimeout as error:
        process.check_alive()  # a crash explains itself better than a timeout
        raise ComponentError(
            f"{error}; log: {process.log_path}; fix: read the log, then `hack/cluster.sh down`"
        ) from error


def start_etcd(tools: Toolchain, state_dir: Path, ports: Ports, *,
               die_with_parent: bool = False) -> ManagedProcess:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    process = ManagedProcess("etcd", [
        str(tools.etcd),
        "--name=kubetune",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=kubetune={peer}",
        "--unsafe-no-fsync=true",  # throwaway data: speed over durability
        "--log-level=warn",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    wait_healthy(process, f"{client}/health", timeout=30, expect='"health":"true"')
    return process


def start_apiserver(tools: Toolchain, state_dir: Path, ports: Ports,
                    creds: Credentials, *,
                    die_with_parent: bool = False) -> ManagedProcess:
    process = ManagedProcess("kube-apiserver", [
        str(tools.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={state_dir / 'apiserver'}",
        f"--tls-cert-file={creds.serving_cert}",
        f"--tls-private-key-file={creds.serving_key}",
        f"--client-ca-file={creds.ca_cert}",
        f"--token-auth-file={creds.token_file}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={creds.service_account_public_key}",
        f"--service-account-signing-key-file={creds.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # 127.0.0.1 is not a valid Endpoints address, so do not publish the apiserver there.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    wait_healthy(process, f"https://127.0.0.1:{ports.apiserver}/readyz", timeout=60,
                 expect="ok", ca_cert=creds.ca_cert, token=creds.tokens[ADMIN_USER])
    return process


def start_controller_manager(tools: Toolchain, state_dir: Path, ports: Ports,
                             creds: Credentials, kubeconfig: Path, *,
                             die_with_parent: bool = False) -> ManagedProcess:
    process = ManagedProcess("kube-controller-manager", [
        str(tools.kube_controller_manager),
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--tls-cert-file={creds.serving_cert}",
        f"--tls-private-key-file={creds.serving_key}",
        f"--service-account-private-key-file={creds.service_account_key}",
        f"--root-ca-file={creds.ca_cert}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={creds.ca_cert}",
        f"--cluster-signing-key-file={creds.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "--v=1",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    return process


def start_scheduler(tools: Toolchain, state_dir: Path, ports: Ports,
                    creds: Credentials, kubeconfig: Path, *,
                    die_with_parent: bool = False) -> ManagedProcess:
    process = ManagedProcess("kube-scheduler", [
        str(tools.kube_scheduler),
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--tls-cert-file={creds.serving_cert}",
        f"--tls-private-key-file={creds.serving_key}",
        "--leader-elect=false",
        "--v=1",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    return process


def wait_controllers_healthy(controller_manager: ManagedProcess, scheduler: ManagedProcess,
                             ports: Ports, creds: Credentials) -> None:
    """Wait for both /healthz endpoints (started together, so their start-up overlaps)."""
    for process, port in ((controller_manager, ports.controller_manager),
                          (scheduler, ports.scheduler)):
        wait_healthy(process, f"https://127.0.0.1:{port}/healthz", timeout=60, expect="ok",
                     ca_cert=creds.ca_cert)
