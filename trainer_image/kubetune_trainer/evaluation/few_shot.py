"""The few-shot baseline: the base model prompted with k examples of the training split.

"Try prompting first" made measurable: `evaluation.baselines: [fewShot]` evaluates the base
model with `fewShotExamples` solved examples before each test prompt, next to the fine-tuned
model, on the same test split with the same metrics and judge. Pure functions, no model:

- :func:`select_shots` draws the k examples from the TRAINING records only (evaluate() is
  handed the training split for this and nothing else), with the split's seed, the same ones
  for every test prompt, with as many different answers as the split allows (on a
  classification task, k labels rather than three examples of the majority label); a training
  record whose prompt is also a test prompt is never drawn, so a shot can never hand the model
  a test answer even if the data stage's leakage check were bypassed;
- :func:`with_shots` places them in the prompt. A chat prompt gets each shot as earlier
  user/assistant turns of the conversation (after the test prompt's own system message, the
  shots' system messages dropped), so the model's real chat template renders them as turns it
  answered itself; a raw-text prompt (completion records) gets them as `prompt + answer`
  blocks separated by a blank line, the way raw-text few-shot prompts are written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from kubetune_trainer.data.formats import canonical
from kubetune_trainer.evaluation.examples import (
    EvalExample,
    Message,
    UnsupportedRecord,
    to_eval_example,
)

FEW_SHOT = "few_shot"
"""Answer role of the few-shot baseline (the base model, shot prompts)."""
RAW_SHOT_SEPARATOR = "\n\n"


def _prompt_key(example: EvalExample) -> str:
    return canonical(example.prompt_for_display())


def select_shots(
    train_records: Sequence[dict[str, Any]],
    k: int,
    seed: int,
    *,
    held_out: Sequence[EvalExample] = (),
) -> list[EvalExample]:
    """Up to `k` examples of `train_records` (normalised training records), drawn with `seed`
    (one per distinct answer first, then any), in the order of the records. Records with no
    usable prompt and answer, or whose prompt is the prompt of a `held_out` (test) example, are
    never drawn; fewer than `k` come back only when fewer remain."""
    if k < 1:
        return []
    test_prompts = {_prompt_key(ex) for ex in held_out}
    candidates: list[EvalExample] = []
    for record in train_records:
        try:
            example = to_eval_example(record)
        except UnsupportedRecord:
            continue
        if example.reference.strip() and _prompt_key(example) not in test_prompts:
            candidates.append(example)
    order = random.Random(seed).sample(range(len(candidates)), len(candidates))
    chosen: list[int] = []
    answers: set[str] = set()
    for i in order:  # a new answer first
        if len(chosen) < k and canonical(candidates[i].reference) not in answers:
            chosen.append(i)
            answers.add(canonical(candidates[i].reference))
    chosen += [i for i in order if i not in chosen][: k - len(chosen)]
    return [candidates[i] for i in sorted(chosen)]


def _shot_turns(shot: EvalExample) -> list[Message]:
    """A shot as conversation turns ending with its answer, without system messages."""
    if shot.messages is None:
        turns: list[Message] = [{"role": "user", "content": shot.text or ""}]
    else:
        turns = [dict(m) for m in shot.messages if m.get("role") != "system"]
    return [*turns, {"role": "assistant", "content": shot.reference}]


def with_shots(example: EvalExample, shots: Sequence[EvalExample]) -> EvalExample:
    """`example` with `shots` placed before its prompt (see the module docstring); the reference
    is unchanged, so the answer is scored as the zero-shot one is."""
    if not shots:
        return example
    if example.messages is None:
        blocks = [
            ((s.text or "") if s.messages is None else s.prompt_for_display() + "\n")
            + s.reference
            for s in shots
        ]
        text = RAW_SHOT_SEPARATOR.join([*blocks, example.text or ""])
        return EvalExample(messages=None, text=text, reference=example.reference)
    lead = 0
    while lead < len(example.messages) and example.messages[lead].get("role") == "system":
        lead += 1
    turns = [turn for shot in shots for turn in _shot_turns(shot)]
    messages = [*example.messages[:lead], *turns, *example.messages[lead:]]
    return EvalExample(messages=messages, text=None, reference=example.reference)
