"""The Ollama endpoints the serve-agent calls (v0.11.4), and nothing more.

Two kinds of failure: :class:`OllamaUnreachable` (no answer: connection refused, reset or timed
out; Ollama is down or restarting, so nothing is concluded from it) and :class:`OllamaError`
(Ollama answered with an error status; the message is Ollama's own).

Every request that can stream sends ``"stream": false``: streamed, Ollama answers 200 and puts
a failure in its last line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

UPLOAD_CHUNK_BYTES = 1 << 20
_BLOB_DIGEST = re.compile(r"sha256[-:]([0-9a-f]{64})")


class OllamaUnreachable(Exception):
    """Ollama did not answer (down, restarting, or too slow)."""


class OllamaError(Exception):
    """Ollama answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """What ``POST /api/show`` says of a model."""

    gguf_sha256: str | None
    """Digest of the model's GGUF blob (its FROM), None if Ollama shows none."""
    template: str
    system: str


@dataclass(frozen=True)
class LoadedModel:
    """One entry of ``GET /api/ps`` (one runner)."""

    name: str
    digest: str
    """Digest of the manifest of ``name`` (as ``/api/tags`` reports it)."""
    expires_at: datetime | None


class OllamaClient:
    """A small synchronous client; safe to share between the agent's threads."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        slow_timeout: float = 600.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        # Creating, loading and generating read or load a whole model: minutes for a big one.
        self._slow = httpx.Timeout(slow_timeout, connect=connect_timeout)
        self._http = httpx.Client(base_url=self.base_url, timeout=self._timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def tags(self) -> dict[str, str]:
        """Every registered model, name -> manifest digest (``GET /api/tags``)."""
        models = self._json("GET", "/api/tags").get("models") or []
        return {str(m["name"]): str(m.get("digest", "")) for m in models}

    def show(self, name: str) -> ModelInfo | None:
        """``POST /api/show``; None when there is no such model."""
        try:
            data = self._json("POST", "/api/show", {"model": name})
        except OllamaError as exc:
            if exc.status == 404:
                return None
            raise
        found = None
        for line in str(data.get("modelfile", "")).splitlines():
            if line.startswith("FROM "):
                match = _BLOB_DIGEST.search(line)
                found = match.group(1) if match else None
                break
        return ModelInfo(
            gguf_sha256=found,
            template=str(data.get("template", "")),
            system=str(data.get("system", "")),
        )

    def has_blob(self, sha256: str) -> bool:
        """Whether Ollama holds blob ``sha256`` (``HEAD /api/blobs/sha256:<hex>``)."""
        response = self._request("HEAD", f"/api/blobs/sha256:{sha256}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise OllamaError(response.status_code, response.text or "HEAD blob failed")

    def push_blob(self, sha256: str, path: Path) -> None:
        """Stream ``path`` to Ollama as blob ``sha256``; Ollama re-hashes it and answers 400 on a
        mismatch (raised as :class:`OllamaError`)."""
        size = path.stat().st_size
        self._json(
            "POST",
            f"/api/blobs/sha256:{sha256}",
            content=_file_chunks(path),
            headers={"Content-Length": str(size)},
            timeout=self._slow,
        )

    def create(self, request: dict[str, Any]) -> None:
        """``POST /api/create`` with a body from :func:`~kubetune.serving.modelfile.create_request`."""
        self._json("POST", "/api/create", {**request, "stream": False}, timeout=self._slow)

    def copy(self, source: str, destination: str) -> None:
        """``POST /api/copy``: ``destination`` becomes a copy of ``source``'s manifest."""
        self._json("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, name: str) -> bool:
        """``DELETE /api/delete``; False when there was no such model."""
        try:
            self._json("DELETE", "/api/delete", {"model": name})
        except OllamaError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def load(self, name: str, keep_alive: int | str) -> None:
        """Load ``name`` without generating (a generate request without prompt)."""
        self._json(
            "POST",
            "/api/generate",
            {"model": name, "keep_alive": keep_alive, "stream": False},
            timeout=self._slow,
        )

    def unload(self, name: str) -> None:
        """Unload the runner of ``name`` (and of every name sharing its GGUF)."""
        self._json("POST", "/api/generate", {"model": name, "keep_alive": 0, "stream": False})

    def generate(
        self, name: str, *, keep_alive: int | str | None = None, prompt: str = "Hi"
    ) -> None:
        """A 1-token generation; ``keep_alive`` None leaves a loaded runner's own unchanged."""
        body: dict[str, Any] = {
            "model": name,
            "prompt": prompt,
            "options": {"num_predict": 1},
            "stream": False,
        }
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        self._json("POST", "/api/generate", body, timeout=self._slow)

    def ps(self) -> list[LoadedModel]:
        """The loaded runners (``GET /api/ps``)."""
        models = self._json("GET", "/api/ps").get("models") or []
        return [
            LoadedModel(
                name=str(m.get("name", "")),
                digest=str(m.get("digest", "")),
                expires_at=_parse_time(m.get("expires_at")),
            )
            for m in models
        ]

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        try:
            return self._http.request(
                method,
                path,
                json=body,
                content=content,
                headers=headers,
                timeout=timeout or self._timeout,
            )
        except httpx.TransportError as exc:
            raise OllamaUnreachable(
                f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}"
            ) from exc

    def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        response = self._request(method, path, body, **kwargs)
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {"error": response.text[:500]}
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise OllamaError(response.status_code, str(message or response.text[:500]))
        return data if isinstance(data, dict) else {}


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(UPLOAD_CHUNK_BYTES), b"")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # Go writes nanoseconds; Python's fromisoformat takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
