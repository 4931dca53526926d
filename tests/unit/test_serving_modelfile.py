"""The serve-agent reads back the Modelfiles the exporter writes: TEMPLATE, SYSTEM and stops of
the supported families' real chat templates survive the round trip into ``/api/create``."""

from __future__ import annotations

import pytest

from kubetune.api.families import FAMILIES
from kubetune.serving.modelfile import (
    ModelfileError,
    ModelfileSettings,
    create_request,
    parse_modelfile,
)
from kubetune_trainer import tiny_families
from kubetune_trainer.export.chat_format import chat_format_from_tokenizer, ollama_template
from kubetune_trainer.export.modelfile import render_modelfile

SHA = "ab" * 32


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_exported_modelfile_round_trips(name: str) -> None:
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family(name))
    fmt = chat_format_from_tokenizer(tokenizer)
    text = render_modelfile("model-f16.gguf", fmt)

    settings = parse_modelfile(text)

    assert settings.template == ollama_template(fmt)
    assert settings.system == (fmt.default_system or None)
    assert settings.parameters == {"stop": list(fmt.stops)}
    body = create_request(f"support:{name}", SHA, settings)
    assert body["files"] == {"model.gguf": f"sha256:{SHA}"}
    assert body["stream"] is False
    assert body["template"] == ollama_template(fmt)
    assert body["parameters"]["stop"] == list(fmt.stops)


def test_qwen_default_system_is_kept_verbatim() -> None:
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family("qwen2"))
    fmt = chat_format_from_tokenizer(tokenizer)
    assert fmt.default_system  # Qwen 2.5's "You are Qwen, created by Alibaba Cloud…"

    settings = parse_modelfile(render_modelfile("./m.gguf", fmt))

    assert settings.system == fmt.default_system
    assert create_request("q:v1", SHA, settings)["system"] == fmt.default_system


def test_other_parameters_are_typed_and_stops_are_json_strings() -> None:
    text = (
        "FROM ./m.gguf\n"
        "PARAMETER num_ctx 4096\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER penalize_newline false\n"
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "\\n\\nUser:"\n'
        "PARAMETER mirostat_tau 5e-1\n"
    )
    assert parse_modelfile(text).parameters == {
        "num_ctx": 4096,
        "temperature": 0.7,
        "penalize_newline": False,
        "stop": ["<|im_end|>", "\n\nUser:"],
        "mirostat_tau": 0.5,
    }


def test_triple_quoted_values_keep_newlines_quotes_and_surrounding_space() -> None:
    text = 'FROM x\nTEMPLATE """ {{ "a" }}\n\n  b """\nSYSTEM """one "quoted" word"""\n'
    settings = parse_modelfile(text)
    assert settings.template == ' {{ "a" }}\n\n  b '
    assert settings.system == 'one "quoted" word'


def test_without_template_or_parameters_the_request_leaves_them_out() -> None:
    body = create_request("m:v1", SHA, ModelfileSettings())
    assert set(body) == {"model", "files", "stream"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM x\nADAPTER ./lora.gguf\n", "ADAPTER is not supported"),
        ("FROM x\nLICENSE MIT\n", "line 2: LICENSE is not supported"),
        ('FROM x\nTEMPLATE """{{ .Prompt }}\n', 'line 2: """ is never closed'),
        ('FROM x\nTEMPLATE """a""" trailing\n', "text after the closing"),
        ("FROM x\nPARAMETER stop\n", "PARAMETER needs a name and a value"),
        ('FROM x\nPARAMETER stop "unterminated\n', "not a JSON string"),
        ("FROM x\n{{ oops }}\n", "line 2: expected an instruction"),
    ],
)
def test_refuses_what_the_exporter_never_writes(text: str, expected: str) -> None:
    with pytest.raises(ModelfileError, match=expected.replace("(", r"\(")):
        parse_modelfile(text)


def test_line_numbers_count_the_lines_of_multiline_values() -> None:
    text = 'FROM x\nTEMPLATE """a\nb\nc"""\n# comment\nMESSAGE user hi\n'
    with pytest.raises(ModelfileError, match="line 6: MESSAGE"):
        parse_modelfile(text)
