"""Run kwok with our explicit stages and register the simulated nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetune_dev.control_plane import Ports, wait_healthy
from kubetune_dev.kube import as_dict, create_unless_exists
from kubetune_dev.processes import ComponentError, ManagedProcess
from kubetune_dev.simulation import KWOK_MANAGED_LABEL, kwok_stages, node_manifests
from kubetune_dev.tools import Toolchain
from kubetune_dev.waiting import wait_until

# Simulated pods get loopback addresses: anything that connects to one (the operator's
# progress scrape) is refused at once on this machine instead of sending traffic elsewhere.
POD_CIDR = "127.244.0.0/16"
NODE_LEASE_SECONDS = 40


class _LiteralDumper(yaml.SafeDumper):
    """Dump multi-line strings (kwok's status templates) as readable literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_presenter)


def write_kwok_config(path: Path) -> Path:
    """Write kwok's --config: a KwokConfiguration and every Stage, as one YAML stream."""
    configuration: dict[str, Any] = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {"enableCRDs": []},
    }
    path.write_text(yaml.dump_all([configuration, *kwok_stages()], Dumper=_LiteralDumper,
                                  sort_keys=False))
    return path


def start_kwok(tools: Toolchain, state_dir: Path, ports: Ports, kubeconfig: Path, *,
               die_with_parent: bool = False) -> ManagedProcess:
    config = write_kwok_config(state_dir / "kwok.yaml")
    process = ManagedProcess("kwok", [
        str(tools.kwok),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--manage-nodes-with-label-selector={KWOK_MANAGED_LABEL}=true",
        f"--server-address=127.0.0.1:{ports.kwok}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
    ], state_dir, die_with_parent=die_with_parent)
    process.start()
    return process


def wait_kwok_healthy(process: ManagedProcess, ports: Ports) -> None:
    wait_healthy(process, f"http://127.0.0.1:{ports.kwok}/healthz", timeout=30, expect="ok")


def register_nodes(core: client.CoreV1Api) -> list[str]:
    """Create (or keep) every simulated node; return their names."""
    names = []
    for manifest in node_manifests():
        create_unless_exists(core.create_node, manifest)
        names.append(manifest["metadata"]["name"])
    return names


def wait_nodes_ready(core: client.CoreV1Api, names: list[str], process: ManagedProcess,
                     timeout: float = 30) -> None:
    def all_ready() -> bool:
        process.check_alive()
        nodes = as_dict(core.api_client, core.list_node(
            label_selector=f"{KWOK_MANAGED_LABEL}=true"))["items"]
        ready = {node["metadata"]["name"] for node in nodes
                 if any(c["type"] == "Ready" and c["status"] == "True"
                        for c in node.get("status", {}).get("conditions", []))}
        return ready >= set(names)

    wait_until(all_ready, timeout=timeout, what=f"nodes {', '.join(names)} to be Ready",
               fatal=(ComponentError,))
