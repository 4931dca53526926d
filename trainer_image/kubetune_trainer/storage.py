"""Resolve the URIs a FineTuneJob spec names to local paths inside the trainer.

The operator mounts every PersistentVolumeClaim a spec references at `/mnt/pvc/<claim>` and
every ConfigMap at `/mnt/configmap/<name>`; `kubetune run` on one machine points the same roots
at local folders through environment variables. `file://` paths are used as they are
(relative ones against `base_dir`, the folder of the YAML file for `kubetune run`).
"""

from __future__ import annotations

import os
from pathlib import Path

from kubetune.api import constants as c
from kubetune.api.common import ConfigMapKeyRef


class SourceError(ValueError):
    """A URI that cannot be resolved here; the message names the field's value and the fix."""


def pvc_root() -> Path:
    return Path(os.environ.get(c.ENV_PVC_ROOT, c.PVC_MOUNT_ROOT))


def configmap_root() -> Path:
    return Path(os.environ.get(c.ENV_CONFIGMAP_ROOT, c.CONFIGMAP_MOUNT_ROOT))


def split_uri(uri: str) -> tuple[str, str]:
    """`scheme://rest` -> (scheme, rest)."""
    if "://" not in uri:
        raise SourceError(f"{uri!r} is not a URI: write file://, pvc://, https://, hf:// or s3://")
    scheme, rest = uri.split("://", 1)
    return scheme, rest


def local_path(uri: str, base_dir: Path | None = None) -> Path:
    """Path of a `file://` or `pvc://` URI. Other schemes raise SourceError."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        path = Path(rest)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise SourceError(f"{uri!r}: write pvc://<claim>/<path>")
        return pvc_root() / claim / sub
    raise SourceError(f"{uri!r}: scheme {scheme}:// has no local path")


def configmap_path(ref: ConfigMapKeyRef) -> Path:
    """Path of a mounted ConfigMap key."""
    return configmap_root() / ref.name / ref.key
