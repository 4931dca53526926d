"""The gateway's aiohttp application (:func:`create_app`).

Routes:

- ``POST /v1/chat/completions``: forwarded to Ollama's ``/v1/chat/completions`` with ``model``
  set to the deployment's alias, whatever the client sent (the gateway serves one model).
  Streamed answers are relayed event by event as they arrive; the gateway asks Ollama for usage
  (``stream_options.include_usage``, supported since Ollama 0.5) and drops that extra chunk
  again unless the client asked for it. Should an upstream stream carry no usage, output tokens
  are the content chunks counted (one token each, as Ollama sends them) and input tokens unknown.
- ``GET /v1/models``: the deployment's model only.
- ``POST /v1/feedback`` ``{"requestId", "score": 1..5, "comment"?}``: 200 once durable, 404 for
  a request id never logged, 422 naming the field that is wrong.
- ``GET /metrics`` (Prometheus text, the drift gauges included), ``GET /healthz`` (the gateway
  itself is up).

Drift: every request the local model answered (finish reason other than error or cancelled)
is one :meth:`~kubetune.serving.drift.DriftTracker.observe` of the version that answered it:
Ollama's prompt and completion tokens and the answer text (a stream's assembled text). A
request without a prompt token count (a stream that carried no usage) is not observed: a
made-up length would move the PSI. Feedback reaches the tracker from the prediction log, with
the version that answered that request id. A version no longer served for
``drift_forget_after_s`` is forgotten (:class:`VersionRetirement`).

Every response carries ``x-request-id`` (the client's, when it sent a usable one: 1-128 of
``A-Za-z0-9._:-``; generated otherwise), ``x-kubetune-version`` and ``x-kubetune-digest`` (the
version served when the request arrived; ``none`` before one is). Errors are OpenAI-style JSON
(``{"error": {"message", "type", "param", "code"}}``), never a stack trace: 400 malformed JSON,
413 a body above ``max_body_bytes``, 404/405 unknown route or method, 422 invalid fields; Ollama
unreachable or answering 5xx -> 502, no byte from Ollama within ``upstream_timeout_s`` -> 504;
Ollama's own 4xx (a request it refuses) is relayed with its status. A stream that fails after
its first byte can no longer change status: it ends with an error event and no ``[DONE]``.

Fallback (``settings.fallback``, from ``spec.fallback``): when the local model errors
(unreachable, 5xx, an unreadable answer), takes longer than ``timeout_s`` (a stream: to its
first byte), or, with ``refusal`` listed, gives a non-streamed answer that
:func:`~kubetune.serving.drift.is_refusal`, the gateway asks the fallback model the same
request (model rewritten, ``Authorization: Bearer <key>``) and answers with it, stamped
``x-kubetune-route: fallback``. A stream falls back only while the client has received no
byte; once relayed, it is the local model's. The local failure is still counted in
``kubetune_gateway_errors_total`` (a broken version must still be rolled back, even while the
fallback hides it), the answer is counted and logged with ``route="fallback"``, and
``kubetune_gateway_fallbacks_total{reason}`` counts it. When the fallback fails too the client
gets the local error (a refusal: the local answer) and ``error_type="fallback_failed"`` is
counted. The call uses aiohttp, already the gateway's client: the ``openai`` package is only in
the trainer's extra.

One event loop, one pooled keep-alive connector to Ollama (and one to the fallback), no thread
per request; the only thread is the prediction log's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubetune.serving.drift import DriftTracker, is_refusal
from kubetune.serving.gateway.export import ExportQueryError, export_predictions
from kubetune.serving.gateway.metrics import GatewayMetrics, finish_reason_label
from kubetune.serving.gateway.predictions import Prediction, PredictionLog
from kubetune.serving.gateway.settings import (
    FallbackSettings,
    FallbackTrigger,
    GatewaySettings,
    ServedVersion,
    VersionProvider,
)

log = logging.getLogger("kubetune.serving.gateway")

LOCAL: Final = "local"  # the pod's own Ollama
FALLBACK: Final = "fallback"  # spec.fallback's model
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NONE = "none"

SETTINGS_KEY: Final = web.AppKey("settings", GatewaySettings)
METRICS_KEY: Final = web.AppKey("metrics", GatewayMetrics)
LOG_KEY: Final = web.AppKey("prediction_log", PredictionLog)
PROVIDER_KEY: Final[web.AppKey[VersionProvider]] = web.AppKey("version_provider")
SESSION_KEY: Final = web.AppKey("upstream_session", aiohttp.ClientSession)
FALLBACK_SESSION_KEY: Final = web.AppKey("fallback_session", aiohttp.ClientSession)
DRIFT_KEY: Final = web.AppKey("drift", DriftTracker)


class VersionRetirement:
    """Forgets the drift windows of versions that have not been served for ``after_s``.

    Told the served version on every request and every ``/metrics`` scrape; sweeps at most
    once a minute, so the per-request cost is a dict write.
    """

    def __init__(self, tracker: DriftTracker, after_s: float) -> None:
        self.tracker = tracker
        self.after_s = after_s
        self.last_served: dict[str, float] = {}
        self._next_sweep = 0.0

    def served(self, version: str | None, now: float) -> None:
        """``version`` is served at ``now`` (monotonic seconds); forget the long-gone ones."""
        if version is not None:
            self.last_served[version] = now
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(60.0, self.after_s)
        for name, seen in list(self.last_served.items()):
            if now - seen > self.after_s:
                del self.last_served[name]
                self.tracker.forget(name)


RETIREMENT_KEY: Final = web.AppKey("drift_retirement", VersionRetirement)


@dataclass(frozen=True)
class RequestContext:
    """Fixed when a request arrives, so headers, metrics and the log agree."""

    request_id: str
    served: ServedVersion
    started: float

    @property
    def version_label(self) -> str:
        return self.served.version or _NONE

    def headers(self) -> dict[str, str]:
        return {
            "x-request-id": self.request_id,
            "x-kubetune-version": self.served.version or _NONE,
            "x-kubetune-digest": self.served.digest or _NONE,
        }


class GatewayError(Exception):
    """A request answered with an OpenAI-style error."""

    def __init__(
        self, status: int, message: str, error_type: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.param = status, message, error_type, param


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


_CTX: Final = web.RequestKey("kubetune_context", RequestContext)


def _context(request: web.Request) -> RequestContext:
    return request[_CTX]


@web.middleware
async def _stamp_and_catch(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Fix the request's context, stamp its headers, and turn every failure into JSON."""
    app = request.app
    given = request.headers.get("x-request-id", "")
    ctx = RequestContext(
        request_id=given if _REQUEST_ID.match(given) else uuid.uuid4().hex,
        served=app[PROVIDER_KEY](),
        started=time.perf_counter(),
    )
    request[_CTX] = ctx
    error_type: str | None = None
    try:
        response = await handler(request)
    except GatewayError as error:
        response = web.json_response(
            error_body(error.status, error.message, error.param), status=error.status
        )
        error_type = error.error_type
    except web.HTTPException as error:  # aiohttp's own: 404, 405, 413
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"request body above {app[SETTINGS_KEY].max_body_bytes} bytes",
        }.get(error.status, error.reason)
        response = web.json_response(error_body(error.status, message), status=error.status)
        error_type = "body_too_large" if error.status == 413 else "bad_request"
    except Exception:
        log.exception("gateway: %s %s failed", request.method, request.path)
        response = web.json_response(error_body(500, "internal error"), status=500)
        error_type = "internal"
    if error_type is not None:
        settings = app[SETTINGS_KEY]
        app[METRICS_KEY].errors.labels(
            settings.deployment_label, ctx.version_label, error_type
        ).inc()
    if not response.prepared:
        response.headers.update(ctx.headers())
    return response


async def _read_json(request: web.Request) -> Any:
    body = await request.read()  # 413 above client_max_size
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GatewayError(400, f"the body is not JSON: {error}", "bad_request") from None


# --- chat completions ---------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What a chat completion turned into, for the metrics and the log."""

    finish_reason: str = "error"
    error: str | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_text: str | None = None
    raised: bool = False
    """The error went up to the middleware as an error response (which counts it)."""
    route: str = LOCAL
    fallback_reason: FallbackTrigger | None = None
    local_error: str | None = None
    """The local failure the fallback answered for (counted as an error all the same)."""
    refused: tuple[int | None, int | None, str] | None = None
    """A local refusal the fallback replaced: its tokens and text, for the drift tracker."""


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: relay to Ollama, measure, log."""
    app, ctx = request.app, _context(request)
    settings = app[SETTINGS_KEY]
    outcome = _Outcome()
    body: Any = None
    stream = False
    try:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise GatewayError(422, "the body must be a JSON object", "bad_request")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                422, "messages: a non-empty list is required", "bad_request", "messages"
            )
        stream = body.get("stream") is True
        upstream_body = {**body, "model": settings.model}
        if stream:
            options = body.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            upstream_body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            return await _stream_or_fall_back(request, ctx, upstream_body, wants_usage, outcome)
        return await _answer_or_fall_back(request, upstream_body, outcome)
    except GatewayError as error:
        outcome.error, outcome.raised = error.error_type, True
        raise
    except web.HTTPRequestEntityTooLarge:
        outcome.error, outcome.raised = "body_too_large", True
        raise
    finally:
        _account(app, ctx, stream, outcome, body)


def _fallback_trigger(error: GatewayError) -> FallbackTrigger | None:
    """Which fallback trigger a local failure is; None for the client's own mistakes (4xx)."""
    if error.error_type == "upstream_timeout":
        return "timeout"
    if error.error_type in ("upstream_unreachable", "upstream_protocol") or (
        error.error_type == "upstream_status" and error.status >= 500
    ):
        return "error"
    return None


def _fallback_target(settings: FallbackSettings) -> tuple[str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    return settings.url.rstrip("/") + "/chat/completions", headers


def _count_fallback_failure(app: web.Application, version: str, why: str) -> None:
    settings = app[SETTINGS_KEY]
    log.warning("gateway: the fallback did not answer: %s", why)  # never the key
    app[METRICS_KEY].errors.labels(settings.deployment_label, version, "fallback_failed").inc()


async def _answer_or_fall_back(
    request: web.Request, upstream_body: dict[str, Any], outcome: _Outcome
) -> web.StreamResponse:
    app = request.app
    fallback = app[SETTINGS_KEY].fallback
    if fallback is None:
        return await _relay(request, upstream_body, outcome)
    try:
        response = await _relay(request, upstream_body, outcome, limit_s=fallback.timeout_s)
    except GatewayError as error:
        trigger = _fallback_trigger(error)
        if trigger is None or trigger not in fallback.on:
            raise
        answered = await _fallback_answer(request, upstream_body, fallback, outcome, trigger)
        if answered is None:
            raise
        outcome.local_error = error.error_type
        return answered
    text = outcome.response_text
    if "refusal" in fallback.on and text is not None and is_refusal(text):
        local = (outcome.prompt_tokens, outcome.completion_tokens, text)
        answered = await _fallback_answer(request, upstream_body, fallback, outcome, "refusal")
        if answered is not None:
            outcome.refused = local
            return answered
    return response


async def _fallback_answer(
    request: web.Request,
    upstream_body: dict[str, Any],
    fallback: FallbackSettings,
    outcome: _Outcome,
    trigger: FallbackTrigger,
) -> web.Response | None:
    """The fallback's non-streamed answer, or None (counted) when it gives none; ``outcome``
    is changed only when it answers."""
    url, headers = _fallback_target(fallback)
    session = request.app[FALLBACK_SESSION_KEY]
    version = _context(request).version_label
    try:
        async with asyncio.timeout(fallback.timeout_s):
            async with session.post(
                url, json={**upstream_body, "model": fallback.model}, headers=headers
            ) as upstream:
                if upstream.status != 200:
                    _count_fallback_failure(request.app, version, f"HTTP {upstream.status}")
                    return None
                data = await upstream.read()
        answer = json.loads(data)
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
        message = choice.get("message") or {}
    except (TimeoutError, aiohttp.ClientError) as error:
        _count_fallback_failure(request.app, version, type(error).__name__)
        return None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        _count_fallback_failure(request.app, version, "not a chat completion")
        return None
    content = message.get("content") if isinstance(message, dict) else None
    outcome.route, outcome.fallback_reason = FALLBACK, trigger
    outcome.finish_reason = finish_reason_label(choice.get("finish_reason"))
    outcome.response_text = content if isinstance(content, str) else None
    outcome.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
    outcome.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    return web.Response(
        body=data, content_type="application/json", headers={"x-kubetune-route": FALLBACK}
    )


async def _stream_or_fall_back(
    request: web.Request,
    ctx: RequestContext,
    upstream_body: dict[str, Any],
    wants_usage: bool,
    outcome: _Outcome,
) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS_KEY]
    fallback = settings.fallback
    local_url = settings.ollama_url.rstrip("/") + "/v1/chat/completions"
    if fallback is None:
        return await _relay_stream(request, ctx, upstream_body, wants_usage, outcome,
                                   app[SESSION_KEY], local_url)  # fmt: skip
    try:
        return await _relay_stream(request, ctx, upstream_body, wants_usage, outcome,
                                   app[SESSION_KEY], local_url, limit_s=fallback.timeout_s)  # fmt: skip
    except GatewayError as error:  # raised only before the client got a byte
        trigger = _fallback_trigger(error)
        if trigger is None or trigger not in fallback.on:
            raise
        url, headers = _fallback_target(fallback)
        try:
            response = await _relay_stream(
                request, ctx, {**upstream_body, "model": fallback.model}, wants_usage, outcome,
                app[FALLBACK_SESSION_KEY], url, limit_s=fallback.timeout_s, headers=headers,
                route=FALLBACK,
            )  # fmt: skip
        except GatewayError as failed:
            _count_fallback_failure(app, ctx.version_label, failed.message)
            raise error from None
        outcome.fallback_reason, outcome.local_error = trigger, error.error_type
        return response


def _upstream_error(error: BaseException) -> GatewayError:
    if isinstance(error, TimeoutError):
        return GatewayError(504, "the model server did not answer in time", "upstream_timeout")
    return GatewayError(502, f"the model server is unreachable: {error}", "upstream_unreachable")


async def _upstream_status_error(upstream: aiohttp.ClientResponse) -> GatewayError:
    text = (await upstream.read()).decode(errors="replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:500] or upstream.reason or ""
    status = upstream.status if 400 <= upstream.status < 500 else 502
    return GatewayError(
        status, f"the model server answered {upstream.status}: {message}", "upstream_status"
    )


async def _relay(
    request: web.Request,
    upstream_body: dict[str, Any],
    outcome: _Outcome,
    limit_s: float | None = None,
) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    url = request.app[SETTINGS_KEY].ollama_url.rstrip("/") + "/v1/chat/completions"
    try:
        async with asyncio.timeout(limit_s), session.post(url, json=upstream_body) as upstream:
            if upstream.status != 200:
                raise await _upstream_status_error(upstream)
            data = await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _upstream_error(error) from None
    try:
        answer = json.loads(data)
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        raise GatewayError(502, "the model server's answer is not a chat completion",
                           "upstream_protocol") from None  # fmt: skip
    outcome.finish_reason = finish_reason_label(choice.get("finish_reason"))
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    outcome.response_text = content if isinstance(content, str) else None
    outcome.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
    outcome.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    return web.Response(body=data, content_type="application/json")


async def _relay_stream(
    request: web.Request,
    ctx: RequestContext,
    upstream_body: dict[str, Any],
    wants_usage: bool,
    outcome: _Outcome,
    session: aiohttp.ClientSession,
    url: str,
    *,
    limit_s: float | None = None,
    headers: dict[str, str] | None = None,
    route: str = LOCAL,
) -> web.StreamResponse:
    """Relay a stream; raises GatewayError only before the client got a byte (the upstream's
    first byte is awaited, within ``limit_s``, before the response is started)."""
    try:
        async with asyncio.timeout(limit_s) as deadline, session.post(
            url, json=upstream_body, headers=headers
        ) as upstream:
            if upstream.status != 200:
                raise await _upstream_status_error(upstream)
            first = await upstream.content.readany()
            if not first:
                raise GatewayError(502, "the model server's stream ended before its first byte",
                                   "upstream_protocol")  # fmt: skip
            deadline.reschedule(None)
            extra = {"x-kubetune-route": FALLBACK} if route == FALLBACK else {}
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **ctx.headers(),
                    **extra,
                }
            )
            await response.prepare(request)
            outcome.route = route
            # From here on the status is sent: _pump ends the stream itself on any failure.
            await _pump(upstream, first, response, ctx, wants_usage, outcome)
            return response
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _upstream_error(error) from None


async def _pump(
    upstream: aiohttp.ClientResponse,
    first: bytes,
    response: web.StreamResponse,
    ctx: RequestContext,
    wants_usage: bool,
    outcome: _Outcome,
) -> None:
    """Relay Ollama's SSE events (``data: …\\n\\n``) one by one, reading each as it passes."""
    buffer = b""
    parts: list[str] = []
    chunks_with_content = 0
    saw_usage = False
    try:
        async for data in _chunks(first, upstream):
            buffer += data
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[: end + 2], buffer[end + 2 :]
                payload = event.strip()
                if not payload.startswith(b"data:"):
                    await response.write(event)
                    continue
                payload = payload[5:].strip()
                if payload == b"[DONE]":
                    if outcome.finish_reason == "error":
                        outcome.finish_reason = "other"
                    _finish_counts(outcome, parts, chunks_with_content, saw_usage)
                    await response.write(event)
                    return
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    await response.write(event)
                    continue
                usage = chunk.get("usage") if isinstance(chunk, dict) else None
                choices = chunk.get("choices") if isinstance(chunk, dict) else None
                if isinstance(usage, dict):
                    saw_usage = True
                    outcome.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
                    outcome.completion_tokens = _int_or_none(usage.get("completion_tokens"))
                if isinstance(choices, list) and choices:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = time.perf_counter() - ctx.started
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    content = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(content, str) and content:
                        parts.append(content)
                        chunks_with_content += 1
                    if choice.get("finish_reason"):
                        outcome.finish_reason = finish_reason_label(choice["finish_reason"])
                elif isinstance(usage, dict) and not wants_usage:
                    continue  # the usage chunk the client did not ask for
                await response.write(event)
        outcome.error = "upstream_protocol"  # the stream ended without [DONE]
        outcome.finish_reason = "error"
        _finish_counts(outcome, parts, chunks_with_content, saw_usage)
        await _stream_error(response, "the model server's stream ended early")
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
        outcome.error, outcome.finish_reason = "client_disconnected", "cancelled"
        _finish_counts(outcome, parts, chunks_with_content, saw_usage)
    except (TimeoutError, aiohttp.ClientError) as error:
        outcome.error = (
            "upstream_timeout" if isinstance(error, TimeoutError) else "upstream_unreachable"
        )
        outcome.finish_reason = "error"
        _finish_counts(outcome, parts, chunks_with_content, saw_usage)
        await _stream_error(response, "the model server stopped answering")


async def _chunks(first: bytes, upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    yield first
    async for data in upstream.content.iter_any():
        yield data


def _finish_counts(outcome: _Outcome, parts: list[str], chunks: int, saw_usage: bool) -> None:
    outcome.response_text = "".join(parts)
    if not saw_usage:
        outcome.completion_tokens = chunks


async def _stream_error(response: web.StreamResponse, message: str) -> None:
    event = json.dumps(error_body(502, message))
    with contextlib.suppress(ConnectionResetError):  # the client has left
        await response.write(f"data: {event}\n\n".encode())


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _account(
    app: web.Application, ctx: RequestContext, stream: bool, outcome: _Outcome, body: Any
) -> None:
    """Metrics and the prediction log of one chat completion (no I/O: the log is queued)."""
    settings, metrics = app[SETTINGS_KEY], app[METRICS_KEY]
    elapsed = time.perf_counter() - ctx.started
    dep, ver = settings.deployment_label, ctx.version_label
    reason = outcome.finish_reason if outcome.error is None else (
        "cancelled" if outcome.error == "client_disconnected" else "error"
    )  # fmt: skip
    route = outcome.route
    metrics.requests.labels(dep, ver, route, reason).inc()
    metrics.request_duration.labels(dep, ver, route, reason).observe(elapsed)
    if outcome.error is not None and not outcome.raised:  # a stream that failed midway
        metrics.errors.labels(dep, ver, outcome.error).inc()
    if outcome.local_error is not None:  # the version failed, whoever answered
        metrics.errors.labels(dep, ver, outcome.local_error).inc()
    if outcome.fallback_reason is not None:
        metrics.fallbacks.labels(dep, ver, outcome.fallback_reason).inc()
    app[RETIREMENT_KEY].served(ctx.served.version, time.monotonic())
    _observe_drift(app, ctx, outcome)
    if route == FALLBACK:
        _log(app, ctx, stream, outcome, body, elapsed, reason)
        return  # token and latency series describe the version, not the fallback's model
    if outcome.ttft_s is not None:
        metrics.time_to_first_token.labels(dep, ver).observe(outcome.ttft_s)
        tokens = outcome.completion_tokens
        if tokens is not None and tokens > 1 and outcome.error is None:
            metrics.time_per_output_token.labels(dep, ver).observe(
                (elapsed - outcome.ttft_s) / (tokens - 1)
            )
    if outcome.prompt_tokens is not None:
        metrics.token_usage.labels(dep, ver, "input").observe(outcome.prompt_tokens)
    if outcome.completion_tokens is not None and outcome.error is None:
        metrics.token_usage.labels(dep, ver, "output").observe(outcome.completion_tokens)
    _log(app, ctx, stream, outcome, body, elapsed, reason)


def _observe_drift(app: web.Application, ctx: RequestContext, outcome: _Outcome) -> None:
    """What the local model answered, for its version's drift (a replaced refusal included)."""
    version = ctx.served.version
    if outcome.refused is not None:
        prompt_tokens, completion_tokens, text = outcome.refused
    elif outcome.route == LOCAL and outcome.error is None:
        prompt_tokens, completion_tokens, text = (
            outcome.prompt_tokens, outcome.completion_tokens, outcome.response_text or ""
        )  # fmt: skip
    else:
        return
    if version is not None and prompt_tokens is not None and completion_tokens is not None:
        tracker = app[DRIFT_KEY]
        reference = ctx.served.drift_reference
        if reference is not None and not tracker.has_reference(version):
            tracker.set_reference(
                version,
                reference.prompt_tokens,
                reference.completion_tokens,
                refusal_rate=reference.refusal_rate,
                empty_rate=reference.empty_rate,
            )
        tracker.observe(version, prompt_tokens, completion_tokens, text)


def _log(
    app: web.Application,
    ctx: RequestContext,
    stream: bool,
    outcome: _Outcome,
    body: Any,
    elapsed: float,
    reason: str,
) -> None:
    prompt = None
    if isinstance(body, dict) and outcome.error not in ("bad_request", "body_too_large"):
        prompt = json.dumps(body.get("messages"), ensure_ascii=False)
    app[LOG_KEY].record(
        Prediction(
            time=time.time(),
            request_id=ctx.request_id,
            version=ctx.served.version,
            digest=ctx.served.digest,
            route=outcome.route,
            stream=stream,
            latency_s=elapsed,
            ttft_s=outcome.ttft_s,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            finish_reason=reason,
            error=outcome.error,
            prompt=prompt,
            response=outcome.response_text,
        )
    )


# --- the other routes ---------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the one model this deployment serves."""
    settings = request.app[SETTINGS_KEY]
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": settings.model, "object": "model", "created": 0, "owned_by": "kubetune"}
            ],
        }
    )


async def feedback(request: web.Request) -> web.Response:
    """``POST /v1/feedback``: one score per request id; a second post replaces the first."""
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise GatewayError(422, "the body must be a JSON object", "bad_request")
    request_id = body.get("requestId")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
        raise GatewayError(422, "requestId: a string of 1-128 characters is required",
                           "bad_request", "requestId")  # fmt: skip
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise GatewayError(422, "score: an integer from 1 to 5 is required", "bad_request",
                           "score")  # fmt: skip
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 4096):
        raise GatewayError(422, "comment: a string of at most 4096 characters", "bad_request",
                           "comment")  # fmt: skip
    outcome = await asyncio.wrap_future(request.app[LOG_KEY].feedback(request_id, score, comment))
    if outcome == "unknown_request":
        raise GatewayError(404, f"no prediction with requestId {request_id!r}", "bad_request",
                           "requestId")  # fmt: skip
    return web.json_response({"requestId": request_id, "score": score, "status": outcome})


async def metrics_text(request: web.Request) -> web.Response:
    """``GET /metrics``: the gateway's registry in Prometheus' text format."""
    app = request.app
    app[RETIREMENT_KEY].served(app[PROVIDER_KEY]().version, time.monotonic())
    data = generate_latest(app[METRICS_KEY].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def predictions(request: web.Request) -> web.StreamResponse:
    """``GET /v1/predictions``: the log as JSONL for the next fine-tune (:mod:`.export`)."""
    try:
        return await export_predictions(request, request.app[SETTINGS_KEY].db_path)
    except ExportQueryError as exc:
        raise GatewayError(422, str(exc), "bad_request", exc.param) from None


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the gateway answers (whether Ollama does is /readyz of the agent)."""
    return web.Response(text="ok\n")


# --- the application ----------------------------------------------------------------------------


def create_app(
    settings: GatewaySettings,
    version: VersionProvider,
    *,
    metrics: GatewayMetrics | None = None,
) -> web.Application:
    """The gateway as an aiohttp application; its startup opens the log and the upstream pool,
    its cleanup writes what is queued and closes both."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_stamp_and_catch])
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics or GatewayMetrics()
    app[PROVIDER_KEY] = version
    app[DRIFT_KEY] = DriftTracker(settings.deployment_label, settings.drift)
    app[DRIFT_KEY].register(app[METRICS_KEY].registry)
    app[RETIREMENT_KEY] = VersionRetirement(app[DRIFT_KEY], settings.drift_forget_after_s)
    app[LOG_KEY] = PredictionLog(settings, app[METRICS_KEY], app[DRIFT_KEY])
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/v1/predictions", predictions)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/healthz", healthz)
    return app


async def _resources(app: web.Application) -> Any:
    settings = app[SETTINGS_KEY]
    await asyncio.get_running_loop().run_in_executor(None, app[LOG_KEY].start)
    app[SESSION_KEY] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=settings.upstream_connections, keepalive_timeout=60, ttl_dns_cache=None
        ),
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_connect_timeout_s,
            sock_read=settings.upstream_timeout_s,
        ),
        skip_auto_headers=("User-Agent",),
    )
    fallback = settings.fallback
    if fallback is not None:
        app[FALLBACK_SESSION_KEY] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=fallback.timeout_s)
        )
    yield
    if fallback is not None:
        await app[FALLBACK_SESSION_KEY].close()
    await app[SESSION_KEY].close()
    await asyncio.get_running_loop().run_in_executor(None, app[LOG_KEY].close)
