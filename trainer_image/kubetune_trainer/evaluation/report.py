"""Comparisons of base and fine-tuned scores, and the files evaluation writes.

- `workdir/eval/predictions.jsonl`: one row per test example (prompt, reference, both answers,
  per-metric scores, judge score and reason per model);
- `workdir/eval/general_predictions.jsonl`: the same for the forgetting set, when there is one;
- `workdir/eval/summary.json`: base vs fine-tuned, deltas, win rate, forgetting, judge usage and
  the gate verdict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from kubetune.api.trainer_result import ModelScores

SCORE_FIELDS = ("exact_match", "rouge_l", "bleu", "perplexity", "judge_score", "general_score")


def win_rate(fine_tuned: Sequence[float | None], base: Sequence[float | None]) -> float | None:
    """Share of examples where the fine-tuned score beats the base's, ties counting half, over
    the examples both models have a score for; None when there are none."""
    pairs = [
        (f, b) for f, b in zip(fine_tuned, base, strict=True) if f is not None and b is not None
    ]
    if not pairs:
        return None
    return sum(1.0 if f > b else 0.5 if f == b else 0.0 for f, b in pairs) / len(pairs)


def forgetting_drop(base_score: float | None, fine_tuned_score: float | None) -> float | None:
    """Relative drop of the general-set score, (base - fine-tuned) / base: positive is worse
    after fine-tuning, negative better. 0.0 when the base scored 0 (nothing to lose)."""
    if base_score is None or fine_tuned_score is None:
        return None
    if base_score <= 0:
        return 0.0
    return (base_score - fine_tuned_score) / base_score


def score_deltas(fine_tuned: ModelScores, base: ModelScores | None) -> dict[str, float]:
    """fine-tuned minus base for every score both have, keyed by the camelCase name used in
    status (lower perplexity is better)."""
    if base is None:
        return {}
    deltas: dict[str, float] = {}
    for name in SCORE_FIELDS:
        tuned, before = getattr(fine_tuned, name), getattr(base, name)
        if tuned is not None and before is not None:
            deltas[to_camel(name)] = tuned - before
    return deltas


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write one JSON document, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
