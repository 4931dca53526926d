"""The FineTuneJob controller's preflight: memory, time and cost before any GPU time, and the
GPU-hours and cost a job used once it finished (docs/preflight.md).

Before the trainer Job is created, :meth:`Preflight.check` compares the estimate
(:mod:`kubetune.planning.preflight`) with the memory of `resources.gpuProduct`: the nodes'
``nvidia.com/gpu.memory`` label (MiB; the smallest among the nodes labelled
``nvidia.com/gpu.product=<gpuProduct>``) when the operator may list nodes, else kubetune's GPU
table. A job that does not fit gets ``(WontFit, message)``, which the reconcile turns into
``Failed/WontFit`` instead of creating the Job. When the job finishes, :meth:`Preflight.account`
writes the GPU-hours it used (resources.gpus × startTime to completionTime) and their cost in
status, and adds them to the per-namespace counters on /metrics.

Prices come from the ConfigMap ``KUBETUNE_GPU_PRICES_CONFIGMAP`` names (``<namespace>/<name>``;
data ``<gpuProduct>: "<price per GPU-hour>"``, optional ``default`` and ``currency``); without
one no cost is written, GPU-hours still are. Nodes and prices are read at most every 30 s.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import Phase, Reason
from kubetune.api.finetunejob import CostStatus, FineTuneJobSpec, FineTuneJobStatus, PreflightStatus
from kubetune.operator.metrics import FINETUNEJOB_COST, FINETUNEJOB_GPU_HOURS
from kubetune.planning.gpus import Gpu, gpu_from_label, known_gpu
from kubetune.planning.memory import GIB
from kubetune.planning.preflight import SKIP_ANNOTATION, Plan, Prices, plan

log = logging.getLogger(__name__)

CACHE_SECONDS = 30.0
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def preflight_status(result: Plan, spec: FineTuneJobSpec) -> PreflightStatus:
    """`status.preflight` from a plan."""
    return PreflightStatus(
        model=result.model,
        estimated_memory_gib=_round(result.memory.total / GIB, 2) if result.memory else None,
        gpu_product=spec.resources.gpu_product,
        gpu_memory_gib=_round(result.gpu.memory_bytes / GIB, 2) if result.gpu else None,
        gpu_memory_source="nodeLabel" if result.gpu_memory_source == "nodeLabel" else (
            "table" if result.gpu else None),
        fits=result.fits,
        estimated_gpu_hours=_round(result.gpu_hours),
        message=result.message[:32768],
    )


def cost_status(result: Plan) -> CostStatus | None:
    """`status.cost` before the job starts: the price and the estimated cost, when priced."""
    if result.price_per_gpu_hour is None:
        return None
    return CostStatus(currency=result.currency, price_per_gpu_hour=result.price_per_gpu_hour,
                      estimated=_round(result.estimated_cost))


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def used_gpu_hours(spec: FineTuneJobSpec, status: FineTuneJobStatus) -> float | None:
    """resources.gpus × the trainer's wall time, when the status has both times."""
    if spec.resources.gpus == 0 or not status.start_time or not status.completion_time:
        return None
    try:
        seconds = (_parse_time(status.completion_time) - _parse_time(status.start_time)).total_seconds()
    except ValueError:
        return None
    return spec.resources.gpus * max(0.0, seconds) / 3600


class Preflight:
    """Reads the GPU nodes' labels and the price ConfigMap (cached), and plans. Thread-safe."""

    def __init__(self, core: Any, prices_configmap: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.prices_configmap = prices_configmap
        self.clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._guard = threading.Lock()
        self._warned: set[str] = set()

    def _cached(self, key: str, read: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._guard:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        value = read()
        with self._guard:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[key] = (now, value)
        return value

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def gpu(self, product: str | None) -> tuple[Gpu | None, str | None]:
        """(the GPU, "nodeLabel" or "table") of `product`, or (None, None) when unknown."""
        if not product:
            return None, None
        labelled = self._cached(f"nodes/{product}", lambda: self._node_memory(product))
        if labelled is not None:
            return labelled, "nodeLabel"
        gpu = known_gpu(product)
        return gpu, "table" if gpu else None

    def _node_memory(self, product: str) -> Gpu | None:
        try:
            nodes = self.core.list_node(label_selector=f"{GPU_PRODUCT_LABEL}={product}")
        except ApiException as exc:
            # 403: no `list nodes` (the chart grants it); 400: not a valid label value.
            self._warn_once(f"nodes/{exc.status}", "cannot list nodes by %s (HTTP %s): GPU memory "
                            "comes from kubetune's table", GPU_PRODUCT_LABEL, exc.status)
            return None
        gpus = [gpu_from_label(product, (n.metadata.labels or {}).get(GPU_MEMORY_LABEL))
                for n in nodes.items]
        found = [g for g in gpus if g is not None]
        return min(found, key=lambda g: g.memory_mib) if found else None

    def prices(self) -> Prices | None:
        """The price list, None without a ConfigMap (or when it cannot be read)."""
        if not self.prices_configmap:
            return None
        return self._cached("prices", self._read_prices)  # type: ignore[no-any-return]

    def _read_prices(self) -> Prices | None:
        namespace, _, name = self.prices_configmap.rpartition("/")
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            self._warn_once(f"prices/{exc.status}", "cannot read the GPU price ConfigMap %s "
                            "(HTTP %s): no cost in status", self.prices_configmap, exc.status)
            return None
        prices, problems = Prices.from_configmap_data(cm.data or {})
        for problem in problems:
            self._warn_once(f"price/{problem}", "GPU price ConfigMap %s: %s", self.prices_configmap, problem)
        return prices

    def check(self, body: Mapping[str, Any], spec: FineTuneJobSpec
              ) -> tuple[tuple[str, str] | None, PreflightStatus, CostStatus | None]:
        """Before the Job is created: ((WontFit, message) or None, status.preflight, status.cost)."""
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        gpu, source = self.gpu(spec.resources.gpu_product) if spec.resources.gpus else (None, None)
        result = plan(spec, gpu, source, self.prices(),
                      skip_fit=annotations.get(SKIP_ANNOTATION) == "skip")
        problem = (Reason.WONT_FIT, f"{result.problem} No trainer Job was created.") if result.problem else None
        return problem, preflight_status(result, spec), cost_status(result)

    def account(self, namespace: str, spec: FineTuneJobSpec | None, current: FineTuneJobStatus,
                new: FineTuneJobStatus) -> FineTuneJobStatus:
        """`new` with the GPU-hours and cost used, when the job has just finished; counted once
        per namespace on /metrics (a job already final when read is not counted again)."""
        if spec is None or new.phase not in Phase.FINAL or current.phase in Phase.FINAL:
            return new
        hours = used_gpu_hours(spec, new)
        if hours is None:
            return new
        cost = new.cost or CostStatus()
        price = cost.price_per_gpu_hour
        currency = cost.currency
        if price is None:
            prices = self.prices()
            price = prices.price(spec.resources.gpu_product) if prices else None
            currency = prices.currency if prices and price is not None else None
        actual = hours * price if price is not None else None
        FINETUNEJOB_GPU_HOURS.labels(namespace).inc(hours)
        if actual is not None and currency is not None:
            FINETUNEJOB_COST.labels(namespace, currency).inc(actual)
        updated = cost.model_copy(update={
            "gpu_hours": _round(hours), "actual": _round(actual), "price_per_gpu_hour": price,
            "currency": currency,
        })
        return new.model_copy(update={"cost": updated})
