"""What of a prompt or an answer the prediction log stores.

``redacted`` uses the scanner that keeps secrets out of training data
(:func:`kubetune.scanning.redact`, shared with the trainer's data stage): the project's secret
and PII rules plus every detect-secrets plugin (a base dependency, so the operator/serving image
has it); detect-secrets is imported on first use. Where it is missing anyway (an installation
without it), only the project's rules run. Either way the work is done in the log's writer
thread, never on the event loop, and the text is cut to ``max_chars`` first (redaction is linear).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache

from kubetune.serving.gateway.settings import ContentMode

Redactor = Callable[[str], str]


@lru_cache(maxsize=1)
def scanner_redact() -> Redactor:
    """The shared redaction (detect-secrets too when installed), loaded once."""
    from kubetune import scanning as scan

    if importlib.util.find_spec("detect_secrets") is not None:
        return scan.redact
    rules = (*scan.SECRET_RULES, *scan.PII_RULES)

    def redact_with_project_rules(text: str) -> str:
        spans = sorted((s, e, rule.name) for rule in rules for s, e in rule.masks(text))
        out: list[str] = []
        pos = 0
        for start, end, name in spans:
            if end <= pos:
                continue
            out += [text[pos : max(start, pos)], f"[REDACTED:{name}]"]
            pos = end
        out.append(text[pos:])
        return "".join(out)

    return redact_with_project_rules


def stored_text(text: str | None, mode: ContentMode, max_chars: int) -> str | None:
    """``text`` as the log keeps it in ``mode``: None for ``none`` (and for no text)."""
    if text is None or mode == "none":
        return None
    text = text[:max_chars]
    return scanner_redact()(text) if mode == "redacted" else text
