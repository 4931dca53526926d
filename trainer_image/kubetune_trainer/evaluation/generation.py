"""Load the base and the fine-tuned model, render prompts, and generate answers greedily.

The fine-tuned model is the base plus a PEFT adapter (one model in memory: the base is the same
weights with the adapter disabled) or a full model folder (the two are loaded one after the
other, never together). Everything is loaded with `local_files_only=True`: evaluation never
downloads from a hub.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.evaluation.examples import EvalExample

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

FINE_TUNED = "fine_tuned"
BASE = "base"


def _dtype(device: str) -> torch.dtype:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def is_adapter_dir(path: Path) -> bool:
    """Whether `path` holds a PEFT adapter (rather than a full model)."""
    return (path / "adapter_config.json").is_file()


def load_tokenizer(model_dir: Path, adapter_dir: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the fine-tuned model when there is one (training may have set its
    chat template or pad token), else the base model's; used for both models so they see the
    same prompts."""
    from transformers import AutoTokenizer

    source = (
        adapter_dir
        if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
        else model_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = (
            tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        )
    return tokenizer


def _load_model(path: Path, device: str) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=_dtype(device), local_files_only=True
    )
    model.to(device)
    model.eval()
    loaded: PreTrainedModel = model
    return loaded


def iter_models(
    model_dir: Path, adapter_dir: Path | None, device: str, want_base: bool
) -> Iterator[tuple[str, Any]]:
    """Yield the models to evaluate as (role, model): the fine-tuned model first, then the base
    when `want_base`. Consume each before asking for the next: with an adapter the base is the
    same object with the adapter disabled until the iterator moves on.

    Without `adapter_dir` the model in `model_dir` is the only one, evaluated as the fine-tuned
    model (there is no base to compare with)."""
    if adapter_dir is None:
        yield FINE_TUNED, _load_model(model_dir, device)
        return
    if is_adapter_dir(adapter_dir):
        from peft import PeftModel

        model: Any = PeftModel.from_pretrained(
            _load_model(model_dir, device), str(adapter_dir), is_trainable=False
        )
        model.eval()
        yield FINE_TUNED, model
        if want_base:
            with model.disable_adapter():
                yield BASE, model
        return
    if not (adapter_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} holds neither a PEFT adapter nor a model (config.json)"
        )
    yield FINE_TUNED, _load_model(adapter_dir, device)
    if want_base:
        yield BASE, _load_model(model_dir, device)


def render_prompt(tokenizer: PreTrainedTokenizerBase, example: EvalExample) -> tuple[str, bool]:
    """Prompt text and whether the tokenizer should add its special tokens (BOS) to it: a chat
    template writes them itself, raw text needs them."""
    if example.messages is None:
        return example.text or "", True
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; chat records cannot be rendered")
    text = tokenizer.apply_chat_template(
        example.messages, tokenize=False, add_generation_prompt=True
    )
    return str(text), False


def render_full(tokenizer: PreTrainedTokenizerBase, example: EvalExample) -> tuple[str, bool]:
    """Prompt and reference answer together, as the model saw them in training."""
    if example.messages is None:
        return (example.text or "") + example.reference, True
    conversation = [*example.messages, {"role": "assistant", "content": example.reference}]
    return str(tokenizer.apply_chat_template(conversation, tokenize=False)), False


def encode(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    """Token ids of `text`."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _stop_ids(tokenizer: PreTrainedTokenizerBase, model: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[EvalExample],
    *,
    max_new_tokens: int,
    device: str,
    batch_size: int = 8,
    token_counts: list[int] | None = None,
) -> list[str]:
    """Greedy answers to each example's prompt, batched with left padding. With `token_counts`,
    the number of tokens each answer generated (its end-of-turn token not counted, as Ollama
    reports `completion_tokens`) is appended to it: decoded text does not always re-encode to
    the tokens that were generated (an undertrained model's byte pieces)."""
    import torch
    from transformers import GenerationConfig

    stop = _stop_ids(tokenizer, model)
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop or None,
    )
    pad = int(tokenizer.pad_token_id)
    # Prompts longer than the context minus the answer budget keep their end (the question).
    context = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 0)
    keep = max(1, context - max_new_tokens) if context else None
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = [
            encode(tokenizer, *render_prompt(tokenizer, ex))[-keep if keep else 0 :]
            for ex in examples[start : start + batch_size]
        ]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        attention = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=config
            )
        for row in out[:, width:]:
            ids = row.tolist()
            answers.append(str(tokenizer.decode(ids, skip_special_tokens=True)).strip())
            if token_counts is not None:
                ends = [i for i, token in enumerate(ids) if token in stop]
                token_counts.append(ends[0] if ends else len(ids))
        log.debug("generated %d/%d answers", len(answers), len(examples))
    return answers
