"""The ModelDeployment resource: which fine-tuned versions Ollama serves, and which is active.

The spec lists versions and may pin `activeVersion` (the GitOps source of truth). Automatic
rollback changes what is served and records it in status and Events, never in the spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, HttpUrl, model_validator

from kubetune.api.common import ApiModel, Condition, Name, SecretKeyRef, ShortText, Toleration
from kubetune.api.constants import DEFAULT_OLLAMA_IMAGE
from kubetune.api.serving import RESERVED_VERSION_NAME, VersionName

URI_NEEDS_SHA256 = (
    "!has(self.uri) || has(self.sha256)",
    "uri: a GGUF at a URI must be pinned by its sha256 (set sha256: <64 hex>); GitOps pins "
    "versions by digest, so a changed file is never served silently",
)
ONE_SOURCE = ("has(self.fineTuneJob) != has(self.uri)", "set exactly one of fineTuneJob or uri")
NOT_LATEST = (
    "self.name != 'latest'",
    "name: 'latest' is reserved (Ollama serves the active version as <deployment>:latest)",
)
MODELFILE_NEEDS_SHA256 = (
    "!has(self.modelfileUri) || (has(self.uri) && has(self.modelfileSha256))",
    "modelfileUri: only with uri, and pinned by modelfileSha256",
)
DRIFT_REFERENCE_NEEDS_SHA256 = (
    "!has(self.driftReferenceUri) || (has(self.uri) && has(self.driftReferenceSha256))",
    "driftReferenceUri: only with uri, and pinned by driftReferenceSha256",
)


class ModelVersion(ApiModel):
    """One servable version: a finished FineTuneJob's GGUF, or a GGUF at a URI pinned by sha256."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": rule, "message": message}
                for rule, message in (ONE_SOURCE, URI_NEEDS_SHA256, MODELFILE_NEEDS_SHA256,
                                      DRIFT_REFERENCE_NEEDS_SHA256, NOT_LATEST)
            ]
        }
    )

    name: VersionName
    """Version name, e.g. `v3`; unique within the deployment. Ollama serves it as
    `<deployment>:<name>`."""
    fine_tune_job: Name | None = None
    """FineTuneJob (same namespace) whose exported GGUF to serve. The job must have Succeeded
    and passed its quality gate (unless `allowUngated`); the GGUF, its sha256 and its Modelfile
    (TEMPLATE, SYSTEM, stops) come from the job's status."""
    uri: Annotated[str, Field(max_length=2048, pattern=r"^(pvc|file|s3|https?)://.+$")] | None = None
    """GGUF location, when not taken from a FineTuneJob: `pvc://<claim>/<path>`, `https://…`,
    `s3://bucket/key`. Requires `sha256`."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """sha256 of the GGUF at `uri` (required with `uri`; a FineTuneJob's comes from its status)."""
    modelfile_uri: Annotated[str, Field(max_length=2048, pattern=r"^(pvc|file|s3|https?)://.+$")] | None = None
    """Optional Modelfile for a `uri` version (its TEMPLATE, SYSTEM and PARAMETER lines are used);
    without one Ollama uses the template inside the GGUF."""
    modelfile_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """sha256 of the Modelfile at `modelfileUri`."""
    drift_reference_uri: Annotated[str, Field(max_length=2048, pattern=r"^(pvc|file|s3|https?)://.+$")] | None = None
    """Optional drift reference for a `uri` version: a `drift-reference.json` as a FineTuneJob
    exports it (its test split's prompt and answer lengths). A FineTuneJob version takes its
    job's automatically; without one, a version's first `drift.referenceRequests` requests are
    its reference."""
    drift_reference_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """sha256 of the file at `driftReferenceUri`."""
    quantization: Literal["f16", "q8_0", "q5_k_m", "q4_k_m"] = "q4_k_m"
    """Which of the job's GGUF files to serve."""
    allow_ungated: bool = False
    """Serve this version even though its FineTuneJob's quality gate failed."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelVersion:
        if self.name == RESERVED_VERSION_NAME:
            raise ValueError(NOT_LATEST[1])
        if (self.fine_tune_job is None) == (self.uri is None):
            raise ValueError(ONE_SOURCE[1])
        if self.uri is not None and self.sha256 is None:
            raise ValueError(URI_NEEDS_SHA256[1])
        if self.modelfile_uri is not None and (self.uri is None or self.modelfile_sha256 is None):
            raise ValueError(MODELFILE_NEEDS_SHA256[1])
        if self.drift_reference_uri is not None and (self.uri is None or self.drift_reference_sha256 is None):
            raise ValueError(DRIFT_REFERENCE_NEEDS_SHA256[1])
        return self


class RollbackSpec(ApiModel):
    """When to roll back automatically on live traffic (error rate, drift), as measured by the
    serving gateway. A version that fails to fetch, verify, load or answer is always given up,
    whatever this says (`progressDeadlineSeconds`)."""

    enabled: bool = True
    """Roll back automatically."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Share of failed requests over the window that triggers a rollback."""
    max_drift_score: Annotated[float, Field(ge=0)] | None = None
    """Drift score above which the active version is rolled back."""
    window_seconds: Annotated[int, Field(ge=10, le=86400)] = 300
    """Observation window."""
    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    """Requests the served version must have answered in the window before its error rate or
    drift can roll it back (a quiet service never flaps)."""


LOGGING_VOLUME_FIXED = (
    "(has(self.storage) ? self.storage : 'PersistentVolumeClaim') == "
    "(has(oldSelf.storage) ? oldSelf.storage : 'PersistentVolumeClaim') && "
    "(has(self.volumeSize) ? self.volumeSize : '2Gi') == (has(oldSelf.volumeSize) ? oldSelf.volumeSize : '2Gi') && "
    "(has(self.storageClassName) ? self.storageClassName : '') == "
    "(has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')",
    "logging.storage, logging.volumeSize and logging.storageClassName are fixed once set (each pod's "
    "claim is made from them): create a new ModelDeployment to change them",
)
_QUANTITY_MIB = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


def quantity_mib(quantity: str) -> float:
    """MiB in a binary-suffixed quantity (`2Gi`); a plain number is bytes."""
    for suffix, factor in _QUANTITY_MIB.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / (1024 * 1024)


class LoggingSpec(ApiModel):
    """The gateway's prediction log: SQLite in WAL mode on a PersistentVolumeClaim per pod (the
    pods are a StatefulSet), so predictions and feedback survive pod restarts and rescheduling."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": LOGGING_VOLUME_FIXED[0], "message": LOGGING_VOLUME_FIXED[1]},
    ]})

    content: Literal["full", "redacted", "none"] = "redacted"
    """What of prompts and answers is kept: `full`; `redacted` (secrets and personal data
    replaced by the trainer's scanner); `none` (counts, timings, tokens and feedback only)."""
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    """Predictions and feedback older than this are deleted."""
    max_size_mib: Annotated[int, Field(ge=16, le=1_048_576)] = 1024
    """Above this size the oldest predictions are deleted. At most 80% of `volumeSize` (SQLite's
    write-ahead log and deletions need room)."""
    storage: Literal["PersistentVolumeClaim", "EmptyDir"] = "PersistentVolumeClaim"
    """`PersistentVolumeClaim`: a claim per pod (`predictions-<name>-<ordinal>`), kept across pod
    restarts, rescheduling and scale-down, deleted with the ModelDeployment; `EmptyDir`: the log
    lives and dies with its pod (clusters without dynamic provisioning). Fixed once set."""
    volume_size: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")] = "2Gi"
    """Size of each pod's claim (or the emptyDir's limit). Fixed once set."""
    storage_class_name: Annotated[str, Field(max_length=253)] | None = None
    """StorageClass of the claims; none: the cluster's default class. Fixed once set."""

    @model_validator(mode="after")
    def _log_fits(self) -> LoggingSpec:
        if self.max_size_mib > 0.8 * quantity_mib(self.volume_size):
            raise ValueError(
                f"logging.maxSizeMib {self.max_size_mib} does not fit logging.volumeSize {self.volume_size}: "
                "keep it at most 80% of the volume (SQLite's write-ahead log needs room)"
            )
        return self


FallbackTrigger = Literal["error", "timeout", "refusal"]
DEFAULT_TRIGGERS: tuple[FallbackTrigger, ...] = ("error", "timeout")
UNIQUE_TRIGGERS = (
    "!has(self.on) || self.on.all(x, self.on.exists_one(y, y == x))",
    "on: each trigger at most once",
)


class DriftSpec(ApiModel):
    """The gateway's drift windows per version (see docs/observability.md for the score)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.minSamples <= self.referenceRequests && self.minSamples <= self.recentRequests",
         "message": "minSamples cannot exceed referenceRequests or recentRequests"},
        {"rule": "self.minFeedback <= self.referenceFeedback && self.minFeedback <= self.recentFeedback",
         "message": "minFeedback cannot exceed referenceFeedback or recentFeedback"},
    ]})

    reference_requests: Annotated[int, Field(ge=2, le=100_000)] = 1000
    """Requests kept as the reference: the first ones after the version is first served."""
    recent_requests: Annotated[int, Field(ge=2, le=100_000)] = 500
    """Requests in the recent window."""
    reference_feedback: Annotated[int, Field(ge=2, le=100_000)] = 500
    """Feedback scores kept as the reference."""
    recent_feedback: Annotated[int, Field(ge=2, le=100_000)] = 100
    """Feedback scores in the recent window."""
    min_samples: Annotated[int, Field(ge=2, le=100_000)] = 100
    """Requests each window needs before PSI, rates and the drift score are computed."""
    min_feedback: Annotated[int, Field(ge=1, le=100_000)] = 20
    """Scores each feedback window needs before the feedback means are computed."""

    @model_validator(mode="after")
    def _minimums_fit(self) -> DriftSpec:
        if self.min_samples > min(self.reference_requests, self.recent_requests):
            raise ValueError("minSamples cannot exceed referenceRequests or recentRequests")
        if self.min_feedback > min(self.reference_feedback, self.recent_feedback):
            raise ValueError("minFeedback cannot exceed referenceFeedback or recentFeedback")
        return self


class FallbackSpec(ApiModel):
    """A stronger model (OpenAI-compatible) answering when the served model fails. The gateway
    asks it only after the local model failed, so its answers are logged and counted with
    `route="fallback"` (and `kubetune_gateway_fallbacks_total{reason}`); when the fallback fails
    too, the client gets the local error."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": UNIQUE_TRIGGERS[0], "message": UNIQUE_TRIGGERS[1]}
            ]
        }
    )

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API, as the OpenAI SDK's `base_url`
    (e.g. `https://api.openai.com/v1`): requests go to `<endpoint>/chat/completions`."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Model name."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key (sent as `Authorization: Bearer`). It reaches the pod as an
    environment variable from the Secret, never as an argument, and is never logged."""
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 30
    """How long the local model may take before the fallback answers instead (a whole answer;
    for a stream, its first byte), and the longest wait for the fallback's next byte."""
    on: Annotated[list[FallbackTrigger], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list(DEFAULT_TRIGGERS)
    )
    """When to ask the fallback: `error` (the local model is unreachable or answers 5xx; a 4xx
    is the client's mistake and is relayed), `timeout` (no answer within `timeoutSeconds`),
    `refusal` (a non-streamed answer starts like a refusal, as the drift signal counts them;
    a stream is relayed as it comes, so it is never judged). There is no `lowConfidence`:
    Ollama's OpenAI-compatible endpoint (v0.11.4, `openai/openai.go`) returns no logprobs."""

    @model_validator(mode="after")
    def _unique_triggers(self) -> FallbackSpec:
        if len(set(self.on)) != len(self.on):
            raise ValueError(UNIQUE_TRIGGERS[1])
        return self


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
    """Optional fallback model: answers when the local model errors, times out or refuses."""
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    """The gateway's prediction log."""
    drift: DriftSpec = Field(default_factory=DriftSpec)
    """The gateway's drift windows (the score `rollback.maxDriftScore` and the alerts read)."""
    ollama_image: Annotated[str, Field(max_length=1024)] = DEFAULT_OLLAMA_IMAGE
    """Ollama image. The default is the version kubetune's serving tests run (built from the
    same Go module version)."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """`nvidia.com/gpu` per pod."""
    progress_deadline_seconds: Annotated[int, Field(ge=30, le=86400)] = 600
    """How long a new version may take to be fetched, verified, loaded and answer on every pod
    before it is given up (condition Degraded; the last good version keeps serving)."""
    max_loaded_models: Annotated[int, Field(ge=1, le=4)] = 2
    """Versions each pod keeps loaded: the served one, the one being prepared and the previous
    one, so a switch or rollback needs no load (Ollama's OLLAMA_MAX_LOADED_MODELS is set one
    higher, so that checking another version never evicts them). Two 8B q4_k_m versions take about
    2 x 5.5 GiB of GPU memory with a 4k context."""
    node_selector: Annotated[dict[str, str], Field(max_length=32)] = Field(default_factory=dict)
    """Node selector of the serving pods."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Tolerations of the serving pods."""
    storage_size: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")] = "20Gi"
    """Size limit of each pod's local model store (an emptyDir holding every listed version)."""

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
    phase: Literal["Pending", "Progressing", "Ready", "Failed"] = "Pending"
    """Pending: its source is not ready (job not finished, gate failed, no such artifact);
    Progressing: pods are fetching, verifying, loading it; Ready: ready on every pod;
    Failed: fetch, checksum, register, load or generate failed, or the progress deadline
    passed. A Failed version is never served."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """The GGUF's expected sha256."""
    ready: bool = False
    """Registered, sha256-verified and answering on every pod."""
    sha256_verified: bool = False
    """Every pod hashed the fetched bytes to `sha256`."""
    gated: bool | None = None
    """Whether the FineTuneJob's gate passed (None for `uri` versions)."""
    pods_ready: int = 0
    """Pods holding it ready."""
    pods_total: int = 0
    """Serving pods."""
    progressing_since: str | None = None
    """When its pods started preparing it (RFC 3339); `progressDeadlineSeconds` counts from here."""
    reason: Annotated[str, Field(max_length=128)] | None = None
    """CamelCase reason when not ready (JobNotFound, JobNotFinished, GateFailed, ChecksumMismatch, …)."""
    message: ShortText = ""
    """Why the version is not ready, naming the step that failed."""


class SwitchRecord(ApiModel):
    """One change of the served version."""

    time: str
    """When (RFC 3339)."""
    from_version: VersionName | None = None
    """Version served before (None for the first)."""
    to_version: VersionName
    """Version served after."""
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """sha256 of the GGUF now served."""
    reason: ShortText
    """Why: ActiveVersionChanged, Promoted (newest gated version), Rollback (an older version
    chosen in the spec), AutomaticRollback, ServedVersionRemoved."""
    message: ShortText = ""
    """For AutomaticRollback: the values that triggered it."""


class RolledBack(ApiModel):
    """An automatic rollback in force: it lasts until the spec changes (a new generation)."""

    generation: int
    """metadata.generation it applies to."""
    from_version: VersionName
    """The version that was rolled back."""
    to_version: VersionName
    """The last healthy version, served instead."""
    reason: ShortText
    """The values that triggered it (error rate or drift score over the window)."""
    time: str
    """When (RFC 3339)."""


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment (kstatus-compatible)."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded"] | None = None
    """Pending: nothing servable yet; Progressing: pods or a new version are being prepared;
    Ready: the desired version is served on every pod; Degraded: the desired version failed and
    the last good version keeps serving."""
    observed_generation: int | None = None
    """metadata.generation the status describes."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)
    """Ready, Reconciling, Stalled, Degraded, RolledBack."""
    desired_version: VersionName | None = None
    """The version to serve: spec.activeVersion, or the newest gated version when unset."""
    served_version: VersionName | None = None
    """Version receiving traffic now (differs from the desired one while it is being prepared
    or after it failed)."""
    served_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """sha256 of the served GGUF, as every pod's Ollama reports it."""
    replicas: int = 0
    """Serving pods that exist."""
    ready_replicas: int = 0
    """Pods serving the served version (alias checked, a generation succeeded)."""
    versions: Annotated[list[VersionStatus], Field(max_length=32)] = Field(default_factory=list)
    """Per-version state."""
    history: Annotated[list[SwitchRecord], Field(max_length=20)] = Field(default_factory=list)
    """The last 20 switches of the served version, newest last."""
    rolled_back: RolledBack | None = None
    """The automatic rollback in force, if any (condition RolledBack)."""
    config_revision: Annotated[str, Field(max_length=64)] | None = None
    """Revision of the serving ConfigMap last written."""
    reason: Annotated[str, Field(max_length=128)] | None = None
    """CamelCase reason of the current phase."""
    message: ShortText = ""
    """What is happening, or what failed and what still serves."""
    service: Annotated[str, Field(max_length=253)] | None = None
    """Service clients call (Ollama's API and `/v1/chat/completions` on model `<name>`)."""


class ModelDeployment(ApiModel):
    """A ModelDeployment object as stored in Kubernetes."""

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
