"""The model families kubetune supports end to end, and how each is recognised.

A family is an architecture (what ``config.json``'s ``model_type`` says) with the chat template
and tokenizer its instruct models ship. Support means: SFT with assistant-only loss computed on
the stock template, DPO through the same template, GGUF conversion by llama.cpp with the real
pre-tokenizer, quantization, verification, and a Modelfile whose prompts match training token for
token. Each is tested offline with the real tokenizer and template from the pinned llama.cpp
sdist (``models/ggml-vocab-*.gguf`` and ``models/templates/*.jinja``); see
``kubetune_trainer.tiny_families``.

Recognised twice, both before the GPU is spent:

- ``kubetune validate`` and the operator read the base model's URI: a Hugging Face repository
  named like a family that is *not* supported (e.g. ``gemma-3``, ``falcon``) is rejected with the
  list of supported ones; names that say nothing (a private fine-tune, a PVC path) pass;
- the trainer reads ``config.json`` before loading weights and rejects an unsupported
  ``model_type`` the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class ModelFamily:
    """One supported family: how to recognise it and which real template/tokenizer test it."""

    name: str
    model_types: tuple[str, ...]
    """``config.json`` ``model_type`` values of this family."""
    hub_name: str
    """Regular expression (case-insensitive) matched against a Hugging Face repository name."""
    template: str
    """llama.cpp's ``models/templates/`` file with the family's stock chat template."""
    vocab: str
    """llama.cpp's ``models/ggml-vocab-*.gguf`` with the family's real tokenizer."""
    example: str
    """A Hugging Face repository of this family (documentation only; never downloaded)."""


FAMILIES: Final[tuple[ModelFamily, ...]] = (
    ModelFamily(
        name="llama3",
        model_types=("llama",),
        hub_name=r"llama-?3|llama3",
        template="meta-llama-Llama-3.1-8B-Instruct.jinja",
        vocab="ggml-vocab-llama-bpe.gguf",
        example="meta-llama/Llama-3.1-8B-Instruct",
    ),
    ModelFamily(
        name="qwen2",
        model_types=("qwen2",),
        hub_name=r"qwen-?2",
        template="Qwen-Qwen2.5-7B-Instruct.jinja",
        vocab="ggml-vocab-qwen2.gguf",
        example="Qwen/Qwen2.5-7B-Instruct",
    ),
    ModelFamily(
        name="phi3",
        model_types=("phi3",),
        hub_name=r"phi-?3",
        template="microsoft-Phi-3.5-mini-instruct.jinja",
        vocab="ggml-vocab-phi-3.gguf",
        example="microsoft/Phi-3.5-mini-instruct",
    ),
    ModelFamily(
        name="mistral",
        model_types=("mistral",),
        hub_name=r"mistral|ministral",
        template="mistralai-Mistral-Nemo-Instruct-2407.jinja",
        # Mistral 7B's tokenizer is a 32k Llama SentencePiece vocabulary; Nemo's own "tekken"
        # tokenizer is not in the sdist, so the template is tested with this one.
        vocab="ggml-vocab-llama-spm.gguf",
        example="mistralai/Mistral-7B-Instruct-v0.3",
    ),
)

# Families people fine-tune that are not supported yet, by Hugging Face name, with the reason.
UNSUPPORTED_HUB_NAMES: Final[dict[str, str]] = {
    r"gemma": "Gemma (its template folds the system prompt into the user turn and trims content; "
    "no Gemma-2 tokenizer is available offline to test against)",
    r"falcon": "Falcon",
    r"gpt-?neox|pythia": "GPT-NeoX",
    r"deepseek-?v[23]": "DeepSeek-V2/V3 (MoE)",
    r"mixtral": "Mixtral (MoE)",
    r"command-?r": "Command R",
    r"olmo": "OLMo",
    r"granite": "Granite",
}


def supported_families() -> str:
    """``llama3 (meta-llama/Llama-3.1-8B-Instruct), …`` for error messages."""
    return ", ".join(f"{f.name} ({f.example})" for f in FAMILIES)


def family_for_model_type(model_type: str) -> ModelFamily | None:
    """The family whose architecture is ``model_type`` (``config.json``), or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_for_hub_name(repo: str) -> ModelFamily | None:
    """The supported family a repository name announces, or None when it announces none."""
    name = repo.rsplit("/", 1)[-1]
    return next((f for f in FAMILIES if re.search(f.hub_name, name, re.IGNORECASE)), None)


def unsupported_family_problem(repo: str) -> str | None:
    """Why ``repo`` (``org/name``) names a family kubetune cannot train yet, or None."""
    if family_for_hub_name(repo) is not None:
        return None
    name = repo.rsplit("/", 1)[-1]
    for pattern, family in UNSUPPORTED_HUB_NAMES.items():
        if re.search(pattern, name, re.IGNORECASE):
            return (
                f"{repo!r} is a {family} model, which kubetune does not support yet; "
                f"supported families: {supported_families()}"
            )
    return None


def unsupported_model_type_problem(model_type: str) -> str | None:
    """Why a ``config.json`` ``model_type`` cannot be trained yet, or None when it can."""
    if family_for_model_type(model_type) is not None:
        return None
    return (
        f"the base model's architecture (model_type {model_type!r}) is not supported yet; "
        f"supported families: {supported_families()}"
    )
