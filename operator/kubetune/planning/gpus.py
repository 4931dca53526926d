"""The GPUs a FineTuneJob may ask for by `resources.gpuProduct`: their memory and an estimated
training throughput.

Keys are the values NVIDIA's GPU feature discovery writes in the node label
``nvidia.com/gpu.product`` (the product name with spaces as ``-``). Memory is what the driver
reports (``nvidia-smi --query-gpu=memory.total``, the label ``nvidia.com/gpu.memory``, MiB); a
node's own ``nvidia.com/gpu.memory`` label wins over this table when the operator can read it.

| gpuProduct                   | memory (MiB) | dense bf16 TFLOPS |
|------------------------------|-------------:|------------------:|
| Tesla-T4                     | 15360        | 65 (fp16; no bf16) |
| NVIDIA-L4                    | 23034        | 121               |
| NVIDIA-A10G                  | 23028        | 70                |
| NVIDIA-GeForce-RTX-4090      | 24564        | 165               |
| NVIDIA-A100-SXM4-40GB, NVIDIA-A100-PCIE-40GB | 40960 | 312      |
| NVIDIA-L40S                  | 46068        | 362               |
| NVIDIA-A100-SXM4-80GB, NVIDIA-A100-80GB-PCIe | 81920 | 312      |
| NVIDIA-H100-80GB-HBM3        | 81559        | 989               |
| NVIDIA-H100-PCIe             | 81559        | 756               |
| NVIDIA-H100-NVL              | 95830        | 835               |
| NVIDIA-H200                  | 143771       | 989               |

Throughput is an estimate, not a measurement: tokens/s = TFLOPS × efficiency / (6 × parameters),
with one efficiency per method calibrated on torchtune's published Llama 3.1 8B figures on one
RTX 4090 (full 1650, LoRA 3083, QLoRA 2413 tokens/s, packed batches of 2 × 2048, compiled).
kubetune's trainer (transformers, not compiled, examples padded rather than packed) is usually
slower, so time and cost estimates lean low.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MIB = 1024**2
# Efficiency per method: torchtune's tokens/s on an RTX 4090 x 6 x 8.03e9 / 165e12 (module doc).
_REFERENCE_TFLOPS = 165.0
_REFERENCE_PARAMETERS = 8_030_261_248
_REFERENCE_TOKENS_PER_SECOND = {"full": 1650.0, "lora": 3083.0, "qlora": 2413.0}
EFFICIENCY: Final[dict[str, float]] = {
    method: tps * 6 * _REFERENCE_PARAMETERS / (_REFERENCE_TFLOPS * 1e12)
    for method, tps in _REFERENCE_TOKENS_PER_SECOND.items()
}


@dataclass(frozen=True)
class Gpu:
    """One GPU product: its memory (MiB, as the driver reports it) and dense bf16 TFLOPS."""

    product: str
    memory_mib: int
    tflops: float

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def tokens_per_second(self, method: str, parameters: int) -> float:
        """Estimated training tokens/s of one such GPU for a model of `parameters` (module doc)."""
        return self.tflops * 1e12 * EFFICIENCY[method] / (6 * parameters)


GPUS: Final[tuple[Gpu, ...]] = (
    Gpu("Tesla-T4", 15360, 65),
    Gpu("NVIDIA-L4", 23034, 121),
    Gpu("NVIDIA-A10G", 23028, 70),
    Gpu("NVIDIA-GeForce-RTX-4090", 24564, 165),
    Gpu("NVIDIA-A100-SXM4-40GB", 40960, 312),
    Gpu("NVIDIA-A100-PCIE-40GB", 40960, 312),
    Gpu("NVIDIA-L40S", 46068, 362),
    Gpu("NVIDIA-A100-SXM4-80GB", 81920, 312),
    Gpu("NVIDIA-A100-80GB-PCIe", 81920, 312),
    Gpu("NVIDIA-H100-80GB-HBM3", 81559, 989),
    Gpu("NVIDIA-H100-PCIe", 81559, 756),
    Gpu("NVIDIA-H100-NVL", 95830, 835),
    Gpu("NVIDIA-H200", 143771, 989),
)


def _normal(product: str) -> str:
    return re.sub(r"[^a-z0-9]", "", product.lower())


_BY_NAME: Final[dict[str, Gpu]] = {_normal(g.product): g for g in GPUS}


def known_gpu(product: str) -> Gpu | None:
    """The table's entry for `product` (case, spaces and dashes ignored), or None."""
    return _BY_NAME.get(_normal(product))


def gpu_from_label(product: str, memory_label: str | None) -> Gpu | None:
    """`product` with the memory a node's ``nvidia.com/gpu.memory`` label gives (MiB), keeping
    the table's TFLOPS when the product is known; None when the label is not a number."""
    try:
        memory = int(str(memory_label))
    except ValueError:
        return None
    if memory <= 0:
        return None
    known = known_gpu(product)
    return Gpu(product, memory, known.tflops if known else 0.0)
