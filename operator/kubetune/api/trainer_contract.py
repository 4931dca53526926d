"""The trainer <-> operator contract, in one module (DESIGN.md, "One contract module").

What the two sides exchange, and nothing else of either:

- **Operator -> trainer**: the resolved spec as a mounted JSON file (``SPEC_MOUNT_DIR`` /
  ``SPEC_FILE_NAME``), the workdir URI and ports in the environment (``ENV_*``).
- **Trainer -> operator, at the end**: a :class:`TrainerResult`, in full as ``result.json`` in
  the workdir (``RESULT_FILE_NAME``) and cut to ``TERMINATION_MESSAGE_MAX_BYTES`` in the
  container's termination message; and the exit code (``EXIT_SUCCEEDED``, ``EXIT_RETRYABLE``,
  ``PERMANENT_FAILURE_EXIT_CODE``; the Job's podFailurePolicy fails at once on the last).
- **Trainer -> operator, while it runs**: the Prometheus gauges named in :data:`PROGRESS_GAUGES`
  on ``METRICS_PORT``, read back into :class:`Progress` by :func:`parse_progress_metrics`.

The result models are defined in ``kubetune.api.trainer_result`` (kept apart for size) and the
paths and names in ``kubetune.api.constants``; both sides import them from here. The operator
imports nothing from ``kubetune_trainer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.constants import (
    ENV_ARTIFACTS_URI,
    ENV_METRICS_PORT,
    ENV_TERMINATION_LOG,
    METRICS_PORT,
    PERMANENT_FAILURE_EXIT_CODE,
    SPEC_FILE_NAME,
    SPEC_MOUNT_DIR,
    TERMINATION_MESSAGE_MAX_BYTES,
    TERMINATION_MESSAGE_PATH,
    Reason,
)
from kubetune.api.trainer_result import (
    SERVING_ARTIFACT_KINDS,
    DataReportSummary,
    Diagnosis,
    EvaluationSummary,
    GateResult,
    ModelScores,
    Progress,
    TrainerResult,
    TrainingSummary,
)

__all__ = [
    "ENV_ARTIFACTS_URI",
    "ENV_METRICS_PORT",
    "ENV_NPROC_PER_NODE",
    "ENV_TERMINATION_LOG",
    "EXIT_RETRYABLE",
    "EXIT_SUCCEEDED",
    "METRICS_PORT",
    "PERMANENT_FAILURE_EXIT_CODE",
    "PROGRESS_GAUGES",
    "RESULT_FILE_NAME",
    "SERVING_ARTIFACT_KINDS",
    "SPEC_FILE_NAME",
    "SPEC_MOUNT_DIR",
    "TERMINATION_MESSAGE_MAX_BYTES",
    "TERMINATION_MESSAGE_PATH",
    "DataReportSummary",
    "Diagnosis",
    "EvaluationSummary",
    "GateResult",
    "ModelScores",
    "Progress",
    "TrainerResult",
    "TrainingSummary",
    "exit_code_for",
    "parse_progress_metrics",
    "progress_from_values",
]

ENV_NPROC_PER_NODE: Final = "KUBETUNE_NPROC_PER_NODE"
"""Training processes in the trainer pod (one per GPU). The operator sets it to
``resources.gpus`` when that is above 1; unset or 1 = one process. The trainer then launches
itself once per process through torchrun (``torch.distributed.run``, standalone rendezvous on
loopback); rank 0 alone writes the result and the termination message. Set by hand on a CPU
machine it runs N CPU processes over gloo (a test and development affordance)."""

RESULT_FILE_NAME: Final = "result.json"
"""The full TrainerResult, in the workdir (the termination message carries at most 4 KiB)."""

EXIT_SUCCEEDED: Final = 0
EXIT_RETRYABLE: Final = 1
"""A failure a retry may fix (the Job retries up to its backoffLimit, resuming from a checkpoint)."""


def exit_code_for(result: TrainerResult) -> int:
    """The trainer's exit code for `result`: EXIT_SUCCEEDED; PERMANENT_FAILURE_EXIT_CODE when a
    retry of the same spec cannot help (Reason.PERMANENT: the Job then fails at once instead of
    spending its backoffLimit); EXIT_RETRYABLE otherwise."""
    if result.phase == "Succeeded":
        return EXIT_SUCCEEDED
    return PERMANENT_FAILURE_EXIT_CODE if result.reason in Reason.PERMANENT else EXIT_RETRYABLE


PROGRESS_GAUGES: Mapping[str, tuple[str, str]] = {
    "kubetune_train_step": ("step", "Optimizer steps done."),
    "kubetune_train_total_steps": ("total_steps", "Optimizer steps planned."),
    "kubetune_train_epoch": ("epoch", "Epochs done (fractional)."),
    "kubetune_train_loss": ("loss", "Latest training loss."),
    "kubetune_eval_loss": ("eval_loss", "Latest validation loss."),
    "kubetune_learning_rate": ("learning_rate", "Current learning rate."),
    "kubetune_tokens_per_second": (
        "tokens_per_second",
        "Training throughput in tokens per second.",
    ),
    "kubetune_eta_seconds": ("eta_seconds", "Estimated seconds until training ends."),
}
"""Gauge name -> (Progress field, help text). Unknown values are exported as NaN and parsed
back as None."""

_INT_FIELDS = ("step", "total_steps", "eta_seconds")


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def progress_from_values(values: Mapping[str, float | None]) -> Progress:
    """Progress from field values (NaN / missing = unknown); computes `percent`."""
    fields: dict[str, float | int | None] = {}
    for name, value in values.items():
        value = _finite(value)
        if value is None:
            continue
        fields[name] = round(value) if name in _INT_FIELDS else float(value)
    step = int(fields.get("step") or 0)
    total = fields.get("total_steps")
    percent = 0
    if total:
        percent = max(0, min(100, int(100 * step / float(total))))
    return Progress(
        step=max(0, step),
        total_steps=int(total) if total else None,
        percent=percent,
        epoch=fields.get("epoch"),
        loss=fields.get("loss"),
        eval_loss=fields.get("eval_loss"),
        learning_rate=fields.get("learning_rate"),
        tokens_per_second=fields.get("tokens_per_second"),
        eta_seconds=int(eta) if (eta := fields.get("eta_seconds")) is not None else None,
    )


def parse_progress_metrics(text: str) -> Progress:
    """`status.progress` from the Prometheus text exposition the trainer serves.

    Unknown metrics are ignored; missing or NaN gauges become None, so a scrape taken before
    the first evaluation has no `evalLoss`. Raises ValueError on text that is not the
    exposition format.
    """
    values: dict[str, float | None] = {}
    for family in text_string_to_metric_families(text):
        target = PROGRESS_GAUGES.get(family.name)
        if target is None:
            continue
        for sample in family.samples:
            if sample.name == family.name:
                values[target[0]] = sample.value
    return progress_from_values(values)
