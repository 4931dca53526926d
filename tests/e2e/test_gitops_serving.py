"""kstatus and the Argo CD health check on a ModelDeployment that real serving pods drive:
a tiny version trained through the operator, served by a real Ollama beside the real
serve-agent on the local pod runner (dev/kubetune_dev/serving_cluster.py). Preparing reads InProgress /
Progressing, serving reads Current / Healthy, a version that fails its checksum reads Failed /
Degraded while the old one keeps serving, and fixing the spec brings Current back. Judged by
kstatus.Compute (sigs.k8s.io/cli-utils) and deploy/argocd/health-modeldeployment.lua under
gopher-lua, through kubetune-check."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import ensure_pvcs
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import Md, f16_sha, train_versions
from tests.kubetune_check import MODELDEPLOYMENT_HEALTH, argo_health, kstatus

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

JOB = "gitops-a"


def _judged(md: Md) -> tuple[str, str, str]:
    obj = md.get()
    return obj["status"]["phase"], kstatus(obj)["status"], argo_health(MODELDEPLOYMENT_HEALTH, obj)["status"]


@pytest.fixture(scope="module")
def trained(cluster: DevCluster, ns: str, operator: OperatorProcess) -> dict[str, Any]:
    ensure_pvcs(cluster, ns, c.DEFAULT_ARTIFACTS_PVC)
    return train_versions(cluster, ns, [JOB], operator)[JOB]


def test_a_served_deployment_reads_current_and_a_failed_version_reads_failed(
    cluster: DevCluster, ns: str, operator: OperatorProcess, trained: dict[str, Any]
) -> None:
    md = Md.create(cluster, ns, "gitops", {
        "versions": [{"name": "v1", "fineTuneJob": JOB, "quantization": "f16"}],
        "activeVersion": "v1", "replicas": 1, "progressDeadlineSeconds": 240,
    })
    preparing = md.wait_status(lambda st: st.get("observedGeneration") == 1, "first status", operator=operator)
    if preparing["phase"] != "Ready":  # loading takes seconds to minutes: judge it while it lasts
        phase, ks, health = _judged(md)
        assert phase == "Ready" or (ks, health) == ("InProgress", "Progressing"), (phase, ks, health)

    md.wait_serving("v1", operator, timeout=420)
    assert _judged(md) == ("Ready", "Current", "Healthy")

    gguf = next(a for a in trained["artifacts"] if a["kind"] == "gguf" and a["quantization"] == "f16")
    assert gguf["sha256"] == f16_sha(trained)
    # v2 points at v1's bytes but pins another digest: every pod's agent refuses it at checksum.
    md.patch_spec({"versions": [{"name": "v1", "fineTuneJob": JOB, "quantization": "f16"},
                                {"name": "v2", "uri": gguf["uri"], "sha256": "0" * 64}],
                   "activeVersion": "v2"})
    md.wait_status(lambda st: st.get("phase") == "Degraded" and st.get("observedGeneration") == 2,
                   "Degraded", operator=operator)
    assert _judged(md) == ("Degraded", "Failed", "Degraded")
    health = argo_health(MODELDEPLOYMENT_HEALTH, md.get())
    assert "v2" in health["message"] and "still serving v1" in health["message"]

    md.patch_spec({"versions": [{"name": "v1", "fineTuneJob": JOB, "quantization": "f16"}], "activeVersion": "v1"})
    md.wait_status(lambda st: st.get("phase") == "Ready" and st.get("observedGeneration") == 3, "Ready again",
                   operator=operator)
    assert _judged(md) == ("Ready", "Current", "Healthy")
