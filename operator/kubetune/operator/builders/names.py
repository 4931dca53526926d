"""Child names and label values that stay valid for any FineTuneJob name (up to 253 characters).

A FineTuneJob name is a DNS subdomain (≤ 253 characters, dots allowed). Its children's names
are DNS labels of at most 63 characters: the Job controller copies a Job's name into its pods'
`batch.kubernetes.io/job-name` label, which allows 63. Each name carries a short piece of the
FineTuneJob's UID, so a FineTuneJob deleted and re-created under the same name (or one whose
children were orphaned with `kubectl delete --cascade=orphan`) never finds the old one's Job or
ConfigMap under the name it creates.
"""

from __future__ import annotations

import hashlib

MAX_LABEL = 63  # label values, and DNS labels
UID_CHARS = 6


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(name: str) -> str:
    """`name` as a label value: itself when it fits 63 characters, else a prefix and a hash of
    the whole name (so two long names sharing a prefix still differ)."""
    if len(name) <= MAX_LABEL:
        return name
    keep = MAX_LABEL - 9
    return f"{name[:keep].rstrip('-._')}-{_digest(name)}"


def child_name(owner: str, suffix: str, uid: str) -> str:
    """`<owner>-<uid prefix>-<suffix>` as a DNS label: dots become dashes, and the owner part is
    shortened so the whole stays within 63 characters."""
    if not uid:
        raise ValueError("child_name needs the owner's UID")
    tag = uid.replace("-", "")[:UID_CHARS]
    base = owner.replace(".", "-")
    keep = MAX_LABEL - len(suffix) - len(tag) - 2
    return f"{base[:keep].rstrip('-')}-{tag}-{suffix}"


def training_job_name(finetunejob: str, uid: str) -> str:
    """Name of the batch/v1 Job that runs the trainer of the FineTuneJob `finetunejob` (UID `uid`)."""
    return child_name(finetunejob, "train", uid)


def spec_configmap_name(finetunejob: str, uid: str) -> str:
    """Name of the ConfigMap holding the resolved spec."""
    return child_name(finetunejob, "spec", uid)
