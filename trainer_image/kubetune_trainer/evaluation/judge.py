"""LLM-as-judge through any OpenAI-compatible endpoint.

Each answer is scored 1-5 against its reference with the fixed rubric of `rubric.py`. The
client's own retries are off (`max_retries=0`) so that one loop here decides what is retried:

- HTTP 429: wait for Retry-After (`retry-after-ms` or `retry-after`, seconds or HTTP date),
  capped at `MAX_RETRY_AFTER_SECONDS`; exponential backoff when the header is missing;
- timeouts, connection errors and 5xx: exponential backoff;
- a reply that is not a strict verdict, or a refusal: asked again at once, with the bad reply
  and a reminder of the format appended to the conversation.

A 200 whose body is not JSON or not a chat completion is retried like a 5xx. Other errors
(401, 403, 404, 400) are not retried. An answer still unscored after
`max_retries` retries is returned as unscored with its last error; nothing raises. The API key
goes to the client and nowhere else: errors are scrubbed of it before they are kept.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import openai

from kubetune.api.finetunejob import JudgeSpec
from kubetune_trainer.evaluation.rubric import VerdictError, judge_messages, parse_verdict

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 30.0
"""Longest wait a server's Retry-After can impose on one retry."""
BACKOFF_CAP_SECONDS = 10.0
"""Longest exponential-backoff wait."""
PLACEHOLDER_API_KEY = "unused"
"""Sent when no key is configured (local endpoints such as llama.cpp or Ollama ignore it)."""

_FORMAT_REMINDER = (
    "That reply was not a valid verdict ({error}). Reply with only the JSON object "
    '{{"score": <integer 1-5>, "reason": "<one sentence>"}} and nothing else.'
)


@dataclass(frozen=True)
class JudgeOutcome:
    """The judge's verdict on one answer, or why there is none."""

    score: int | None
    """1-5, or None when the answer could not be scored."""
    reason: str | None
    """The judge's one-sentence reason."""
    error: str | None = None
    """Last error when unscored (never contains the API key)."""
    attempts: int = 0
    """Requests sent for this answer."""
    tokens: int = 0
    """Prompt + completion tokens the judge reported for this answer."""

    @property
    def scored(self) -> bool:
        """Whether the judge gave a score."""
        return self.score is not None

    def to_row(self) -> dict[str, Any]:
        """JSON-ready form for predictions.jsonl."""
        return {
            "score": self.score,
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class _Reply:
    text: str
    tokens: int
    refusal: str | None


class RetryableError(Exception):
    """A failure worth another request after `wait` seconds (None: exponential backoff)."""

    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait


def retryable_chat_error(exc: Exception, timeout_s: float, max_retry_after: float) -> RetryableError | None:
    """The retry a failed OpenAI-compatible chat request deserves (to raise from `exc`), or None
    when another request would fail the same way (a 4xx other than 408/409/429). Shared by the
    judge and the distillation teacher."""
    if isinstance(exc, openai.RateLimitError):
        wait = retry_after_seconds(exc.response.headers)
        return RetryableError("HTTP 429 rate limited", None if wait is None else min(wait, max_retry_after))
    if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError, its base class
        return RetryableError(f"timeout after {timeout_s:g}s", None)
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"connection error: {exc}", None)
    if isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409) or exc.status_code >= 500):
        return RetryableError(f"HTTP {exc.status_code}: {exc.message}", None)
    if isinstance(exc, ValueError):  # a 200 whose body is not JSON
        return RetryableError(f"unreadable response body: {exc}", None)
    return None


def retry_after_seconds(headers: Any, now: datetime | None = None) -> float | None:
    """Seconds a response's Retry-After headers ask to wait, or None without a usable header."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Judge:
    """Scores answers with an LLM judge; safe to call from many threads."""

    def __init__(
        self,
        spec: JudgeSpec,
        api_key: str | None,
        *,
        backoff_seconds: float = 1.0,
        max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self._secret = api_key or ""
        self._client = openai.OpenAI(
            base_url=str(spec.endpoint),
            api_key=api_key or PLACEHOLDER_API_KEY,
            timeout=spec.timeout_seconds,
            max_retries=0,
        )
        self._backoff = backoff_seconds
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._lock = threading.Lock()
        self.tokens = 0
        """Prompt + completion tokens used so far, over every request."""

    def score(self, question: str, reference: str, answer: str) -> JudgeOutcome:
        """Score one answer, retrying up to `spec.max_retries` times."""
        messages = judge_messages(question, reference, answer)
        tokens = 0
        error = "not attempted"
        attempts = 0
        for attempt in range(self.spec.max_retries + 1):
            attempts = attempt + 1
            try:
                reply = self._ask(messages)
            except RetryableError as exc:
                error = self._scrub(str(exc))
                if attempt < self.spec.max_retries:
                    wait = exc.wait if exc.wait is not None else self._backoff_for(attempt)
                    log.warning("judge request failed (%s); retrying in %.1fs", error, wait)
                    self._sleep(wait)
                continue
            except openai.OpenAIError as exc:
                status = getattr(exc, "status_code", None)
                error = self._scrub(
                    f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"
                )
                log.warning("judge request failed and is not retried: %s", error)
                break
            tokens += reply.tokens
            if reply.refusal is not None:
                error = self._scrub(f"refusal: {reply.refusal}")
                messages = judge_messages(question, reference, answer)
                continue
            try:
                verdict = parse_verdict(reply.text)
            except VerdictError as exc:
                error = self._scrub(f"malformed verdict: {exc}")
                # Show the judge its own reply and the format again: with temperature 0 the
                # same request would most likely get the same reply.
                messages = [
                    *judge_messages(question, reference, answer),
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": _FORMAT_REMINDER.format(error=exc)},
                ]
                continue
            return JudgeOutcome(verdict.score, verdict.reason, None, attempts, tokens)
        return JudgeOutcome(None, None, error, attempts, tokens)

    def score_all(self, items: list[tuple[str, str, str]]) -> list[JudgeOutcome]:
        """Score (question, reference, answer) triples with at most `spec.max_concurrency`
        requests in flight; results keep the input order."""
        if not items:
            return []
        with ThreadPoolExecutor(
            max_workers=self.spec.max_concurrency, thread_name_prefix="judge"
        ) as pool:
            return list(pool.map(lambda item: self.score(*item), items))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _ask(self, messages: list[dict[str, str]]) -> _Reply:
        """Send one request. Raises RetryableError, or OpenAIError for errors not worth a retry."""
        try:
            response = self._client.chat.completions.create(
                model=self.spec.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
            )
        except (openai.OpenAIError, ValueError) as exc:
            retry = retryable_chat_error(exc, self.spec.timeout_seconds, self._max_retry_after)
            if retry is None:
                raise
            raise retry from exc
        usage = getattr(response, "usage", None)
        used = int(getattr(usage, "prompt_tokens", 0) or 0) + int(
            getattr(usage, "completion_tokens", 0) or 0
        )
        with self._lock:
            self.tokens += used
        try:
            choice = response.choices[0]
            refusal = getattr(choice.message, "refusal", None)
            content = choice.message.content
            finish_reason = choice.finish_reason
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            # The client does not validate response shapes: a broken server's 200 lands here.
            raise RetryableError("response is not a chat completion", None) from exc
        if refusal or finish_reason == "content_filter":
            return _Reply("", used, str(refusal or "content filter"))
        return _Reply(content if isinstance(content, str) else "", used, None)

    def _backoff_for(self, attempt: int) -> float:
        return float(min(BACKOFF_CAP_SECONDS, self._backoff * 2**attempt))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text
