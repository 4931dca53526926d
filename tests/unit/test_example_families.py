"""README's real-model examples pass the pre-training checks of their families, on the families'
real tokenizers and stock templates: the architecture is supported, and the chat template
becomes an Ollama TEMPLATE that reproduces training (what the trainer checks before the GPU is
spent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.families import family_for_hub_name
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer import tiny_families
from kubetune_trainer.data.formats import normalise
from kubetune_trainer.data.records import Location, Record
from kubetune_trainer.data.validate import check_roles
from kubetune_trainer.export.chat_format import render_like_ollama
from kubetune_trainer.model_support import chat_format_for_export
from kubetune_trainer.train.masking import check_answers_located
from kubetune_trainer.train.run import preference_conversations

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("example", "family"),
    [("finetune-llama-8b.yaml", "llama3"), ("dpo-preference.yaml", "qwen2")],
)
def test_example_passes_the_template_check_of_its_family(example: str, family: str) -> None:
    spec = FineTuneJobSpec.model_validate(yaml.safe_load((EXAMPLES / example).read_text())["spec"])
    found = family_for_hub_name(spec.base_model.uri.split("://", 1)[1])
    assert found is not None and found.name == family
    tokenizer = tiny_families.load_family_tokenizer(found)
    fmt = chat_format_for_export(tokenizer, spec.export.ollama)
    chat = [{"role": "user", "content": "Ticket: my parcel was damaged."}]
    served = fmt.bos_stripped + render_like_ollama(fmt, chat)
    assert served == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_dpo_example_data_renders_through_qwen_template() -> None:
    """Every pair, as DPO sees it: the prompt in Qwen's template (its default system prompt
    included) with each answer as the assistant turn after it, locatable for the loss."""
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family("qwen2"))
    records = []
    for line, text in enumerate(
        (EXAMPLES / "data" / "preference.jsonl").read_text().splitlines(), 1
    ):
        data, issues = normalise(yaml.safe_load(text), "preference")
        assert data is not None, issues
        records.append(Record(Location("preference.jsonl", line), data))
    kept, problems = check_roles(records, tokenizer)
    assert problems == [] and len(kept) == len(records)
    for pair in preference_conversations([r.data for r in records], tokenizer):
        for key in ("chosen", "rejected"):
            check_answers_located([*pair["prompt"], *pair[key]], tokenizer)
        prompt = tokenizer.apply_chat_template(
            pair["prompt"], tokenize=False, add_generation_prompt=True
        )
        assert prompt.startswith("<|im_start|>system\nYou are Qwen")
