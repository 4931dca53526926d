"""DPO through the chat template, on the supported families' real tokenizers and templates.

Preference records (a prompt as text or as messages with a system prompt, chosen/rejected) reach
trl's DPOTrainer in its conversational shape, so the prompt is rendered with the generation prompt
and each answer as the assistant turn after it: the ids trl trains on are checked against the
template's own rendering, token by token.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from kubetune.api.families import FAMILIES
from kubetune_trainer import tiny_families
from kubetune_trainer.data.formats import normalise
from kubetune_trainer.train.masking import runtime_bos, with_runtime_bos
from kubetune_trainer.train.run import preference_conversations

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RAW: list[dict[str, Any]] = [
    {
        "prompt": [
            {"role": "system", "content": "You review code politely."},
            {"role": "user", "content": "Is `x = x + 1` fine in a loop?"},
        ],
        "chosen": [{"role": "assistant", "content": "Yes; `x += 1` reads a little better."}],
        "rejected": "No.",
    },
    {"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Eight."},
]


def _records(name: str) -> list[dict[str, Any]]:
    raw = RAW[1:] if name == "mistral" else RAW  # Mistral drops a system prompt: refused
    out = []
    for value in raw:
        record, problems = normalise(value, "preference")
        assert record is not None, problems
        out.append(record)
    return out


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_dpo_trains_on_the_ids_the_chat_template_renders(name: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    fam = tiny_families.family(name)
    tokenizer = tiny_families.load_family_tokenizer(fam)
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_families.resolve_family_model(f"tiny-{name}"))
    )
    records = _records(name)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(
            output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, max_length=256
        ),
        train_dataset=Dataset.from_list(preference_conversations(records, tokenizer)),
        processing_class=with_runtime_bos(tokenizer),  # as train_model passes it
    )
    examples: list[dict[str, Any]] = list(trainer.train_dataset)  # type: ignore[arg-type]
    for record, example in zip(records, examples, strict=True):
        prompt = record.get("prompt_messages") or [{"role": "user", "content": record["prompt"]}]
        prompt_text = tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
        # Plus the BOS llama.cpp adds when the template writes none (Phi-3.5), exactly once.
        bos = runtime_bos(tokenizer, prompt_text)
        plain = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert example["prompt_ids"] == bos + plain
        if tokenizer.bos_token_id is not None:
            assert example["prompt_ids"].count(tokenizer.bos_token_id) <= 1
        for key in ("chosen", "rejected"):
            whole = tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": record[key]}], tokenize=False
            )
            assert whole.startswith(prompt_text)
            tail = whole[len(prompt_text) :]
            assert tail.startswith(record[key])  # the answer, then the template's end of turn
            # As the whole conversation tokenizes (SentencePiece would add a "▁" to a tail
            # tokenized alone): the prompt's ids, then exactly the answer's.
            ids = bos + tokenizer(whole, add_special_tokens=False)["input_ids"]
            assert ids[: len(example["prompt_ids"])] == example["prompt_ids"]
            assert example[f"{key}_ids"] == ids[len(example["prompt_ids"]) :]
            assert tokenizer.decode(example[f"{key}_ids"]).startswith(record[key])
            assert tokenizer.eos_token_id in example[f"{key}_ids"] or any(
                t in tokenizer.decode(example[f"{key}_ids"])
                for t in ("<|eot_id|>", "<|im_end|>", "<|end|>", "</s>")
            )


def test_a_conversational_preference_prompt_keeps_its_system_prompt() -> None:
    record, problems = normalise(RAW[0], "preference")
    assert problems == [] and record is not None
    assert record["prompt_messages"][0] == {
        "role": "system",
        "content": "You review code politely.",
    }
    assert "You review code politely." in record["prompt"]  # dedup and scans see it too
    bad, problems = normalise({**RAW[0], "prompt": RAW[0]["prompt"][:1]}, "preference")
    assert bad is None and problems


def test_a_preference_prompt_must_end_with_the_user_turn() -> None:
    value = {**RAW[0], "prompt": [*RAW[0]["prompt"], {"role": "assistant", "content": "Hm."}]}
    record, problems = normalise(value, "preference")
    assert record is None
    assert [code for code, _ in problems] == ["not_ending_with_user"]
