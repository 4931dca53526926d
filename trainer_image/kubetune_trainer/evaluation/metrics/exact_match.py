"""Exact match after normalisation (strip, casefold, collapse whitespace)."""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Strip, casefold and collapse runs of whitespace to one space."""
    return _WHITESPACE.sub(" ", text.strip().casefold())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two strings are equal once normalised."""
    return normalise(prediction) == normalise(reference)


def exact_match_rate(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference (0.0 for no examples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    return sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )
