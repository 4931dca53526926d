"""The operator's own Prometheus metrics (served on KUBETUNE_OPERATOR_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

API_REQUESTS = Counter(
    "kubetune_operator_api_requests",
    "Kubernetes API requests made by the reconcilers (kopf's watches not included).",
    ["verb", "resource"],
)
RECONCILES = Counter("kubetune_operator_reconciles", "FineTuneJob reconciles run.")
RECONCILE_ERRORS = Counter("kubetune_operator_reconcile_errors", "FineTuneJob reconciles that raised.")
RECONCILE_SECONDS = Histogram("kubetune_operator_reconcile_seconds", "Time one FineTuneJob reconcile takes.")
