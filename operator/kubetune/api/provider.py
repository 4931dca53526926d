"""`spec.provider`: fine-tuning on a provider's API (OpenAI) instead of a local GPU.

With `spec.backend: openai` the trainer pod (a small CPU pod, no GPU) prepares and scans the
data exactly as for a local job, then uploads the train/validation splits in OpenAI's chat
format, creates the provider's fine-tuning job and follows it until it ends; the resulting
model id is the job's artifact. The API key is read from a Secret, by name only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, HttpUrl

from kubetune.api.common import ApiModel, SecretKeyRef

DEFAULT_OPENAI_ENDPOINT = "https://api.openai.com/v1"


class ProviderHyperparameters(ApiModel):
    """The provider's hyperparameters; an unset field is sent as `"auto"` (the provider picks a
    value from the dataset's size)."""

    n_epochs: Annotated[int, Field(ge=1, le=50)] | None = None
    """Passes over the training file (OpenAI: 1–50; unset: auto)."""
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = None
    """Examples per batch (OpenAI: 1–256; unset: auto)."""
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | None = None
    """Multiplier of the provider's base learning rate (unset: auto)."""
    beta: Annotated[float, Field(gt=0, le=2)] | None = None
    """DPO only: weight of the penalty between the policy and the reference model (unset: auto)."""


class ProviderSpec(ApiModel):
    """Where and how the provider fine-tunes (`backend: openai`)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Base model the provider fine-tunes, e.g. `gpt-4o-mini-2024-07-18`."""
    api_key_secret_ref: SecretKeyRef
    """Secret holding the API key (read into the pod's environment; never logged, never in
    status, Events or artifacts)."""
    endpoint: Annotated[HttpUrl, Field(max_length=2048)] = HttpUrl(DEFAULT_OPENAI_ENDPOINT)
    """Base URL of the API (`https://api.openai.com/v1`, or a compatible gateway)."""
    organization: Annotated[str, Field(max_length=256)] | None = None
    """OpenAI organisation id sent with every request (`OpenAI-Organization`)."""
    project: Annotated[str, Field(max_length=256)] | None = None
    """OpenAI project id sent with every request (`OpenAI-Project`)."""
    method: Literal["supervised", "dpo"] = "supervised"
    """supervised (chat examples) or dpo (preference pairs); must match `objective`."""
    hyperparameters: ProviderHyperparameters = Field(default_factory=ProviderHyperparameters)
    """The provider's hyperparameters (unset = auto)."""
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None
    """Added to the fine-tuned model's name (`ft:<model>:<org>:<suffix>:<id>`); at most 64
    characters."""
    seed: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    """Seed of the provider's job, for reproducibility (unset: the provider picks one)."""
    poll_interval_seconds: Annotated[float, Field(ge=0.05, le=600)] = 15
    """How often the job, its events and checkpoints are read while it runs."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 5
    """Retries of one request on rate limits (Retry-After honoured), timeouts and 5xx answers."""
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 120
    """Timeout of one request (an upload included)."""
