"""export.ollama overrides: a hand-written TEMPLATE/SYSTEM is checked before training, by Ollama's
own template engine against the model's real Jinja template (Llama 3.1's, with its real
tokenizer), and used in the Modelfile when it reproduces training."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.finetunejob import OllamaExportSpec
from kubetune_trainer import tiny_families
from kubetune_trainer.export.chat_format import (
    UnsupportedChatTemplate,
    chat_format_from_tokenizer,
    ollama_template,
    render_like_ollama,
)
from kubetune_trainer.export.modelfile import render_modelfile
from kubetune_trainer.model_support import chat_format_for_export, check_model_support

# Ollama's library template for llama3.1 (tools left out): it has no "Cutting Knowledge Date"
# lines, so prompts served with it differ from what an Instruct fine-tune was trained on.
OLLAMA_LIBRARY_LLAMA31 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{- end }}{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}'
    "<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}"
    '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n'
    "{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}{{- end }}{{- end }}"
)


@pytest.fixture(scope="module")
def llama3() -> Any:
    return tiny_families.load_family_tokenizer(tiny_families.family("llama3"))


def test_a_template_that_drops_the_date_preamble_is_refused_before_training(llama3: Any) -> None:
    with pytest.raises(UnsupportedChatTemplate) as err:
        chat_format_for_export(llama3, OllamaExportSpec(template=OLLAMA_LIBRARY_LLAMA31))
    message = str(err.value)
    assert "export.ollama" in message and "['user']" in message
    assert "Cutting Knowledge Date" in message  # the trained rendering is shown


def test_a_template_that_reproduces_training_is_used_in_the_modelfile(llama3: Any) -> None:
    derived = chat_format_from_tokenizer(llama3)
    handwritten = ollama_template(derived).replace("{{ range", "{{- range", 1)  # same output
    fmt = chat_format_for_export(llama3, OllamaExportSpec(template=handwritten))
    assert fmt.template_override == handwritten
    assert f'TEMPLATE """{handwritten}"""' in render_modelfile("./m.gguf", fmt)
    served = render_like_ollama(fmt, [{"role": "user", "content": "Hi"}])  # Ollama's engine
    assert fmt.bos_stripped + served == llama3.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )


def test_a_system_override_is_what_training_rendered_with_that_system_prompt(llama3: Any) -> None:
    fmt = chat_format_for_export(llama3, OllamaExportSpec(system="You route support tickets."))
    assert fmt.default_system == "You route support tickets."
    assert 'SYSTEM """You route support tickets."""' in render_modelfile("./m.gguf", fmt)


def test_a_broken_go_template_is_named(llama3: Any) -> None:
    with pytest.raises(UnsupportedChatTemplate, match="Ollama cannot render it"):
        chat_format_for_export(llama3, OllamaExportSpec(template="{{ range .Messages }"))


def test_the_pre_training_check_names_the_override_as_the_fix(tmp_path: Any) -> None:
    llama3 = tiny_families.load_family_tokenizer(tiny_families.family("llama3"))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    llama3.chat_template = (
        tiny_families.models_dir() / "templates" / "openai-gpt-oss-120b.jinja"
    ).read_text()
    with pytest.raises(
        UnsupportedChatTemplate, match=r"nothing was trained.*export\.ollama\.template"
    ):
        check_model_support(tmp_path, llama3)
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(ValueError, match=r"model_type .gpt_neox.*supported families"):
        check_model_support(tmp_path, llama3)
