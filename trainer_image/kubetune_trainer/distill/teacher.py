"""The teacher's client: any OpenAI-compatible chat-completions endpoint.

The `openai` client's own retries are off (`max_retries=0`) so that one loop here decides, as
the judge's does (:mod:`kubetune_trainer.evaluation.judge`):

- HTTP 429: wait for Retry-After (`retry-after-ms` or `retry-after`, seconds or an HTTP date),
  capped at `MAX_RETRY_AFTER_SECONDS`; exponential backoff when there is none;
- timeouts, connection errors, 408/409, 5xx and a 200 that is no chat completion: backoff;
- 400, 401, 403, 404: no retry, and no further request to the teacher (every prompt would meet
  the same answer): :meth:`Teacher.ask_all` raises :class:`TeacherUnavailableError`.

A prompt still unanswered after `teacher.maxRetries` retries gets an answer with `error` set
(its record is then invalid in the data report). Answers come from the cache first; a new one
is cached as soon as it arrives. Identical prompts are asked once. The API key goes to the
client and nowhere else: errors are scrubbed of it before they are kept or logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import openai

from kubetune.api.constants import ENV_TEACHER_API_KEY
from kubetune.api.teacher import TeacherSpec
from kubetune_trainer.data.errors import DataSourceError
from kubetune_trainer.distill.cache import AnswerCache, CachedAnswer, prompt_key
from kubetune_trainer.evaluation.judge import (
    PLACEHOLDER_API_KEY,
    RetryableError,
    retryable_chat_error,
)

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 60.0
"""Longest wait a server's Retry-After can impose on one retry."""
BACKOFF_CAP_SECONDS = 30.0
"""Longest exponential-backoff wait."""
BACKOFF_SECONDS = 1.0
"""First exponential-backoff wait (doubled at each retry)."""

Messages = list[dict[str, str]]


class TeacherClient(Protocol):
    """What the data stage and the evaluation need of a teacher: :class:`Teacher` (an
    endpoint) or :class:`kubetune_trainer.distill.local_teacher.LocalTeacher` (`teacher.uri`)."""

    spec: TeacherSpec
    requests: int
    cached: int
    prompt_tokens: int
    completion_tokens: int

    def ask_all(self, conversations: list[Messages]) -> list[TeacherAnswer]: ...

    def close(self) -> None: ...


def make_teacher(
    spec: TeacherSpec,
    cache: AnswerCache | None,
    *,
    api_key: str | None = None,
    base_dir: Path | None = None,
) -> TeacherClient:
    """The client of `spec`'s teacher: its endpoint (`api_key`, default
    $KUBETUNE_TEACHER_API_KEY), or the model at `spec.uri` (`base_dir` anchors file://)."""
    if spec.uri is not None:
        from kubetune_trainer.distill.local_teacher import LocalTeacher

        return LocalTeacher(spec, cache, base_dir=base_dir)
    key = api_key if api_key is not None else os.environ.get(ENV_TEACHER_API_KEY)
    return Teacher(spec, key or None, cache)


class TeacherUnavailableError(DataSourceError):
    """The teacher refused a request in a way no retry changes (bad key, unknown model, …)."""


@dataclass(frozen=True)
class TeacherAnswer:
    """The teacher's answer to one prompt, or why there is none."""

    text: str | None
    """The answer (possibly empty: validation rejects it), None when there is none."""
    error: str | None = None
    """Why there is no answer (never contains the API key)."""
    cached: bool = False
    """Taken from the cache: no request was sent."""
    seconds: float = 0.0
    """Wall time of the request that produced it (the cached figure for a cached answer)."""


class _Fatal(Exception):
    pass


class Teacher:
    """Asks the teacher; safe to call from many threads."""

    def __init__(
        self,
        spec: TeacherSpec,
        api_key: str | None,
        cache: AnswerCache | None = None,
        *,
        backoff_seconds: float | None = None,
        max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.cache = cache
        self._secret = api_key or ""
        self._client = openai.OpenAI(
            base_url=str(spec.endpoint or ""),
            api_key=api_key or PLACEHOLDER_API_KEY,
            timeout=spec.timeout_seconds,
            max_retries=0,
        )
        self._backoff = BACKOFF_SECONDS if backoff_seconds is None else backoff_seconds
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._lock = threading.Lock()
        self._fatal: str | None = None
        self.requests = 0
        """Requests sent (retries included)."""
        self.prompt_tokens = 0
        """Prompt tokens the teacher reported for the answers given (a cached answer counts
        what its request cost when it was sent)."""
        self.completion_tokens = 0
        """Completion tokens of the answers given, counted like `prompt_tokens`."""
        self.cached = 0
        """Answers taken from the cache."""

    def ask(self, messages: Messages) -> TeacherAnswer:
        """The teacher's answer to `messages` (cache first), retrying up to `maxRetries`."""
        if self.cache is not None and (hit := self.cache.get(messages)) is not None:
            with self._lock:
                self.cached += 1
                self.prompt_tokens += hit.prompt_tokens
                self.completion_tokens += hit.completion_tokens
            return TeacherAnswer(hit.text, cached=True, seconds=hit.seconds)
        error = "not attempted"
        for attempt in range(self.spec.max_retries + 1):
            if self._fatal is not None:
                return TeacherAnswer(None, self._fatal)
            started = time.monotonic()
            try:
                text, prompt_tokens, completion_tokens = self._request(messages)
            except RetryableError as exc:
                error = self._scrub(str(exc))
                if attempt < self.spec.max_retries:
                    wait = exc.wait if exc.wait is not None else self._backoff_for(attempt)
                    log.warning("teacher request failed (%s); retrying in %.1fs", error, wait)
                    self._sleep(wait)
                continue
            except _Fatal as exc:
                with self._lock:
                    self._fatal = self._fatal or self._scrub(str(exc))
                return TeacherAnswer(None, self._fatal)
            seconds = time.monotonic() - started
            if self.cache is not None:
                self.cache.put(
                    messages, CachedAnswer(text, prompt_tokens, completion_tokens, seconds)
                )
            return TeacherAnswer(text, seconds=seconds)
        return TeacherAnswer(None, f"no answer after {self.spec.max_retries + 1} attempts: {error}")

    def ask_all(self, conversations: list[Messages]) -> list[TeacherAnswer]:
        """Answers to `conversations` in their order, with at most `concurrency` requests in
        flight; identical conversations are asked once. Raises TeacherUnavailableError when
        the teacher refused a request in a way no retry changes."""
        unique: dict[str, Messages] = {}
        keys = [prompt_key(m) for m in conversations]
        for key, messages in zip(keys, conversations, strict=True):
            unique.setdefault(key, messages)
        with ThreadPoolExecutor(
            max_workers=self.spec.concurrency, thread_name_prefix="teacher"
        ) as pool:
            answers = dict(zip(unique, pool.map(self.ask, unique.values()), strict=True))
        if self._fatal is not None:
            raise TeacherUnavailableError(
                f"teacher {self.spec.name()} at {self.spec.endpoint} refused a request: "
                f"{self._fatal}; check teacher.endpoint, teacher.model and the key in "
                "teacher.apiKeySecretRef (answers received so far are cached)"
            )
        return [answers[key] for key in keys]

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _request(self, messages: Messages) -> tuple[str, int, int]:
        with self._lock:
            self.requests += 1
        try:
            response = self._client.chat.completions.create(
                model=self.spec.model or "",
                messages=messages,  # type: ignore[arg-type]
                temperature=self.spec.temperature,
                max_tokens=self.spec.max_tokens,
            )
        except (openai.OpenAIError, ValueError) as exc:
            retry = retryable_chat_error(exc, self.spec.timeout_seconds, self._max_retry_after)
            if retry is not None:
                raise retry from exc
            if isinstance(exc, openai.APIStatusError):
                raise _Fatal(f"HTTP {exc.status_code}: {exc.message}") from exc
            raise
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise RetryableError("response is not a chat completion", None) from exc
        return (content if isinstance(content, str) else ""), prompt_tokens, completion_tokens

    def _backoff_for(self, attempt: int) -> float:
        return float(min(BACKOFF_CAP_SECONDS, self._backoff * 2**attempt))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text
