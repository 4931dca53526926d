"""What the gateway is told, and where it learns which version is served.

The served version changes while the gateway runs (the serve-agent moves the alias), so it is
not a setting but a :data:`VersionProvider`: a callable the gateway asks once per request. The
serve-agent passes one that reads its own status; tests and the stand-alone process pass a
:class:`StaticVersion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubetune.api.serving import DriftReference
from kubetune.serving.drift import DriftSettings

ContentMode = Literal["full", "redacted", "none"]
CONTENT_MODES: tuple[ContentMode, ...] = ("full", "redacted", "none")

MIB = 1 << 20


@dataclass(frozen=True)
class ServedVersion:
    """The version the alias points at, as the serve-agent last read it back from Ollama."""

    version: str | None
    """Version name (``v2``); None while nothing is served yet."""
    digest: str | None
    """sha256 of the served GGUF."""
    drift_reference: DriftReference | None = None
    """The version's drift reference (its FineTuneJob's test split), when it has one."""


VersionProvider = Callable[[], ServedVersion]
"""Called on every request, on the event loop: it must return at once (no I/O)."""


@dataclass(frozen=True)
class StaticVersion:
    """A provider that always answers the same version (tests, a stand-alone gateway)."""

    served: ServedVersion

    def __call__(self) -> ServedVersion:
        return self.served


FallbackTrigger = Literal["error", "timeout", "refusal"]
FALLBACK_TRIGGERS: tuple[FallbackTrigger, ...] = ("error", "timeout", "refusal")


@dataclass(frozen=True)
class FallbackSettings:
    """An OpenAI-compatible model that answers when the local one fails (``spec.fallback``)."""

    url: str
    """Base URL as the OpenAI SDK's ``base_url`` (``https://api.openai.com/v1``): the gateway
    posts to ``<url>/chat/completions``."""
    model: str
    api_key: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer``; never logged, never in a repr."""
    timeout_s: float = 30.0
    """Longest wait for the local answer (a stream: its first byte) before the fallback answers,
    and for the fallback's next byte."""
    on: frozenset[FallbackTrigger] = frozenset({"error", "timeout"})
    """Which local failures the fallback answers: ``error``, ``timeout``, ``refusal``."""


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway is told. Limits and why:"""

    ollama_url: str
    """The pod's Ollama, e.g. ``http://127.0.0.1:11434``."""
    model: str
    """The model name clients call and the alias of the served version (the deployment's name)."""
    db_path: Path
    """The prediction log (SQLite, WAL); its directory must exist."""
    deployment: str = ""
    """The ``deployment`` label of every metric; the model name when empty."""
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    content: ContentMode = "redacted"
    """What of prompts and answers is stored: ``full``; ``redacted`` (secrets and personal data
    replaced by ``[REDACTED:<rule>]``); ``none`` (counts and timings only)."""
    max_body_bytes: int = MIB
    """Largest request body (413 above): 1 MiB is a long conversation (~250k tokens of text)."""
    upstream_timeout_s: float = 300.0
    """Longest wait for Ollama's next byte (504 after): a cold load of an 8B model plus a long
    generation without streaming stays well under five minutes."""
    upstream_connect_timeout_s: float = 5.0
    upstream_connections: int = 256
    """Pooled keep-alive connections to Ollama; Ollama queues beyond OLLAMA_NUM_PARALLEL."""
    retention_days: float = 30.0
    """Predictions and feedback older than this are deleted (checked hourly and at start)."""
    max_db_bytes: int = 1024 * MIB
    """Above this the oldest predictions are deleted down to 90 % of it (checked every 100)."""
    max_stored_chars: int = 32_768
    """A stored prompt or answer is cut to this many characters."""
    max_pending: int = 10_000
    """Predictions waiting for the writer; beyond, new ones are dropped and counted
    (``kubetune_gateway_errors_total{error_type="log_dropped"}``) rather than slowing answers."""
    fallback: FallbackSettings | None = None
    """The model that answers when the local one fails; None: the local model only."""
    drift: DriftSettings = field(default_factory=DriftSettings)
    """Window sizes and minimum samples of the gateway's :class:`~kubetune.serving.drift.DriftTracker`."""
    drift_forget_after_s: float = 6 * 3600.0
    """A version not served for this long loses its drift windows (served again later, it starts
    afresh, as after a promotion). Six hours keeps a rolled-back version's windows while someone
    looks at them; the tracker's ``max_versions`` bounds memory whatever this says."""

    @property
    def deployment_label(self) -> str:
        """The deployment label value."""
        return self.deployment or self.model
