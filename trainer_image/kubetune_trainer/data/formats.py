"""Record formats: detect them, and normalise a raw JSON value into trl's native shape.

Normalised shapes (what the training stage gets):

- chat ``{"messages": [...]}``, ShareGPT ``{"conversations": [{"from", "value"}, ...]}`` (read
  as chat: ``from`` human/user -> user, gpt/assistant/model/bot -> assistant, system -> system,
  tool -> tool; ``value`` -> content) and instruction ``{"instruction", "input"?, "output", "system"?}``
  -> ``{"messages": [{"role", "content"}, ...]}`` (instruction: user = instruction, plus
  ``"\\n\\n" + input`` when there is one; assistant = output; ``system`` -> a system message);
- completion ``{"prompt", "completion"}`` -> the same two strings;
- preference ``{"prompt", "chosen", "rejected"}`` -> three strings. Chat-style chosen/rejected
  of one assistant message are accepted and flattened. A chat-style prompt of one user message
  is flattened too; a longer one (a system prompt, earlier turns, ending with the user turn) is
  kept as ``prompt_messages`` beside its text. Training renders all of it through the model's
  chat template (:func:`kubetune_trainer.train.run.preference_conversations`).

Gemma's ``model`` role is read as ``assistant`` wherever a role is. :func:`mappings` names the
mappings a record needed (ShareGPT, the ``model`` role), so that the data report can count them.

Other keys of a record (ids, metadata, a ShareGPT turn's ``weight``) are ignored. Message keys other than role and content
(names, tool calls) are not kept. Structured content (a list of ``{"type": "text", "text"}``
parts) is joined into one string.

Every function here is pure: it returns problems as ``(code, message)`` pairs and never raises
on bad data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kubetune_trainer.data.records import FORMATS, Format

ROLES = ("system", "user", "assistant", "tool")
# Roles other tools write for ours: Gemma's chat template calls the assistant "model".
ROLE_ALIASES = {"model": "assistant"}
_ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "ai": "assistant",
}
# ShareGPT's "from" values (as Axolotl and Unsloth read them) and the role each one is.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
}
SHOWN_CHARS = 40  # of a value echoed in a problem message

EXPECTED_FIELDS: dict[Format, str] = {
    "chat": '"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}] '
    '(or ShareGPT\'s "conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}])',
    "instruction": '"instruction", optional "input", "output" (and optional "system")',
    "completion": '"prompt" and "completion"',
    "preference": '"prompt", "chosen" and "rejected"',
}

Issue = tuple[str, str]  # (code, message)
_SPACE = re.compile(r"\s+")


def detect_record_format(value: Any) -> Format | None:
    """The format a record's keys announce, or None when they announce none."""
    if not isinstance(value, dict):
        return None
    if "messages" in value or "conversations" in value:
        return "chat"
    if "chosen" in value and "rejected" in value:
        return "preference"
    if "instruction" in value:
        return "instruction"
    if "prompt" in value and "completion" in value:
        return "completion"
    return None


def normalise(value: Any, fmt: Format) -> tuple[dict[str, Any] | None, list[Issue]]:
    """``value`` in the normalised shape of ``fmt``, or None and every problem found."""
    if not isinstance(value, dict):
        return None, [("wrong_type", f"expected a JSON object, got {_type(value)}")]
    found = detect_record_format(value)
    if found is None:
        keys = ", ".join(cut(str(k)) for k in sorted(map(str, value))[:8]) or "none"
        return None, [
            (
                "unknown_format",
                f"no {fmt} fields (keys: {keys}); a {fmt} record has {EXPECTED_FIELDS[fmt]}",
            )
        ]
    if found != fmt:
        return None, [("wrong_format", f"this is a {found} record but the dataset format is {fmt}")]
    return _NORMALISERS[fmt](value)


def mappings(value: Any) -> list[str]:
    """The mappings reading ``value`` takes: ``sharegpt`` (conversations/from/value read as
    messages/role/content) and ``model-role`` (Gemma's ``model`` role read as ``assistant``)."""
    if not isinstance(value, dict):
        return []
    if "messages" not in value and isinstance(value.get("conversations"), list):
        return ["sharegpt"]
    lists = [value.get(key) for key in ("messages", "prompt", "chosen", "rejected")]
    if any(
        isinstance(m, dict) and _role(m) != m.get("role")
        for messages in lists
        if isinstance(messages, list)
        for m in messages
    ):
        return ["model-role"]
    return []


def _chat(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    field = "messages" if "messages" in value else "conversations"
    messages = value[field]
    if not isinstance(messages, list):
        return None, [
            ("wrong_type", f"'{field}' must be a list of messages, got {_type(messages)}")
        ]
    if not messages:
        return None, [
            ("empty_content", f"'{field}' is empty; add a user message and the assistant's answer")
        ]
    if field == "conversations":
        out, problems = _sharegpt(messages)
    else:
        out, problems = normalise_messages(messages, "messages")
    if problems:
        return None, problems
    return {"messages": out}, []


def _sharegpt(turns: list[Any]) -> tuple[list[dict[str, str]], list[Issue]]:
    """ShareGPT turns as messages; a turn may also use role/content, as some exports do."""
    problems: list[Issue] = []
    out: list[dict[str, str]] = []
    known = ", ".join(SHAREGPT_ROLES)
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(
                ("wrong_type", f"{at} must be an object with from and value, got {_type(turn)}")
            )
            continue
        role_key = "from" if "from" in turn or "role" not in turn else "role"
        text_key = "value" if "value" in turn or "content" not in turn else "content"
        speaker = turn.get(role_key)
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if speaker is None:
            problems.append(("missing_role", f"{at} has no 'from'; use one of {known}"))
        elif not isinstance(speaker, str):
            problems.append(
                ("wrong_type", f"{at}.{role_key} must be a string, got {_type(speaker)}")
            )
        elif role is None:
            problems.append(
                ("unknown_role", f"{at}.{role_key} {shown(speaker)} is not one of {known}")
            )
        content, problem = _text(turn.get(text_key), f"{at}.{text_key}", text_key in turn)
        if problem:
            problems.append(problem)
        if role is not None and content is not None:
            out.append({"role": role, "content": content})
    if problems:
        return out, problems
    return out, _conversation_problems(out)


def normalise_messages(
    messages: list[Any], where: str, *, end_with_assistant: bool = True
) -> tuple[list[dict[str, str]], list[Issue]]:
    """Check and normalise a message list; ``where`` names the field in messages."""
    problems: list[Issue] = []
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            problems.append(
                (
                    "wrong_type",
                    f"{at} must be an object with role and content, got {_type(message)}",
                )
            )
            continue
        role = message.get("role")
        if role is None:
            problems.append(("missing_role", f"{at} has no 'role'; use one of {', '.join(ROLES)}"))
        elif not isinstance(role, str):
            problems.append(("wrong_type", f"{at}.role must be a string, got {_type(role)}"))
        elif role in ROLE_ALIASES:
            role = ROLE_ALIASES[role]
        elif role not in ROLES:
            hint = (
                f" (did you mean {_ROLE_HINTS[role.lower()]!r}?)"
                if role.lower() in _ROLE_HINTS
                else ""
            )
            problems.append(
                ("unknown_role", f"{at}.role {shown(role)} is not one of {', '.join(ROLES)}{hint}")
            )
        content, problem = _text(message.get("content"), f"{at}.content", "content" in message)
        if problem:
            problems.append(problem)
        if isinstance(role, str) and content is not None:
            out.append({"role": role, "content": content})
    if problems or not end_with_assistant:
        return out, problems
    return out, _conversation_problems(out)


def _conversation_problems(messages: list[dict[str, str]]) -> list[Issue]:
    problems: list[Issue] = []
    if messages[-1]["role"] != "assistant":
        problems.append(
            (
                "not_ending_with_assistant",
                f"the conversation ends with a {messages[-1]['role']!r} message; the last message must be the assistant's answer",
            )
        )
    if not any(m["role"] == "user" for m in messages):
        problems.append(("no_user_message", "the conversation has no user message"))
    return problems


def _instruction(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    problems: list[Issue] = []
    instruction, p1 = _text(value.get("instruction"), "instruction", "instruction" in value)
    output, p2 = _text(value.get("output"), "output", "output" in value)
    extra, p3 = _optional_text(value.get("input"), "input")
    system, p4 = _optional_text(value.get("system"), "system")
    problems = [p for p in (p1, p2, p3, p4) if p]
    if problems or instruction is None or output is None:
        return None, problems
    messages = [{"role": "system", "content": system}] if system else []
    user = instruction + ("\n\n" + extra if extra else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}, []


def _completion(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    prompt, p1 = _text(value.get("prompt"), "prompt", True)
    completion, p2 = _text(value.get("completion"), "completion", True)
    problems = [p for p in (p1, p2) if p]
    if problems or prompt is None or completion is None:
        return None, problems
    return {"prompt": prompt, "completion": completion}, []


def _preference(value: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Issue]]:
    if "prompt" not in value:
        return None, [
            (
                "missing_field",
                "no 'prompt'; a preference record has " + EXPECTED_FIELDS["preference"],
            )
        ]
    prompt_messages: list[dict[str, str]] | None = None
    if isinstance(value["prompt"], list) and len(value["prompt"]) > 1:
        prompt_messages, prompt_problems = _prompt_messages(value["prompt"])
        prompt, p1 = (
            ("\n".join(f"{m['role']}: {m['content']}" for m in prompt_messages), None)
            if not prompt_problems
            else (None, prompt_problems[0])
        )
    else:
        prompt, p1 = _flatten(value["prompt"], "prompt", "user")
    chosen, p2 = _flatten(value["chosen"], "chosen", "assistant")
    rejected, p3 = _flatten(value["rejected"], "rejected", "assistant")
    problems = [p for p in (p1, p2, p3) if p]
    if problems or prompt is None or chosen is None or rejected is None:
        return None, problems
    if chosen.strip() == rejected.strip():
        return None, [
            (
                "identical_pair",
                "'chosen' and 'rejected' are the same text; the pair teaches nothing",
            )
        ]
    record: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if prompt_messages is not None:
        record["prompt_messages"] = prompt_messages
    return record, []


def _prompt_messages(value: list[Any]) -> tuple[list[dict[str, str]], list[Issue]]:
    """A preference prompt given as a conversation (system, earlier turns, the last user turn)."""
    messages, problems = normalise_messages(value, "prompt", end_with_assistant=False)
    if not problems and messages[-1]["role"] != "user":
        problems.append(
            (
                "not_ending_with_user",
                f"'prompt' ends with a {messages[-1]['role']!r} message; a preference prompt "
                "ends with the user turn that 'chosen' and 'rejected' answer",
            )
        )
    return messages, problems


def _flatten(value: Any, field: str, role: str) -> tuple[str | None, Issue | None]:
    """A string, or a list holding exactly one ``role`` message, as one string."""
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and _role(value[0]) == role:
            return _text(value[0].get("content"), f"{field}[0].content", "content" in value[0])
        return None, (
            "unsupported_shape",
            f"'{field}' as a list must be exactly one {role} message; flatten longer conversations into strings",
        )
    return _text(value, field, True)


def _text(value: Any, field: str, present: bool) -> tuple[str | None, Issue | None]:
    if not present or value is None:
        return None, ("missing_field", f"'{field}' is missing")
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in value
    ):
        value = "".join(str(p.get("text", "")) for p in value)
    if not isinstance(value, str):
        return None, ("wrong_type", f"'{field}' must be a string, got {_type(value)}")
    if not value.strip():
        return None, ("empty_content", f"'{field}' is empty")
    return value, None


def _optional_text(value: Any, field: str) -> tuple[str | None, Issue | None]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, ("wrong_type", f"'{field}' must be a string, got {_type(value)}")
    return (value if value.strip() else None), None


def _role(message: dict[str, Any]) -> Any:
    """A message's role with aliases read as ours (any value: this runs before type checks)."""
    role = message.get("role")
    return ROLE_ALIASES.get(role, role) if isinstance(role, str) else role


def cut(value: str) -> str:
    """``value`` cut to ``SHOWN_CHARS`` characters, for a message."""
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…"


def shown(value: str) -> str:
    """``value`` quoted for a problem message, cut to ``SHOWN_CHARS`` characters (a hostile file
    may put a megabyte, or a secret, where a role name belongs; messages are redacted later)."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return repr(value[:SHOWN_CHARS]) + f"… ({len(value)} characters)"


def _type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


_NORMALISERS = {
    "chat": _chat,
    "instruction": _instruction,
    "completion": _completion,
    "preference": _preference,
}
assert set(_NORMALISERS) == set(FORMATS)


# --- Text views of normalised records (dedup, scans, leakage) -------------------------------


def text_fields(data: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """``(field path, text)`` of every text in a normalised record."""
    if "messages" in data:
        for i, message in enumerate(data["messages"]):
            yield f"messages[{i}].content", message["content"]
    else:
        for key in ("prompt", "completion", "chosen", "rejected"):
            if key in data:
                yield key, data[key]


def record_text(data: dict[str, Any]) -> str:
    """The whole record as one string, roles included (exact and near dedup compare this)."""
    if "messages" in data:
        return "\n".join(f"{m['role']}: {m['content']}" for m in data["messages"])
    return "\n".join(f"{key}: {text}" for key, text in text_fields(data))


def prompt_text(data: dict[str, Any]) -> str:
    """What the model is asked: every message but the last answer, or the prompt."""
    if "messages" in data:
        return "\n".join(f"{m['role']}: {m['content']}" for m in data["messages"][:-1])
    return str(data["prompt"])


def canonical(text: str) -> str:
    """Case- and whitespace-insensitive form used for exact matches."""
    return _SPACE.sub(" ", text).strip().casefold()
