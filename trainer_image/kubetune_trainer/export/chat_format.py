"""The chat format a model was trained with, read off its Jinja chat template, as an Ollama template.

Ollama renders prompts with a Go template (the Modelfile's TEMPLATE), not with the model's Jinja
template, so a served prompt only matches training if the two render the same text. Translating
Jinja to Go in general is not possible; instead we *probe* the tokenizer's template with sentinel
messages, read off each role's prefix and suffix and the generation prompt, and then
check that this per-role format reproduces the Jinja rendering on several conversations. Templates
that do not fit (e.g. a system prompt folded into the first user turn) raise
:class:`UnsupportedChatTemplate` instead of producing a template that silently differs.

:func:`render_like_ollama` is a line-by-line Python mirror of :func:`ollama_template`, used to
compare with ``tokenizer.apply_chat_template``; the Go template itself is exercised with Go's
``text/template`` in the tests when a Go toolchain is present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

Message = Mapping[str, str]
RenderFn = Callable[[Sequence[Message], bool], str]

ROLES = ("system", "user", "assistant")

_SYS, _U1, _A1, _U2, _A2, _U3 = (
    "KTPROBESYSTEM",
    "KTPROBEUSER1",
    "KTPROBEASSISTANT1",
    "KTPROBEUSER2",
    "KTPROBEASSISTANT2",
    "KTPROBEUSER3",
)


class UnsupportedChatTemplate(ValueError):
    """The chat template cannot be expressed as per-role prefixes and suffixes."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to literal pieces: what wraps each role's content."""

    turns: Mapping[str, tuple[str, str]]  # role -> (prefix, suffix) around the content
    generation_prompt: str  # what opens the assistant's answer
    stops: tuple[str, ...] = field(default=())  # strings that end an answer
    bos_stripped: str = ""  # the template's leading BOS, left to the runtime ("" if none)
    from_template: bool = True  # False: a model without chat template, prompted with plain text


def plain_text_format(tokenizer: Any) -> ChatFormat:
    """For a model without chat template: the prompt is the user's text, stop at EOS."""
    stops = (tokenizer.eos_token,) if tokenizer.eos_token else ()
    return ChatFormat(
        turns={"user": ("", "")}, generation_prompt="", stops=stops, from_template=False
    )


def chat_format_from_tokenizer(
    tokenizer: Any, *, runtime_adds_bos: bool | None = None
) -> ChatFormat:
    """Probe ``tokenizer``'s chat template and return its :class:`ChatFormat`.

    ``runtime_adds_bos``: whether the serving runtime prepends BOS itself (llama.cpp and Ollama do
    when the GGUF says ``add_bos_token``); default: the tokenizer's ``add_bos_token``. A leading
    BOS in the template is then left out of the format, or it would be there twice.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UnsupportedChatTemplate("the tokenizer has no chat template")

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    if runtime_adds_bos is None:
        runtime_adds_bos = tokenizer_adds_bos(tokenizer)
    bos = tokenizer.bos_token if runtime_adds_bos and tokenizer.bos_token else ""
    fmt = probe_chat_format(render, bos_token=bos)
    return _with_stops(fmt, tokenizer)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens prepends BOS (llama.cpp's converter records the same).

    Asked by encoding, not read from ``add_bos_token``: tokenizers-backed tokenizers add BOS in
    their post-processor and may report ``add_bos_token=False``.
    """
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def probe_chat_format(render: RenderFn, *, bos_token: str = "") -> ChatFormat:
    """Read a :class:`ChatFormat` off ``render`` (a chat-template renderer), then check it.

    ``bos_token``: if the rendering starts with it, it is left out of the format (the runtime adds it).
    """
    user_only = render([_msg("user", _U1)], False)
    user_prefix, user_suffix = _split_once(user_only, _U1)
    bos_stripped = ""
    if bos_token and user_prefix.startswith(bos_token):
        bos_stripped, user_prefix = bos_token, user_prefix[len(bos_token) :]
    # Anything else a template emits once before the chat (a fixed preamble) lands in the user
    # prefix here, and the multi-turn check below rejects the template.

    three = render([_msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2)], False)
    head = bos_stripped + user_prefix + _U1 + user_suffix
    if not three.startswith(head):
        raise UnsupportedChatTemplate("the first user turn renders differently in a longer chat")
    middle, after_a1 = _split_once(three[len(head) :], _A1)
    assistant_prefix = middle
    between, tail = _split_once(after_a1, _U2)
    if tail != user_suffix or not between.endswith(user_prefix):
        raise UnsupportedChatTemplate("the second user turn renders differently from the first")
    assistant_suffix = between[: len(between) - len(user_prefix)]

    with_prompt = render([_msg("user", _U1)], True)
    if not with_prompt.startswith(user_only):
        raise UnsupportedChatTemplate("add_generation_prompt changes the text before the prompt")
    generation_prompt = with_prompt[len(user_only) :]

    turns: dict[str, tuple[str, str]] = {
        "user": (user_prefix, user_suffix),
        "assistant": (assistant_prefix, assistant_suffix),
    }
    try:
        with_system = render([_msg("system", _SYS), _msg("user", _U1)], False)
    except Exception:  # templates that reject a system message raise from Jinja
        with_system = None
    if with_system is not None and _SYS in with_system:
        before_sys, after_sys = _split_once(with_system, _SYS)
        if not before_sys.startswith(bos_stripped):
            raise UnsupportedChatTemplate("a system message changes what precedes the chat")
        system_prefix = before_sys[len(bos_stripped) :]
        between_su, _ = _split_once(after_sys, _U1)
        if not between_su.endswith(user_prefix):
            raise UnsupportedChatTemplate("a system message changes the first user turn")
        turns["system"] = (system_prefix, between_su[: len(between_su) - len(user_prefix)])

    fmt = ChatFormat(
        turns=turns,
        generation_prompt=generation_prompt,
        bos_stripped=bos_stripped,
    )
    _check_reproduces(fmt, render)
    return fmt


def render_like_ollama(fmt: ChatFormat, messages: Sequence[Message]) -> str:
    """What Ollama renders from :func:`ollama_template` for ``messages`` (before BOS is added).

    Mirrors the Go template exactly: the last message, when it is not the assistant's, is
    followed by the generation prompt; a last assistant message is left open (a prefill).
    """
    out: list[str] = []
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        role, content = message["role"], message["content"]
        if role in fmt.turns:
            prefix, suffix = fmt.turns[role]
            out.append(prefix + content)
            if role != "assistant" or not last:
                out.append(suffix)
        if last and role != "assistant":
            out.append(fmt.generation_prompt)
    return "".join(out)


def ollama_template(fmt: ChatFormat) -> str:
    """The Go template (Ollama's TEMPLATE) for ``fmt``; see :func:`render_like_ollama`."""
    branches: list[str] = []
    for role in ROLES:
        if role not in fmt.turns:
            continue
        prefix, suffix = fmt.turns[role]
        keyword = "if" if not branches else "else if"
        close = (
            "{{ if not $last }}" + _go_literal(suffix) + "{{ end }}"
            if role == "assistant"
            else _go_literal(suffix)
        )
        branches.append(
            f'{{{{ {keyword} eq $m.Role "{role}" }}}}{_go_literal(prefix)}{{{{ $m.Content }}}}{close}'
        )
    return (
        "{{ range $i, $m := .Messages }}"
        + "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + "".join(branches)
        + "{{ end }}"
        + '{{ if and $last (ne $m.Role "assistant") }}'
        + _go_literal(fmt.generation_prompt)
        + "{{ end }}"
        + "{{ end }}"
    )


def _go_literal(text: str) -> str:
    """Literal text for a Go template: raw unless it holds delimiters, then a quoted action."""
    if "{{" not in text and "}}" not in text:
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return '{{ "' + escaped + '" }}'


def _with_stops(fmt: ChatFormat, tokenizer: Any) -> ChatFormat:
    """Stops: EOS, then each special token that opens or closes a turn (never part of an answer)."""
    stops: list[str] = []
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    skip = {tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token}
    pieces = [fmt.generation_prompt, *(p + s for p, s in fmt.turns.values())]
    for token in tokenizer.all_special_tokens:
        if token in skip or token in stops:
            continue
        if any(token in piece for piece in pieces):
            stops.append(token)
    return replace(fmt, stops=tuple(stops))


def _check_reproduces(fmt: ChatFormat, render: RenderFn) -> None:
    conversations: list[list[Message]] = [
        [_msg("user", _U1)],
        [_msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2)],
        [
            _msg("user", _U1),
            _msg("assistant", _A1),
            _msg("user", _U2),
            _msg("assistant", _A2),
            _msg("user", _U3),
        ],
    ]
    if "system" in fmt.turns:
        conversations += [[_msg("system", _SYS), *c] for c in conversations]
    for conversation in conversations:
        expected = render(conversation, True)
        got = fmt.bos_stripped + render_like_ollama(fmt, conversation)
        if got != expected:
            raise UnsupportedChatTemplate(
                "the chat template is not a fixed prefix/suffix per role: for roles "
                f"{[m['role'] for m in conversation]} it renders {expected!r}, the derived "
                f"template {got!r}; write the Modelfile TEMPLATE by hand"
            )


def _split_once(text: str, sentinel: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise UnsupportedChatTemplate(
            f"the chat template does not render message content verbatim exactly once "
            f"({sentinel!r} appears {text.count(sentinel)} times in {text!r})"
        )
    before, after = text.split(sentinel)
    return before, after


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}
