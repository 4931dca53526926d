"""Base model and shared pieces of the kubetune API.

Every model serialises with camelCase aliases (the Kubernetes convention) and rejects unknown
fields, so a typo in a spec is an error rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every kubetune API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Serialise as Kubernetes expects it: camelCase keys, unset optional fields omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# Bounded string types keep CEL cost estimates finite and catch absurd input early.
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    ),
]
ShortText = Annotated[str, Field(max_length=1024)]
LongText = Annotated[str, Field(max_length=32768)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class SecretKeyRef(ApiModel):
    """A key of a Kubernetes Secret in the resource's namespace. Secrets are referenced by
    name and never copied into specs, status, logs or artifacts."""

    name: Name
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253)] = "token"
    """Key within the Secret."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the resource's namespace."""

    name: Name
    """Name of the ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key within the ConfigMap (a file name such as `train.jsonl`)."""


class Condition(ApiModel):
    """A Kubernetes-style condition. `observedGeneration` says which spec it describes."""

    type: Annotated[str, Field(max_length=316)]
    """CamelCase condition type, e.g. `Complete`."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """CamelCase machine-readable reason."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable, actionable explanation."""
    last_transition_time: str | None = None
    """RFC 3339 time the status last changed."""
    observed_generation: int | None = None
    """metadata.generation of the spec this condition was computed for."""


class Toleration(ApiModel):
    """A pod toleration (same fields as core/v1 Toleration)."""

    key: ShortText | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: ShortText | None = None
    """Taint value the toleration matches."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Artifact(ApiModel):
    """One artifact produced by a FineTuneJob, as recorded in its sha256 manifest."""

    name: Annotated[str, Field(max_length=253)]
    """File name, e.g. `model-q4_k_m.gguf`."""
    kind: Literal[
        "gguf",
        "adapter",
        "adapter-gguf",
        "merged",
        "modelfile",
        "report",
        "manifest",
        "predictions",
        "drift-reference",
        "provider-model",
        "other",
    ]
    """What the artifact is (`provider-model`: a model fine-tuned by the provider, backend
    openai; its name is the provider's model id, its file the job's record)."""
    uri: Annotated[str, Field(max_length=2048)]
    """Where it is stored (`pvc://<claim>/<path>` or `file://<path>`)."""
    size_bytes: int = Field(ge=0)
    """Size in bytes."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """Lower-case hex sha256 of the file's bytes."""
    quantization: ShortText | None = None
    """GGUF quantization type (f16, q8_0, q5_k_m, q4_k_m) where it applies."""
