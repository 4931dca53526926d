"""Is this base model one kubetune can train, evaluate, export and serve? Asked before training.

Run by the pipeline right after the tokenizer is loaded and before the data is tokenized or any
weight is loaded, so a job that would fail at export never spends the GPU:

- the architecture (``config.json`` ``model_type``) must be one of the supported families
  (:mod:`kubetune.api.families`);
- the tokenizer's chat template must reduce to an Ollama TEMPLATE that renders exactly what
  the Jinja template renders (:func:`kubetune_trainer.export.chat_format.chat_format_from_tokenizer`
  raises :class:`UnsupportedChatTemplate` otherwise). Every job exports GGUF with a Modelfile,
  so this is always checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.api import constants as c
from kubetune.api.families import unsupported_model_type_problem
from kubetune.api.finetunejob import OllamaExportSpec
from kubetune_trainer.export.chat_format import (
    ChatFormat,
    UnsupportedChatTemplate,
    chat_format_from_tokenizer,
    plain_text_format,
)
from kubetune_trainer.export.ollama_override import check_ollama_override


class UnsupportedModelError(ValueError):
    """The base model's architecture is not a supported family."""

    reason = c.Reason.UNSUPPORTED_MODEL


def check_model_support(
    model_dir: Path, tokenizer: Any, ollama: OllamaExportSpec | None = None
) -> ChatFormat:
    """The chat format the export will use; raises before training when there is none.

    Raises :class:`UnsupportedModelError` for an unsupported architecture and
    :class:`UnsupportedChatTemplate` (with what to do) for a template Ollama cannot reproduce,
    with or without the `export.ollama` overrides.
    """
    config = Path(model_dir) / "config.json"
    model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    problem = unsupported_model_type_problem(model_type)
    if problem is not None:
        raise UnsupportedModelError(f"baseModel.uri: {problem}")
    try:
        return chat_format_for_export(tokenizer, ollama)
    except UnsupportedChatTemplate as exc:
        raise UnsupportedChatTemplate(
            f"the base model's chat template cannot be served by Ollama exactly as it was "
            f"trained ({exc}); nothing was trained. Use a model of a supported family, or give "
            "export.ollama.template (a Go template; it is checked the same way)"
        ) from exc


def chat_format_for_export(tokenizer: Any, ollama: OllamaExportSpec | None) -> ChatFormat:
    """The derived chat format, or the `export.ollama` overrides once Ollama reproduces training."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_text_format(tokenizer)
    if ollama is None or (ollama.template is None and ollama.system is None):
        return chat_format_from_tokenizer(tokenizer)
    try:
        derived: ChatFormat | None = chat_format_from_tokenizer(tokenizer)
    except UnsupportedChatTemplate:
        if ollama.template is None:
            raise
        derived = None
    return check_ollama_override(tokenizer, derived, template=ollama.template, system=ollama.system)
