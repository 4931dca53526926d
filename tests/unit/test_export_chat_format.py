"""Modelfile TEMPLATE and stops from a chat template: what Ollama renders is what training saw."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pytest

from kubetune_trainer.export.chat_format import (
    ChatFormat,
    UnsupportedChatTemplate,
    ollama_template,
    probe_chat_format,
    render_like_ollama,
)
from kubetune_trainer.export.modelfile import render_modelfile

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And {{ 3 }} + 3?\nThanks"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": ""},
    ],
]

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Llama 2 folds the system prompt into the first user turn: no per-role prefix/suffix exists.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system = '' %}{% endif %}"
    "{% for m in loop_messages %}{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + m['role'] + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>assistant\\n' }}{% endif %}"
)


def jinja_renderer(template: str, bos: str = "<s>", eos: str = "</s>") -> Any:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        return compiled.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )

    return render


@pytest.mark.parametrize(
    ("template", "bos", "roles"),
    [
        (CHATML, "", {"system", "user", "assistant"}),
        (LLAMA3, "<|begin_of_text|>", {"system", "user", "assistant"}),
        (NO_SYSTEM, "", {"user", "assistant"}),
    ],
    ids=["chatml", "llama3", "no-system"],
)
def test_probed_format_renders_like_the_jinja_template(
    template: str, bos: str, roles: set[str]
) -> None:
    render = jinja_renderer(template, bos=bos or "<s>")
    fmt = probe_chat_format(render, bos_token=bos)
    assert set(fmt.turns) == roles
    for conversation in CONVERSATIONS:
        if "system" not in roles and conversation[0]["role"] == "system":
            continue
        assert fmt.bos_stripped + render_like_ollama(fmt, conversation) == render(
            conversation, True
        )


def test_llama3_bos_is_left_to_the_runtime() -> None:
    fmt = probe_chat_format(
        jinja_renderer(LLAMA3, bos="<|begin_of_text|>"), bos_token="<|begin_of_text|>"
    )
    assert fmt.bos_stripped == "<|begin_of_text|>"
    assert "<|begin_of_text|>" not in ollama_template(fmt)


def test_template_that_folds_system_into_user_is_rejected() -> None:
    with pytest.raises(UnsupportedChatTemplate, match=r"by hand|differently|system"):
        probe_chat_format(jinja_renderer(LLAMA2), bos_token="<s>")


def test_template_that_drops_content_is_rejected() -> None:
    template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(UnsupportedChatTemplate, match="verbatim"):
        probe_chat_format(jinja_renderer(template))


def test_last_assistant_message_is_left_open_for_prefill() -> None:
    fmt = probe_chat_format(jinja_renderer(CHATML))
    text = render_like_ollama(
        fmt, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    )
    assert text.endswith("<|im_start|>assistant\nHel")


def test_go_template_literal_quotes_delimiters() -> None:
    fmt = ChatFormat(
        turns={"user": ("{{user}}: ", "\n"), "assistant": ("bot: ", "\n")},
        generation_prompt="bot: ",
    )
    template = ollama_template(fmt)
    assert '{{ "{{user}}: " }}' in template


# --- the tiny model's own tokenizer ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import transformers  # noqa: F401  (a missing dependency fails, never skips)
    from transformers import AutoTokenizer

    from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "m", BUILTIN_CORPUS)
    return AutoTokenizer.from_pretrained(model_dir)


def test_tiny_model_stops_and_template(tiny_tokenizer: Any) -> None:
    from kubetune_trainer.export.chat_format import chat_format_from_tokenizer

    fmt = chat_format_from_tokenizer(tiny_tokenizer)
    # EOS first, then the role markers that open a turn; never BOS or padding.
    assert fmt.stops == ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
    assert fmt.bos_stripped == "<s>"
    for conversation in CONVERSATIONS:
        expected = tiny_tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert "<s>" + render_like_ollama(fmt, conversation) == expected


def test_modelfile_text(tiny_tokenizer: Any) -> None:
    from kubetune_trainer.export.chat_format import chat_format_from_tokenizer

    fmt = chat_format_from_tokenizer(tiny_tokenizer)
    text = render_modelfile("model-q4_k_m.gguf", fmt, adapter="adapter-f16.gguf")
    lines = text.splitlines()
    assert "FROM ./model-q4_k_m.gguf" in lines
    assert "ADAPTER ./adapter-f16.gguf" in lines
    assert 'PARAMETER stop "<|end|>"' in lines
    assert f'TEMPLATE """{ollama_template(fmt)}"""' in text


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

// Renders each conversation the way Ollama fills a TEMPLATE: .Messages with .Role and .Content.
func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	out := []string{}
	for _, messages := range in.Conversations {
		var b []byte
		w := &buffer{&b}
		if err := t.Execute(w, map[string]any{"Messages": messages}); err != nil {
			panic(err)
		}
		out = append(out, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type buffer struct{ b *[]byte }

func (w *buffer) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }
"""


def test_go_text_template_renders_what_training_saw(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """The real Go template engine on the Modelfile TEMPLATE == tokenizer.apply_chat_template."""
    from kubetune_trainer.export.chat_format import chat_format_from_tokenizer

    fmt = chat_format_from_tokenizer(tiny_tokenizer)
    (tmp_path / "main.go").write_text(GO_RENDER)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "GO111MODULE": "off"}
    proc = subprocess.run(
        ["go", "run", "main.go"],
        cwd=tmp_path,
        input=json.dumps({"template": ollama_template(fmt), "conversations": CONVERSATIONS}),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    for conversation, text in zip(CONVERSATIONS, rendered, strict=True):
        expected = tiny_tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert fmt.bos_stripped + text == expected
