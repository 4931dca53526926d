"""One version into Ollama: fetch -> checksum -> register -> load -> generate.

Idempotent by digest, so an agent restart (or a second pass) repeats nothing already done:

- ``<model>:<version>`` already on the expected GGUF digest, with the Modelfile's TEMPLATE and
  SYSTEM: nothing is fetched, uploaded or created;
- Ollama already holds the blob (``HEAD /api/blobs``): nothing is fetched or uploaded;
- the verified GGUF is in the cache: nothing is fetched.

Once Ollama confirms the model on the expected digest the cached GGUF is deleted: Ollama's own
blob store (digest-addressed, re-hashed on upload) holds the bytes, and a second copy would
double the disk a pod needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import ValidationError

from kubetune.api.serving import (
    MAX_DRIFT_REFERENCE_BYTES,
    DriftReference,
    ServingVersion,
    Step,
    VersionPhase,
    ollama_tag,
)
from kubetune.serving.failures import StepFailure
from kubetune.serving.fetch import (
    cached_path,
    fetch_unverified,
    fetch_verified,
    redact_uri,
)
from kubetune.serving.modelfile import (
    ModelfileError,
    ModelfileSettings,
    create_request,
    parse_modelfile,
)
from kubetune.serving.ollama import ModelInfo, OllamaClient, OllamaError

log = logging.getLogger("kubetune.serving")
T = TypeVar("T")

KEEP_FOREVER = -1
# A version that is not kept loaded is unloaded again once it has answered its check.
CHECK_KEEP_ALIVE = "30s"


class Progress(Protocol):
    """Told what a version is doing, as it happens (the agent's status shows it)."""

    def __call__(self, phase: VersionPhase, message: str, *, verified: bool = False) -> None: ...


@dataclass(frozen=True)
class Sources:
    """Where artifacts are read and cached."""

    cache_dir: Path
    pvc_root: Path
    timeout: float = 60.0


def prepare_version(
    client: OllamaClient,
    sources: Sources,
    model: str,
    version: ServingVersion,
    *,
    keep_loaded: bool,
    progress: Progress,
) -> DriftReference | None:
    """Make ``<model>:<version>`` registered on ``version.sha256`` and answering; returns the
    version's drift reference, when it has one.

    Raises :class:`StepFailure` naming the step, or :class:`OllamaUnreachable`.
    """
    tag = ollama_tag(model, version.name)
    settings = read_modelfile(version, sources)
    reference = read_drift_reference(version, sources)
    info = _answered("register", client.show, tag)
    if info is not None and is_registered(info, version.sha256, settings):
        log.info("%s: already registered on sha256 %s", tag, version.sha256)
        progress("Registered", "registered (found in Ollama)", verified=True)
    else:
        register(client, sources, tag, version, settings, progress)
    check_answers(client, tag, keep_loaded=keep_loaded, progress=progress)
    return reference


def read_drift_reference(version: ServingVersion, sources: Sources) -> DriftReference | None:
    """The version's drift reference, sha256-checked. A checksum mismatch fails the version
    like any pinned artifact; a file that is not a valid reference only costs the reference
    (logged: drift is then measured against the version's first requests)."""
    if version.drift_reference_uri is None or version.drift_reference_sha256 is None:
        return None
    path = fetch_verified(
        version.drift_reference_uri,
        version.drift_reference_sha256,
        sources.cache_dir,
        pvc_root=sources.pvc_root,
        size_bytes=None,
        timeout=sources.timeout,
    )
    where = redact_uri(version.drift_reference_uri)
    try:
        if path.stat().st_size > MAX_DRIFT_REFERENCE_BYTES:
            raise ValueError(f"larger than {MAX_DRIFT_REFERENCE_BYTES} bytes")
        reference = DriftReference.model_validate(json.loads(path.read_bytes()))
    except (ValueError, ValidationError, OSError) as exc:
        log.warning("%s: drift reference %s is unusable (%s); drift is measured against the "
                    "version's first requests", version.name, where, str(exc).splitlines()[0])
        return None
    log.info("%s: drift reference from %s (%s)", version.name, where, reference.source)
    return reference


def read_modelfile(version: ServingVersion, sources: Sources) -> ModelfileSettings:
    """The version's Modelfile settings (none without a Modelfile), sha256-checked when listed."""
    if version.modelfile_uri is None:
        return ModelfileSettings()
    if version.modelfile_sha256 is not None:
        path = fetch_verified(
            version.modelfile_uri,
            version.modelfile_sha256,
            sources.cache_dir,
            pvc_root=sources.pvc_root,
            timeout=sources.timeout,
        )
        raw = path.read_bytes()
    else:
        raw = fetch_unverified(
            version.modelfile_uri, pvc_root=sources.pvc_root, timeout=sources.timeout
        )
    try:
        return parse_modelfile(raw.decode("utf-8"))
    except (ModelfileError, UnicodeDecodeError) as exc:
        raise StepFailure(
            "register", f"Modelfile {redact_uri(version.modelfile_uri)}: {exc}", permanent=True
        ) from exc


def is_registered(info: ModelInfo, sha256: str, settings: ModelfileSettings) -> bool:
    """Whether a model Ollama shows is the version: same GGUF, same TEMPLATE and SYSTEM."""
    if info.gguf_sha256 != sha256:
        return False
    if settings.template is not None and info.template != settings.template:
        return False
    return info.system == (settings.system or "")


def register(
    client: OllamaClient,
    sources: Sources,
    tag: str,
    version: ServingVersion,
    settings: ModelfileSettings,
    progress: Progress,
) -> None:
    """Fetch the GGUF unless Ollama has the blob, upload it, create ``tag``, read it back."""
    sha = version.sha256
    if _answered("register", client.has_blob, sha):
        log.info("%s: Ollama already holds blob sha256 %s; nothing to fetch", tag, sha)
        progress("Fetching", "blob already in Ollama", verified=True)
    else:
        progress("Fetching", f"fetching {redact_uri(version.gguf_uri)}")
        log.info("%s: fetching %s", tag, redact_uri(version.gguf_uri))
        path = fetch_verified(
            version.gguf_uri,
            sha,
            sources.cache_dir,
            pvc_root=sources.pvc_root,
            size_bytes=version.size_bytes,
            timeout=sources.timeout,
        )
        progress("Fetching", "verified; uploading to Ollama", verified=True)
        log.info("%s: uploading blob sha256 %s (%d bytes)", tag, sha, path.stat().st_size)
        try:
            client.push_blob(sha, path)
        except OllamaError as exc:
            if exc.status == 400:  # Ollama hashed other bytes: the cached file changed on disk
                path.unlink(missing_ok=True)
                raise StepFailure(
                    "checksum",
                    f"Ollama refused the cached file as sha256 {sha} ({exc.message}); "
                    "deleted, it will be fetched again",
                ) from exc
            raise StepFailure("register", f"uploading the blob: {exc}") from exc
    try:
        client.create(create_request(tag, sha, settings))
    except OllamaError as exc:
        # 400: Ollama refuses the request itself (a template it cannot parse, not a GGUF).
        raise StepFailure(
            "register", f"POST /api/create {tag}: {exc}", permanent=exc.status == 400
        ) from exc
    info = _answered("register", client.show, tag)
    got = info.gguf_sha256 if info is not None else None
    if got != sha:
        raise StepFailure("register", f"Ollama shows {tag} on GGUF sha256 {got}, expected {sha}")
    cached_path(sources.cache_dir, sha).unlink(missing_ok=True)
    log.info("%s: registered on sha256 %s", tag, sha)
    progress("Registered", "registered", verified=True)


def check_answers(client: OllamaClient, tag: str, *, keep_loaded: bool, progress: Progress) -> None:
    """Load ``tag`` and generate one token; kept versions stay loaded, others are unloaded."""
    progress("Registered", "loading")
    keep_alive: int | str = KEEP_FOREVER if keep_loaded else CHECK_KEEP_ALIVE
    try:
        client.load(tag, keep_alive)
    except OllamaError as exc:
        raise StepFailure("load", f"loading {tag}: {exc}") from exc
    try:
        client.generate(tag, keep_alive=KEEP_FOREVER if keep_loaded else 0)
    except OllamaError as exc:
        raise StepFailure("generate", f"1-token generation on {tag}: {exc}") from exc


def _answered(step: Step, call: Callable[[str], T], arg: str) -> T:
    try:
        return call(arg)
    except OllamaError as exc:
        raise StepFailure(step, str(exc)) from exc
