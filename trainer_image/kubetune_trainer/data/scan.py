"""Poisoning, secret and PII scans: pure functions from records to findings (the detectors
themselves are in :mod:`kubetune.scanning`, shared with the serving gateway).

A finding names the kind (``poisoning``, ``secret``, ``pii``), the rule, the record's file:line,
the field, and an excerpt in which everything any secret or PII detector matched (whatever the
finding is about, and whether or not that detector is turned on) is replaced by
``[REDACTED:<rule>]``. The secret itself never reaches a finding, a report or a log line.

The detectors (the project's rules and every detect-secrets plugin, and how their findings
are merged) are described in :mod:`kubetune.scanning`. Poisoning is looked for in every text of
a record, the user's included: a dataset that teaches a model to *refuse* injections will be
caught too; use ``action: flag`` for such data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.scanning import (
    PII_RULES,
    POISONING_RULES,
    SECRET_RULES,
    Detector,
    Kind,
    PluginRule,
    Rule,
    excerpt,
    plugin_rules,
    redact,
    rules_for,
    scan_text,
    sensitive_spans,
)
from kubetune_trainer.data.formats import text_fields
from kubetune_trainer.data.records import Location, Record

__all__ = [  # the detectors are re-exported: this module is the data stage's scan API
    "PII_RULES", "POISONING_RULES", "SECRET_RULES", "Detector", "Finding", "Kind", "PluginRule",
    "Rule", "excerpt", "plugin_rules", "redact", "rules_for", "scan_record", "scan_records",
    "scan_text", "sensitive_spans",
]


@dataclass(frozen=True)
class Finding:
    """What a scan caught in one record. ``excerpt`` is redacted."""

    kind: Kind
    rule: str
    loc: Location
    field: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.kind}/{self.rule} in {self.field}: {self.excerpt}"

    def to_json(self) -> dict[str, str]:
        return {
            "location": str(self.loc),
            "kind": self.kind,
            "rule": self.rule,
            "field": self.field,
            "excerpt": self.excerpt,
        }


def scan_record(record: Record, rules: Sequence[Detector]) -> list[Finding]:
    """Findings in every text field of one normalised record."""
    findings: list[Finding] = []
    for field, text in text_fields(record.data):
        hits = scan_text(text, rules)
        if not hits:
            continue
        spans = sensitive_spans(text)
        for rule, start, end in hits:
            findings.append(
                Finding(rule.kind, rule.name, record.loc, field, excerpt(text, start, end, spans))
            )
    return findings


def scan_records(records: Sequence[Record], rules: Sequence[Detector]) -> list[Finding]:
    """Findings of every record, in record order."""
    return (
        [finding for record in records for finding in scan_record(record, rules)] if rules else []
    )
