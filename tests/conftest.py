"""Shared fixtures. ``cluster``: a real dev control plane for tests marked ``cluster``.

The control plane comes from kubetune_dev (see docs/dev-cluster.md); its binaries are
built by hack/install-tools.sh. When they are missing the fixture fails (never skips) and says
so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubetune_dev import DevCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A running dev cluster for the whole session; stopped, with its data deleted, at the end."""
    # Imported here so that unit tests never pay for (or depend on) the dev cluster.
    from kubetune_dev import ComponentError, ToolchainError, start_dev_cluster

    try:
        dev_cluster = start_dev_cluster(tmp_path_factory.mktemp("devcluster"), die_with_parent=True)
    except ToolchainError as error:
        pytest.fail(f"dev cluster: {error}", pytrace=False)
    except ComponentError as error:
        pytest.fail(f"dev cluster failed to start: {error}", pytrace=False)
    try:
        yield dev_cluster
    finally:
        dev_cluster.stop()


@pytest.fixture
def namespace(cluster: DevCluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted after the test."""
    name = cluster.create_namespace(f"test-{uuid.uuid4().hex[:8]}")
    yield name
    cluster.core().delete_namespace(name)
