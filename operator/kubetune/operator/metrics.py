"""The operator's own Prometheus metrics (served on KUBETUNE_OPERATOR_METRICS_PORT).

Named as controller-runtime and client-go name theirs, so the dashboards and alerts written for
Go operators work unchanged: `controller` is `finetunejob` or `modeldeployment`, and a work
queue's `name` is its controller's. docs/operator.md lists them all.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# controller-runtime's reconcile metrics (pkg/internal/controller/metrics).
RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile", "Reconciles per controller and result (success, error).",
    ["controller", "result"],
)
RECONCILE_ERRORS_TOTAL = Counter(
    "controller_runtime_reconcile_errors", "Reconciles that raised, per controller.", ["controller"],
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds", "Time one reconcile takes, per controller.",
    ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7,
             0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15,
             20, 25, 30, 40, 50, 60),
)
ACTIVE_WORKERS = Gauge(
    "controller_runtime_active_workers", "Workers busy reconciling, per controller.", ["controller"],
)
MAX_CONCURRENT_RECONCILES = Gauge(
    "controller_runtime_max_concurrent_reconciles", "Worker threads per controller.", ["controller"],
)

# client-go's work-queue metrics (k8s.io/client-go/util/workqueue).
_QUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(10))  # 10 ns .. 10 s, as client-go
WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting in the queue.", ["name"])
WORKQUEUE_ADDS = Counter("workqueue_adds", "Keys added to the queue (not counting duplicates).", ["name"])
WORKQUEUE_QUEUE_DURATION = Histogram(
    "workqueue_queue_duration_seconds", "How long a key waits in the queue before a worker takes it.",
    ["name"], buckets=_QUEUE_BUCKETS,
)
WORKQUEUE_UNFINISHED_WORK = Gauge(
    "workqueue_unfinished_work_seconds",
    "Seconds of work in progress not yet observed by work_duration (large values: stuck workers).",
    ["name"],
)
WORKQUEUE_LONGEST_RUNNING = Gauge(
    "workqueue_longest_running_processor_seconds", "Seconds the longest-running worker has been busy.",
    ["name"],
)
WORKQUEUE_RETRIES = Counter("workqueue_retries", "Keys put back without being processed.", ["name"])
WORKQUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds", "How long processing one key takes.",
    ["name"], buckets=_QUEUE_BUCKETS,
)

# client-go's REST client metric: every request the reconcilers and the leader election make
# (kopf's own watches go through aiohttp and are not counted).
REST_CLIENT_REQUESTS = Counter(
    "rest_client_requests",
    "Kubernetes API requests by verb (get, list, watch, create, update, patch, apply, delete) and "
    "HTTP status code ('<error>' when no response came back).",
    ["verb", "code"],
)

# client-go's leader election metric: 1 on the replica that holds the Lease.
LEADER_STATUS = Gauge(
    "leader_election_master_status", "1 when this replica holds the leader Lease, else 0.", ["name"],
)

# Requests per resource, which bench/operator_scale.py divides by the number of FineTuneJobs.
API_REQUESTS = Counter(
    "kubetune_operator_api_requests",
    "Kubernetes API requests made by the reconcilers (kopf's watches not included).",
    ["verb", "resource"],
)
# Kept for reconcile/finetunejob.py, which times its own reconciles; the controller_runtime_*
# metrics above cover both controllers and are the ones to chart.
RECONCILES = Counter("kubetune_operator_reconciles", "FineTuneJob reconciles run.")
RECONCILE_ERRORS = Counter("kubetune_operator_reconcile_errors", "FineTuneJob reconciles that raised.")
RECONCILE_SECONDS = Histogram("kubetune_operator_reconcile_seconds", "Time one FineTuneJob reconcile takes.")

# What finished FineTuneJobs used, per namespace (reconcile/preflight.py): GPU-hours are
# resources.gpus x the trainer's wall time; cost is at the price ConfigMap's prices.
FINETUNEJOB_GPU_HOURS = Counter(
    "kubetune_finetunejob_gpu_hours", "GPU-hours used by finished FineTuneJobs, per namespace.",
    ["namespace"],
)
FINETUNEJOB_COST = Counter(
    "kubetune_finetunejob_cost",
    "Cost of the GPU-hours of finished FineTuneJobs at the operator's GPU prices, per namespace.",
    ["namespace", "currency"],
)
