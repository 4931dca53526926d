"""config.json excerpts of real models, for the memory estimates (never downloaded)."""

from __future__ import annotations

from typing import Any

# The keys of meta-llama/Llama-3.1-8B's config.json that the memory estimates read.
LLAMA_3_1_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def method_spec(method: str = "qlora", objective: str = "sft", **training: Any) -> Any:
    """A minimal FineTuneJobSpec with `method`, `objective` and `training` settings."""
    from kubetune.api.finetunejob import FineTuneJobSpec

    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "pvc://models/m"},
            "method": method,
            "objective": objective,
            "dataset": {"source": {"uri": "file://d.jsonl"}},
            "training": training,
        }
    )
