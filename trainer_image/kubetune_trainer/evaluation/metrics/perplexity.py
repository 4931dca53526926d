"""Perplexity of the reference answers: exp(mean token negative log-likelihood of the answer
given the prompt), from one forward pass per batch with the prompt tokens masked out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.evaluation.examples import EvalExample
from kubetune_trainer.evaluation.generation import encode, render_full, render_prompt


@dataclass(frozen=True)
class AnswerLoss:
    """Summed negative log-likelihood of one reference answer and its token count."""

    nll: float
    tokens: int

    @property
    def perplexity(self) -> float | None:
        """exp(nll / tokens) of this answer alone, None without answer tokens."""
        return math.exp(self.nll / self.tokens) if self.tokens else None


def corpus_perplexity(losses: list[AnswerLoss]) -> float | None:
    """exp of the token-weighted mean NLL over all answers; None when no answer had tokens."""
    tokens = sum(loss.tokens for loss in losses)
    if tokens == 0:
        return None
    return math.exp(sum(loss.nll for loss in losses) / tokens)


def answer_token_split(
    tokenizer: Any, example: EvalExample, eos_for_raw: bool = True
) -> tuple[list[int], int]:
    """Token ids of prompt + answer and where the answer starts.

    The whole text is tokenised at once (as in training) when the prompt's tokens are a prefix
    of it; otherwise the answer is tokenised on its own and appended. Raw-text answers end with
    EOS, as TRL's SFT appends it to completions."""
    prompt_ids = encode(tokenizer, *render_prompt(tokenizer, example))
    full_ids = encode(tokenizer, *render_full(tokenizer, example))
    if full_ids[: len(prompt_ids)] != prompt_ids:
        full_ids = prompt_ids + encode(tokenizer, example.reference, False)
    if example.messages is None and eos_for_raw and tokenizer.eos_token_id is not None:
        full_ids = [*full_ids, int(tokenizer.eos_token_id)]
    return full_ids, len(prompt_ids)


def answer_losses(
    model: Any,
    tokenizer: Any,
    examples: list[EvalExample],
    *,
    device: str,
    batch_size: int = 4,
    max_length: int | None = None,
) -> list[AnswerLoss]:
    """Per-example summed NLL of each reference answer given its prompt.

    Sequences longer than `max_length` (default: the model's context size) lose prompt tokens
    from the left, then answer tokens from the right."""
    import torch

    limit = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    pad = int(tokenizer.pad_token_id)
    losses: list[AnswerLoss] = []
    for start in range(0, len(examples), batch_size):
        rows: list[tuple[list[int], int]] = []
        for ex in examples[start : start + batch_size]:
            ids, answer_start = answer_token_split(tokenizer, ex)
            drop = min(max(0, len(ids) - limit), max(0, answer_start - 1))
            ids, answer_start = ids[drop:][:limit], answer_start - drop
            rows.append((ids, answer_start))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor(
            [ids + [pad] * (width - len(ids)) for ids, _ in rows], device=device
        )
        attention = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device
        )
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        for i, (ids, answer_start) in enumerate(rows):
            # The token at position t is predicted by the logits at t-1; position 0 has no
            # prediction, so an answer starting at 0 (empty prompt) loses its first token.
            first = max(1, answer_start)
            if first >= len(ids):
                losses.append(AnswerLoss(0.0, 0))
                continue
            pred = logits[i, first - 1 : len(ids) - 1].float()
            target = input_ids[i, first : len(ids)]
            nll = torch.nn.functional.cross_entropy(pred, target, reduction="sum")
            losses.append(AnswerLoss(float(nll), len(ids) - first))
    return losses
