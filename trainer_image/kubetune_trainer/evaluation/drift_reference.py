"""The drift reference a FineTuneJob exports for serving (`eval/drift-reference.json`).

The serving gateway measures each version's live traffic against a reference (PSI of prompt
and answer lengths, refusal and empty-answer rates: `kubetune.serving.drift`). Without one it
takes the version's first requests, so a version that misbehaves from its first request looks
stable against itself. This writes the reference the version was trained and evaluated for: for
every test example, the prompt's length in tokens as the served model sees it (the chat template
applied with the generation prompt, BOS included where the tokenizer adds one: what Ollama
reports as `prompt_tokens`) and the number of tokens the fine-tuned model generated for its
answer, its end-of-turn token not counted (what Ollama reports as `completion_tokens`; counted at
generation, since decoded text does not always re-encode to the same tokens), with the share of
those answers that are refusals or empty, by the gateway's own rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune.api.serving import DRIFT_REFERENCE_FILE, DriftReference
from kubetune.serving.drift import is_empty_answer, is_refusal
from kubetune_trainer.evaluation.generation import encode, render_prompt

FINE_TUNED = "fine_tuned"


def build_drift_reference(tokenizer: Any, rows: Sequence[Any]) -> DriftReference | None:
    """The reference of `rows` (evaluation results with a fine-tuned answer); None when fewer
    than two examples have one (too few to bin: serving then uses its first requests)."""
    prompts: list[int] = []
    answers: list[int] = []
    refusals = empties = 0
    for row in rows:
        answer = row.answers.get(FINE_TUNED)
        if answer is None:
            continue
        text, special = render_prompt(tokenizer, row.example)
        prompts.append(len(encode(tokenizer, text, special)))
        count = row.answer_tokens.get(FINE_TUNED)
        if count is None:
            count = len(encode(tokenizer, answer, False))
        answers.append(count)
        refusals += is_refusal(answer)
        empties += is_empty_answer(answer, count)
    if len(prompts) < 2:
        return None
    n = len(prompts)
    return DriftReference(
        prompt_tokens=prompts,
        completion_tokens=answers,
        refusal_rate=refusals / n,
        empty_rate=empties / n,
        source=f"test split: {n} prompts and the fine-tuned model's answers",
    )


def write_drift_reference(tokenizer: Any, rows: Sequence[Any], eval_dir: Path) -> Path | None:
    """Write `eval_dir/drift-reference.json`; its path, or None when there is no reference."""
    reference = build_drift_reference(tokenizer, rows)
    if reference is None:
        return None
    eval_dir.mkdir(parents=True, exist_ok=True)
    path = eval_dir / DRIFT_REFERENCE_FILE
    body = reference.model_dump(mode="json", by_alias=True)
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    return path
