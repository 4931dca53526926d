"""`spec.teacher` and `spec.dataset.augment`: a stronger model that writes training data.

With `objective: distill` the trainer asks the teacher (any OpenAI-compatible chat endpoint) to
answer every prompt of the dataset, then trains the student (`baseModel`) with SFT on those
answers: sequence-level distillation. `dataset.augment` asks the same teacher for new examples in
the style of each seed example, flagged synthetic in the data report. The teacher's answers go
through the same validation, dedup and scans as the user's data. The API key is read from a
Secret, by name only; answers are cached on the artifact volume, so a retried pod never pays for
the same prompt twice (docs/distillation.md).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, HttpUrl, model_validator

from kubetune.api.common import ApiModel, SecretKeyRef

LocalModelUri = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=r"^(hf|pvc|file|builtin)://.+$",
        examples=["hf://Qwen/Qwen2.5-7B-Instruct", "pvc://models/teacher"],
    ),
]
"""A model the trainer loads (the schemes `kubetune_trainer.models.resolve_base_model` reads)."""


_LICENSED = ("llama", "gemma", "mistral-large", "codestral")  # as finetunejob.LICENSED_FAMILIES
_LICENCE_MESSAGE = (
    "teacher.acceptLicense: the teacher's model family is under a licence you must accept; "
    "set acceptLicense: true after reading it"
)


class TeacherSpec(ApiModel):
    """The teacher: an OpenAI-compatible chat endpoint and model, or a model the trainer loads
    (`uri`); exactly one of `endpoint` and `uri`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.uri) || self.acceptLicense || self.uri.startsWith('builtin://')"
                    " || !("
                    + " || ".join(f"self.uri.lowerAscii().contains('{f}')" for f in _LICENSED)
                    + ")",
                    "message": _LICENCE_MESSAGE,
                }
            ]
        }
    )

    endpoint: Annotated[HttpUrl, Field(max_length=2048)] | None = None
    """Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1` or a vLLM /
    llama.cpp server in the cluster (`http://teacher.models.svc:8000/v1`). Needs `model`."""
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """Teacher model name at `endpoint`, e.g. `gpt-4o` or `meta-llama/Llama-3.1-70B-Instruct`."""
    uri: LocalModelUri | None = None
    """A Hugging Face model the trainer pod loads and generates with before training (greedy
    when temperature is 0), then frees: `hf://org/name`, `pvc://<claim>/<path>`,
    `file://<path>` or `builtin://tiny-<family>`. It shares the pod's GPUs with the student."""
    accept_license: bool = False
    """Accept the licence of a gated `uri` model family (Llama, Gemma, …), as
    baseModel.acceptLicense."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key (read into the pod's environment as
    `KUBETUNE_TEACHER_API_KEY`; never logged, never in status, Events or artifacts). Unset for
    endpoints that need none."""
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 512
    """Longest answer the teacher may write (tokens)."""
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    """Sampling temperature of the teacher's answers; 0 gives its most likely answer. Part of
    the cache key: changing it asks the teacher again."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    """Requests in flight at once (endpoint); a `uri` teacher generates this many prompts per
    batch."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 5
    """Retries of one request on rate limits (Retry-After honoured), timeouts and 5xx answers."""
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 120
    """Timeout of one request."""

    def name(self) -> str:
        """The teacher as status and reports name it: `model`, else `uri`."""
        return self.model or self.uri or ""

    @model_validator(mode="after")
    def _licence(self) -> TeacherSpec:
        uri = (self.uri or "").lower()
        licensed = any(family in uri for family in _LICENSED)
        if licensed and not uri.startswith("builtin://") and not self.accept_license:
            raise ValueError(_LICENCE_MESSAGE)
        return self


class AugmentSpec(ApiModel):
    """Synthetic examples written by the teacher (`spec.teacher`) from the dataset's examples."""

    per_example: Annotated[int, Field(ge=1, le=20)]
    """New examples per seed example: the teacher is asked for a new question in the style of
    the seed (the prompt is in docs/distillation.md), then answers it. Each is flagged
    `synthetic: true` and counted apart in the data report and `status.data.synthetic`."""
