"""Validation: pick the format, normalise every row, and check lengths against maxLength.

Rules (each problem is reported with its file:line; errors drop the record):

- invalid JSON, non-UTF-8 lines, a value that is not an object, wrong field types, missing or
  unknown roles, empty content, a conversation that does not end with the assistant or has no
  user message, chosen == rejected;
- auto format: each record's keys name its format; a dataset whose records name more than one
  format is rejected as a whole (:class:`DataValidationError` listing the lines), since that is
  nearly always two datasets concatenated by mistake. Setting ``dataset.format`` keeps the
  records of that format and drops the others as invalid;
- length (with a tokenizer): more than ``maxLength`` tokens is a warning ("would be truncated",
  the record is kept and counted); more than ``TOO_LONG_FACTOR`` × ``maxLength`` is an error, and
  so is a prompt that alone fills ``maxLength``: truncation would cut the whole answer away, so
  the record would teach nothing;
- roles (:func:`check_roles`, before any model is loaded): two assistant turns in a row; and,
  with a tokenizer that has a chat template, a conversation the template refuses to render
  (Gemma's "System role not supported", Mistral's "roles must alternate") is an error at the
  record's file:line with the template's own message and the fix;
- if more than ``MAX_INVALID_FRACTION`` of the records are invalid, the input is probably the
  wrong file or format, and :func:`check_invalid_share` raises.

A problem message that quotes the data (a role name, a template's error) is redacted like a
scan excerpt: no secret or personal data reaches the report through it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Literal

from kubetune_trainer.data.errors import DataValidationError
from kubetune_trainer.data.formats import (
    EXPECTED_FIELDS,
    SHOWN_CHARS,
    cut,
    detect_record_format,
    mappings,
    normalise,
)
from kubetune_trainer.data.records import Format, Location, Problem, RawRow, Record
from kubetune_trainer.data.scan import redact

TOO_LONG_FACTOR = 4
MAX_INVALID_FRACTION = 0.5
MAX_LISTED = 10


def detect_format(
    rows: list[RawRow], requested: Literal["auto"] | Format, what: str = "dataset"
) -> Format:
    """The dataset's format: ``requested`` unless it is ``auto``, else the one the records name.

    Raises :class:`DataValidationError` when the records name several formats or none.
    """
    if requested != "auto":
        return requested
    lines: dict[Format, list[Location]] = defaultdict(list)
    for row in rows:
        fmt = detect_record_format(row.value) if row.error is None else None
        if fmt is not None:
            lines[fmt].append(row.loc)
    if not lines:
        first = next((row for row in rows if row.error is None), None)
        where = f"; the first record ({first.loc}) has keys {_keys(first.value)}" if first else ""
        expected = "; ".join(f"{fmt}: {fields}" for fmt, fields in EXPECTED_FIELDS.items())
        raise DataValidationError(
            f"{what}: no record has a known format{where}. Expected one of {expected}"
        )
    if len(lines) > 1:
        ranked = sorted(lines.items(), key=lambda item: -len(item[1]))
        major, rest = ranked[0], ranked[1:]
        listed = "; ".join(f"{len(locs)} {fmt} record(s) at {_list(locs)}" for fmt, locs in rest)
        raise DataValidationError(
            f"{what}: mixed formats: {len(major[1])} {major[0]} record(s) (first at {major[1][0]}), and {listed}. "
            f"Use one format per dataset, or set dataset.format: {major[0]} to keep only the {major[0]} "
            "records (the others are then dropped as invalid)"
        )
    return next(iter(lines))


def validate_rows(
    rows: list[RawRow], fmt: Format
) -> tuple[list[Record], list[Problem], dict[str, int]]:
    """Normalise every row; invalid rows are left out and each problem is returned, with how
    many valid records each mapping (:func:`formats.mappings`: ShareGPT, the model role) read."""
    records: list[Record] = []
    problems: list[Problem] = []
    mapped: Counter[str] = Counter()
    for row in rows:
        if row.error is not None:
            code = "invalid_json" if "JSON" in row.error else "unreadable"
            if row.error.startswith("the teacher"):  # kubetune_trainer.distill: no answer
                code = "teacher_failed"
            problems.append(Problem(row.loc, code, row.error))
            continue
        data, issues = normalise(row.value, fmt)
        problems.extend(Problem(row.loc, code, redact(message)) for code, message in issues)
        if data is not None and not issues:
            records.append(Record(row.loc, data))
            mapped.update(mappings(row.value))
    return records, problems, dict(mapped)


def check_roles(records: list[Record], tokenizer: Any | None) -> tuple[list[Record], list[Problem]]:
    """Split chat ``records`` into kept and rejected by their roles: two assistant turns in a
    row, or (when ``tokenizer`` has a chat template) a conversation the template cannot render.

    Each record is rendered once, as training will render it; the template's own error message
    is kept, with the fix.
    """
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    name = str(getattr(tokenizer, "name_or_path", "") or "the tokenizer")
    kept: list[Record] = []
    problems: list[Problem] = []
    for record in records:
        messages = record.data.get("messages")
        if messages is None and "prompt_messages" in record.data:
            # A conversational preference prompt is rendered with its answer, like a chat.
            answer = {"role": "assistant", "content": record.data["chosen"]}
            messages = [*record.data["prompt_messages"], answer]
        problem = None
        if messages is not None:
            problem = (_template_problem(messages, tokenizer, name) if template else None) or (
                _repeated_assistant(messages)
            )
        if problem is None:
            kept.append(record)
        else:
            problems.append(Problem(record.loc, problem[0], redact(problem[1])))
    return kept, problems


def _template_problem(
    messages: list[dict[str, str]], tokenizer: Any, name: str
) -> tuple[str, str] | None:
    from kubetune_trainer.train.masking import ChatMaskError, check_answers_located

    try:
        check_answers_located(messages, tokenizer)  # renders it, and finds each answer in it
    except ChatMaskError as exc:
        return ("template_moves_messages", f"the chat template of {name}: {exc}")
    except Exception as exc:  # jinja2's TemplateError from raise_exception(), or any render error
        said = " ".join(str(exc).split()) or type(exc).__name__
        if len(said) > 4 * SHOWN_CHARS:
            said = said[: 4 * SHOWN_CHARS] + "…"
        roles = "/".join(m["role"] for m in messages[:8]) + ("/…" if len(messages) > 8 else "")
        return (
            "template_rejects_roles",
            f"the chat template of {name} cannot render this conversation ({roles}): {said}; "
            f"{_template_hint(said)}",
        )
    return None


def _template_hint(said: str) -> str:
    low = said.lower()
    if "alternate" in low:
        return (
            "merge consecutive turns of the same role so that user and assistant alternate, "
            "starting with the user (fold a system prompt into the first user turn if the "
            "template has no system role)"
        )
    if "system" in low:
        return "this template has no system role: fold the system prompt into the first user turn"
    if "role" in low:
        return "use only the roles this template knows (usually system, user and assistant)"
    return "fix the record so that the template can render it, or pick a base model whose template fits the data"


def _repeated_assistant(messages: list[dict[str, str]]) -> tuple[str, str] | None:
    for i in range(1, len(messages)):
        if messages[i - 1]["role"] == messages[i]["role"] == "assistant":
            return (
                "consecutive_assistant_turns",
                f"messages[{i - 1}] and messages[{i}] are both assistant turns; merge them into one "
                "answer (the model would learn to end its turn and then answer again)",
            )
    return None


def check_lengths(
    records: list[Record], prompt_tokens: dict[int, int], max_length: int
) -> tuple[list[Record], list[Problem]]:
    """Split ``records`` (whose ``tokens`` are set) into kept and rejected by length.

    ``prompt_tokens`` maps a record's index to the length of its prompt alone (computed only for
    records over ``max_length``).
    """
    kept: list[Record] = []
    problems: list[Problem] = []
    for i, record in enumerate(records):
        n = record.tokens
        if n is None or n <= max_length:
            kept.append(record)
            continue
        prompt = prompt_tokens.get(i)
        if n > TOO_LONG_FACTOR * max_length:
            problems.append(
                Problem(
                    record.loc,
                    "too_long",
                    f"{n} tokens, more than {TOO_LONG_FACTOR} × training.maxLength ({max_length}): shorten or split "
                    "the example, or raise training.maxLength",
                )
            )
        elif prompt is not None and prompt >= max_length:
            problems.append(
                Problem(
                    record.loc,
                    "answer_truncated_away",
                    f"the prompt alone is {prompt} tokens ≥ training.maxLength ({max_length}), so truncation would "
                    "remove the whole answer: shorten the prompt or raise training.maxLength",
                )
            )
        else:
            problems.append(
                Problem(
                    record.loc,
                    "over_length",
                    f"{n} tokens > training.maxLength ({max_length}): would be truncated",
                    severity="warning",
                )
            )
            kept.append(record)
    return kept, problems


def check_invalid_share(total: int, problems: list[Problem], what: str = "dataset") -> None:
    """Raise when most records are invalid: the file or the format is probably wrong."""
    invalid = {p.loc for p in problems if p.severity == "error"}
    if total and len(invalid) / total > MAX_INVALID_FRACTION:
        by_code = Counter(p.code for p in problems if p.severity == "error")
        first = next(p for p in problems if p.severity == "error")
        codes = ", ".join(f"{code}: {n}" for code, n in by_code.most_common(5))
        raise DataValidationError(
            f"{what}: {len(invalid)} of {total} records are invalid ({codes}); first: {first}. "
            "Check that the source is the right file and dataset.format the right format "
            "(every problem is listed in data/report.json)"
        )


def _list(locs: list[Location]) -> str:
    shown = ", ".join(str(loc) for loc in locs[:MAX_LISTED])
    return shown + (f" and {len(locs) - MAX_LISTED} more" if len(locs) > MAX_LISTED else "")


def _keys(value: object) -> str:
    if isinstance(value, dict):
        return redact("[" + ", ".join(cut(k) for k in sorted(map(str, value))[:8]) + "]")
    return f"(not an object: {type(value).__name__})"
