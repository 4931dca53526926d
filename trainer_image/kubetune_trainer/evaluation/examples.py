"""Turn normalised data records into evaluation examples: what the model is asked, and the
answer it is measured against.

The data stage writes three record shapes (see `kubetune_trainer.data`):

- chat / instruction: `{"messages": [...]}` -> the conversation up to the last assistant turn is
  the prompt; that turn's content is the reference;
- completion: `{"prompt": str, "completion": str}` -> prompt / completion;
- preference: `{"prompt": str, "chosen": str, "rejected": str}` -> prompt / chosen.

A string prompt stays raw text (no chat template), as TRL's trainers treat non-conversational
records; a prompt given as a list of messages is rendered with the chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class EvalExample:
    """One evaluation example: a chat prompt (`messages`) or a raw-text prompt (`text`)."""

    messages: list[Message] | None
    """Conversation to render with the chat template (`add_generation_prompt=True`)."""
    text: str | None
    """Raw prompt text, used as it is."""
    reference: str
    """The answer the model's answer is measured against."""

    def prompt_for_display(self) -> str:
        """The prompt as plain text, for the judge and for predictions.jsonl."""
        if self.messages is None:
            return self.text or ""
        if len(self.messages) == 1 and self.messages[0].get("role") == "user":
            return self.messages[0].get("content", "")
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in self.messages)


class UnsupportedRecord(ValueError):
    """A record with no usable prompt and reference."""


def _content(value: Any) -> str:
    """Text of a completion given either as a string or as a list of messages (TRL's
    conversational form): the last assistant message's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return str(message.get("content", ""))
    raise UnsupportedRecord(f"expected a string or a list of messages, got {type(value).__name__}")


def _prompt(value: Any) -> tuple[list[Message] | None, str | None]:
    if isinstance(value, str):
        return None, value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [
            {"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
            for m in value
        ], None
    raise UnsupportedRecord(
        f"prompt must be a string or a list of messages, got {type(value).__name__}"
    )


def to_eval_example(record: dict[str, Any]) -> EvalExample:
    """The (prompt, reference) pair of one normalised record; raises UnsupportedRecord."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise UnsupportedRecord("messages must be a list")
        last = max(
            (
                i
                for i, m in enumerate(messages)
                if isinstance(m, dict) and m.get("role") == "assistant"
            ),
            default=None,
        )
        if last is None or last == 0:
            raise UnsupportedRecord("a chat record needs a prompt and an assistant answer")
        prompt, _ = _prompt(messages[:last])
        return EvalExample(
            messages=prompt, text=None, reference=str(messages[last].get("content", ""))
        )
    if "prompt" in record and "completion" in record:
        msgs, text = _prompt(record["prompt"])
        return EvalExample(messages=msgs, text=text, reference=_content(record["completion"]))
    if "prompt" in record and "chosen" in record:
        msgs, text = _prompt(record.get("prompt_messages") or record["prompt"])
        return EvalExample(messages=msgs, text=text, reference=_content(record["chosen"]))
    raise UnsupportedRecord(f"unknown record shape with keys {sorted(record)}")


def to_eval_examples(
    records: list[dict[str, Any]], limit: int | None = None
) -> tuple[list[EvalExample], int]:
    """Examples of the first `limit` usable records, and how many records were skipped."""
    examples: list[EvalExample] = []
    skipped = 0
    for record in records:
        if limit is not None and len(examples) >= limit:
            break
        try:
            examples.append(to_eval_example(record))
        except UnsupportedRecord:
            skipped += 1
    return examples, skipped
