"""The chart's GPU prices (docs/preflight.md), rendered by the real helm: gpuPrices.perGpuHour
becomes a ConfigMap the operator is pointed at, gpuPrices.configMap points it at yours, and
with neither the operator reads no prices."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubetune.planning.preflight import Prices
from tests.integration.chart import CHART, RELEASE, RELEASE_NAMESPACE, helm, helm_env

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return helm_env(tmp_path_factory.mktemp("helm"))


def render(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = helm(env, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
               "--kube-version", "1.32.13", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_per_gpu_hour_prices_become_the_configmap_the_operator_reads(env: dict[str, str]) -> None:
    docs = render(env, "--set", "gpuPrices.perGpuHour.NVIDIA-H100-80GB-HBM3=4.5",
                  "--set-string", "gpuPrices.perGpuHour.default=2.00", "--set", "gpuPrices.currency=EUR")
    prices_cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-gpu-prices")]
    assert len(prices_cm) == 1
    name = prices_cm[0]["metadata"]["name"]
    assert operator_env(docs)["KUBETUNE_GPU_PRICES_CONFIGMAP"] == f"{RELEASE_NAMESPACE}/{name}"
    prices, problems = Prices.from_configmap_data(prices_cm[0]["data"])
    assert problems == [] and prices.currency == "EUR"
    assert prices.price("NVIDIA-H100-80GB-HBM3") == 4.5 and prices.price("NVIDIA-L4") == 2.0


def test_a_configmap_of_your_own_is_named_and_none_is_rendered(env: dict[str, str]) -> None:
    docs = render(env, "--set", "gpuPrices.configMap=team-gpu-prices",
                  "--set", "gpuPrices.perGpuHour.NVIDIA-L4=1")
    assert operator_env(docs)["KUBETUNE_GPU_PRICES_CONFIGMAP"] == f"{RELEASE_NAMESPACE}/team-gpu-prices"
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-gpu-prices")]


def test_without_prices_the_operator_reads_none_and_may_list_nodes(env: dict[str, str]) -> None:
    docs = render(env)
    assert "KUBETUNE_GPU_PRICES_CONFIGMAP" not in operator_env(docs)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]} in role["rules"]
