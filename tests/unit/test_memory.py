"""Memory estimates from a model's geometry: parameter counts against published ones, and what
each training setting costs."""

from __future__ import annotations

import pytest

from kubetune_trainer.memory import (
    GIB,
    LLAMA_3_1_8B,
    ModelGeometry,
    estimate_training_memory,
    lower_memory_options,
)
from tests.model_configs import method_spec

# config.json of Qwen/Qwen2.5-0.5B (tied embeddings): 494,032,768 parameters, of which 27,648
# are q/k/v biases this estimate leaves out.
QWEN2_5_0_5B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def test_parameter_counts_match_the_published_ones() -> None:
    assert LLAMA_3_1_8B.parameters == 8_030_261_248
    qwen = ModelGeometry.from_config(QWEN2_5_0_5B)
    assert qwen.head_dim == 64 and qwen.tie_word_embeddings
    assert qwen.parameters == 494_032_768 - 27_648
    # Gemma-style configs give head_dim explicitly (256 with hidden 2048 and 8 heads).
    gemma = ModelGeometry.from_config({**QWEN2_5_0_5B, "head_dim": 256, "hidden_size": 2048})
    assert gemma.head_dim == 256


def test_lora_adapters_on_every_linear_layer() -> None:
    # r=16 on q, k, v, o, gate, up, down of 32 layers: 16 x 81,920 x 32.
    assert LLAMA_3_1_8B.lora_parameters(16) == 41_943_040


@pytest.mark.parametrize(
    ("method", "objective", "low", "high"),
    [
        ("qlora", "sft", 20, 24),  # 4-bit weights 5.3 GiB; logits of 8192 tokens x 128k dominate
        ("lora", "sft", 30, 34),  # 16-bit weights 15 GiB
        ("full", "sft", 130, 140),  # 16 bytes per parameter before activations
        ("qlora", "dpo", 36, 41),  # chosen + rejected: twice the tokens
    ],
)
def test_training_estimate_for_llama_8b_at_the_defaults(
    method: str, objective: str, low: float, high: float
) -> None:
    memory = estimate_training_memory(method_spec(method, objective), LLAMA_3_1_8B)
    assert low * GIB < memory.total < high * GIB, memory.describe()


def test_settings_that_lower_memory_are_estimated_and_sorted() -> None:
    s = method_spec("lora", batchSize=8, maxLength=4096, gradientCheckpointing=False)
    now = estimate_training_memory(s, LLAMA_3_1_8B).total
    options = lower_memory_options(s, LLAMA_3_1_8B)
    changes = [change for change, _ in options]
    assert any(
        c.startswith("training.batchSize: 4 with gradientAccumulationSteps: 8") for c in changes
    )
    assert "training.maxLength: 2048" in changes
    assert "training.gradientCheckpointing: true" in changes
    assert "method: qlora" in changes
    totals = [m.total for _, m in options]
    assert totals == sorted(totals) and all(t < now for t in totals)
    # Without checkpointing, activations of 32 layers x 32k tokens outweigh everything else.
    assert changes[0] == "training.gradientCheckpointing: true"


def test_8bit_optimizer_is_offered_for_full_fine_tuning() -> None:
    options = dict(lower_memory_options(method_spec("full"), LLAMA_3_1_8B))
    saved = (
        estimate_training_memory(method_spec("full"), LLAMA_3_1_8B).total
        - options["training.optimizer: paged_adamw_8bit"].total
    )
    assert saved == 6 * LLAMA_3_1_8B.parameters
