"""Modelfile TEMPLATE/SYSTEM parity on the supported families' stock templates and real tokenizers.

For each family the probed format is rendered by Ollama's own template package (v0.11.4, built
by hack/build-ollama-template.sh, which also applies Ollama's rule that a Modelfile SYSTEM leads
a chat without a system message) and compared with the Jinja template rendered by transformers:
the texts, and the token ids under the real tokenizer, must be identical, with and without a
system prompt, one turn and several.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from kubetune.api.families import FAMILIES
from kubetune_dev.tools import find_ollama_template
from kubetune_trainer import tiny_families
from kubetune_trainer.export.chat_format import (
    UnsupportedChatTemplate,
    chat_format_from_tokenizer,
    ollama_template,
    probe_chat_format,
)
from kubetune_trainer.export.modelfile import render_modelfile
from kubetune_trainer.export.ollama_override import OVERRIDE_CONVERSATIONS

# The conversations export.ollama overrides are checked with: one turn and several, with and
# without a system prompt.
CONVERSATIONS: list[list[dict[str, str]]] = [[dict(m) for m in c] for c in OVERRIDE_CONVERSATIONS]


def _tokenizer(name: str) -> Any:
    return tiny_families.load_family_tokenizer(tiny_families.family(name))


def _ollama_render(
    template: str, system: str, conversations: list[list[dict[str, str]]]
) -> list[str]:
    proc = subprocess.run(
        [str(find_ollama_template())],
        input=json.dumps({"template": template, "system": system, "conversations": conversations}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rendered: list[str] = json.loads(proc.stdout)
    return rendered


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_ollama_renders_the_token_ids_the_jinja_template_renders(name: str) -> None:
    tokenizer = _tokenizer(name)
    fmt = chat_format_from_tokenizer(tokenizer)
    rendered = _ollama_render(ollama_template(fmt), fmt.default_system or "", CONVERSATIONS)
    for conversation, served in zip(CONVERSATIONS, rendered, strict=True):
        trained = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert fmt.bos_stripped + served == trained
        assert (
            tokenizer(fmt.bos_stripped + served, add_special_tokens=False)["input_ids"]
            == (tokenizer(trained, add_special_tokens=False)["input_ids"])
        )


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_ollama_without_the_modelfile_system_still_renders_the_default(name: str) -> None:
    """A Modelfile recreated without SYSTEM (or a client that sends none) gets the same prompt."""
    tokenizer = _tokenizer(name)
    fmt = chat_format_from_tokenizer(tokenizer)
    (served,) = _ollama_render(ollama_template(fmt), "", CONVERSATIONS[:1])
    trained = tokenizer.apply_chat_template(
        CONVERSATIONS[0], tokenize=False, add_generation_prompt=True
    )
    assert fmt.bos_stripped + served == trained


def test_qwen_default_system_prompt_becomes_the_modelfile_system() -> None:
    fmt = chat_format_from_tokenizer(_tokenizer("qwen2"))
    assert (
        fmt.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    )
    text = render_modelfile("./model-q4_k_m.gguf", fmt)
    assert (
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in text
    )
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_llama31_date_preamble_is_written_without_a_system_prompt() -> None:
    fmt = chat_format_from_tokenizer(_tokenizer("llama3"))
    assert fmt.default_system == ""
    system_prefix = fmt.turns["system"][0]
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in system_prefix
    assert fmt.bos_stripped == "<|begin_of_text|>"  # llama.cpp adds BOS: never twice
    assert "SYSTEM" not in render_modelfile("./m.gguf", fmt).split("TEMPLATE")[0]


def test_phi35_closing_eos_is_not_part_of_a_turn() -> None:
    fmt = chat_format_from_tokenizer(_tokenizer("phi3"))
    assert fmt.turns["assistant"] == ("<|assistant|>\n", "<|end|>\n")
    assert "<|end|>" in fmt.stops and "<|endoftext|>" in fmt.stops


def test_mistral_system_prompt_goes_into_the_last_user_turn() -> None:
    fmt = chat_format_from_tokenizer(_tokenizer("mistral"))
    assert fmt.system_separator == "\n\n"
    assert "system" not in fmt.turns


def test_gemma2_template_without_system_role_gives_a_format_without_system() -> None:
    """Gemma 2's stock template refuses a system message: the format has no system turn, and the
    data stage rejects system messages for it (tests/unit/test_data_roles.py)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = (tiny_families.models_dir() / "templates" / "google-gemma-2-2b-it.jinja").read_text()

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)

    def render(messages: Any, add_generation_prompt: bool) -> str:
        return template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token="<bos>"
        )

    fmt = probe_chat_format(render, bos_token="<bos>")
    assert "system" not in fmt.turns
    assert fmt.turns["assistant"] == ("<start_of_turn>model\n", "<end_of_turn>\n")
    assert fmt.generation_prompt == "<start_of_turn>model\n"


def test_template_that_writes_a_fixed_preamble_before_a_system_turn_is_refused() -> None:
    def render(messages: Any, add_generation_prompt: bool) -> str:
        text = "HEADER\n"
        for m in messages:
            text += f"<{m['role']}>{m['content']}</{m['role']}>"
        return text + ("<assistant>" if add_generation_prompt else "")

    with pytest.raises(UnsupportedChatTemplate, match="which is not its system turn"):
        probe_chat_format(render)
