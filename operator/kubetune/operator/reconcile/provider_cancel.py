"""A deleted backend-openai FineTuneJob: cancel its provider job.

The trainer pod cannot tell a deletion from a suspension (both stop it; it has no API
credentials), so on SIGTERM it only pauses the provider's job. The operator sees the deletion
(the watch's DELETED event carries the object's last state) and starts a short Job that reads
the job id from the artifact volume and cancels it. No finalizer: an operator that is down when
the FineTuneJob goes leaves the provider job paused (docs/openai-backend.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.operator.builders.provider_cancel import build_provider_cancel_job
from kubetune.operator.kube import KubeApi, NotLeaderError
from kubetune.operator.settings import Settings

log = logging.getLogger(__name__)


def cancel_provider_job(api: KubeApi, settings: Settings, body: Mapping[str, Any]) -> bool:
    """Start the cancel Job for the deleted FineTuneJob `body` when it is a backend-openai job
    that had a trainer and had not finished; True when a Job was created (or existed)."""
    spec_raw = body.get("spec") or {}
    status = body.get("status") or {}
    if spec_raw.get("backend") != "openai" or not status.get("jobName"):
        return False
    if status.get("phase") in ("Succeeded", "Failed"):
        return False  # the provider job has ended
    meta = body["metadata"]
    try:
        spec = FineTuneJobSpec.model_validate(dict(spec_raw))
    except ValidationError:
        return False
    job = build_provider_cancel_job(meta["name"], meta["namespace"], spec, settings, uid=meta["uid"])
    try:
        api.create_job(job)
    except NotLeaderError:
        return False
    except ApiException as exc:
        log.warning("FineTuneJob %s/%s deleted: cannot create %s to cancel its provider job: %s",
                    meta["namespace"], meta["name"], job["metadata"]["name"], exc.reason)
        return False
    log.info("FineTuneJob %s/%s deleted: %s cancels its provider job", meta["namespace"],
             meta["name"], job["metadata"]["name"])
    return True
