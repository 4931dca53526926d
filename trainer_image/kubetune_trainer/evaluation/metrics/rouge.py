"""ROUGE-L F1 (longest common subsequence) with Google's `rouge-score` package."""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction against its reference (0.0-1.0)."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def mean_rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 over examples (0.0 for no examples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    return sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )
