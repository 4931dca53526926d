"""Checks the trainer runs when it starts, before data is read or GPU time is spent, for what
the spec alone cannot tell (the spec's own rules are checked by the API models, and Secrets
by the operator before the Job exists).

`check_judge_endpoint`: one request to the judge's OpenAI-compatible API, `GET {endpoint}/models`
with the API key, so a wrong URL, an unreachable host or a refused key fails the job at once
instead of leaving every answer unscored after training. When `/models` answers 404 (a proxy
without that route) one `POST {endpoint}/chat/completions` with no messages tells a missing
API from a missing route; it is rejected before any inference, so it costs no tokens.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec, JudgeSpec

JUDGE_CHECK_TIMEOUT_SECONDS = 10.0
_MAX_BODY_BYTES = 1 << 20  # a model list is a few KiB; never read an endless body whole
_DETAIL_CHARS = 300


class JudgeUnreachableError(RuntimeError):
    """The judge endpoint cannot be used; the message names the field to fix."""

    reason = c.Reason.JUDGE_UNREACHABLE


@dataclass(frozen=True)
class JudgeEndpoint:
    """What the judge endpoint answered."""

    url: str
    """The URL that answered."""
    model: str
    """`evaluation.judge.model`."""
    models: tuple[str, ...] | None
    """Model ids `GET /models` listed; None when it listed none (or did not answer 2xx)."""

    @property
    def lists_model(self) -> bool | None:
        """Whether the endpoint lists the judge model; None when it lists nothing. False is
        worth a warning, not a failure: some servers (llama.cpp) answer to any model name."""
        return None if not self.models else self.model in self.models


def check_judge_endpoint(
    spec: FineTuneJobSpec,
    timeout: float = JUDGE_CHECK_TIMEOUT_SECONDS,
    *,
    api_key: str | None = None,
) -> JudgeEndpoint | None:
    """Check that `spec.evaluation.judge` answers; None when the spec has no judge.

    `api_key` defaults to $KUBETUNE_JUDGE_API_KEY (where the operator mounts
    `apiKeySecretRef`). Raises JudgeUnreachableError, naming the field to fix, when the host
    cannot be reached or does not answer within `timeout` seconds, refuses the key (401/403),
    has no OpenAI-compatible API at that URL (404), or fails (5xx). The key never appears in
    a message.
    """
    judge = spec.evaluation.judge
    if judge is None:
        return None
    key = api_key if api_key is not None else os.environ.get(c.ENV_JUDGE_API_KEY, "")
    base = str(judge.endpoint).rstrip("/")
    url = f"{base}/models"
    status, body = _request("GET", url, key, timeout)
    if 200 <= status < 300:
        if not isinstance(_json(body), dict):  # e.g. a web site's catch-all page
            raise JudgeUnreachableError(
                f"evaluation.judge.endpoint: GET {url} answered HTTP {status} but not with a JSON "
                "object, so this is not an OpenAI-compatible API; give the API's base URL, usually "
                "ending in /v1 (e.g. https://api.openai.com/v1)"
            )
        return JudgeEndpoint(url, judge.model, _model_ids(body))
    if status in (401, 403):
        raise JudgeUnreachableError(_key_refused(judge, url, status, body, key))
    if status == 429:  # reachable and the key accepted; rate limits are the judge's to retry
        return JudgeEndpoint(url, judge.model, None)
    if status not in (404, 405):
        raise JudgeUnreachableError(
            f"evaluation.judge.endpoint: GET {url} answered HTTP {status}{_detail(body, key)}; "
            "the judge is failing or this is not an OpenAI-compatible API"
        )
    route = f"{base}/chat/completions"
    probe = json.dumps({"model": judge.model, "messages": [], "max_tokens": 1}).encode()
    status, body = _request("POST", route, key, timeout, probe)
    if status in (401, 403):
        raise JudgeUnreachableError(_key_refused(judge, route, status, body, key))
    if status in (404, 405):
        raise JudgeUnreachableError(
            f"evaluation.judge.endpoint: no OpenAI-compatible API at {base}: GET /models and "
            f"POST /chat/completions answered HTTP {status}{_detail(body, key)}; give the API's "
            "base URL, usually ending in /v1 (e.g. https://api.openai.com/v1), and check "
            "evaluation.judge.model"
        )
    return JudgeEndpoint(route, judge.model, None)


def _request(
    method: str, url: str, key: str, timeout: float, body: bytes | None = None
) -> tuple[int, bytes]:
    """(HTTP status, body) of one request; JudgeUnreachableError when no answer comes."""
    headers = {"Accept": "application/json", "User-Agent": "kubetune-trainer"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read(_MAX_BODY_BYTES)
    except urllib.error.HTTPError as exc:  # an answer with an error status
        with exc:
            return exc.code, exc.read(_MAX_BODY_BYTES)
    except (urllib.error.URLError, OSError) as exc:  # TimeoutError is an OSError
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        problem = (
            f"{method} {url} did not answer within {timeout:g}s"
            if isinstance(why, TimeoutError)
            else f"cannot reach {url}: {_scrub(str(why), key)}"
        )
        raise JudgeUnreachableError(
            f"evaluation.judge.endpoint: {problem}; check the URL and that the trainer pod can "
            "reach it (DNS, NetworkPolicy, egress proxy)"
        ) from exc


def _key_refused(judge: JudgeSpec, url: str, status: int, body: bytes, key: str) -> str:
    ref = judge.api_key_secret_ref
    if not key:
        where = (
            f"Secret {ref.name!r} key {ref.key!r} gave an empty key"
            if ref is not None
            else "no API key is configured: set evaluation.judge.apiKeySecretRef to a Secret key holding it"
        )
        return f"evaluation.judge.apiKeySecretRef: {url} answered HTTP {status}{_detail(body, key)}; {where}"
    source = (
        f"Secret {ref.name!r} key {ref.key!r}" if ref is not None else f"${c.ENV_JUDGE_API_KEY}"
    )
    return (
        f"evaluation.judge.apiKeySecretRef: {url} refused the API key from {source} "
        f"(HTTP {status}{_detail(body, key)}); put a valid key there, with access to model "
        f"{judge.model!r}"
    )


def _json(body: bytes) -> Any:
    """The body as JSON; None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _model_ids(body: bytes) -> tuple[str, ...] | None:
    """Model ids of an OpenAI `/models` list (`{"data": [{"id": …}]}`); None if it is not one."""
    data = _json(body)
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    ids = tuple(str(m["id"]) for m in items if isinstance(m, dict) and "id" in m)
    return ids or None


def _detail(body: bytes, key: str) -> str:
    """`: <the server's error message>`, shortened, or '' when the body says nothing."""
    text = body.decode("utf-8", errors="replace").strip()
    data = _json(body)
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = str(error)
    text = " ".join(_scrub(text, key).split())
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 1] + "…"
    return f": {text}" if text else ""


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
