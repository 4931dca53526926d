"""Memory estimates from a model's geometry: parameter counts against published ones, and what
each training setting costs."""

from __future__ import annotations

import pytest

from kubetune.planning.memory import (
    GIB,
    LLAMA_3_1_8B,
    ModelGeometry,
    estimate_memory,
    estimate_training_memory,
    lora_targets,
    lower_memory_options,
)
from kubetune.planning.references import PUBLISHED_PEAKS, TOLERANCE, PublishedPeak
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
        ("qlora", "sft", 18, 22),  # 4-bit weights 5.3 GiB; logits of 8192 tokens x 128k dominate
        ("lora", "sft", 27, 31),  # 16-bit weights 15 GiB
        ("full", "sft", 130, 140),  # 16 bytes per parameter before activations
        ("qlora", "dpo", 31, 36),  # chosen + rejected: twice the tokens
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


@pytest.mark.parametrize("reference", PUBLISHED_PEAKS, ids=lambda r: r.name)
def test_estimate_is_within_tolerance_of_torchtunes_published_peak(reference: PublishedPeak) -> None:
    estimate = estimate_memory(reference.setup, reference.geometry).total / GIB
    error = (estimate - reference.peak_gib) / reference.peak_gib
    assert abs(error) <= TOLERANCE, f"{reference.name}: {estimate:.2f} GiB vs {reference.peak_gib}"


def test_lora_targets_count_only_the_named_layers() -> None:
    assert lora_targets(["q_proj", "v_proj"]) == {"q_proj", "v_proj"}
    # all-linear, or any name the estimate does not know, counts all seven (an upper bound)
    assert len(lora_targets(["all-linear"])) == 7
    assert len(lora_targets(["q_proj", "c_attn"])) == 7
    qv = method_spec("lora").model_copy(
        update={"lora": method_spec("lora").lora.model_copy(update={"target_modules": ["q_proj", "v_proj"]})}
    )
    # q: 4096+4096, v: 4096+1024 per layer, rank 16, 32 layers
    assert LLAMA_3_1_8B.lora_parameters(16, lora_targets(["q_proj", "v_proj"])) == 32 * 16 * (8192 + 5120)
    assert estimate_training_memory(qv, LLAMA_3_1_8B).total < estimate_training_memory(
        method_spec("lora"), LLAMA_3_1_8B
    ).total


def test_more_gpus_keep_a_full_replica_each_and_add_ddp_gradient_buckets() -> None:
    one = method_spec("lora")
    four = one.model_copy(update={"resources": one.resources.model_copy(update={"gpus": 4})})
    m1, m4 = (estimate_training_memory(s, LLAMA_3_1_8B) for s in (one, four))
    assert m4.weights == m1.weights and m4.activations == m1.activations
    # adapters in float32: a second 4-byte copy of each gradient
    assert m4.trainable_state - m1.trainable_state == 4 * LLAMA_3_1_8B.lora_parameters(16)


def test_checkpointing_peak_holds_the_larger_of_logits_and_a_recomputed_layer() -> None:
    memory = estimate_training_memory(method_spec("qlora"), LLAMA_3_1_8B)
    assert memory.recomputed > 0 and memory.logits > memory.recomputed
    assert memory.total == memory.weights + memory.trainable_state + memory.activations + memory.logits
