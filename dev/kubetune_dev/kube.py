"""Small typed bridges to the kubernetes client, which takes manifests as plain dicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config

Manifest = dict[str, Any]


def api_client_from_kubeconfig(path: Path) -> client.ApiClient:
    """A new ApiClient for the current context of the kubeconfig at ``path``."""
    api = config.new_client_from_config(str(path))  # type: ignore[no-untyped-call]
    return cast(client.ApiClient, api)


def as_dict(api: client.ApiClient, obj: object) -> Any:
    """An API object (or list) as the JSON-shaped dict the API server sent (camelCase)."""
    return api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def create_unless_exists(create: Callable[[Any], object], manifest: Manifest) -> None:
    """Call ``create(manifest)``; an existing object (409 Conflict) is fine."""
    try:
        create(manifest)
    except client.ApiException as error:
        if error.status != 409:
            raise
