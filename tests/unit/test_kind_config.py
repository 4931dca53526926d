"""kind-config.yaml (a laptop cluster for docs/quickstart-kind.md) as kind itself reads it: kind's
own loader and validation (kubetune-check kind-config), then what the operator's pods need from
it: a GPU-labelled worker whose taint the operator's GPU toleration matches, a worker for pods
that ask for no GPU, and the artifacts host folder on every worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJobSpec
from kubetune.api import constants as c
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.settings import Settings
from kubetune_dev.tools import REPO_ROOT
from tests.kubetune_check import CheckRefused, kind_config

KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
ARTIFACTS_MOUNT = "/var/local/kubetune-artifacts"


def _taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    taints: list[dict[str, Any]] = []
    for patch in node["kubeadmConfigPatches"]:
        doc = yaml.safe_load(patch)
        if doc.get("kind") == "JoinConfiguration":
            taints += (doc.get("nodeRegistration") or {}).get("taints") or []
    return taints


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' rule (core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("value", "") == taint.get("value", ""))


@pytest.fixture(scope="module")
def cluster_config() -> dict[str, Any]:
    return kind_config(KIND_CONFIG)


def test_kind_loads_and_validates_the_config(cluster_config: dict[str, Any]) -> None:
    roles = [n["role"] for n in cluster_config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 2
    assert cluster_config["name"] == "kubetune"


def test_the_gpu_worker_is_labelled_and_tainted_as_the_operator_expects(cluster_config: dict[str, Any]) -> None:
    gpu = [n for n in cluster_config["nodes"] if n["labels"].get("nvidia.com/gpu.present") == "true"]
    assert len(gpu) == 1 and gpu[0]["role"] == "worker"
    product = gpu[0]["labels"][c.GPU_PRODUCT_LABEL]
    taints = _taints(gpu[0])
    assert [(t["key"], t["effect"]) for t in taints] == [(c.GPU_RESOURCE, "NoSchedule")]

    # The trainer pod the operator builds for a 1-GPU FineTuneJob pinned to that product
    # tolerates the taint and selects the node; a CPU-only job tolerates nothing.
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://datasets/d.jsonl"}},
        "resources": {"gpus": 1, "gpuProduct": product},
    })
    pod = build_training_job("demo", "default", spec, Settings(), uid="u")["spec"]["template"]["spec"]
    assert all(any(_tolerates(t, taint) for t in pod["tolerations"]) for taint in taints)
    assert pod["nodeSelector"].items() <= gpu[0]["labels"].items()
    cpu_spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 0, "gpu_product": None})})
    cpu_pod = build_training_job("demo", "default", cpu_spec, Settings(), uid="u")["spec"]["template"]["spec"]
    assert not any(_tolerates(t, taint) for t in cpu_pod.get("tolerations", []) for taint in taints)


def test_an_untainted_worker_runs_what_asks_for_no_gpu(cluster_config: dict[str, Any]) -> None:
    plain = [n for n in cluster_config["nodes"] if n["role"] == "worker" and not _taints(n)]
    assert len(plain) == 1 and "nvidia.com/gpu.present" not in plain[0]["labels"]


def test_every_worker_mounts_the_same_artifacts_folder(cluster_config: dict[str, Any]) -> None:
    workers = [n for n in cluster_config["nodes"] if n["role"] == "worker"]
    mounts = {(m["hostPath"], m["containerPath"], m["readOnly"]) for n in workers for m in n["extraMounts"]}
    assert len(mounts) == 1
    host, container, read_only = mounts.pop()
    assert container == ARTIFACTS_MOUNT and Path(host).is_absolute() and not read_only


def test_kind_refuses_a_misspelled_field(tmp_path: Path) -> None:
    # kind decodes strictly: the loader the other tests rely on does reject what kind rejects.
    bad = tmp_path / "kind.yaml"
    bad.write_text(KIND_CONFIG.read_text().replace("extraMounts:", "extraMount:", 1))
    with pytest.raises(CheckRefused, match="extraMount"):
        kind_config(bad)


def test_kind_refuses_a_config_without_a_control_plane(tmp_path: Path) -> None:
    bad = tmp_path / "kind.yaml"
    bad.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n  - role: worker\n")
    with pytest.raises(CheckRefused, match="control-plane"):
        kind_config(bad)
