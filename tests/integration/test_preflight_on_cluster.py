"""Preflight on a real control plane (#12): a FineTuneJob that cannot fit its gpuProduct is
Failed/WontFit before any Job exists; one that fits gets its Job with the memory, time and
cost estimate in status; when it finishes, the GPU-hours and cost it used are in status and
on the operator's /metrics, per namespace.

The GPU memory comes from the kwok GPU nodes' `nvidia.com/gpu.memory` label (81920 MiB, the
same as kubetune's table for NVIDIA-A100-SXM4-80GB); prices from a real ConfigMap."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.planning.gpus import known_gpu
from kubetune.planning.memory import GIB
from kubetune.planning.preflight import plan
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import Ftj, apply_ftj, ensure_pvcs, install_crds
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.simulation import GPU_PRODUCT
from tests.integration.test_finetunejob_controller import result_message
from tests.integration.test_operator_ha import free_port

pytestmark = pytest.mark.cluster

STAND_IN = Path(__file__).with_name("stand_in_trainer.py")
PRICES = ("default", "kubetune-gpu-prices-test")


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OperatorProcess, int]]:
    install_crds(cluster)
    core = cluster.core()
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=PRICES[1]),
                              data={GPU_PRODUCT: "3.50", "default": "1.00", "currency": "EUR"})
    try:
        core.create_namespaced_config_map(PRICES[0], body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(PRICES[1], PRICES[0], body)
    metrics = free_port()
    env = {
        "KUBETUNE_OPERATOR_METRICS_PORT": str(metrics),
        "KUBETUNE_TRAINER_COMMAND": json.dumps([sys.executable, str(STAND_IN)]),
        "KUBETUNE_GPU_PRICES_CONFIGMAP": "/".join(PRICES),
    }
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    yield proc, metrics
    proc.stop()
    core.delete_namespaced_config_map(PRICES[1], PRICES[0])


@pytest.fixture
def ns(cluster: DevCluster, namespace: str) -> str:
    ensure_pvcs(cluster, namespace, c.DEFAULT_ARTIFACTS_PVC, "datasets")
    return namespace


def llama_spec(method: str, **training: Any) -> dict[str, Any]:
    return {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "acceptLicense": True},
        "method": method,
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "training": training,
        "resources": {"gpus": 1, "gpuProduct": GPU_PRODUCT},
    }


def test_a_job_that_wont_fit_its_gpu_fails_wontfit_and_no_job_is_created(
    cluster: DevCluster, operator: tuple[OperatorProcess, int], ns: str
) -> None:
    proc, _ = operator
    ftj = apply_ftj(cluster, ns, llama_spec("full"))
    status = ftj.wait_phase("Failed", proc)
    assert status["reason"] == c.Reason.WONT_FIT
    message = status["message"]
    assert message.startswith("Won't fit: estimated training peak per GPU ≈133.4 GiB")
    assert f"{GPU_PRODUCT} has 80.0 GiB (its nodes' nvidia.com/gpu.memory)" in message
    assert "Settings that would fit: method: qlora (" in message and message.endswith("No trainer Job was created.")
    assert ftj.jobs() == []
    assert status["preflight"]["fits"] is False
    assert status["preflight"]["gpuMemorySource"] == "nodeLabel"
    assert status["preflight"]["gpuMemoryGib"] == 80.0
    assert "gpuHours" not in status.get("cost", {})
    cluster.wait_for(
        lambda: any(e.reason == c.Reason.WONT_FIT and e.type == "Warning" for e in ftj.events()),
        what="a WontFit warning event",
    )


def test_the_skip_annotation_creates_the_job_of_a_job_estimated_not_to_fit(
    cluster: DevCluster, operator: tuple[OperatorProcess, int], ns: str
) -> None:
    proc, _ = operator
    spec = llama_spec("full")
    name = "skips-preflight"
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.FINETUNEJOB_PLURAL, {
            "apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND,
            "metadata": {"name": name, "annotations": {"kubetune.dev/preflight": "skip"}}, "spec": spec,
        })
    ftj = Ftj(cluster, ns, name)
    ftj.running_pod()
    status = ftj.wait_status(lambda s: "preflight" in s, "status.preflight", operator=proc)
    assert status["preflight"]["fits"] is False
    assert "check skipped by kubetune.dev/preflight=skip" in status["preflight"]["message"]
    assert len(ftj.jobs()) == 1


def test_a_job_that_fits_gets_its_job_and_estimate_then_its_cost_in_status_and_metrics(
    cluster: DevCluster, operator: tuple[OperatorProcess, int], ns: str
) -> None:
    proc, metrics = operator
    raw = llama_spec("qlora", batchSize=2, maxSteps=50)
    ftj = apply_ftj(cluster, ns, raw)
    pod = ftj.running_pod()
    status = ftj.wait_phase("Running", proc)
    gpu = known_gpu(GPU_PRODUCT)
    expected = plan(FineTuneJobSpec.model_validate(raw), gpu, "nodeLabel", None)
    assert expected.memory is not None and expected.gpu_hours is not None
    preflight = status["preflight"]
    assert preflight["fits"] is True and preflight["gpuMemorySource"] == "nodeLabel"
    assert preflight["estimatedMemoryGib"] == round(expected.memory.total / GIB, 2)
    assert preflight["estimatedGpuHours"] == round(expected.gpu_hours, 6)
    assert preflight["model"].startswith("meta-llama/Llama-3.1-8B-Instruct")
    cost = status["cost"]
    assert cost["currency"] == "EUR" and cost["pricePerGpuHour"] == 3.5
    assert cost["estimated"] == round(expected.gpu_hours * 3.5, 6)
    assert len(ftj.jobs()) == 1

    time.sleep(2)  # some wall time between Running and the end, so the GPU-hours are not zero
    ftj.end_pod(pod, "succeed", result_message())
    status = ftj.wait_phase("Succeeded", proc)

    def parse(t: str) -> dt.datetime:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00"))

    seconds = (parse(status["completionTime"]) - parse(status["startTime"])).total_seconds()
    cost = status["cost"]
    assert seconds > 0 and cost["gpuHours"] == round(seconds / 3600, 6)
    assert cost["actual"] == round(seconds / 3600 * 3.5, 6)
    assert cost["estimated"] == round(expected.gpu_hours * 3.5, 6)  # kept beside the actual

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    samples = scrape()
    assert samples[("kubetune_finetunejob_cost_total", (("currency", "EUR"), ("namespace", ns)))] == pytest.approx(
        cost["actual"], abs=1e-6)
    assert samples[("kubetune_finetunejob_gpu_hours_total", (("namespace", ns),))] == pytest.approx(
        cost["gpuHours"], abs=1e-6)


def test_a_model_whose_shapes_are_unknown_is_not_estimated_and_status_says_why(
    cluster: DevCluster, operator: tuple[OperatorProcess, int], ns: str
) -> None:
    proc, _ = operator
    ensure_pvcs(cluster, ns, "models")
    ftj = apply_ftj(cluster, ns, {**llama_spec("qlora"), "baseModel": {"uri": "pvc://models/base"}})
    ftj.running_pod()
    status = ftj.wait_status(lambda s: "preflight" in s, "status.preflight", operator=proc)
    assert status["preflight"]["message"] == (
        "Memory not estimated: the operator cannot read the config.json of a pvc:// model before training."
    )
    assert "fits" not in status["preflight"] and "estimatedMemoryGib" not in status["preflight"]
    assert status["cost"] == {"currency": "EUR", "pricePerGpuHour": 3.5}
