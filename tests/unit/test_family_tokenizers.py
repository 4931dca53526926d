"""The supported families' REAL tokenizers, as the tests and builtin://tiny-<family> use them.

Each is converted from llama.cpp's ggml-vocab-*.gguf (the pinned sdist) and must reproduce
llama.cpp's own tokenization test vectors (.inp/.out) id for id: a tokenizer that differs from
the real one would hide exactly the failures users hit (BOS twice, a merged turn marker, a
dropped dummy prefix).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.families import (
    FAMILIES,
    family_for_hub_name,
    family_for_model_type,
    unsupported_family_problem,
    unsupported_model_type_problem,
)
from kubetune_trainer import tiny_families

FAMILY_NAMES = [f.name for f in FAMILIES]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tokenizer_reproduces_llama_cpp_test_vectors(name: str) -> None:
    fam = tiny_families.family(name)
    tokenizer = tiny_families.load_family_tokenizer(fam)
    vectors = tiny_families.tokenization_vectors(fam)
    assert len(vectors) > 40
    wrong = [
        (text, expected, got)
        for text, expected in vectors
        if (got := tokenizer(text, add_special_tokens=False)["input_ids"]) != expected
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        ("llama3", "Hello world", [128000, 9906, 1917]),  # BOS from the post-processor
        ("qwen2", "Hello world", [9707, 1879]),  # Qwen adds no BOS
        ("phi3", "Hello world", [1, 15043, 3186]),
        ("mistral", "Hello world", [1, 15043, 3186]),
    ],
)
def test_encoding_adds_bos_as_the_release_does(name: str, text: str, ids: list[int]) -> None:
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family(name))
    assert tokenizer(text)["input_ids"] == ids


@pytest.mark.parametrize(
    ("name", "eos"),
    [
        ("llama3", "<|eot_id|>"),
        ("qwen2", "<|im_end|>"),
        ("phi3", "<|endoftext|>"),
        ("mistral", "</s>"),
    ],
)
def test_tokenizer_carries_the_stock_template_and_instruct_eos(name: str, eos: str) -> None:
    fam = tiny_families.family(name)
    tokenizer: Any = tiny_families.load_family_tokenizer(fam)
    assert tokenizer.chat_template == tiny_families.chat_template(fam)
    assert tokenizer.eos_token == eos


def test_families_are_recognised_by_architecture_and_hub_name() -> None:
    assert family_for_model_type("qwen2") is not None
    assert family_for_model_type("qwen2").name == "qwen2"  # type: ignore[union-attr]
    assert family_for_hub_name("meta-llama/Llama-3.1-8B-Instruct").name == "llama3"  # type: ignore[union-attr]
    assert family_for_hub_name("Qwen/Qwen2.5-7B-Instruct").name == "qwen2"  # type: ignore[union-attr]
    assert family_for_hub_name("microsoft/Phi-3.5-mini-instruct").name == "phi3"  # type: ignore[union-attr]
    assert family_for_hub_name("mistralai/Mistral-7B-Instruct-v0.3").name == "mistral"  # type: ignore[union-attr]
    assert family_for_hub_name("acme/support-bot-v2") is None


def test_unsupported_family_is_named_with_what_is_supported() -> None:
    problem = unsupported_family_problem("tiiuae/falcon-7b-instruct")
    assert problem is not None
    assert "Falcon" in problem and "does not support yet" in problem
    for fam in FAMILIES:
        assert fam.name in problem and fam.example in problem
    assert unsupported_family_problem("acme/support-bot-v2") is None  # says nothing: checked later
    problem = unsupported_model_type_problem("gpt_neox")
    assert problem is not None and "'gpt_neox'" in problem and "llama3" in problem
    assert unsupported_model_type_problem("mistral") is None
