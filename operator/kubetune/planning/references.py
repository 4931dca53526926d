"""Published training peaks the memory estimate is checked against (tests/unit/test_memory.py,
bench/memory_estimate.py).

torchtune's README ("Memory and training speed"): Llama 3.1 8B on one RTX 4090, batch size 2,
no gradient accumulation, a dataset packed to sequence length 2048, torch.compile on, activation
checkpointing on (its `llama3_1/8B_{qlora,lora}_single_device` configs): QLoRA 7.4 GiB, LoRA
16.2 GiB. Those recipes run everything in bf16 (adapters, their gradients and AdamW's two
states: 2 bytes each), use rank 8 with no dropout (QLoRA on q/k/v/o and the MLP, LoRA on q/v/o
and the MLP), and a chunked cross-entropy (8 chunks): 16-bit logits for the whole batch and one
chunk's float32 work at a time, about 3 bytes per logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kubetune.planning.memory import LINEAR_NAMES, LLAMA_3_1_8B, ModelGeometry, TrainingSetup

_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class PublishedPeak:
    """A peak someone measured, and the setup it was measured with."""

    name: str
    source: str
    geometry: ModelGeometry
    setup: TrainingSetup
    peak_gib: float


def _torchtune(method: str, targets: tuple[str, ...]) -> TrainingSetup:
    return TrainingSetup(
        method="qlora" if method == "qlora" else "lora",
        tokens=2 * 2048,
        gradient_checkpointing=True,
        lora_r=8,
        lora_targets=frozenset(targets),
        lora_dropout=False,
        double_quant=True,  # torchao NF4: blocks of 64, their scales quantized in blocks of 256
        optimizer_state_bytes=4,
        adapter_bytes=4,
        logit_bytes=3,
    )


TORCHTUNE = "torchtune README, Memory and training speed (Llama 3.1 8B, 1x RTX 4090)"
PUBLISHED_PEAKS: Final[tuple[PublishedPeak, ...]] = (
    PublishedPeak("Llama 3.1 8B QLoRA", TORCHTUNE, LLAMA_3_1_8B,
                  _torchtune("qlora", LINEAR_NAMES), 7.4),
    PublishedPeak("Llama 3.1 8B LoRA", TORCHTUNE, LLAMA_3_1_8B,
                  _torchtune("lora", ("q_proj", "v_proj", "o_proj", *_MLP)), 16.2),
)
TOLERANCE = 0.15
"""The estimate is within ±15 % of each published peak (it runs 5-10 % high: it does not model
what torch.compile saves)."""
