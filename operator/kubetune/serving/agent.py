"""The serve-agent's loop: make this pod's Ollama hold what serving.json says, and say so.

Every ``poll_interval_s`` (1 s) one pass, level-triggered:

1. read serving.json; missing or invalid: not ready, the message says why, and the last good
   config is still held (nothing is deleted while the file is bad);
2. list Ollama's models; no answer: not ready, ``ollamaReachable`` false, nothing deleted, Ready
   versions go back to Registered (re-checked once Ollama is back), retried with exponential
   backoff up to ``max_backoff_s``;
3. versions not Ready are prepared in worker threads (:mod:`kubetune.serving.versions`);
   failures name the version and step and are retried with backoff, except permanent ones (a
   checksum mismatch; Ollama refusing the same file three times in a row);
4. the alias ``<model>`` is copied from the served version once that version is Ready here,
   read back (its GGUF digest must be the served one) and asked for one token; only then
   /readyz answers 200. A served version that is not Ready here (it failed on this pod) leaves
   the alias where it was, on the last good version, and the pod not ready: readiness means
   "the alias serves the configured version", so the Service sends clients to pods that do;
5. models ``<model>:<tag>`` no longer listed are unloaded and deleted, except one the alias
   still points at while the alias is not yet on the served version;
6. ``keep_loaded`` versions and the served one are kept loaded (``keep_alive`` forever);
   runners of other versions that were pinned so are unloaded.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kubetune.api.serving import (
    AgentStatus,
    AgentVersionState,
    DriftReference,
    ServingConfig,
    ServingVersion,
    VersionPhase,
    ollama_tag,
)
from kubetune.serving.config import AgentSettings, ConfigError, read_serving_config
from kubetune.serving.failures import StepFailure
from kubetune.serving.fetch import cached_path, remove_partials
from kubetune.serving.gateway.settings import ServedVersion
from kubetune.serving.ollama import OllamaClient, OllamaError, OllamaUnreachable
from kubetune.serving.tags import ALIAS_TAG, ModelTags, VersionView
from kubetune.serving.versions import Sources, prepare_version

log = logging.getLogger("kubetune.serving")

PERMANENT_AFTER = 3  # Ollama refusing the same version this many times in a row is permanent
MESSAGE_LIMIT = 1024  # ShortText


@dataclass
class _Version:
    spec: ServingVersion
    state: AgentVersionState
    failures: int = 0
    next_attempt: float = 0.0
    manifest: str | None = None
    """Ollama's manifest digest of the tag when it became Ready (a change means re-check)."""
    drift_reference: DriftReference | None = None
    """What the gateway measures this version's drift against, when the version has one."""


@dataclass
class _State:
    config: ServingConfig | None = None
    raw: bytes | None = None
    config_error: str | None = None
    versions: dict[str, _Version] = field(default_factory=dict)
    reachable: bool = False
    ready: bool = False
    message: str = "starting"


class ServeAgent:
    """One pod's agent. :meth:`run` loops until :meth:`stop`; :meth:`status` is thread-safe."""

    def __init__(self, settings: AgentSettings, client: OllamaClient | None = None) -> None:
        self.settings = settings
        self.client = client or OllamaClient(settings.ollama_url)
        self.sources = Sources(cache_dir=settings.cache_dir, pvc_root=settings.pvc_root)
        self.heartbeat = time.monotonic()
        self.served_version = ServedVersion(None, None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubetune-version")
        self._inflight: dict[str, Future[None]] = {}
        self._s = _State()
        self.tags = ModelTags(
            self.client,
            recheck_interval_s=settings.recheck_interval_s,
            retry_s=settings.max_backoff_s,
        )
        self._unreachable_count = 0

    # --- public ------------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile until :meth:`stop` is called."""
        remove_partials(self.settings.cache_dir)
        while not self._stop.is_set():
            try:
                delay = self.reconcile_once()
            except Exception as exc:  # a bug in one pass must not end the loop (and /healthz)
                log.exception("reconcile pass failed")
                self._set_ready(False, f"agent error: {exc!r}")
                delay = self.settings.max_backoff_s
            self._stop.wait(delay)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current pass."""
        self._stop.set()

    def status(self) -> AgentStatus:
        """What this pod holds, for ``GET /status``."""
        with self._lock:
            s, alias_gguf = self._s, self.tags.alias_gguf
            config = s.config
            served = None
            if config is not None and alias_gguf is not None:
                by_digest = [
                    v.spec.name for v in s.versions.values() if v.spec.sha256 == alias_gguf
                ]
                served = (
                    config.served if config.served in by_digest else next(iter(by_digest), None)
                )
            return AgentStatus(
                pod=self.settings.pod,
                revision=config.revision if config is not None else None,
                ollama_reachable=s.reachable,
                served=served,
                served_digest=alias_gguf,
                ready=s.ready,
                versions=[v.state.model_copy() for v in s.versions.values()],
                message=_short(s.message),
            )

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not) for ``GET /readyz``."""
        with self._lock:
            return self._s.ready, self._s.message

    # --- one pass ----------------------------------------------------------------------------

    def reconcile_once(self) -> float:
        """One pass of the loop; returns the seconds to wait before the next."""
        self.heartbeat = time.monotonic()
        self._poll_config()
        delay, ready, why = self._reconcile()
        if self._s.config_error is not None:
            config = self._s.config
            held = f"; holding revision {config.revision}" if config is not None else ""
            # Keep serving what the last good config says: one bad edit of the ConfigMap must
            # not take every pod out of the Service at once. /status carries the error.
            why = f"{self._s.config_error}{held}" + (f"; {why}" if why else "")
        self._set_ready(ready, why)
        status = self.status()
        with self._lock:
            entry = self._s.versions.get(status.served) if status.served else None
            reference = entry.drift_reference if entry is not None else None
        # Read by the gateway on every request (no lock, no I/O): an attribute swap is atomic.
        self.served_version = ServedVersion(status.served, status.served_digest, reference)
        return delay

    def _reconcile(self) -> tuple[float, bool, str]:
        config = self._s.config
        if config is None:
            return self.settings.poll_interval_s, False, "no serving config yet"
        try:
            tags = self.client.tags()
        except OllamaUnreachable as exc:
            return self._on_unreachable(exc)
        self._on_reachable()
        self._schedule(config, tags)
        try:
            views = self._views()
            ready, why = self.tags.reconcile_alias(config, tags, views)
            if self._s.config_error is None:  # a bad file may be half-written: delete nothing
                self.tags.delete_unlisted(config, tags, views)
            self.tags.keep_loaded(config, views)
        except OllamaUnreachable as exc:
            return self._on_unreachable(exc)
        except OllamaError as exc:
            log.error("Ollama refused a request: %s", exc)
            ready, why = False, f"Ollama refused a request: {exc}"
        return self.settings.poll_interval_s, ready, why

    def _poll_config(self) -> None:
        try:
            config, raw = read_serving_config(self.settings.config_path)
        except ConfigError as exc:
            if str(exc) != self._s.config_error:
                log.error("%s", exc)
            self._s.config_error = str(exc)
            return
        if self._s.config_error is not None:
            log.info("%s is readable again", self.settings.config_path)
        self._s.config_error = None
        if raw == self._s.raw:
            return
        log.info(
            "applying revision %s: versions %s, served %s, keep loaded %s",
            config.revision,
            [v.name for v in config.versions],
            config.served,
            config.keep_loaded,
        )
        with self._lock:
            self._s.config, self._s.raw = config, raw
            old = self._s.versions
            self._s.versions = {
                v.name: old[v.name]
                if v.name in old and old[v.name].spec == v
                else _Version(spec=v, state=AgentVersionState(name=v.name, sha256=v.sha256))
                for v in config.versions
            }
        self._evict_cache(config)

    def _evict_cache(self, config: ServingConfig) -> None:
        wanted = {cached_path(self.settings.cache_dir, v.sha256) for v in config.versions}
        wanted |= {
            cached_path(self.settings.cache_dir, v.modelfile_sha256)
            for v in config.versions
            if v.modelfile_sha256
        }
        if self.settings.cache_dir.is_dir():
            for path in self.settings.cache_dir.glob("sha256-*"):
                if path not in wanted:
                    path.unlink(missing_ok=True)

    # --- Ollama up or down --------------------------------------------------------------------

    def _on_unreachable(self, exc: OllamaUnreachable) -> tuple[float, bool, str]:
        self._unreachable_count += 1
        delay = min(
            self.settings.max_backoff_s,
            self.settings.poll_interval_s * 2.0 ** (self._unreachable_count - 1),
        )
        with self._lock:
            if self._s.reachable or self._unreachable_count == 1:
                log.warning("Ollama unreachable (%s); not ready, deleting nothing, retrying", exc)
            self._s.reachable = False
            for v in self._s.versions.values():
                if v.state.phase == "Ready":
                    v.state.phase, v.state.message = (
                        "Registered",
                        "re-checking: Ollama was unreachable",
                    )
                    v.next_attempt = 0.0
            self.tags.forget()
        return (
            delay,
            False,
            f"Ollama at {self.client.base_url} is unreachable; retrying in {delay:.0f} s",
        )

    def _on_reachable(self) -> None:
        if not self._s.reachable:
            log.info("Ollama at %s answers", self.client.base_url)
        self._unreachable_count = 0
        with self._lock:
            self._s.reachable = True

    # --- versions -----------------------------------------------------------------------------

    def _schedule(self, config: ServingConfig, tags: dict[str, str]) -> None:
        keep = set(config.keep_loaded) | ({config.served} if config.served else set())
        now = time.monotonic()
        with self._lock:
            for v in self._s.versions.values():
                tag = ollama_tag(config.model, v.spec.name)
                if v.state.phase == "Ready":
                    if v.manifest is None:
                        v.manifest = tags.get(tag)
                    if tags.get(tag) != v.manifest:
                        log.warning("%s changed or vanished in Ollama; checking it again", tag)
                        v.state.phase, v.state.message, v.manifest = (
                            "Pending",
                            "changed in Ollama",
                            None,
                        )
                    continue
                if v.state.permanent or v.spec.name in self._inflight or now < v.next_attempt:
                    continue
                if v.spec.name == ALIAS_TAG:
                    self._fail(
                        v, StepFailure("register", f"{tag} is the alias's own name", permanent=True)
                    )
                    continue
                future = self._pool.submit(self._prepare, v, config.model, v.spec.name in keep)
                self._inflight[v.spec.name] = future

    def _prepare(self, entry: _Version, model: str, keep_loaded: bool) -> None:
        name = entry.spec.name

        def progress(phase: VersionPhase, message: str, *, verified: bool = False) -> None:
            with self._lock:
                entry.state.phase, entry.state.message = phase, _short(message)
                entry.state.step = None  # a new attempt is under way
                entry.state.sha256_verified = entry.state.sha256_verified or verified

        try:
            entry.drift_reference = prepare_version(
                self.client,
                self.sources,
                model,
                entry.spec,
                keep_loaded=keep_loaded,
                progress=progress,
            )
        except StepFailure as failure:
            with self._lock:
                self._fail(entry, failure)
        except OllamaUnreachable as exc:
            with self._lock:
                if entry.state.phase == "Fetching":
                    entry.state.phase = "Pending"
                entry.state.message = _short(f"waiting for Ollama: {exc}")
                entry.next_attempt = 0.0  # the loop schedules nothing while Ollama is away
        except Exception as exc:  # a bug must not stop the other versions
            log.exception("%s: unexpected error", name)
            with self._lock:
                self._fail(
                    entry, StepFailure(entry.state.step or "register", f"unexpected error: {exc!r}")
                )
        else:
            log.info("%s:%s is Ready", model, name)
            with self._lock:
                entry.state.phase, entry.state.step, entry.state.message = "Ready", None, ""
                entry.state.permanent, entry.failures, entry.manifest = False, 0, None
        finally:
            with self._lock:
                self._inflight.pop(name, None)

    def _fail(self, entry: _Version, failure: StepFailure) -> None:
        """Record a failure (the lock is held)."""
        entry.failures += 1
        permanent = failure.permanent or (
            failure.step in ("register", "load", "generate") and entry.failures >= PERMANENT_AFTER
        )
        delay = min(self.settings.version_max_backoff_s, 2.0**entry.failures)
        entry.next_attempt = time.monotonic() + delay
        state = entry.state
        state.phase, state.step, state.permanent = "Failed", failure.step, permanent
        retry = "permanent, not retried" if permanent else f"retrying in {delay:.0f} s"
        state.message = _short(
            f"version {state.name}: {failure.step} failed ({retry}): {failure.message}"
        )
        log.error("%s", state.message)

    def _views(self) -> dict[str, VersionView]:
        with self._lock:
            return {
                n: VersionView(sha256=v.spec.sha256, phase=v.state.phase, message=v.state.message)
                for n, v in self._s.versions.items()
            }

    def _set_ready(self, ready: bool, message: str) -> None:
        with self._lock:
            if ready != self._s.ready:
                if ready:
                    log.info("ready")
                else:
                    log.info("not ready: %s", message)
            self._s.ready, self._s.message = ready, message


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"
