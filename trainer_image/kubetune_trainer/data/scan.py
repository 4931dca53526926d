"""Poisoning, secret and PII scans: pure functions from records to findings.

A finding names the kind (``poisoning``, ``secret``, ``pii``), the rule, the record's file:line,
the field, and an excerpt in which every secret and every piece of personal data (whatever the
finding is about) is replaced by ``[REDACTED:<rule>]``. The secret itself never reaches a
finding, a report or a log line.

Rules are regular expressions with an optional check of the match (digit counts for phone
numbers, placeholder values for passwords). Reserved example domains (``example.com``, ``.test``,
…; RFC 2606) are not personal data. Poisoning is looked for in every text of a record, the
user's included: a dataset that teaches a model to *refuse* injections will be caught too; use
``action: flag`` for such data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from kubetune_trainer.data.formats import text_fields
from kubetune_trainer.data.records import Location, Record

Kind = Literal["poisoning", "secret", "pii"]
EXCERPT_WIDTH = 40
_URL_USER = re.compile(r"://[^\s/@]*:$")
_RESERVED_DOMAINS = re.compile(
    r"(?i)(?:^|\.)(?:example\.(?:com|org|net)|[^.]+\.(?:test|example|invalid|localhost))$"
)


@dataclass(frozen=True)
class Rule:
    """One pattern. A named group ``secret`` narrows what is redacted (``password=<secret>``)."""

    kind: Kind
    name: str
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], bool] | None = None

    def matches(self, text: str) -> Iterable[re.Match[str]]:
        """Matches that pass the rule's check."""
        for match in self.pattern.finditer(text):
            if self.check is None or self.check(match):
                yield match

    def span(self, match: re.Match[str]) -> tuple[int, int]:
        """The part of a match to redact."""
        return match.span("secret") if "secret" in self.pattern.groupindex else match.span()


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


def _digits(low: int, high: int) -> Callable[[re.Match[str]], bool]:
    return lambda m: low <= sum(ch.isdigit() for ch in m.group()) <= high


def _real_password(match: re.Match[str]) -> bool:
    value = match.group("secret")
    if (
        value[0] in "<${[(*"
        or set(value) <= set("*xX.")
        or value.lower() in ("none", "null", "required")
    ):
        return False  # a placeholder, not a password
    return any(not ch.isalpha() for ch in value)


def _real_email(match: re.Match[str]) -> bool:
    if _RESERVED_DOMAINS.search(match.group().rsplit("@", 1)[-1]):
        return False
    # user:pass@host in a URL is the credentials-in-url rule's, not an e-mail address
    return not _URL_USER.search(match.string, max(0, match.start() - 256), match.start())


def _rule(
    kind: Kind, name: str, pattern: str, check: Callable[[re.Match[str]], bool] | None = None
) -> Rule:
    return Rule(kind, name, re.compile(pattern), check)


_OVERRIDE = r"(?:ignore|disregard|forget|override|bypass|skip)"
POISONING_RULES: tuple[Rule, ...] = (
    _rule(
        "poisoning",
        "ignore-previous-instructions",
        rf"(?i)\b{_OVERRIDE}\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+)?"
        r"(?:previous|prior|above|earlier|preceding|former|original)\s+"
        r"(?:instructions?|prompts?|rules|directions|directives|guidelines|context|messages)",
    ),
    _rule(
        "poisoning",
        "disregard-system-prompt",
        rf"(?i)\b{_OVERRIDE}\s+(?:all\s+)?(?:the\s+|your\s+|any\s+)?"
        r"(?:system\s+(?:prompt|message|instructions?)|safety\s+(?:rules|guidelines|filters?)|content\s+polic(?:y|ies))",
    ),
    _rule(
        "poisoning",
        "jailbreak-persona",
        r"(?i)\b(?:you\s+are\s+now\s+(?:DAN\b|in\s+(?:developer|god|jailbreak)\s+mode|jailbroken|unfiltered|unrestricted|uncensored)"
        r"|do\s+anything\s+now|DAN\s+mode|developer\s+mode\s+(?:enabled|activated|on))",
    ),
    _rule(
        "poisoning",
        "prompt-exfiltration",
        r"(?i)\b(?:reveal|print|repeat|output|show|leak)\s+(?:me\s+)?(?:your|the)\s+"
        r"(?:system\s+prompt|hidden\s+(?:instructions|prompt)|initial\s+instructions)",
    ),
    _rule(
        "poisoning",
        "chat-template-injection",
        r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|system|user|assistant|end)\|>"
        r"|\[/?INST\]|<</?SYS>>",
    ),
)

SECRET_RULES: tuple[Rule, ...] = (
    _rule(
        "secret",
        "private-key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
    ),
    _rule("secret", "anthropic-api-key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    _rule("secret", "openai-api-key", r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    _rule("secret", "aws-access-key-id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    _rule(
        "secret",
        "aws-secret-access-key",
        r"(?i)\baws_?secret_?access_?key\b\s*[:=]\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})",
    ),
    _rule(
        "secret",
        "github-token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    ),
    _rule("secret", "slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    _rule("secret", "slack-webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}"),
    _rule("secret", "google-api-key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    _rule("secret", "huggingface-token", r"\bhf_[A-Za-z0-9]{30,}\b"),
    _rule("secret", "stripe-key", r"\b[sr]k_live_[A-Za-z0-9]{20,}"),
    _rule("secret", "jwt", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    _rule("secret", "bearer-token", r"\b[Bb]earer\s+(?P<secret>[A-Za-z0-9\-._~+/]{20,}=*)"),
    _rule(
        "secret",
        "credentials-in-url",
        r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:(?P<secret>[^\s/@]+)@[^\s/]+",
    ),
    _rule(
        "secret",
        "password-assignment",
        r"(?i)\b(?:password|passwd|pwd|passphrase)\b[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;]{4,})",
        _real_password,
    ),
    _rule(
        "secret",
        "api-key-assignment",
        r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)\b[\"']?\s*[:=]\s*"
        r"[\"']?(?P<secret>[A-Za-z0-9_\-./+=]{16,})",
    ),
)

PII_RULES: tuple[Rule, ...] = (
    _rule(
        "pii",
        "email",
        r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        _real_email,
    ),
    _rule(
        "pii",
        "phone",
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"
        r"|\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}"
        r"|\b\d{3}([-.])\d{3}\1\d{4})(?![\w])",
        _digits(9, 15),
    ),
)

SENSITIVE_RULES = SECRET_RULES + PII_RULES


def rules_for(*, poisoning: bool, secrets: bool, pii: bool) -> tuple[Rule, ...]:
    """The rules the data policy turns on."""
    return (
        (POISONING_RULES if poisoning else ())
        + (SECRET_RULES if secrets else ())
        + (PII_RULES if pii else ())
    )


def sensitive_spans(text: str) -> list[tuple[int, int, str]]:
    """Merged ``(start, end, rule)`` spans of every secret and piece of personal data."""
    spans = sorted(
        (*rule.span(m), rule.name) for rule in SENSITIVE_RULES for m in rule.matches(text)
    )
    merged: list[tuple[int, int, str]] = []
    for start, end, name in spans:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, name))
    return merged


def redact(text: str) -> str:
    """``text`` with every secret and piece of personal data replaced by ``[REDACTED:<rule>]``."""
    return _render(text, 0, len(text), sensitive_spans(text))


def excerpt(
    text: str,
    start: int,
    end: int,
    spans: Sequence[tuple[int, int, str]],
    width: int = EXCERPT_WIDTH,
) -> str:
    """One line around ``text[start:end]``, redacted by ``spans``; a span the window cuts is
    taken whole, so no part of a secret is shown."""
    lo, hi = max(0, start - width), min(len(text), end + width)
    for s, e, _ in spans:
        if s < lo < e:
            lo = s
        if s < hi < e:
            hi = e
    body = " ".join(_render(text, lo, hi, spans).split())
    return ("…" if lo > 0 else "") + body + ("…" if hi < len(text) else "")


def _render(text: str, lo: int, hi: int, spans: Sequence[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pos = lo
    for s, e, name in spans:
        if e <= lo or s >= hi:
            continue
        out += [text[pos : max(s, pos)], f"[REDACTED:{name}]"]
        pos = max(pos, e)
    out.append(text[pos:hi])
    return "".join(out)


def scan_text(text: str, rules: Sequence[Rule]) -> list[tuple[Rule, int, int]]:
    """Every ``(rule, start, end)`` match in ``text``."""
    return [(rule, *m.span()) for rule in rules for m in rule.matches(text)]


def scan_record(record: Record, rules: Sequence[Rule]) -> list[Finding]:
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


def scan_records(records: Sequence[Record], rules: Sequence[Rule]) -> list[Finding]:
    """Findings of every record, in record order."""
    return (
        [finding for record in records for finding in scan_record(record, rules)] if rules else []
    )
