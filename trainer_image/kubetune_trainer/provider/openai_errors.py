"""What an OpenAI error means for a FineTuneJob: its reason, an actionable message, and whether
a retry can help; and the redaction that keeps the API key out of every message.

The provider's own words (its `error.code` and message) are kept in the message, after the key
is removed: OpenAI echoes (part of) a refused key in its 401 message, and a message travels to
status, Events, logs and result.json.
"""

from __future__ import annotations

import re
from typing import Any

import openai

from kubetune.api import constants as c

MODEL_ERROR_CODES = frozenset({"model_not_found", "model_not_available", "invalid_model"})


class ProviderFailure(Exception):
    """The provider refused a request or its job ended without a model; `reason` is one of the
    Provider* reasons (permanent unless ProviderUnavailable), `message` is already redacted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def redact(text: str, secret: str | None) -> str:
    """`text` with `secret`, and any word starting with its first 8 characters (a masked echo
    such as OpenAI's `sk-proj-****wxyz`), replaced by `***`."""
    if not secret:
        return text
    out = text.replace(secret, "***")
    if len(secret) >= 16:
        out = re.sub(re.escape(secret[:8]) + r"\S*", "***", out)
    return out


def _provider_words(exc: openai.APIStatusError, secret: str | None) -> str:
    body: Any = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    code = exc.code or (body.get("code") if isinstance(body, dict) else None)
    words = f"HTTP {exc.status_code}"
    if code:
        words += f" {code}"
    if message:
        words += f": {message}"
    return redact(words, secret)


def classify(exc: BaseException, *, what: str, secret: str | None, key_ref: str) -> ProviderFailure:
    """The ProviderFailure for an exception raised by the openai client while doing `what`
    (e.g. "creating the fine-tuning job"); `key_ref` names the Secret and key, for the fix."""
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ProviderFailure(
            c.Reason.PROVIDER_AUTH_FAILED,
            f"the provider refused the API key while {what} ({_provider_words(exc, secret)}); "
            f"put a valid key with fine-tuning access in {key_ref}, then re-create the "
            "FineTuneJob; not retried",
        )
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota" or exc.type == "insufficient_quota":
            return ProviderFailure(
                c.Reason.PROVIDER_QUOTA_EXCEEDED,
                f"the provider's account is out of quota while {what} "
                f"({_provider_words(exc, secret)}); add credit or raise the limit, then "
                "re-create the FineTuneJob; not retried",
            )
        return ProviderFailure(
            c.Reason.PROVIDER_UNAVAILABLE,
            f"rate limited while {what}, still after the client's retries (Retry-After "
            f"honoured): {_provider_words(exc, secret)}; the Job retries (backoffLimit)",
        )
    if isinstance(
        exc, openai.BadRequestError | openai.NotFoundError | openai.UnprocessableEntityError
    ):
        if exc.param == "model" or (exc.code or "") in MODEL_ERROR_CODES:
            return ProviderFailure(
                c.Reason.PROVIDER_MODEL_UNSUPPORTED,
                f"the provider cannot fine-tune this model ({_provider_words(exc, secret)}); set "
                "provider.model to a model your account can fine-tune (e.g. "
                "gpt-4o-mini-2024-07-18); not retried",
            )
        param = f" (parameter {exc.param})" if exc.param else ""
        return ProviderFailure(
            c.Reason.PROVIDER_REQUEST_REJECTED,
            f"the provider rejected the request while {what}{param}: "
            f"{_provider_words(exc, secret)}; not retried, the same request fails again",
        )
    if isinstance(exc, openai.APIStatusError):
        return ProviderFailure(
            c.Reason.PROVIDER_UNAVAILABLE,
            f"the provider failed while {what}: {_provider_words(exc, secret)}; the Job retries "
            "(backoffLimit) and follows the same provider job",
        )
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return ProviderFailure(
            c.Reason.PROVIDER_UNAVAILABLE,
            f"cannot reach the provider while {what}: "
            f"{redact(type(exc).__name__ + ': ' + str(exc), secret)}; check provider.endpoint "
            "and the pod's egress; the Job retries (backoffLimit)",
        )
    return ProviderFailure(
        c.Reason.TRAINER_FAILED,
        f"unexpected error while {what}: {redact(f'{type(exc).__name__}: {exc}', secret)}",
    )


def job_failure(job: Any, secret: str | None) -> ProviderFailure:
    """The ProviderFailure of a provider job that ended `failed` or `cancelled`."""
    if job.status == "cancelled":
        return ProviderFailure(
            c.Reason.PROVIDER_JOB_CANCELLED,
            f"the provider's fine-tuning job {job.id} was cancelled outside kubetune; "
            "re-create the FineTuneJob to train again",
        )
    error = getattr(job, "error", None)
    code = getattr(error, "code", None) or "unknown"
    message = getattr(error, "message", None) or "no message"
    param = getattr(error, "param", None)
    where = f" (parameter {param})" if param else ""
    return ProviderFailure(
        c.Reason.PROVIDER_JOB_FAILED,
        redact(
            f"the provider's fine-tuning job {job.id} failed: {code}{where}: {message}", secret
        ),
    )
