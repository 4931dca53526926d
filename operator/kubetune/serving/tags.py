"""Ollama's models under the deployment's name, besides preparing versions: the alias, versions
no longer listed, and which runners stay loaded.

- The alias ``<model>`` (Ollama's ``<model>:latest``) is copied from the served version once
  that version is Ready here, read back (its GGUF digest must be the served one) and asked for
  one token; it is re-asked every ``recheck_interval_s``. Only then is the pod ready. A served
  version that is not Ready here leaves the alias where it was (the last good version) and the
  pod not ready.
- ``<model>:<tag>`` no longer listed is unloaded and deleted, except while the alias still
  points at it and has not yet moved to the served version.
- The served version and ``keep_loaded`` ones are kept loaded (``keep_alive`` forever, so a
  switch needs no load); runners of other versions that were pinned so are unloaded.

Ollama identifies a model's bytes by the digest of its manifest (``/api/tags``); the GGUF
digest behind a manifest is read once with ``/api/show`` and remembered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubetune.api.serving import ServingConfig, VersionPhase, ollama_tag
from kubetune.serving.ollama import OllamaClient, OllamaError
from kubetune.serving.versions import KEEP_FOREVER

log = logging.getLogger("kubetune.serving")

ALIAS_TAG = "latest"  # `<model>` is `<model>:latest` to Ollama
PINNED_BEYOND = timedelta(days=365)  # a runner expiring later than this was loaded forever


@dataclass(frozen=True)
class VersionView:
    """What the alias and the loaded-runner upkeep need to know of a version."""

    sha256: str
    phase: VersionPhase
    message: str = ""


class ModelTags:
    """Keeps the alias, deletions and loaded runners of one deployment's model in line."""

    def __init__(self, client: OllamaClient, *, recheck_interval_s: float, retry_s: float) -> None:
        self.client = client
        self.recheck_interval_s = recheck_interval_s
        self.retry_s = retry_s
        self.alias_gguf: str | None = None
        """GGUF digest the alias resolves to, as last read back (None: no alias, or unknown)."""
        self._alias_manifest: str | None = None
        self._checked_at: float | None = None
        self._retry_at = 0.0
        self._error = ""
        self._gguf_by_manifest: dict[str, str | None] = {}

    def forget(self) -> None:
        """Ollama went away: what was read back from it no longer holds."""
        self.alias_gguf, self._alias_manifest, self._checked_at = None, None, None

    def reconcile_alias(
        self, config: ServingConfig, tags: dict[str, str], versions: Mapping[str, VersionView]
    ) -> tuple[bool, str]:
        """Point the alias at the served version if it is Ready here; (ready, why not).

        ``tags`` is updated when the alias is re-pointed."""
        alias_name, alias_key = config.model, ollama_tag(config.model, ALIAS_TAG)
        manifest = tags.get(alias_key)
        if manifest != self._alias_manifest:
            self._alias_manifest, self._checked_at = manifest, None
            self.alias_gguf = self.gguf(alias_key, manifest)
        served = config.served
        if served is None:
            return False, "no version is served yet (serving.json has no served)"
        version = versions.get(served)
        if version is None:
            return False, f"served version {served} is not among the listed versions"
        tag = ollama_tag(config.model, served)
        target = tags.get(tag)
        if version.phase != "Ready" or target is None:
            where = next((n for n, v in versions.items() if v.sha256 == self.alias_gguf), None)
            why = f": {version.message}" if version.message else ""
            return False, (
                f"served version {served} is {version.phase} here{why}; "
                f"the alias stays on {where or self.alias_gguf or 'nothing'}"
            )
        if manifest != target:
            started = time.monotonic()
            self.client.copy(tag, alias_name)
            info = self.client.show(alias_name)
            tags[alias_key] = target
            self._alias_manifest, self._checked_at = target, None
            self.alias_gguf = info.gguf_sha256 if info else None
            self._gguf_by_manifest[target] = self.alias_gguf
            log.info(
                "alias %s -> %s (sha256 %s) in %.3f s",
                alias_name,
                tag,
                self.alias_gguf,
                time.monotonic() - started,
            )
        if self.alias_gguf != version.sha256:
            return False, (
                f"alias {alias_name} resolves to sha256 {self.alias_gguf}, "
                f"expected {version.sha256} ({served})"
            )
        now = time.monotonic()
        due = self._checked_at is None or now - self._checked_at >= self.recheck_interval_s
        if due and now >= self._retry_at:
            try:
                self.client.generate(alias_name, keep_alive=KEEP_FOREVER)
            except OllamaError as exc:
                self._checked_at, self._retry_at = None, now + self.retry_s
                self._error = f"1-token generation through {alias_name} ({served}) failed: {exc}"
                log.error("%s", self._error)
            else:
                self._checked_at, self._error = now, ""
        if self._checked_at is None:
            return False, self._error or f"waiting for a generation through {alias_name}"
        return True, ""

    def delete_unlisted(
        self, config: ServingConfig, tags: dict[str, str], versions: Mapping[str, VersionView]
    ) -> None:
        """Unload and delete ``<model>:<tag>`` not listed, unless the alias still needs it."""
        prefix, alias_key = f"{config.model}:", ollama_tag(config.model, ALIAS_TAG)
        listed = {ollama_tag(config.model, v.name) for v in config.versions}
        served = tags.get(ollama_tag(config.model, config.served)) if config.served else None
        alias_settled = served is not None and tags.get(alias_key) == served
        kept = self._kept(config, versions)
        for name, manifest in tags.items():
            if not name.startswith(prefix) or name == alias_key or name in listed:
                continue
            if manifest == tags.get(alias_key) and not alias_settled:
                continue  # the alias still serves it: delete once the alias moved on
            if self.gguf(name, manifest) not in kept:
                self.client.unload(name)
            self.client.delete(name)
            log.info("deleted %s: no longer listed in revision %s", name, config.revision)

    def keep_loaded(self, config: ServingConfig, versions: Mapping[str, VersionView]) -> None:
        """Pin the served and ``keep_loaded`` versions in memory; unpin other pinned ones."""
        loaded = {self.gguf(m.name, m.digest): m for m in self.client.ps()}
        kept = self._kept(config, versions)
        horizon = datetime.now(UTC) + PINNED_BEYOND
        for name in _kept_names(config):
            version = versions.get(name)
            if version is None or version.phase != "Ready":
                continue
            runner = loaded.get(version.sha256)
            if runner is None or (runner.expires_at is not None and runner.expires_at < horizon):
                log.info("loading %s and keeping it loaded", ollama_tag(config.model, name))
                self.client.load(ollama_tag(config.model, name), KEEP_FOREVER)
        for digest, runner in loaded.items():
            pinned = runner.expires_at is None or runner.expires_at >= horizon
            if runner.name.startswith(f"{config.model}:") and pinned and digest not in kept:
                log.info("unloading %s: no longer kept loaded", runner.name)
                self.client.unload(runner.name)

    def gguf(self, name: str, manifest: str | None) -> str | None:
        """The GGUF digest of model ``name`` at manifest ``manifest`` (shown once per manifest)."""
        if manifest is None:
            return None
        if manifest not in self._gguf_by_manifest:
            info = self.client.show(name)
            self._gguf_by_manifest[manifest] = info.gguf_sha256 if info else None
        return self._gguf_by_manifest[manifest]

    def _kept(self, config: ServingConfig, versions: Mapping[str, VersionView]) -> set[str | None]:
        names = _kept_names(config)
        return {v.sha256 for n, v in versions.items() if n in names} | {self.alias_gguf}


def _kept_names(config: ServingConfig) -> list[str]:
    return list(dict.fromkeys([*config.keep_loaded, *([config.served] if config.served else [])]))
