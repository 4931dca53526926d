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
    default_system: str | None = None
    """System content written when a chat has none (Qwen 2.5's "You are Qwen…", Llama 3.1's
    empty one after its date lines); None: no system turn unless the chat has one."""
    system_separator: str | None = None
    """Set when the template folds the system message into the last user message (Mistral):
    what separates it from the user's text. The system role then has no turn of its own."""
    template_override: str | None = None
    """A hand-written Ollama TEMPLATE (`export.ollama.template`), checked by
    :func:`~kubetune_trainer.export.ollama_override.check_ollama_override` and rendered by Ollama's own engine, never by the mirror."""


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
    specials = [t for t in tokenizer.all_special_tokens if t]
    specials += [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    fmt = probe_chat_format(render, bos_token=bos, special_tokens=specials)
    return with_stops(fmt, tokenizer)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens prepends BOS (llama.cpp's converter records the same).

    Asked by encoding, not read from ``add_bos_token``: tokenizers-backed tokenizers add BOS in
    their post-processor and may report ``add_bos_token=False``.
    """
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def probe_chat_format(
    render: RenderFn, *, bos_token: str = "", special_tokens: Sequence[str] = ()
) -> ChatFormat:
    """Read a :class:`ChatFormat` off ``render`` (a chat-template renderer), then check it.

    ``bos_token``: if the rendering starts with it, it is left out of the format (the runtime adds it).
    ``special_tokens``: the tokenizer's special tokens; no boundary is drawn inside one.

    Read off, in order: the user turn (its prefix, the suffix before the generation prompt);
    the assistant turn and what separates it from the next user turn; what the template writes
    before the first user turn when there is no system message (a default system prompt, as
    Qwen 2.5's, or a system block with an empty default and a preamble, as Llama 3.1's date
    lines); and how a system message is written: a turn of its own, folded into the last user
    message (Mistral), or refused (Gemma). Every reading is then checked on whole
    conversations, with and without a system message.
    """
    one = render([_msg("user", _U1)], True)
    head, user_tail = _split_once(one, _U1)
    bos_stripped = ""
    if bos_token and head.startswith(bos_token):
        bos_stripped, head = bos_token, head[len(bos_token) :]
    # A lone user turn rendered without a generation prompt ends with the user suffix, and for
    # some templates (Phi-3.5: EOS) with a closing that only ends a finished conversation.
    closed_tail = _split_once(render([_msg("user", _U1)], False), _U1)[1]
    user_suffix = _common_prefix(closed_tail, user_tail, special_tokens)
    generation_prompt = user_tail[len(user_suffix) :]

    three = render([_msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2)], True)
    if not three.startswith(bos_stripped + head + _U1):
        raise UnsupportedChatTemplate("the first user turn renders differently in a longer chat")
    between_ua, after_a1 = _split_once(three[len(bos_stripped + head + _U1) :], _A1)
    if not between_ua.startswith(user_suffix):
        raise UnsupportedChatTemplate("a user turn followed by an answer ends differently")
    assistant_prefix = between_ua[len(user_suffix) :]
    between_au, tail = _split_once(after_a1, _U2)
    if tail != user_tail:
        raise UnsupportedChatTemplate("the second user turn renders differently from the first")
    answered = render([_msg("user", _U1), _msg("assistant", _A1)], False)
    answer_tail = _split_once(answered, _A1)[1]
    assistant_suffix = _common_prefix(answer_tail, between_au, special_tokens)
    user_prefix = between_au[len(assistant_suffix) :]
    if not head.endswith(user_prefix):
        raise UnsupportedChatTemplate("the second user turn renders differently from the first")
    preamble = head[: len(head) - len(user_prefix)]

    turns: dict[str, tuple[str, str]] = {
        "user": (user_prefix, user_suffix),
        "assistant": (assistant_prefix, assistant_suffix),
    }
    default_system: str | None = None
    system_separator: str | None = None
    try:
        with_system: str | None = render([_msg("system", _SYS), _msg("user", _U1)], True)
    except Exception:  # templates that reject a system message raise from Jinja
        with_system = None
    if with_system is not None and _SYS in with_system:
        before_sys, after_sys = _split_once(with_system, _SYS)
        if not before_sys.startswith(bos_stripped):
            raise UnsupportedChatTemplate("a system message changes what precedes the chat")
        before_sys = before_sys[len(bos_stripped) :]
        own_turn_end = user_prefix + _U1 + user_tail
        if after_sys.endswith(own_turn_end):
            system_turn = (before_sys, after_sys[: len(after_sys) - len(own_turn_end)])
            turns["system"] = system_turn
            if preamble:
                default_system = _default_system(preamble, system_turn)
        elif before_sys == preamble + user_prefix and after_sys.endswith(_U1 + user_tail):
            system_separator = after_sys[: len(after_sys) - len(_U1 + user_tail)]
            _check_system_in_last_user_turn(render, system_separator)
        else:
            raise UnsupportedChatTemplate("a system message changes the first user turn")
    if preamble and default_system is None:
        raise UnsupportedChatTemplate(
            f"the template writes {preamble!r} before the first user turn, which is not a "
            "system turn with a default content"
        )

    fmt = ChatFormat(
        turns=turns,
        generation_prompt=generation_prompt,
        bos_stripped=bos_stripped,
        default_system=default_system,
        system_separator=system_separator,
    )
    _check_reproduces(fmt, render)
    return fmt


def _default_system(preamble: str, system_turn: tuple[str, str]) -> str:
    """The system content the template writes when the chat has no system message."""
    prefix, suffix = system_turn
    if (
        preamble.startswith(prefix)
        and preamble.endswith(suffix)
        and len(preamble) >= len(prefix) + len(suffix)
    ):
        return preamble[len(prefix) : len(preamble) - len(suffix)]
    raise UnsupportedChatTemplate(
        f"without a system message the template writes {preamble!r}, which is not its system "
        f"turn ({prefix!r} … {suffix!r}) around a default system prompt"
    )


def _check_system_in_last_user_turn(render: RenderFn, separator: str) -> None:
    """A folded system message must go into the last user message (Mistral); nothing else fits."""
    conversation = [
        _msg("system", _SYS),
        _msg("user", _U1),
        _msg("assistant", _A1),
        _msg("user", _U2),
    ]
    text = render(conversation, True)
    if _SYS + separator + _U2 not in text:
        raise UnsupportedChatTemplate(
            "the template folds the system message into a user turn other than the last one; "
            "set export.ollama.template to a Go template that does the same"
        )


def render_like_ollama(fmt: ChatFormat, messages: Sequence[Message]) -> str:
    """What Ollama renders for ``messages`` with ``fmt``'s TEMPLATE and SYSTEM (no BOS)."""
    if fmt.template_override is not None:
        from kubetune_trainer.export.ollama_override import render_with_ollama

        return render_with_ollama(fmt.template_override, fmt.default_system or "", [messages])[0]
    return _render_derived(fmt, messages)


def _render_derived(fmt: ChatFormat, messages: Sequence[Message]) -> str:
    """What Ollama renders from :func:`ollama_template` for ``messages`` (before BOS is added).

    Mirrors the Go template exactly: the last message, when it is not the assistant's, is
    followed by the generation prompt; a last assistant message is left open (a prefill). With a
    default system prompt, a chat that does not start with a system message gets the system
    turn with that content first. A folded system message (``system_separator``) is written at
    the start of the last message when that is a user message, as Ollama's ``.System`` (every
    system message, joined by a blank line).
    """
    out: list[str] = []
    if fmt.default_system is not None and (not messages or messages[0]["role"] != "system"):
        prefix, suffix = fmt.turns["system"]
        out.append(prefix + fmt.default_system + suffix)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        role, content = message["role"], message["content"]
        if role in fmt.turns:
            prefix, suffix = fmt.turns[role]
            if role == "user" and last and system and fmt.system_separator is not None:
                content = system + fmt.system_separator + content
            out.append(prefix + content)
            if role != "assistant" or not last:
                out.append(suffix)
        if last and role != "assistant":
            out.append(fmt.generation_prompt)
    return "".join(out)


def ollama_template(fmt: ChatFormat) -> str:
    """The Go template (Ollama's TEMPLATE) for ``fmt``; see :func:`render_like_ollama`."""
    if fmt.template_override is not None:
        return fmt.template_override
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
        folded = (
            "{{ if and $last $.System }}{{ $.System }}"
            + _go_literal(fmt.system_separator)
            + "{{ end }}"
            if role == "user" and fmt.system_separator is not None
            else ""
        )
        branches.append(
            f'{{{{ {keyword} eq $m.Role "{role}" }}}}{_go_literal(prefix)}{folded}'
            f"{{{{ $m.Content }}}}{close}"
        )
    default = ""
    if fmt.default_system is not None:
        prefix, suffix = fmt.turns["system"]
        default = (
            '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            + _go_literal(prefix + fmt.default_system + suffix)
            + "{{ end }}"
        )
    return (
        default
        + "{{ range $i, $m := .Messages }}"
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


def with_stops(fmt: ChatFormat, tokenizer: Any) -> ChatFormat:
    """Stops: EOS, then each special token that opens or closes a turn (never part of an answer)."""
    stops: list[str] = []
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    skip = {tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token}
    pieces = [fmt.generation_prompt, *(p + s for p, s in fmt.turns.values())]
    specials = [*tokenizer.all_special_tokens]
    specials += [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    for token in specials:
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
    if "system" in fmt.turns or fmt.system_separator is not None:
        conversations += [[_msg("system", _SYS), *c] for c in conversations]
    for conversation in conversations:
        expected = render(conversation, True)
        got = fmt.bos_stripped + _render_derived(fmt, conversation)
        if got != expected:
            raise UnsupportedChatTemplate(
                "the chat template is not a fixed prefix/suffix per role: for roles "
                f"{[m['role'] for m in conversation]} it renders {expected!r}, the derived "
                f"template {got!r}; write the Modelfile TEMPLATE by hand"
            )


def _common_prefix(a: str, b: str, special_tokens: Sequence[str] = ()) -> str:
    """The longest common prefix of ``a`` and ``b`` that does not end inside a special token."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    moved = True
    while moved:
        moved = False
        for token in special_tokens:
            for text in (a, b):
                start = text.find(token)
                while start != -1 and start < n:
                    if start < n < start + len(token):
                        n, moved = start, True
                    start = text.find(token, start + 1)
    return a[:n]


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
