"""Build the Job that cancels a deleted backend-openai FineTuneJob's provider job.

Pure, like training_job.py, whose pod it reuses (image, security context, scheduling, the
artifacts claim, the API key from the Secret) with the trainer's `cancel` command instead of
`run`. The Job has no owner (its FineTuneJob is gone) and no FineTuneJob label (the operator's
indexes would take it for a trainer), and removes itself after `CANCEL_TTL_SECONDS`.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.operator.builders.names import child_name
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.settings import Settings

CANCEL_TTL_SECONDS = 600
COMPONENT = "provider-cancel"


def provider_cancel_job_name(finetunejob: str, uid: str) -> str:
    """Name of the Job cancelling the provider job of the FineTuneJob `finetunejob` (UID `uid`)."""
    return child_name(finetunejob, "cancel", uid)


def build_provider_cancel_job(
    name: str, namespace: str, spec: FineTuneJobSpec, settings: Settings, *, uid: str
) -> dict[str, Any]:
    """The Job running `python -m kubetune_trainer cancel` for the deleted FineTuneJob `name`."""
    if spec.provider is None:
        raise ValueError("only a backend openai FineTuneJob has a provider job to cancel")
    job = build_training_job(name, namespace, spec, settings, uid=uid)
    labels = {c.LABEL_COMPONENT: COMPONENT, c.LABEL_MANAGED_BY: "kubetune"}
    annotations = {c.ANNOTATION_FINETUNEJOB: name}
    template = job["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    workdir = container["args"][container["args"].index("--workdir") + 1]
    args = ["cancel", "--workdir", workdir, "--endpoint", str(spec.provider.endpoint)]
    if spec.provider.organization:
        args += ["--organization", spec.provider.organization]
    if spec.provider.project:
        args += ["--project", spec.provider.project]
    container["args"] = args
    container.pop("ports", None)
    # Only the artifacts claim: the spec ConfigMap went with the FineTuneJob.
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] == "artifacts"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] == "artifacts"]
    template["metadata"] = {"labels": labels, "annotations": annotations}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": provider_cancel_job_name(name, uid),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"backoffLimit": 3, "ttlSecondsAfterFinished": CANCEL_TTL_SECONDS,
                 "template": template},
    }
