"""Secret, PII and poisoning detectors on text, and redaction: shared by the trainer's data scan
(:mod:`kubetune_trainer.data.scan`, records to findings) and the serving gateway's prediction
log (``logging.content: redacted``), so that both keep out the same secrets.

Two sets of detectors run side by side:

- the project's rules: regular expressions with an optional check of the match (digit counts
  for phone numbers, placeholder values for passwords). Reserved example domains
  (``example.com``, ``.test``, …; RFC 2606) are not personal data. An excerpt masks every match
  of a rule's pattern, even one its check let pass;
- every plugin of Yelp's ``detect-secrets`` (keywords, AWS, private keys, tokens of many
  services, high-entropy strings, public IPs), run line by line, with its heuristic filters of
  placeholders, UUIDs and ids. Its findings are named ``detect-secrets:<secret type>``; one that
  overlaps a finding of the project's rules is left out as the same secret. Two choices differ
  from a scan of source files: base64 high-entropy strings are looked for unquoted too (as its
  ad-hoc string scan does: data is prose, not code), and the ``pragma: allowlist secret``
  comment is not honoured (the data is not trusted to exempt itself). A public IP address is
  reported as ``pii``. Poisoning is looked for in every text of a record, the
user's included: a dataset that teaches a model to *refuse* injections will be caught too; use
``action: flag`` for such data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

Kind = Literal["poisoning", "secret", "pii"]
EXCERPT_WIDTH = 40
_URL_USER = re.compile(r"://[^\s/@]*:$")
_RESERVED_DOMAINS = re.compile(
    r"(?i)(?:^|\.)(?:example\.(?:com|org|net)|[^.]+\.(?:test|example|invalid|localhost))$"
)


class Detector(Protocol):
    """What a scan runs: a project :class:`Rule` or a :class:`PluginRule` of detect-secrets."""

    @property
    def kind(self) -> Kind: ...

    @property
    def name(self) -> str: ...

    def matches(self, text: str) -> Iterable[re.Match[str]]:
        """What the detector reports."""
        ...

    def span(self, match: re.Match[str]) -> tuple[int, int]:
        """The part of a match to redact."""
        ...

    def masks(self, text: str) -> Iterable[tuple[int, int]]:
        """Everything an excerpt must hide: every match, reported or not."""
        ...


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

    def masks(self, text: str) -> Iterable[tuple[int, int]]:
        """Every match of the pattern, the check left out: when in doubt, an excerpt hides it."""
        return (self.span(m) for m in self.pattern.finditer(text))


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


def _random_key(match: re.Match[str]) -> bool:
    value = match.group("secret")
    return (
        any(ch.islower() for ch in value)
        and any(ch.isupper() for ch in value)
        and any(ch.isdigit() or ch in "/+" for ch in value)
    )


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
    # The 40 characters of a secret access key after "secret", even in prose ("with secret …").
    _rule(
        "secret",
        "aws-secret-access-key",
        r"(?i)\b(?:aws\w{0,20}?(?:secret|key)|secret(?:[ _-]?access)?(?:[ _-]?key)?)\b[\"']?"
        r"\s*(?:[:=]|\bis\b)?\s*[\"']?(?<![A-Za-z0-9/+])(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        _random_key,
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
        # \w is Unicode: internationalised addresses (jörg@müller.de) are addresses too
        r"(?<![\w.+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.(?:[^\W\d_]{2,}|xn--[\w-]+)\b",
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


# --- detect-secrets ---------------------------------------------------------------------------

_ADHOC_FILENAME = "adhoc-string-scan"  # what detect-secrets' own ad-hoc scan names a string
_PII_TYPES = frozenset({"Public IP (ipv4)"})
# Its specific plugins are tried before the generic ones, so that one secret caught by several
# is reported once, under the most telling name.
_GENERIC_TYPES = ("Secret Keyword", "Hex High Entropy String", "Base64 High Entropy String")


@dataclass(frozen=True)
class PluginRule:
    """One detect-secrets plugin: what it finds in a line, with the plugin's own filters."""

    kind: Kind
    name: str
    secret_type: str

    def matches(self, text: str) -> Iterator[re.Match[str]]:
        for value in _detect_secrets(text).get(self.secret_type, ()):
            yield from re.finditer(re.escape(value), text)

    def span(self, match: re.Match[str]) -> tuple[int, int]:
        return match.span()

    def masks(self, text: str) -> Iterable[tuple[int, int]]:
        return (m.span() for m in self.matches(text))


@lru_cache(maxsize=1)
def _plugins() -> tuple[Any, ...]:
    """An instance of every detect-secrets plugin with its default settings, specific first."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    plugins = [cls() for cls in classes]
    return tuple(
        sorted(
            plugins,
            key=lambda p: (
                (_GENERIC_TYPES.index(p.secret_type) + 1) if p.secret_type in _GENERIC_TYPES else 0
            ),
        )
    )


def _filtered_out(value: str, line: str, plugin: Any) -> bool:
    """detect-secrets' default filters of a found value (sequences, UUIDs, ids, templates,
    ``$VARIABLES``, punctuation). The allowlist comment and the file-name filters are left
    out: they judge files, not data."""
    from detect_secrets.filters import heuristic

    return (
        heuristic.is_sequential_string(value)
        or heuristic.is_potential_uuid(value)
        or heuristic.is_likely_id_string(value, line, plugin)
        or heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_not_alphanumeric_string(value)
    )


@lru_cache(maxsize=1)
def _plugin_rules() -> tuple[PluginRule, ...]:
    return tuple(
        PluginRule(
            "pii" if plugin.secret_type in _PII_TYPES else "secret",
            "detect-secrets:" + re.sub(r"[^a-z0-9]+", "-", plugin.secret_type.lower()).strip("-"),
            plugin.secret_type,
        )
        for plugin in _plugins()
    )


@lru_cache(maxsize=256)  # scan_record asks for the same text twice: its hits, then its spans
def _detect_secrets(text: str) -> dict[str, tuple[str, ...]]:
    """``{secret type: values}`` of every detect-secrets plugin over each line of ``text``."""
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
    from detect_secrets.plugins.keyword import KeywordDetector

    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        for plugin in _plugins():
            if isinstance(plugin, Base64HighEntropyString):
                values = _unquoted_high_entropy(plugin, line)
            elif isinstance(plugin, KeywordDetector) and not _may_hold_keyword(line):
                continue
            else:
                values = [
                    secret.secret_value
                    for secret in plugin.analyze_line(filename=_ADHOC_FILENAME, line=line)
                    if secret.secret_value
                ]
            for value in values:
                if not _filtered_out(value, line, plugin):
                    found.setdefault(plugin.secret_type, set()).add(value)
    return {kind: tuple(sorted(values)) for kind, values in found.items()}


def _may_hold_keyword(line: str) -> bool:
    """Whether the keyword plugin can match ``line``: each of its patterns for text that is not
    a known kind of source file needs a quote and one of its keywords. Checking that first
    spares its costly patterns (a millisecond a line) on most lines, and changes no result."""
    return any(quote in line for quote in "'\"`") and _keywords().search(line) is not None


@lru_cache(maxsize=1)
def _keywords() -> re.Pattern[str]:
    from detect_secrets.plugins.keyword import DENYLIST

    return re.compile("|".join(DENYLIST), re.IGNORECASE)


def _unquoted_high_entropy(plugin: Any, line: str) -> list[str]:
    """Base64 runs above the plugin's entropy limit, quoted or not. A string of n characters
    has at most log2(n) bits of entropy, so shorter runs cannot pass and are not measured."""
    shortest = math.floor(2**plugin.entropy_limit) + 1
    run = _charset_runs(plugin.charset, shortest)
    return [
        m.group()
        for m in run.finditer(line)
        if plugin.calculate_shannon_entropy(m.group()) > plugin.entropy_limit
    ]


@lru_cache(maxsize=4)
def _charset_runs(charset: str, shortest: int) -> re.Pattern[str]:
    chars = re.escape(charset)
    return re.compile(rf"(?<![{chars}])[{chars}]{{{shortest},}}(?![{chars}])")


def plugin_rules(*, secrets: bool, pii: bool) -> tuple[PluginRule, ...]:
    """The detect-secrets plugins of the kinds turned on."""
    return tuple(
        rule
        for rule in _plugin_rules()
        if (rule.kind == "secret" and secrets) or (rule.kind == "pii" and pii)
    )


def rules_for(*, poisoning: bool, secrets: bool, pii: bool) -> tuple[Detector, ...]:
    """The detectors the data policy turns on: the project's rules, then detect-secrets'."""
    return (
        (POISONING_RULES if poisoning else ())
        + (SECRET_RULES if secrets else ())
        + (PII_RULES if pii else ())
        + plugin_rules(secrets=secrets, pii=pii)
    )


def sensitive_spans(text: str) -> list[tuple[int, int, str]]:
    """Merged ``(start, end, rule)`` spans of everything a secret or PII detector matches,
    whichever detectors the policy turned on."""
    detectors: tuple[Detector, ...] = (*SECRET_RULES, *PII_RULES, *_plugin_rules())
    spans = sorted((start, end, rule.name) for rule in detectors for start, end in rule.masks(text))
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


def scan_text(text: str, rules: Sequence[Detector]) -> list[tuple[Detector, int, int]]:
    """Every ``(rule, start, end)`` match in ``text``, each secret once: a match is left out
    when an earlier one of the same rule, or (for detect-secrets) of any secret or PII rule,
    overlaps it."""
    hits: list[tuple[Detector, int, int]] = []
    for rule in rules:
        for m in rule.matches(text):
            start, end = m.span()
            if not any(
                s < end
                and start < e
                and (
                    r.name == rule.name or (isinstance(rule, PluginRule) and r.kind != "poisoning")
                )
                for r, s, e in hits
            ):
                hits.append((rule, start, end))
    return hits
