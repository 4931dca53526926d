"""Class balance: when the answers are labels, how they are spread, and whether one dominates.

Classification and routing datasets answer with a small closed set of labels ("billing",
"shipping", …). A label that outnumbers the rarest one many times over teaches the model to
answer it by default, and an accuracy figure then mostly measures the majority share. So the
data stage reports the distribution and warns (it does not fail: a skewed task is still a task)
when the majority:minority ratio is above `dataPolicy.maxClassImbalance`, before training.

The answers are labels when, over the task records (the general data is not counted):

- every record has an answer (preference records, trained with DPO, are never labels);
- there are at most :data:`MAX_LABELS` distinct answers, each at most :data:`MAX_LABEL_CHARS`
  characters;
- they repeat: at least two records per label on average (ten records with ten different
  short answers are short answers, not classes).

Answers are compared case- and whitespace-insensitively (as exact match scores them); a
label is shown as first written, with any secret or personal data in it redacted (the report
and status.data are read by people who may not see the data).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.trainer_result import ClassBalance
from kubetune.scanning import redact
from kubetune_trainer.data.formats import canonical

MAX_LABELS = 20
MAX_LABEL_CHARS = 64
MIN_RECORDS_PER_LABEL = 2


def answer_of(data: dict[str, Any]) -> str | None:
    """The answer of a normalised record: the last assistant message, or the completion;
    None for preference records and records without one."""
    if "messages" in data:
        messages = data["messages"]
        if messages and messages[-1].get("role") == "assistant":
            return str(messages[-1].get("content", ""))
        return None
    if "completion" in data and "chosen" not in data:
        return str(data["completion"])
    return None


@dataclass
class ClassDistribution:
    """Records per label (most common first), per split too, and the imbalance verdict."""

    counts: list[tuple[str, int]]
    max_ratio: float
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Records of the most common label per record of the rarest."""
        return self.counts[0][1] / self.counts[-1][1]

    @property
    def imbalanced(self) -> bool:
        """The ratio is above `dataPolicy.maxClassImbalance`."""
        return self.ratio > self.max_ratio

    def warning(self) -> str | None:
        """The data report's warning when imbalanced, with the figures and what to do."""
        if not self.imbalanced:
            return None
        (top, top_n), (low, low_n) = self.counts[0], self.counts[-1]
        return (
            f"class imbalance: the answers are {len(self.counts)} labels and {top!r} has {top_n} "
            f"records for {low_n} of {low!r} ({self.ratio:.1f}:1 > dataPolicy.maxClassImbalance "
            f"{self.max_ratio:g}); the model may learn to answer {top!r} by default and accuracy "
            "mostly measure its share: add examples of the rare labels (or fewer of the common "
            "one), and compare with the few-shot baseline (evaluation.baselines: [fewShot])"
        )

    def summary(self) -> ClassBalance:
        """The figures for `status.data.classBalance`."""
        (top, top_n), (low, low_n) = self.counts[0], self.counts[-1]
        return ClassBalance(
            classes=len(self.counts),
            majority=top,
            majority_count=top_n,
            minority=low,
            minority_count=low_n,
            ratio=round(self.ratio, 2),
            max_ratio=self.max_ratio,
            imbalanced=self.imbalanced,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary().to_wire(),
            "counts": dict(self.counts),
            "splits": self.splits,
        }

    def to_text(self) -> str:
        shown = ", ".join(f"{label} {n}" for label, n in self.counts)
        return (
            f"  classes     {len(self.counts)} labels ({shown}); majority:minority "
            f"{self.ratio:.1f}:1 (maxClassImbalance {self.max_ratio:g})"
        )


def class_distribution(
    records: Sequence[dict[str, Any]],
    max_ratio: float,
    splits: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> ClassDistribution | None:
    """The label distribution of `records` (normalised task records), or None when their
    answers are not labels (see the module docstring). `splits` (name -> records) adds the
    records per label of each split."""
    shown: dict[str, str] = {}
    keys: list[str] = []
    for data in records:
        answer = answer_of(data)
        if answer is None or not answer.strip() or len(answer.strip()) > MAX_LABEL_CHARS:
            return None
        key = canonical(answer)
        if key not in shown:  # the report and status show it: never a secret or personal data
            shown[key] = redact(answer.strip())
        keys.append(key)
        if len(shown) > MAX_LABELS:
            return None
    if not keys or len(keys) < MIN_RECORDS_PER_LABEL * len(shown):
        return None
    counts = [(shown[key], n) for key, n in Counter(keys).most_common()]
    per_split: dict[str, dict[str, int]] = {}
    for name, split in (splits or {}).items():
        split_counts = Counter(canonical(answer_of(d) or "") for d in split)
        per_split[name] = {shown[k]: split_counts[k] for k in shown if split_counts[k]}
    return ClassDistribution(counts=counts, max_ratio=max_ratio, splits=per_split)
