"""Every supported family end to end, with its real tokenizer and stock chat template.

builtin://tiny-<family> is a random-weight model of the family's architecture carrying the
family's real tokenizer and template (kubetune_trainer.tiny_families). Each runs the whole
pipeline as a FineTuneJob's pod does: data -> LoRA SFT on chat data (assistant-only loss from
the stock template) -> evaluation -> merge -> GGUF by llama.cpp's converter -> q4_k_m ->
verification -> Modelfile. Then the exported files are read back: llama.cpp's converter must
have recognised the real pre-tokenizer, and llama.cpp must tokenize the served prompt into the
very ids training used.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.families import FAMILIES
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer import tiny_families
from kubetune_trainer.export.chat_format import chat_format_from_tokenizer, ollama_template
from kubetune_trainer.pipeline import run_pipeline
from kubetune_trainer.train.masking import tokenize_chat

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# What llama.cpp's converter must write for each real vocabulary (tokenizer.ggml.model / .pre).
EXPECTED_VOCAB = {
    "llama3": ("gpt2", "llama-bpe"),
    "qwen2": ("gpt2", "qwen2"),
    "phi3": ("llama", None),
    "mistral": ("llama", None),
}
TOPICS = ["billing", "shipping", "returns", "login", "refund", "warranty"]


def chat_records(n: int, *, system: bool, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        messages = [{"role": "system", "content": "You route support tickets."}] if system else []
        messages += [
            {"role": "user", "content": f"Ticket {i}: my {topic} question, où est ma commande ?"},
            {"role": "assistant", "content": f"Route to the {topic} team."},
        ]
        records.append({"messages": messages})
    return records


def family_spec(name: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": f"builtin://tiny-{name}"},
            "method": "lora",
            "dataset": {"source": {"uri": "file://data.jsonl"}, "format": "chat"},
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "maxSteps": 3,
                "batchSize": 2,
                "gradientAccumulationSteps": 1,
                "evalSteps": 3,
                "learningRate": 2e-3,
                "maxLength": 96,
            },
            "evaluation": {
                "metrics": ["exact_match", "rouge_l"],
                "maxExamples": 4,
                "maxNewTokens": 8,
                # Random weights: the gate's thresholds would measure noise. Parity is what
                # this test checks; agreement of q4_k_m is reported, not enforced here.
                "gate": {
                    "requireImprovementOverBase": False,
                    "minRougeL": 0.0,
                    "minQuantizedAgreement": 0.0,
                },
            },
            "export": {"gguf": ["f16", "q4_k_m"]},
            "resources": {"gpus": 0},
        }
    )


@pytest.fixture(scope="module", params=[f.name for f in FAMILIES])
def family_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, TrainerResult, Path]:
    name: str = request.param
    root = tmp_path_factory.mktemp(name)
    # Mistral's template drops a system prompt from every training conversation (it writes it
    # into the last user turn only): such records are refused, so its data has none.
    records = chat_records(24, system=name != "mistral")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_pipeline(family_spec(name), root / "run", base_dir=root)
    return name, result, root / "run"


def test_family_trains_evaluates_and_exports(family_run: tuple[str, TrainerResult, Path]) -> None:
    name, result, _ = family_run
    assert result.phase == "Succeeded", f"{name}: {result.reason}: {result.message}"
    assert result.training is not None and result.training.steps == 3
    names = {a.name for a in result.artifacts}
    assert {"model-f16.gguf", "model-q4_k_m.gguf", "manifest.json"} <= names


def test_llama_cpp_recognises_the_real_pre_tokenizer(
    family_run: tuple[str, TrainerResult, Path],
) -> None:
    from gguf import GGUFReader

    name, _, workdir = family_run
    reader = GGUFReader(str(workdir / "export" / "model-f16.gguf"))

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else bytes(field.parts[-1]).decode()

    model, pre = EXPECTED_VOCAB[name]
    assert text("tokenizer.ggml.model") == model
    if pre is not None:
        assert text("tokenizer.ggml.pre") == pre  # not the "unknown pre-tokenizer" fallback
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family(name))
    assert len(reader.fields["tokenizer.ggml.tokens"].data) >= len(tokenizer.get_vocab()) - 1


def test_llama_cpp_tokenizes_served_prompts_into_the_trained_ids(
    family_run: tuple[str, TrainerResult, Path],
) -> None:
    """The Modelfile's rendering of a chat, tokenized by llama.cpp from the exported GGUF (BOS
    added as the runtime does), equals the ids training used for the same conversation."""
    import llama_cpp

    name, _, workdir = family_run
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family(name))
    fmt = chat_format_from_tokenizer(tokenizer)
    conversation = chat_records(1, system=name != "mistral", seed=7)[0]["messages"]
    trained = tokenize_chat(conversation, tokenizer)["input_ids"]
    llm = llama_cpp.Llama(
        model_path=str(workdir / "export" / "model-f16.gguf"), vocab_only=True, verbose=False
    )
    from kubetune_trainer.export.chat_format import render_like_ollama

    prompt = render_like_ollama(fmt, conversation[:-1])
    served = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    assert trained[: len(served)] == served


def test_modelfile_carries_the_template_and_system_of_the_family(
    family_run: tuple[str, TrainerResult, Path],
) -> None:
    name, _, workdir = family_run
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family(name))
    fmt = chat_format_from_tokenizer(tokenizer)
    text = (workdir / "export" / "q4_k_m.Modelfile").read_text()
    assert f'TEMPLATE """{ollama_template(fmt)}"""' in text
    assert ('SYSTEM """' in text) == bool(fmt.default_system)
    manifest = json.loads((workdir / "export" / "manifest.json").read_text())
    assert "q4_k_m" in json.dumps(manifest)
