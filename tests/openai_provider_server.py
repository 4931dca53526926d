"""A local stand-in for OpenAI's files + fine-tuning + chat API, with scripted job lifecycles.

OpenAI's cloud cannot be reached here (no internet), so this server speaks the same protocol
over real HTTP on 127.0.0.1, with the response shapes of the pinned `openai` package's types
(`types/file_object.py`, `types/fine_tuning/fine_tuning_job.py`, `…_event.py`,
`jobs/fine_tuning_job_checkpoint.py`) and OpenAI-style error bodies, so the provider runner is
exercised through the `openai` client, its multipart uploads, retries and status handling
exactly as in production. Routes:

    POST /v1/files                                   multipart upload (purpose fine-tune)
    GET  /v1/files/{id}, /v1/files/{id}/content
    POST /v1/fine_tuning/jobs                        create
    GET  /v1/fine_tuning/jobs/{id}                   retrieve (each call advances the lifecycle)
    GET  /v1/fine_tuning/jobs/{id}/events            newest first, `after` / `limit`
    GET  /v1/fine_tuning/jobs/{id}/checkpoints
    POST /v1/fine_tuning/jobs/{id}/cancel|pause|resume
    POST /v1/chat/completions                        a fine-tuned model answers `chat_answer`,
                                                     a base model `base_chat_answer`

A job's lifecycle is a :class:`Lifecycle` chosen by the job's base model (`lifecycles`, else
`default`): the statuses it passes through, one per retrieve (validating_files → queued →
running… → succeeded / failed with `error.code` / cancelled), metrics events while running, a
checkpoint per `checkpoint_every` steps. Pause holds the lifecycle where it is (status
`paused`) until resume; `hold_running` keeps running jobs running until it is cleared.
`api_key` is checked on every request; a wrong key gets 401 with the
key echoed in the message, as OpenAI does (partly masked there), so a runner that forwards
the message would leak it. `rate_limited_creates` answers that many job creations with 429 and
Retry-After first.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass(frozen=True)
class Lifecycle:
    """What a fine-tuning job goes through, one status per retrieve of the job."""

    statuses: tuple[str, ...] = (
        "validating_files",
        "queued",
        "running",
        "running",
        "running",
        "succeeded",
    )
    """Statuses in turn; the last one stays."""
    error_code: str | None = None
    """`error.code` when the lifecycle ends failed, e.g. invalid_training_file."""
    error_message: str = "scripted failure"
    total_steps: int = 30
    trained_tokens: int = 12345
    checkpoint_every: int = 10


@dataclass
class FakeJob:
    """A job as the server keeps it."""

    id: str
    body: dict[str, Any]
    lifecycle: Lifecycle
    created_at: int
    position: int = 0
    status: str = "validating_files"
    paused: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    finished_at: int | None = None
    retrieves: int = 0


def _error(message: str, code: str | None, type_: str = "invalid_request_error",
           param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class FakeOpenAIProvider:
    """Threaded HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(
        self,
        *,
        api_key: str = "sk-test-kubetune-0123456789abcdefghijklmnop",
        lifecycles: dict[str, Lifecycle] | None = None,
        default: Lifecycle | None = None,
        fine_tunable: tuple[str, ...] = ("gpt-4o-mini-2024-07-18", "gpt-4.1-nano-2025-04-14"),
        rate_limited_creates: int = 0,
        quota_exceeded: bool = False,
        organization: str = "org-kubetune",
        chat_answer: str = "billing",
        base_chat_answer: str = "I cannot tell which team this is for.",
    ) -> None:
        self.api_key = api_key
        self.lifecycles = lifecycles or {}
        self.default = default or Lifecycle()
        self.fine_tunable = fine_tunable
        self.rate_limited_creates = rate_limited_creates
        self.quota_exceeded = quota_exceeded
        self.organization = organization
        self.chat_answer = chat_answer
        self.base_chat_answer = base_chat_answer
        self.files: dict[str, dict[str, Any]] = {}
        self.file_content: dict[str, bytes] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.headers_seen: list[dict[str, str]] = []  # lower-case names
        self.create_attempts = 0
        self.hold_running = False
        """While true, a running job stays where it is (a long training, without a long test)."""
        self.chat_requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-openai", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL to hand to an OpenAI client (ends in /v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> FakeOpenAIProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def only_job(self) -> FakeJob:
        """The one job created (fails the test if there is not exactly one)."""
        assert len(self.jobs) == 1, f"expected one job, got {list(self.jobs)}"
        return next(iter(self.jobs.values()))

    def uploaded_lines(self, file_id: str) -> list[dict[str, Any]]:
        """The JSONL records of an uploaded file."""
        return [json.loads(line) for line in self.file_content[file_id].decode().splitlines()]

    # -- job model -------------------------------------------------------------------------

    def _job_object(self, job: FakeJob) -> dict[str, Any]:
        body = job.body
        method = body.get("method") or {"type": "supervised", "supervised": {}}
        kind = method.get("type", "supervised")
        hyper = dict((method.get(kind) or {}).get("hyperparameters") or {})
        resolved = {
            "n_epochs": hyper.get("n_epochs", "auto") if hyper.get("n_epochs") != "auto" else 3,
            "batch_size": hyper.get("batch_size", 1) if hyper.get("batch_size") != "auto" else 1,
            "learning_rate_multiplier": (
                hyper.get("learning_rate_multiplier", 1.8)
                if hyper.get("learning_rate_multiplier") != "auto"
                else 1.8
            ),
        }
        succeeded = job.status == "succeeded"
        model = body["model"]
        suffix = body.get("suffix")
        error = None
        if job.status == "failed":
            error = {"code": job.lifecycle.error_code or "server_error",
                     "message": job.lifecycle.error_message, "param": None}
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": job.created_at,
            "error": error,
            "fine_tuned_model": (
                f"ft:{model}:{self.organization}:{suffix or 'kubetune'}:{job.id[-8:]}"
                if succeeded else None
            ),
            "finished_at": job.finished_at,
            "hyperparameters": resolved,
            "model": model,
            "organization_id": self.organization,
            "result_files": ["file-result0001"] if succeeded else [],
            "seed": body.get("seed", 42),
            "status": job.status,
            "trained_tokens": job.lifecycle.trained_tokens if succeeded else None,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "estimated_finish": (
                int(time.time()) + 60 * (len(job.lifecycle.statuses) - job.position)
                if job.status in ("running", "queued") else None
            ),
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": {"type": kind, kind: {"hyperparameters": resolved}},
            "user_provided_suffix": suffix,
        }

    def _event(self, job: FakeJob, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None) -> None:
        job.events.append({
            "id": f"ftevent-{job.id[-6:]}-{len(job.events):04d}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data or {},
            "type": "metrics" if data else "message",
        })

    def _advance(self, job: FakeJob) -> None:
        """One step of the lifecycle, taken on each retrieve."""
        job.retrieves += 1
        if job.paused or job.status in ("succeeded", "failed", "cancelled"):
            return
        if self.hold_running and job.status == "running":
            return
        life = job.lifecycle
        job.position = min(job.position + 1, len(life.statuses) - 1)
        status = life.statuses[job.position]
        previous, job.status = job.status, status
        if status == "running":
            runs = life.statuses[: job.position + 1].count("running")
            total_runs = max(1, life.statuses.count("running"))
            step = min(life.total_steps, round(life.total_steps * runs / total_runs))
            if previous != "running":
                self._event(job, "Fine-tuning job started")
            loss = round(2.0 / (1 + step / 5), 4)
            self._event(job, f"Step {step}/{life.total_steps}: training loss={loss}", data={
                "step": step, "total_steps": life.total_steps, "train_loss": loss,
                "valid_loss": round(loss * 1.1, 4), "train_mean_token_accuracy": 0.5,
            })
            if step % life.checkpoint_every == 0 or step == life.total_steps:
                job.checkpoints.append({
                    "id": f"ftckpt-{job.id[-6:]}-{step}",
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(time.time()),
                    "fine_tuned_model_checkpoint":
                        f"ft:{job.body['model']}:{self.organization}::{job.id[-8:]}:ckpt-step-{step}",
                    "fine_tuning_job_id": job.id,
                    "metrics": {"step": step, "train_loss": loss, "valid_loss": loss * 1.1,
                                "full_valid_loss": loss * 1.1},
                    "step_number": step,
                })
        elif status == "succeeded":
            job.finished_at = int(time.time())
            self._event(job, "The job has successfully completed")
        elif status == "failed":
            job.finished_at = int(time.time())
            self._event(job, f"Fine-tuning job failed: {life.error_message}", level="error")
        elif status == "cancelled":
            job.finished_at = int(time.time())
            self._event(job, "Fine-tuning job cancelled")
        elif status != previous:
            self._event(job, {"validating_files": "Validating training file",
                              "queued": "Fine-tuning job queued"}.get(status, status))

    # -- HTTP --------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                with server._lock:
                    server.requests.append((self.command, self.path))
                    server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                if auth == f"Bearer {server.api_key}":
                    return True
                given = auth.removeprefix("Bearer ")
                # OpenAI echoes (part of) the key it refused: a runner must never forward it.
                self._send(401, _error(f"Incorrect API key provided: {given}. You can find "
                                       "your API key at https://platform.openai.com/account/api-keys.",
                                       "invalid_api_key"))
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                path = url.path.rstrip("/")
                if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
                    data = server.file_content.get(m[1])
                    if data is None:
                        self._send(404, _error(f"No such File object: {m[1]}", None))
                        return
                    self._send_bytes(200, data, "application/octet-stream")
                    return
                if m := re.fullmatch(r"/v1/files/([\w-]+)", path):
                    obj = server.files.get(m[1])
                    if obj is None:
                        self._send(404, _error(f"No such File object: {m[1]}", None))
                        return
                    self._send(200, obj)
                    return
                m = re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)(/events|/checkpoints)?", path)
                if m is None:
                    self._send(404, _error(f"no route {self.path}", "unknown_url"))
                    return
                with server._lock:
                    job = server.jobs.get(m[1])
                    if job is None:
                        self._send(404, _error(f"Could not find fine-tune: {m[1]}", None,
                                               param="fine_tune_id"))
                        return
                    if m[2] is None:
                        server._advance(job)
                        payload = server._job_object(job)
                    elif m[2] == "/events":
                        payload = _page(list(reversed(job.events)), query)
                    else:
                        payload = _page(list(reversed(job.checkpoints)), query)
                self._send(200, payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if not self._authorised():
                    return
                path = urlparse(self.path).path.rstrip("/")
                if path == "/v1/files":
                    self._upload(raw)
                elif path == "/v1/fine_tuning/jobs":
                    self._create(json.loads(raw or b"{}"))
                elif m := re.fullmatch(r"/v1/fine_tuning/jobs/([\w-]+)/(cancel|pause|resume)", path):
                    self._action(m[1], m[2])
                elif path == "/v1/chat/completions":
                    self._chat(json.loads(raw or b"{}"))
                else:
                    self._send(404, _error(f"no route {self.path}", "unknown_url"))

            def _upload(self, raw: bytes) -> None:
                ctype = self.headers.get("Content-Type", "")
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                )
                fields: dict[str, tuple[str | None, bytes]] = {}
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    payload = part.get_payload(decode=True)
                    fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
                purpose = fields.get("purpose", (None, b""))[1].decode()
                filename, data = fields.get("file", (None, b""))
                if purpose != "fine-tune" or not data:
                    self._send(400, _error("file and purpose=fine-tune are required", None,
                                           param="purpose"))
                    return
                for n, line in enumerate(data.decode().splitlines(), start=1):
                    try:
                        json.loads(line)
                    except ValueError:
                        self._send(400, _error(f"line {n} is not JSON", "invalid_file_format"))
                        return
                with server._lock:
                    file_id = f"file-{len(server.files) + 1:08d}"
                    obj = {"id": file_id, "object": "file", "bytes": len(data),
                           "created_at": int(time.time()), "filename": filename or "upload.jsonl",
                           "purpose": "fine-tune", "status": "processed"}
                    server.files[file_id] = obj
                    server.file_content[file_id] = data
                self._send(200, obj)

            def _create(self, body: dict[str, Any]) -> None:
                with server._lock:
                    server.create_attempts += 1
                    limited = server.create_attempts <= server.rate_limited_creates
                if server.quota_exceeded:
                    self._send(429, _error(
                        "You exceeded your current quota, please check your plan and billing details.",
                        "insufficient_quota", type_="insufficient_quota"),
                        {"x-should-retry": "false"})
                    return
                if limited:
                    self._send(429, _error("Rate limit reached for requests", "rate_limit_exceeded",
                                           type_="requests"), {"Retry-After": "0.2"})
                    return
                model = body.get("model")
                if model not in server.fine_tunable:
                    self._send(400, _error(
                        f"Model {model} is not available for fine-tuning or does not exist.",
                        "model_not_available", param="model"))
                    return
                for key in ("training_file", "validation_file"):
                    if body.get(key) is not None and body[key] not in server.files:
                        self._send(400, _error(f"invalid {key}: {body[key]}", "invalid_file",
                                               param=key))
                        return
                suffix = body.get("suffix")
                if suffix is not None and len(suffix) > 64:
                    self._send(400, _error("suffix is longer than 64 characters", None,
                                           param="suffix"))
                    return
                with server._lock:
                    job_id = f"ftjob-{len(server.jobs) + 1:06d}abcdef"
                    job = FakeJob(id=job_id, body=body, created_at=int(time.time()),
                                  lifecycle=server.lifecycles.get(model, server.default))
                    job.status = job.lifecycle.statuses[0]
                    server._event(job, f"Created fine-tuning job: {job_id}")
                    server.jobs[job_id] = job
                    payload = server._job_object(job)
                self._send(200, payload)

            def _action(self, job_id: str, action: str) -> None:
                with server._lock:
                    job = server.jobs.get(job_id)
                    if job is None:
                        self._send(404, _error(f"Could not find fine-tune: {job_id}", None))
                        return
                    done = job.status in ("succeeded", "failed", "cancelled")
                    if action == "cancel" and not done:
                        job.status, job.paused = "cancelled", False
                        job.finished_at = int(time.time())
                        server._event(job, "Fine-tuning job cancelled")
                    elif action == "pause" and job.status == "running":
                        job.paused, job.status = True, "paused"
                        server._event(job, "Fine-tuning job paused")
                    elif action == "resume" and job.paused:
                        job.paused, job.status = False, "running"
                        server._event(job, "Fine-tuning job resumed")
                    else:
                        self._send(400, _error(f"cannot {action} a job that is {job.status}",
                                               None))
                        return
                    payload = server._job_object(job)
                self._send(200, payload)

            def _chat(self, body: dict[str, Any]) -> None:
                with server._lock:
                    server.chat_requests.append(body)
                    tuned = {server._job_object(j)["fine_tuned_model"] for j in server.jobs.values()}
                model = body.get("model")
                if model not in tuned and model not in server.fine_tunable:
                    self._send(404, _error(f"The model `{model}` does not exist or you do not "
                                           "have access to it.", "model_not_found"))
                    return
                content = server.chat_answer if model in tuned else server.base_chat_answer
                self._send(200, {
                    "id": f"chatcmpl-{len(server.chat_requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
                })

            def _send(self, status: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(self, status: int, data: bytes, ctype: str,
                            headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


def _page(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """A cursor page as OpenAI lists (newest first; `after` is the last id already seen)."""
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = int(query.get("limit", "20"))
    page = items[:limit]
    return {"object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None}
