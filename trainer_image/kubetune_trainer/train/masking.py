"""Assistant-only loss on stock chat templates: token ids and an assistant mask, computed here.

trl's ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template, and no
stock template has them (Llama 3.1, Qwen 2.5, Phi-3.5, Mistral, Gemma): the mask comes back all
zeros, or trl swaps in a template of its own that is not the one the model is served with. So
the spans are computed from the model's own template by rendering and comparing:

1. the whole conversation is rendered once (``add_generation_prompt=False``) and tokenized once,
   with character offsets, exactly as the model will see it (plus BOS when the runtime adds one
   and the template does not write it: llama.cpp and Ollama do, so training does too);
2. for each assistant message, the conversation before it is rendered with the generation
   prompt; that text must be a prefix of the whole rendering (else the template moves or drops
   something depending on what follows, e.g. Mistral's system prompt, and the record is
   refused), and the answer's content must follow it verbatim (or trimmed, for templates that
   trim);
3. tokens inside the answer's content get mask 1, and so does the token right after it when it
   is a special token: the end-of-turn token the model must learn to emit to stop. The template
   preamble, system and user turns, the generation prompt and whatever follows the end of turn
   (a newline, a closing EOS) get 0.

The result feeds trl's SFTTrainer as a processed dataset (``input_ids`` + ``assistant_masks``):
trl builds ``labels`` with -100 where the mask is 0 and tokenizes nothing again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Message = Mapping[str, str]


class ChatMaskError(ValueError):
    """A conversation whose assistant answers cannot be located in the template's rendering."""


def special_token_ids(tokenizer: Any) -> set[int]:
    """Every special token id: named ones and added tokens flagged special (``<|eot_id|>``, …)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    return ids


def runtime_bos(tokenizer: Any, text: str) -> list[int]:
    """``[bos_id]`` when encoding adds BOS and the rendered ``text`` does not already start with it."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    adds = bool(ids) and ids[0] == tokenizer.bos_token_id
    return [tokenizer.bos_token_id] if adds and not text.startswith(bos) else []


def with_runtime_bos(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy whose chat template writes the BOS the runtime adds.

    For trainers that tokenize conversations themselves (trl's DPO): llama.cpp and Ollama
    prepend BOS when the tokenizer adds one (Phi-3.5), but ``apply_chat_template`` only writes
    what the template says, so without this DPO would train without the BOS it is served with.
    The copy is for training only; the saved tokenizer keeps the stock template.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return tokenizer
    probe = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True
        )
    )
    if not runtime_bos(tokenizer, probe):
        return tokenizer
    import copy

    training = copy.deepcopy(tokenizer)
    training.chat_template = "{{- bos_token }}" + template
    return training


def tokenize_chat(
    messages: Sequence[Message], tokenizer: Any, *, specials: set[int] | None = None
) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` of ``messages`` under the tokenizer's chat template.

    Raises :class:`ChatMaskError` naming the message when an answer cannot be located.
    """
    msgs = [dict(m) for m in messages]
    text = str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    bos = runtime_bos(tokenizer, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
    mask = [0] * len(ids)
    specials = special_token_ids(tokenizer) if specials is None else specials
    for index, message in enumerate(msgs):
        if message["role"] != "assistant":
            continue
        start, end = _answer_span(tokenizer, msgs, index, text)
        inside = [j for j, (a, b) in enumerate(offsets) if a < end and b > start]
        if not inside:
            raise ChatMaskError(f"messages[{index}]: the answer renders as no tokens")
        for j in inside:
            mask[j] = 1
        after = inside[-1] + 1
        if after < len(ids) and ids[after] in specials and offsets[after][0] >= end:
            mask[after] = 1  # the end-of-turn token: the model learns to stop
    return {"input_ids": bos + ids, "assistant_masks": [0] * len(bos) + mask}


def check_answers_located(messages: Sequence[Message], tokenizer: Any) -> None:
    """Raise :class:`ChatMaskError` when an answer of ``messages`` cannot be masked.

    What :func:`tokenize_chat` checks, without tokenizing: run at data preparation so the
    record is reported at its file:line before any model is loaded.
    """
    msgs = [dict(m) for m in messages]
    text = str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    for index, message in enumerate(msgs):
        if message["role"] == "assistant":
            _answer_span(tokenizer, msgs, index, text)


def _answer_span(
    tokenizer: Any, msgs: list[dict[str, str]], index: int, text: str
) -> tuple[int, int]:
    """Character span of ``msgs[index]``'s content in ``text`` (the whole rendering)."""
    before = str(
        tokenizer.apply_chat_template(msgs[:index], tokenize=False, add_generation_prompt=True)
    )
    if not text.startswith(before):
        raise ChatMaskError(
            f"messages[{index}]: the chat template renders the conversation before this answer "
            "differently once the answer follows it (it moves or drops a message depending on "
            "what comes after, as Mistral's template does with a system message, which it only "
            "writes into the last user turn); remove that message from the training data or "
            "fold it into the first user message"
        )
    start = len(before)
    content = msgs[index]["content"]
    for candidate in (content, content.strip()):
        if candidate and text.startswith(candidate, start):
            return start, start + len(candidate)
    raise ChatMaskError(
        f"messages[{index}]: the chat template does not write the answer verbatim after the "
        f"generation prompt (found {text[start : start + 40]!r})"
    )


def tokenize_chat_records(
    records: Sequence[Mapping[str, Any]], tokenizer: Any
) -> list[dict[str, list[int]]]:
    """:func:`tokenize_chat` for each ``{"messages": […]}`` record."""
    specials = special_token_ids(tokenizer)
    return [tokenize_chat(r["messages"], tokenizer, specials=specials) for r in records]
