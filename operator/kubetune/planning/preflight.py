"""Before any GPU time: will a FineTuneJob fit its GPU, and what will it cost?

:func:`plan` is pure: given the spec, the GPU it asks for (from the node label
``nvidia.com/gpu.memory`` or the table in :mod:`kubetune.planning.gpus`) and the price list, it
returns the estimate the operator writes in ``status.preflight`` and ``status.cost``, and
whether the job fits. A job fits when the estimated peak per GPU plus the CUDA context
(``CUDA_CONTEXT_BYTES``) is within the GPU's memory. One that does not is failed ``WontFit``
before its Job is created, with the settings that would fit (each change alone, most saving
first, or the smallest combination of them when none alone is enough).

The estimate counts every example at full ``training.maxLength``, so it is an upper bound for
shorter data; the annotation ``kubetune.dev/preflight: skip`` on a FineTuneJob skips the check
(the estimate is still shown). Nothing is estimated for a model whose shapes are not known
(:mod:`kubetune.planning.models`) or a job on CPU; the status says why.

Time: GPU-hours = tokens to train ÷ estimated tokens/s of one GPU (:mod:`kubetune.planning.gpus`),
where tokens to train = maxSteps × batchSize × gradientAccumulationSteps × maxLength × gpus (×2
for DPO): known before data preparation only when ``training.maxSteps`` is set. Evaluation and
export are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.planning.gpus import Gpu, known_gpu
from kubetune.planning.memory import (
    GIB,
    ModelGeometry,
    TrainingMemory,
    estimate_training_memory,
    gib,
    lower_memory_options,
)
from kubetune.planning.models import known_geometry

CUDA_CONTEXT_BYTES = GIB // 2  # CUDA context and cuBLAS workspace, on top of the tensors
SKIP_ANNOTATION = "kubetune.dev/preflight"  # value "skip": no WontFit, the estimate is kept


@dataclass(frozen=True)
class Prices:
    """Price of one GPU-hour per `gpuProduct`, from the operator's price ConfigMap."""

    per_gpu_hour: Mapping[str, float]
    currency: str = "USD"

    @classmethod
    def from_configmap_data(cls, data: Mapping[str, str]) -> tuple[Prices, list[str]]:
        """Prices from a ConfigMap's data (`<gpuProduct>: "<price>"`, optional `currency` and
        `default`), and a problem for each value that is not a non-negative number."""
        prices: dict[str, float] = {}
        problems = []
        for key, value in data.items():
            if key == "currency":
                continue
            try:
                price = float(value)
            except ValueError:
                price = -1.0
            if price < 0 or price != price:
                problems.append(f"{key}: {value!r} is not a price per GPU-hour (a number >= 0)")
                continue
            prices[key] = price
        return cls(prices, data.get("currency", "USD")), problems

    def price(self, product: str | None) -> float | None:
        """The price of one GPU-hour of `product` (case and dashes ignored), else `default`."""
        if product:
            wanted = known_gpu(product)
            for key, price in self.per_gpu_hour.items():
                if key.lower() == product.lower() or (wanted and known_gpu(key) == wanted):
                    return price
        return self.per_gpu_hour.get("default")


@dataclass(frozen=True)
class Plan:
    """What the preflight found; `problem` is the WontFit message when the job cannot fit."""

    model: str | None = None
    memory: TrainingMemory | None = None
    gpu: Gpu | None = None
    gpu_memory_source: str | None = None  # "table" or "nodeLabel"
    fits: bool | None = None
    gpu_hours: float | None = None
    price_per_gpu_hour: float | None = None
    currency: str | None = None
    message: str = ""
    problem: str | None = None

    @property
    def estimated_cost(self) -> float | None:
        if self.gpu_hours is None or self.price_per_gpu_hour is None:
            return None
        return self.gpu_hours * self.price_per_gpu_hour


def fits(memory: TrainingMemory, gpu: Gpu) -> bool:
    """Whether the estimated peak and the CUDA context fit in the GPU's memory."""
    return memory.total + CUDA_CONTEXT_BYTES <= gpu.memory_bytes


def settings_that_fit(spec: FineTuneJobSpec, geometry: ModelGeometry, gpu: Gpu) -> list[str]:
    """Each single change that would fit `gpu` (most saving first) with its estimate; when none
    alone is enough, the changes that do it together, applied most saving first."""
    options = lower_memory_options(spec, geometry)
    single = [f"{change} ({gib(m.total)})" for change, m in options if fits(m, gpu)]
    if single:
        return single
    changes: list[str] = []
    current = spec
    for _ in range(8):
        options = lower_memory_options(current, geometry)
        if not options:
            break
        change, memory = options[0]
        changes.append(change)
        current = _apply(current, change)
        if fits(memory, gpu):
            return [" and ".join(changes) + f" together ({gib(memory.total)})"]
    return []


def _apply(spec: FineTuneJobSpec, change: str) -> FineTuneJobSpec:
    """`spec` with one of `lower_memory_options`' changes made."""
    t = spec.training
    if change == "method: qlora":
        return spec.model_copy(update={"method": "qlora"})
    key, _, value = change.partition(": ")
    field = key.removeprefix("training.")
    update: dict[str, object]
    if field == "batchSize":
        smaller = int(value.split()[0])
        accumulation = t.gradient_accumulation_steps * t.batch_size // smaller
        update = {"batch_size": smaller, "gradient_accumulation_steps": accumulation}
    elif field == "maxLength":
        update = {"max_length": int(value)}
    elif field == "gradientCheckpointing":
        update = {"gradient_checkpointing": True}
    else:
        update = {"optimizer": value}
    return spec.model_copy(update={"training": t.model_copy(update=update)})


def training_tokens(spec: FineTuneJobSpec) -> int | None:
    """Tokens the job trains on at most (every example at maxLength), when maxSteps is set."""
    t = spec.training
    if t.max_steps is None:
        return None
    per_step = t.batch_size * t.gradient_accumulation_steps * t.max_length
    return t.max_steps * per_step * max(1, spec.resources.gpus) * (2 if spec.objective == "dpo" else 1)


def plan(
    spec: FineTuneJobSpec,
    gpu: Gpu | None,
    gpu_memory_source: str | None,
    prices: Prices | None,
    skip_fit: bool = False,
) -> Plan:
    """The preflight of `spec` on `gpu` (None: unknown product or none asked for)."""
    product = spec.resources.gpu_product
    price = prices.price(product) if prices is not None else None
    currency = prices.currency if prices is not None else None
    if spec.backend != "local":
        return Plan(message=f"Not estimated: backend {spec.backend} trains at the provider.")
    if spec.resources.gpus == 0:
        return Plan(message="Not estimated: the job trains on CPU (resources.gpus: 0).",
                    price_per_gpu_hour=price, currency=currency)
    geometry, source = known_geometry(spec.base_model.uri)
    if geometry is None:
        return Plan(message=f"Memory not estimated: {source}.", price_per_gpu_hour=price,
                    currency=currency)
    memory = estimate_training_memory(spec, geometry)
    notes = [f"estimated training peak per GPU {memory.describe()}, every example at "
             f"maxLength {spec.training.max_length}"]
    gpu_hours = None
    tokens = training_tokens(spec)
    if tokens is not None and gpu is not None and gpu.tflops > 0:
        seconds = tokens / gpu.tokens_per_second(spec.method, geometry.parameters)
        gpu_hours = seconds / 3600 * spec.resources.gpus
        notes.append(f"about {gpu_hours:.2f} GPU-hours for {tokens:,} tokens at most "
                     f"(estimated {gpu.tokens_per_second(spec.method, geometry.parameters):,.0f} "
                     f"tokens/s per {gpu.product})")
    elif tokens is None:
        notes.append("time not estimated: the dataset's size is known only after data "
                     "preparation (set training.maxSteps for an estimate)")
    else:
        notes.append(f"time not estimated: no throughput figure for {product!r}")
    base = Plan(model=source, memory=memory, gpu=gpu, gpu_memory_source=gpu_memory_source,
                gpu_hours=gpu_hours, price_per_gpu_hour=price, currency=currency)
    if gpu is None:
        why = (f"{product!r} is not in kubetune's GPU table and no node labelled with it has "
               "nvidia.com/gpu.memory" if product else "no resources.gpuProduct is set")
        message = "; ".join(notes) + f". Fit not checked: {why}."
        return replace(base, message=message)
    ok = fits(memory, gpu)
    where = "its nodes' nvidia.com/gpu.memory" if gpu_memory_source == "nodeLabel" else "kubetune's GPU table"
    capacity = f"{gpu.product} has {gib(gpu.memory_bytes)} ({where})"
    if ok:
        return replace(base, fits=True, message="; ".join(notes) + f"; fits: {capacity}.")
    would_fit = settings_that_fit(spec, geometry, gpu)
    advice = ("settings that would fit: " + "; ".join(would_fit)) if would_fit else (
        "no setting kubetune can lower makes it fit")
    problem = (
        f"Won't fit: estimated training peak per GPU {memory.describe()} plus "
        f"{gib(CUDA_CONTEXT_BYTES)} CUDA context, and {capacity}. {advice[0].upper()}{advice[1:]}; "
        f"or a GPU with more memory (resources.gpuProduct). The estimate "
        f"counts every example at maxLength {spec.training.max_length}; to run anyway, "
        f"annotate the FineTuneJob {SKIP_ANNOTATION}=skip."
    )
    if skip_fit:
        return replace(base, fits=False, message="; ".join(notes) + f"; does not fit ({capacity}), "
                        f"check skipped by {SKIP_ANNOTATION}=skip.")
    return replace(base, fits=False, message=problem, problem=problem)
