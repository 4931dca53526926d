"""Token counts and length statistics against ``training.maxLength``.

Counts are what training will see: a chat record is rendered with the tokenizer's chat template
(the template's own BOS included); a completion is prompt + completion + EOS; a preference pair
counts its longer side (prompt + chosen or prompt + rejected). A tokenizer without a chat
template falls back to ``role: content`` lines, which is close but not exact. Records the
template refuses never get here: the data stage rejects them first, at their file:line
(:func:`kubetune_trainer.data.validate.check_roles`); the fallback below only guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kubetune_trainer.data.records import Record

BATCH = 1024


@dataclass(frozen=True)
class TokenStats:
    """Length distribution in tokens, and how many records exceed ``max_length``."""

    count: int
    min: int
    mean: float
    p50: int
    p95: int
    max: int
    max_length: int
    truncated: int

    def to_json(self) -> dict[str, Any]:
        return {("maxLength" if k == "max_length" else k): v for k, v in asdict(self).items()}


def token_stats(counts: Sequence[int], max_length: int) -> TokenStats | None:
    """Statistics of ``counts``; None when there are none."""
    if not counts:
        return None
    values = np.asarray(counts)
    return TokenStats(
        count=len(values),
        min=int(values.min()),
        mean=round(float(values.mean()), 1),
        p50=int(np.percentile(values, 50, method="nearest")),
        p95=int(np.percentile(values, 95, method="nearest")),
        max=int(values.max()),
        max_length=max_length,
        truncated=int((values > max_length).sum()),
    )


def _messages_text(
    messages: list[dict[str, str]], tokenizer: Any, *, generation_prompt: bool = False
) -> str:
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
            if isinstance(text, str):
                return text
        except Exception:  # check_roles rejected such records already; count approximately
            pass
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _encode(texts: list[str], tokenizer: Any, *, special: bool) -> list[int]:
    lengths: list[int] = []
    for i in range(0, len(texts), BATCH):
        ids = tokenizer(texts[i : i + BATCH], add_special_tokens=special)["input_ids"]
        lengths.extend(len(x) for x in ids)
    return lengths


def count_tokens(records: Sequence[Record], tokenizer: Any) -> list[int]:
    """Tokens each record takes in training (see the module docstring)."""
    chat = [i for i, r in enumerate(records) if "messages" in r.data]
    plain = [i for i, r in enumerate(records) if "messages" not in r.data]
    counts = [0] * len(records)
    chat_lengths = _encode(
        [_messages_text(records[i].data["messages"], tokenizer) for i in chat],
        tokenizer,
        special=False,
    )
    for i, n in zip(chat, chat_lengths, strict=True):
        counts[i] = n
    eos = 1 if getattr(tokenizer, "eos_token", None) else 0
    firsts = [
        records[i].data["prompt"]
        + records[i].data.get("completion", records[i].data.get("chosen", ""))
        for i in plain
    ]
    seconds = [records[i].data["prompt"] + records[i].data.get("rejected", "") for i in plain]
    first_lengths = _encode(firsts, tokenizer, special=True)
    second_lengths = _encode(seconds, tokenizer, special=True)
    for i, a, b in zip(plain, first_lengths, second_lengths, strict=True):
        counts[i] = max(a, b) + eos
    return counts


def prompt_token_counts(
    records: Sequence[Record], indices: Sequence[int], tokenizer: Any
) -> dict[int, int]:
    """Tokens of the prompt alone (up to where the answer starts) of ``records[i]`` for each index."""
    texts: list[str] = []
    special: list[bool] = []
    for i in indices:
        data = records[i].data
        if "messages" in data:
            texts.append(_messages_text(data["messages"][:-1], tokenizer, generation_prompt=True))
            special.append(False)
        else:
            texts.append(data["prompt"])
            special.append(True)
    out: dict[int, int] = {}
    for flag in (False, True):
        chosen = [(i, t) for i, t, s in zip(indices, texts, special, strict=True) if s is flag]
        lengths = _encode([t for _, t in chosen], tokenizer, special=flag)
        out.update({i: n for (i, _), n in zip(chosen, lengths, strict=True)})
    return out
