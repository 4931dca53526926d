"""The Modelfiles kubetune exports, read back into the fields of Ollama's ``POST /api/create``.

The trainer writes them with ``kubetune_trainer.export.modelfile.render_modelfile``::

    # comment lines
    FROM ./model-f16.gguf
    TEMPLATE \"\"\"<Go template, several lines>\"\"\"
    SYSTEM \"\"\"<default system prompt>\"\"\"          (optional)
    PARAMETER stop "<|im_end|>"                    (one line per stop, a JSON string)
    PARAMETER num_ctx 4096                         (other parameters: a number or a string)

The serve-agent registers the verified GGUF by digest, so FROM is dropped; TEMPLATE, SYSTEM and
the PARAMETERs go into the create request. ADAPTER is refused: a served version is one merged
GGUF. Values in triple quotes are taken verbatim, as Ollama's own parser does; ``stop`` values
are JSON strings, as the exporter writes them (for the special tokens stops are made of, the
same text Ollama's parser reads).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ParameterValue = str | int | float | bool

_INSTRUCTION = re.compile(r"([A-Za-z]+)(?=[ \t\r\n]|\Z)[ \t]*")
_PARAMETER_NAME = re.compile(r"([A-Za-z0-9_]+)[ \t]+")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
# Instructions the agent reads; FROM is replaced by the verified GGUF.
_KNOWN = ("from", "template", "system", "parameter")


class ModelfileError(ValueError):
    """The Modelfile is not in the format kubetune exports; the message names the line."""


@dataclass(frozen=True)
class ModelfileSettings:
    """What a Modelfile sets besides FROM."""

    template: str | None = None
    system: str | None = None
    parameters: dict[str, ParameterValue | list[ParameterValue]] = field(default_factory=dict)
    """``stop`` is always a list (one entry per line); others a single value."""


def parse_modelfile(text: str) -> ModelfileSettings:
    """Read TEMPLATE, SYSTEM and PARAMETER lines; raise :class:`ModelfileError` on anything else
    than those, FROM and comments, and on an unterminated quote."""
    template: str | None = None
    system: str | None = None
    parameters: dict[str, ParameterValue | list[ParameterValue]] = {}
    pos, line = 0, 1
    while pos < len(text):
        end_of_line = text.find("\n", pos)
        end_of_line = len(text) if end_of_line < 0 else end_of_line
        stripped = text[pos:end_of_line].strip()
        if not stripped or stripped.startswith("#"):
            pos, line = end_of_line + 1, line + 1
            continue
        start = pos + len(text[pos:end_of_line]) - len(text[pos:end_of_line].lstrip())
        match = _INSTRUCTION.match(text, start)
        if match is None:
            raise ModelfileError(f"line {line}: expected an instruction, found {stripped[:40]!r}")
        name = match.group(1).lower()
        if name not in _KNOWN:
            raise ModelfileError(
                f"line {line}: {match.group(1)} is not supported by the serve-agent "
                "(it reads FROM, TEMPLATE, SYSTEM and PARAMETER)"
            )
        value_start = match.end()
        if name == "parameter":
            pmatch = _PARAMETER_NAME.match(text, value_start)
            if pmatch is None:
                raise ModelfileError(f"line {line}: PARAMETER needs a name and a value")
            value, pos = _value(text, pmatch.end(), line)
            key = pmatch.group(1).lower()
            if key == "stop":
                stops = parameters.setdefault("stop", [])
                assert isinstance(stops, list)
                stops.append(_stop(value, line))
            else:
                parameters[key] = _scalar(value)
        else:
            value, pos = _value(text, value_start, line)
            if name == "template":
                template = _unquoted(value)
            elif name == "system":
                system = _unquoted(value)
        line += text.count("\n", start, pos) + 1
        pos += 1  # past the newline that ends the instruction
    return ModelfileSettings(template=template, system=system, parameters=parameters)


def create_request(tag: str, gguf_sha256: str, settings: ModelfileSettings) -> dict[str, Any]:
    """The ``POST /api/create`` body registering blob ``gguf_sha256`` as ``tag`` with ``settings``.

    ``stream`` is false: a streamed create answers 200 and reports a failure in its last line.
    """
    body: dict[str, Any] = {
        "model": tag,
        "files": {"model.gguf": f"sha256:{gguf_sha256}"},
        "stream": False,
    }
    if settings.template is not None:
        body["template"] = settings.template
    if settings.system is not None:
        body["system"] = settings.system
    if settings.parameters:
        body["parameters"] = dict(settings.parameters)
    return body


def _value(text: str, start: int, line: int) -> tuple[str, int]:
    """The raw value from ``start`` (quotes kept) and the index of the newline that ends it."""
    if text.startswith('"""', start):
        close = text.find('"""', start + 3)
        if close < 0:
            raise ModelfileError(f'line {line}: """ is never closed')
        end = close + 3
        rest_end = text.find("\n", end)
        rest_end = len(text) if rest_end < 0 else rest_end
        if text[end:rest_end].strip():
            raise ModelfileError(f'line {line}: text after the closing """')
        return text[start:end], rest_end
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    return text[start:end].strip(), end


def _unquoted(value: str) -> str:
    if value.startswith('"""'):
        return value[3:-3]
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return value[1:-1]
    return value


def _stop(value: str, line: int) -> str:
    if value.startswith('"') and not value.startswith('"""'):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ModelfileError(
                f"line {line}: stop {value!r} is not a JSON string: {exc}"
            ) from exc
        if not isinstance(decoded, str):
            raise ModelfileError(f"line {line}: stop {value!r} is not a string")
        return decoded
    return _unquoted(value)


def _scalar(value: str) -> ParameterValue:
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _unquoted(value)
