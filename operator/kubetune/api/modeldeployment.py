"""The ModelDeployment resource: which fine-tuned versions Ollama serves, and which is active.

The spec lists versions and may pin `activeVersion` (the GitOps source of truth). Automatic
rollback changes what is served and records it in status and Events, never in the spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, HttpUrl, model_validator

from kubetune.api.common import ApiModel, Condition, Name, SecretKeyRef, ShortText

VersionName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class ModelVersion(ApiModel):
    """One servable version: a finished FineTuneJob's GGUF, or a GGUF at a URI."""

    name: VersionName
    """Version name, e.g. `v3`; unique within the deployment."""
    fine_tune_job: Name | None = None
    """FineTuneJob (same namespace) whose exported GGUF to serve."""
    uri: Annotated[str, Field(max_length=2048, pattern=r"^(pvc|file|s3|https?)://.+$")] | None = None
    """GGUF location, when not taken from a FineTuneJob."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Expected sha256 of the GGUF (taken from the FineTuneJob's status when omitted)."""
    quantization: Literal["f16", "q8_0", "q5_k_m", "q4_k_m"] = "q4_k_m"
    """Which of the job's GGUF files to serve."""
    allow_ungated: bool = False
    """Serve this version even though its FineTuneJob's quality gate failed."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelVersion:
        if (self.fine_tune_job is None) == (self.uri is None):
            raise ValueError("set exactly one of fineTuneJob or uri")
        return self


class RollbackSpec(ApiModel):
    """When to roll back automatically to the previous healthy version."""

    enabled: bool = True
    """Roll back automatically."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Share of failed requests over the window that triggers a rollback."""
    max_drift_score: Annotated[float, Field(ge=0)] | None = None
    """Drift score above which the active version is rolled back."""
    window_seconds: Annotated[int, Field(ge=10, le=86400)] = 300
    """Observation window."""


class FallbackSpec(ApiModel):
    """A stronger model (OpenAI-compatible) answering when the served model fails."""

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Model name."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key."""


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    versions: Annotated[list[ModelVersion], Field(min_length=1, max_length=32)]
    """Versions that may be served, oldest first."""
    active_version: VersionName | None = None
    """Version to serve; default the newest version that passes its gate."""
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    """Pods serving the model."""
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)
    """Automatic rollback."""
    fallback: FallbackSpec | None = None
    """Optional fallback model."""
    ollama_image: Annotated[str, Field(max_length=1024)] = "ollama/ollama:0.5.7"
    """Ollama image."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """`nvidia.com/gpu` per pod."""

    @model_validator(mode="after")
    def _active_is_listed(self) -> ModelDeploymentSpec:
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError("versions: names must be unique")
        if self.active_version is not None and self.active_version not in names:
            raise ValueError(f"activeVersion: {self.active_version!r} is not in versions")
        return self


class VersionStatus(ApiModel):
    """Observed state of one version."""

    name: VersionName
    """Version name."""
    ready: bool = False
    """Downloaded, sha256-verified and loaded."""
    sha256_verified: bool = False
    """The file's sha256 matched the expected one."""
    gated: bool | None = None
    """Whether the FineTuneJob's gate passed."""
    message: ShortText = ""
    """Why the version is not ready."""


class RollbackRecord(ApiModel):
    """One automatic rollback."""

    time: str
    """When (RFC 3339)."""
    from_version: VersionName
    """Version rolled back from."""
    to_version: VersionName
    """Version rolled back to."""
    reason: ShortText
    """What triggered it."""


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    phase: Literal["Pending", "Ready", "Degraded", "Failed"] | None = None
    """Overall state."""
    observed_generation: int | None = None
    """metadata.generation the status describes."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)
    """Ready, RolledBack, Degraded."""
    served_version: VersionName | None = None
    """Version receiving traffic now (differs from spec.activeVersion after a rollback)."""
    versions: Annotated[list[VersionStatus], Field(max_length=32)] = Field(default_factory=list)
    """Per-version state."""
    rollbacks: Annotated[list[RollbackRecord], Field(max_length=32)] = Field(default_factory=list)
    """Recent automatic rollbacks, newest last."""


class ModelDeployment(ApiModel):
    """A ModelDeployment object as stored in Kubernetes."""

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
