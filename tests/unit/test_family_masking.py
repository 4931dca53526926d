"""Assistant-only loss on the supported families' stock templates, token by token.

For every family (real tokenizer, stock template without {% generation %} markers) exactly the
assistant's content and its end-of-turn token carry labels; the template preamble, the system
and user turns, the generation prompt and what follows the end of turn do not.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.families import FAMILIES
from kubetune_trainer import tiny_families
from kubetune_trainer.train.masking import ChatMaskError, tokenize_chat

CONVERSATION = [
    {"role": "system", "content": "You are a support agent for Acme."},
    {"role": "user", "content": "Where is order 1234?"},
    {"role": "assistant", "content": "It ships tomorrow from Lyon."},
    {"role": "user", "content": "Can I change the address?"},
    {"role": "assistant", "content": "Yes: reply with the new address before 6 pm."},
]
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "phi3": "<|end|>", "mistral": "</s>"}


def _tokenizer(name: str) -> Any:
    return tiny_families.load_family_tokenizer(tiny_families.family(name))


def _labelled_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    current: list[int] = []
    for token, bit in zip(ids, mask, strict=True):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_exactly_the_answers_and_their_end_of_turn_carry_labels(name: str) -> None:
    tokenizer = _tokenizer(name)
    # Mistral writes a system prompt only into the last user turn: train it without one.
    conversation = CONVERSATION[1:] if name == "mistral" else CONVERSATION
    out = tokenize_chat(conversation, tokenizer)
    ids, mask = out["input_ids"], out["assistant_masks"]
    # The ids are the template's rendering, tokenized as the runtime sees it (BOS once).
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    plain = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[-len(plain) :] == plain
    assert ids.count(tokenizer.bos_token_id) <= 1 if tokenizer.bos_token_id is not None else True
    runs = _labelled_runs(ids, mask)
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in runs] == [a + END_OF_TURN[name] for a in answers]
    # Token by token: a labelled token is an answer token or the end of turn right after one.
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    assert sum(mask) == sum(len(r) for r in runs)
    assert all(run[-1] == eot for run in runs)
    for message in conversation:
        if message["role"] != "assistant":
            text_ids = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
            assert not any(run[: len(text_ids)] == text_ids for run in runs)


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_generation_prompt_and_preamble_carry_no_label(name: str) -> None:
    tokenizer = _tokenizer(name)
    conversation = CONVERSATION[1:3]
    out = tokenize_chat(conversation, tokenizer)
    prompt = tokenizer.apply_chat_template(
        conversation[:1], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    offset = len(out["input_ids"]) - len(
        tokenizer(
            tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False
        )["input_ids"]
    )  # a BOS the runtime adds
    assert out["assistant_masks"][: offset + n_prompt] == [0] * (offset + n_prompt)
    assert out["assistant_masks"][offset + n_prompt] == 1


def test_phi35_gets_the_bos_llama_cpp_adds_and_no_label_on_the_closing_eos() -> None:
    tokenizer = _tokenizer("phi3")
    out = tokenize_chat(CONVERSATION[1:3], tokenizer)
    assert (
        out["input_ids"][0] == tokenizer.bos_token_id
    )  # the template writes none; llama.cpp adds it
    assert out["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert out["assistant_masks"][-1] == 0


def test_a_system_prompt_mistral_would_drop_is_refused() -> None:
    with pytest.raises(ChatMaskError, match=r"messages\[2\].*Mistral"):
        tokenize_chat(CONVERSATION, _tokenizer("mistral"))
