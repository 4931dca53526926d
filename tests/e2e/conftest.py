"""Fixtures of the serving e2e modules: one namespace and one real operator per module (the
operator set up for the local pod runner's serving pods, dev/kubetune_dev/serving_cluster.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import install_crds
from kubetune_dev.operator_process import OperatorProcess
from kubetune_dev.serving_cluster import operator_env


@pytest.fixture(scope="module")
def ns(cluster: DevCluster, request: pytest.FixtureRequest) -> str:
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:20]
    return cluster.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", operator_env())
    proc.start()
    yield proc
    proc.stop()
