"""A real Kubernetes control plane for development and tests (not for production).

``start_dev_cluster(state_dir)`` runs etcd, kube-apiserver, kube-controller-manager and
kube-scheduler (built by hack/install-tools.sh) on loopback, kwok for 4 simulated GPU nodes and
2 CPU nodes, and the local runner that executes pods on the node ``kubetune-local``. See
docs/dev-cluster.md.
"""

from kubetune_dev.cluster import DevCluster, start_dev_cluster
from kubetune_dev.processes import ComponentError
from kubetune_dev.simulation import (
    CPU_NODES,
    EXIT_CODE_ANNOTATION,
    GPU_NODES,
    GPU_PRODUCT,
    GPU_RESOURCE,
    LOCAL_NODE,
    LOCAL_RUNNER_LABEL,
    LOCAL_RUNNER_TAINT,
    MESSAGE_ANNOTATION,
    OUTCOME_ANNOTATION,
    local_pod_toleration,
)
from kubetune_dev.tools import ToolchainError
from kubetune_dev.waiting import WaitTimeout, wait_until

__all__ = [
    "CPU_NODES",
    "EXIT_CODE_ANNOTATION",
    "GPU_NODES",
    "GPU_PRODUCT",
    "GPU_RESOURCE",
    "LOCAL_NODE",
    "LOCAL_RUNNER_LABEL",
    "LOCAL_RUNNER_TAINT",
    "MESSAGE_ANNOTATION",
    "OUTCOME_ANNOTATION",
    "ComponentError",
    "DevCluster",
    "ToolchainError",
    "WaitTimeout",
    "local_pod_toleration",
    "start_dev_cluster",
    "wait_until",
]
