"""BLEU with sacrebleu's standard settings (13a tokenisation, 0-100)."""

from __future__ import annotations

import sacrebleu


def _clamp(score: float) -> float:
    # sacrebleu can return 100.00000000000004 for identical text; the gate bound is 0-100.
    return min(100.0, max(0.0, float(score)))


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU of the predictions against one reference each (0.0 for no examples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    return _clamp(sacrebleu.corpus_bleu(predictions, [references]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU of one prediction, for per-example rows (not for the gate)."""
    return _clamp(sacrebleu.sentence_bleu(prediction, [reference]).score)
