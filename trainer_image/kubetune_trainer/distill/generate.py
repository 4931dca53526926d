"""What the teacher writes: answers to the dataset's prompts, and synthetic examples.

:func:`distill_rows` (``objective: distill``) turns every raw row into the same row with the
teacher's answer, before validation: a chat record keeps its turns up to the last user turn
(later assistant turns are replaced), an instruction record keeps ``instruction``/``input``/
``system`` and gets ``output``, a prompt record (``prompt``, with or without ``completion``) gets
``completion``. Each row keeps its file:line, so the data report names the prompt whose answer
validation rejected. A row with no prompt is left as it is (validation says why); a prompt the
teacher did not answer becomes an unreadable row naming the teacher's error.

:func:`augment_rows` (``dataset.augment``) asks, for each seed (a normalised training record),
``perExample`` times for a new question in the seed's style with :data:`AUGMENT_PROMPT`, then
asks the new question as a prompt of its own (with the seed's system message, if any). Each
synthetic row is flagged ``"synthetic": true`` and located at
``<source>#synthetic:<seed line>`` so the report tells it from the user's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.data.formats import SHAREGPT_ROLES
from kubetune_trainer.data.records import Location, RawRow
from kubetune_trainer.distill.teacher import Messages, TeacherClient

AUGMENT_PROMPT = (
    "Here is one example of a task, a request and its answer.\n\n"
    "Request:\n{question}\n\n"
    "Answer:\n{answer}\n\n"
    "Write one new request of the same kind, in the same style and of the same difficulty, "
    "about a different specific case (variation {variant} of {count}). Reply with the new "
    "request only: no answer, no preamble, no quotes."
)
"""The request for a new question in the style of a seed example ({variant} makes each of a
seed's ``perExample`` requests distinct, so each gets its own cached answer)."""

SYNTHETIC_MARK = "#synthetic"


@dataclass
class TeacherStats:
    """What the teacher was asked for one dataset."""

    answered: int = 0
    failed: int = 0
    teacher_locations: set[Location] = field(default_factory=set)
    """Rows that carry a teacher's answer (for the count of those validation rejects)."""
    seconds: list[float] = field(default_factory=list)
    """Wall time of each answer (cached ones carry their original time)."""


def prompt_of(value: Any) -> tuple[Messages, str] | None:
    """(the conversation to send, the row's shape) of a raw record, or None without a prompt.
    Shapes: ``chat``, ``instruction``, ``completion``."""
    if not isinstance(value, dict):
        return None
    if "messages" in value or "conversations" in value:
        turns = _chat_turns(value)
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        if not turns or turns[-1]["role"] != "user":
            return None
        return turns, "chat"
    if isinstance(value.get("instruction"), str) and value["instruction"].strip():
        user = value["instruction"]
        if isinstance(value.get("input"), str) and value["input"].strip():
            user = f"{user}\n\n{value['input']}"
        system = value.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return [*head, {"role": "user", "content": user}], "instruction"
    if isinstance(value.get("prompt"), str) and value["prompt"].strip():
        return [{"role": "user", "content": value["prompt"]}], "completion"
    return None


def answered_row(
    value: dict[str, Any], messages: Messages, shape: str, answer: str
) -> dict[str, Any]:
    """The raw record `value` with `answer` as its answer, in its own shape."""
    if shape == "chat":
        return {"messages": [*messages, {"role": "assistant", "content": answer}]}
    if shape == "instruction":
        kept: dict[str, Any] = {
            k: value[k] for k in ("instruction", "input", "system") if k in value
        }
        return {**kept, "output": answer}
    return {"prompt": value["prompt"], "completion": answer}


def distill_rows(teacher: TeacherClient, rows: list[RawRow]) -> tuple[list[RawRow], TeacherStats]:
    """`rows` with the teacher's answers (see the module's docstring)."""
    stats = TeacherStats()
    asked: list[tuple[int, Messages, str]] = []
    for i, row in enumerate(rows):
        found = prompt_of(row.value) if row.error is None else None
        if found is not None:
            asked.append((i, *found))
    answers = teacher.ask_all([messages for _, messages, _ in asked])
    out = list(rows)
    for (i, messages, shape), answer in zip(asked, answers, strict=True):
        row = rows[i]
        if answer.text is None:
            stats.failed += 1
            out[i] = RawRow(row.loc, error=f"the teacher gave no answer: {answer.error}")
            continue
        stats.answered += 1
        stats.seconds.append(answer.seconds)
        stats.teacher_locations.add(row.loc)
        out[i] = RawRow(row.loc, answered_row(row.value, messages, shape, answer.text))
    return out, stats


def augment_rows(
    teacher: TeacherClient, seeds: list[tuple[Location, dict[str, Any]]], per_example: int
) -> tuple[list[RawRow], TeacherStats]:
    """`per_example` synthetic rows per seed (normalised records with their locations), in the
    seed's normalised shape, flagged ``synthetic: true``."""
    stats = TeacherStats()
    plans: list[tuple[Location, dict[str, Any], Messages, int]] = []
    for loc, data in seeds:
        question, seed_answer, _ = _seed_parts(data)
        if question is None:
            continue
        for variant in range(1, per_example + 1):
            ask = AUGMENT_PROMPT.format(
                question=question, answer=seed_answer, variant=variant, count=per_example
            )
            plans.append((loc, data, [{"role": "user", "content": ask}], variant))
    questions = teacher.ask_all([messages for *_, messages, _ in plans])
    second: list[tuple[Location, dict[str, Any], Messages]] = []
    rows: list[RawRow] = []
    for (loc, data, _, variant), reply in zip(plans, questions, strict=True):
        where = Location(f"{loc.source}{SYNTHETIC_MARK}:{loc.line}", variant)
        new = (reply.text or "").strip()
        if reply.text is None or not new:
            stats.failed += 1
            reason = reply.error or "an empty request"
            rows.append(RawRow(where, error=f"the teacher wrote no new request: {reason}"))
            continue
        _, _, system = _seed_parts(data)
        head = [{"role": "system", "content": system}] if system else []
        second.append((where, data, [*head, {"role": "user", "content": new}]))
    answers = teacher.ask_all([messages for *_, messages in second])
    for (where, data, messages), answer in zip(second, answers, strict=True):
        if answer.text is None:
            stats.failed += 1
            rows.append(RawRow(where, error=f"the teacher gave no answer: {answer.error}"))
            continue
        stats.answered += 1
        stats.seconds.append(answer.seconds)
        stats.teacher_locations.add(where)
        if "messages" in data:
            value: dict[str, Any] = {
                "messages": [*messages, {"role": "assistant", "content": answer.text}]
            }
        else:
            value = {"prompt": messages[-1]["content"], "completion": answer.text}
        rows.append(RawRow(where, {**value, "synthetic": True}))
    return rows, stats


def _seed_parts(data: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """(last user turn, the answer after it, the system message) of a normalised record."""
    if "messages" in data:
        turns = data["messages"]
        system = next((t["content"] for t in turns if t["role"] == "system"), None)
        users = [i for i, t in enumerate(turns) if t["role"] == "user"]
        if not users:
            return None, "", system
        last = users[-1]
        answer = next((t["content"] for t in turns[last + 1 :] if t["role"] == "assistant"), "")
        return turns[last]["content"], answer, system
    if "prompt" in data and "completion" in data:
        return str(data["prompt"]), str(data["completion"]), None
    return None, "", None


def _chat_turns(value: dict[str, Any]) -> Messages:
    if isinstance(value.get("messages"), list):
        items, role_key, content_key, roles = value["messages"], "role", "content", None
    elif isinstance(value.get("conversations"), list):
        items, role_key, content_key, roles = (
            value["conversations"],
            "from",
            "value",
            SHAREGPT_ROLES,
        )
    else:
        return []
    turns: Messages = []
    for item in items:
        if not isinstance(item, dict):
            return []
        role, content = item.get(role_key), item.get(content_key)
        if not isinstance(role, str) or not isinstance(content, str):
            return []
        role = roles.get(role.lower(), role) if roles is not None else role
        turns.append({"role": "assistant" if role == "model" else role, "content": content})
    return turns
