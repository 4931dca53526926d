"""Deterministic child names, so a restarted operator finds what it created before."""

from __future__ import annotations

import hashlib

_MAX = 63  # Job names end up in pod labels, which allow 63 characters


def child_name(owner: str, suffix: str) -> str:
    """`<owner>-<suffix>`, shortened with a stable hash when it would exceed 63 characters."""
    name = f"{owner}-{suffix}"
    if len(name) <= _MAX:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = _MAX - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def training_job_name(finetunejob: str) -> str:
    """Name of the batch/v1 Job that runs the trainer."""
    return child_name(finetunejob, "train")


def spec_configmap_name(finetunejob: str) -> str:
    """Name of the ConfigMap holding the resolved spec."""
    return child_name(finetunejob, "spec")
