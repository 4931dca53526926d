"""The contract between the ModelDeployment controller and the serve-agent in each serving pod.

The operator writes a :class:`ServingConfig` as JSON into the deployment's ConfigMap (key
``SERVING_CONFIG_KEY``), mounted read-only into every serving pod at ``SERVING_CONFIG_DIR``. The
serve-agent (``kubetune serve-agent``, the kubetune container beside Ollama) makes its own
Ollama hold exactly those versions and points the model name at ``served``; it reports what it
holds as an :class:`AgentStatus` on ``GET /status`` (port ``AGENT_PORT``) and answers
``GET /readyz`` with 200 only while the alias resolves to the served version's digest and a
1-token generation through the alias succeeded. The operator reads ``/status`` of every pod to
decide when a version is ready everywhere; it never talks to Ollama itself.

Ollama model names: each version is registered as ``<model>:<version>`` (``support:v2``); the
served version is an alias ``<model>`` (= ``<model>:latest``), made with ``POST /api/copy``,
so switching or rolling back re-points the alias: no download, no reload when both are loaded.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from kubetune.api.common import ApiModel, ShortText

SERVING_CONFIG_KEY: Final = "serving.json"
SERVING_CONFIG_DIR: Final = "/etc/kubetune-serving"
AGENT_PORT: Final = 8081
GATEWAY_PORT: Final = 8080  # the OpenAI-compatible gateway (kubetune.serving.gateway) and its /metrics
PREDICTIONS_DIR: Final = "/var/lib/kubetune"  # the pod's prediction-log volume (a claim per pod)
PREDICTIONS_DB: Final = f"{PREDICTIONS_DIR}/predictions.db"  # the gateway's prediction log
OLLAMA_PORT: Final = 11434
MODELS_DIR: Final = "/models"  # OLLAMA_MODELS, an emptyDir: the pod's own model store
CACHE_DIR: Final = "/models/kubetune-cache"  # fetched GGUFs, verified, before registration

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
VersionName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
# `<model>` is `<model>:latest` in Ollama: the alias of the served version, never a version.
RESERVED_VERSION_NAME: Final = "latest"
# Where a GGUF (or Modelfile) is read from: pvc://<claim>/<path> (the claim is mounted read-only
# at /mnt/pvc/<claim>), file:///abs/path, https://…, s3://bucket/key.
SourceUri = Annotated[str, Field(max_length=2048, pattern=r"^(pvc|file|s3|https?)://.+$")]

PVC_MOUNT_ROOT: Final = "/mnt/pvc"

Step = Literal["fetch", "checksum", "register", "load", "generate"]


class ServingVersion(ApiModel):
    """One version the pod must hold."""

    name: VersionName
    """Version name (the Ollama tag: ``<model>:<name>``)."""
    gguf_uri: SourceUri
    """Where the GGUF is."""
    sha256: Sha256
    """Expected sha256 of the GGUF; a mismatch is never registered."""
    size_bytes: int | None = None
    """Expected size, when known (progress and an early mismatch check)."""
    modelfile_uri: SourceUri | None = None
    """The Modelfile exported with the GGUF (TEMPLATE, SYSTEM, PARAMETER lines are used; FROM
    is replaced by the verified GGUF)."""
    modelfile_sha256: Sha256 | None = None
    """Expected sha256 of the Modelfile (required with ``modelfile_uri``)."""
    drift_reference_uri: SourceUri | None = None
    """A :class:`DriftReference` (JSON) for this version: the lengths its drift is measured
    against. None: the version's first requests are its reference."""
    drift_reference_sha256: Sha256 | None = None
    """Expected sha256 of the drift reference (required with ``drift_reference_uri``)."""

    @model_validator(mode="after")
    def _modelfile_pinned(self) -> ServingVersion:
        if self.name == RESERVED_VERSION_NAME:
            raise ValueError("a version may not be named 'latest' (the served alias)")
        if (self.modelfile_uri is None) != (self.modelfile_sha256 is None):
            raise ValueError("modelfileUri and modelfileSha256 go together")
        if (self.drift_reference_uri is None) != (self.drift_reference_sha256 is None):
            raise ValueError("driftReferenceUri and driftReferenceSha256 go together")
        return self


DRIFT_REFERENCE_FILE: Final = "drift-reference.json"
MAX_DRIFT_REFERENCE_BYTES: Final = 4 << 20


class DriftReference(ApiModel):
    """What a version's live traffic is compared with (``drift-reference.json``).

    A FineTuneJob writes one at evaluation, from its test split: each test prompt's length in
    tokens as the served model sees it (chat template applied, generation prompt added: what
    Ollama reports as ``prompt_tokens``) and the length of the fine-tuned model's own answer
    (``completion_tokens``), with the share of those answers that are refusals or empty. The
    gateway's drift tracker then measures a version against the traffic it was trained and
    evaluated for, from its first request, instead of against its own first requests.
    """

    prompt_tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=100_000)]
    """Prompt length of each reference example, in tokens."""
    completion_tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=100_000)]
    """Answer length of each reference example, in tokens."""
    refusal_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of the reference answers that are refusals (kubetune.serving.drift.is_refusal)."""
    empty_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of the reference answers that are empty."""
    source: ShortText = ""
    """Where the sample came from, for people (e.g. ``test split (40 examples)``)."""


class ServingConfig(ApiModel):
    """What every pod of a ModelDeployment must serve (the ConfigMap's ``serving.json``)."""

    model: Annotated[str, Field(min_length=1, max_length=63)]
    """The name clients call (the ModelDeployment's name)."""
    revision: Annotated[str, Field(max_length=64)]
    """Changes whenever anything below changes (a hash); echoed in the agent's status."""
    versions: Annotated[list[ServingVersion], Field(max_length=32)] = Field(default_factory=list)
    """Every version to keep registered; others registered under ``<model>:`` are deleted."""
    served: VersionName | None = None
    """The version the alias ``<model>`` points at; none: no alias yet (nothing ready)."""
    keep_loaded: Annotated[list[VersionName], Field(max_length=4)] = Field(default_factory=list)
    """Versions kept loaded in memory (served and previous), so a switch needs no load."""

    @model_validator(mode="after")
    def _listed(self) -> ServingConfig:
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError("versions: names must be unique")
        for name in [self.served, *self.keep_loaded]:
            if name is not None and name not in names:
                raise ValueError(f"{name!r} (served or keepLoaded) is not among the listed versions")
        return self


VersionPhase = Literal["Pending", "Fetching", "Registered", "Ready", "Failed"]


class AgentVersionState(ApiModel):
    """What one pod's agent knows of one version."""

    name: VersionName
    """Version name."""
    sha256: Sha256
    """Expected digest (from the config)."""
    phase: VersionPhase = "Pending"
    """Ready: registered, its digest confirmed by Ollama, loaded and a 1-token generation
    succeeded. Failed: see ``step`` and ``message``; retried with backoff unless permanent."""
    sha256_verified: bool = False
    """The fetched bytes hashed to ``sha256`` (and Ollama accepted the blob under it)."""
    step: Step | None = None
    """The step that failed."""
    permanent: bool = False
    """A failure no retry fixes (checksum mismatch, a file Ollama cannot load)."""
    message: ShortText = ""
    """Why it is not Ready."""


class AgentStatus(ApiModel):
    """``GET /status`` of a serve-agent."""

    pod: Annotated[str, Field(max_length=253)] = ""
    """Pod name (HOSTNAME)."""
    revision: Annotated[str, Field(max_length=64)] | None = None
    """Revision of the config last applied (None before the first)."""
    ollama_reachable: bool = False
    """Whether the last call to Ollama succeeded."""
    served: VersionName | None = None
    """The version the alias points at now (read back from Ollama)."""
    served_digest: Sha256 | None = None
    """sha256 of the GGUF the alias resolves to, as Ollama reports it."""
    ready: bool = False
    """Same as /readyz: alias on the configured version and a generation succeeded."""
    versions: Annotated[list[AgentVersionState], Field(max_length=32)] = Field(
        default_factory=list
    )
    """Per version."""
    message: ShortText = ""
    """What the agent is waiting for, when not ready."""


def ollama_tag(model: str, version: str) -> str:
    """``support`` + ``v2`` -> ``support:v2``."""
    return f"{model}:{version}"
