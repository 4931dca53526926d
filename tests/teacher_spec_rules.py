"""objective: distill / dataset.augment specs that break one rule each, with the exact message
and a spec the message's fix makes valid; shared by the unit tests of the models and the test of
the generated CRD on a real kube-apiserver (the same words must come from both)."""

from __future__ import annotations

import copy
from typing import Any

DATASET: dict[str, Any] = {"source": {"uri": "pvc://data/prompts.jsonl"}}
BASE: dict[str, Any] = {"uri": "builtin://tiny-llama"}
TEACHER: dict[str, Any] = {
    "endpoint": "http://teacher.models.svc:8000/v1",
    "model": "teacher-70b",
    "apiKeySecretRef": {"name": "teacher", "key": "api-key"},
}
DISTILL: dict[str, Any] = {
    "baseModel": BASE,
    "objective": "distill",
    "teacher": TEACHER,
    "dataset": DATASET,
}


def distill_spec(**changes: Any) -> dict[str, Any]:
    """DISTILL with top-level fields replaced (a deep copy); a value None removes the field."""
    spec = copy.deepcopy(DISTILL)
    spec.update(copy.deepcopy(changes))
    return {k: v for k, v in spec.items() if v is not None}


AUGMENT = {**DATASET, "augment": {"perExample": 2}}

# (spec breaking one rule, exact message, spec fixed as the message says)
TEACHER_RULE_CASES: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    (
        distill_spec(teacher=None),
        "teacher: objective distill needs a teacher (endpoint and model of an OpenAI-compatible "
        "chat API) to answer the dataset's prompts",
        distill_spec(),
    ),
    (
        distill_spec(objective="sft", teacher=None, dataset=AUGMENT),
        "dataset.augment: synthetic examples are written by the teacher; add a teacher block "
        "(endpoint and model), or remove augment",
        distill_spec(objective="sft", dataset=AUGMENT),
    ),
    (
        distill_spec(objective="sft"),
        "teacher: only read with objective: distill or dataset.augment; set one of them, or "
        "remove teacher",
        distill_spec(objective="sft", teacher=None),
    ),
    (
        distill_spec(objective="dpo", dataset={**AUGMENT, "format": "preference"}),
        "dataset.augment: the teacher writes SFT examples (a question and its answer), which "
        "objective dpo cannot train on; remove augment, or use objective sft or distill",
        distill_spec(objective="dpo", teacher=None, dataset={**DATASET, "format": "preference"}),
    ),
    (
        distill_spec(
            baseModel=None,
            backend="openai",
            provider={"model": "gpt-4o-mini", "apiKeySecretRef": {"name": "openai"}},
            resources={"gpus": 0},
        ),
        "objective: backend openai does not distill or augment yet; use backend: local, or "
        "objective sft without dataset.augment",
        distill_spec(
            baseModel=None,
            objective="sft",
            teacher=None,
            backend="openai",
            provider={"model": "gpt-4o-mini", "apiKeySecretRef": {"name": "openai"}},
            resources={"gpus": 0},
        ),
    ),
]

LOCAL_TEACHER: dict[str, Any] = {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}

TEACHER_RULE_CASES += [
    (
        distill_spec(teacher={**TEACHER, **LOCAL_TEACHER}),
        "teacher: set exactly one of endpoint (an OpenAI-compatible chat API, with model) or "
        "uri (a model the trainer loads, e.g. hf://Qwen/Qwen2.5-7B-Instruct)",
        distill_spec(teacher=LOCAL_TEACHER),
    ),
    (
        distill_spec(teacher={"endpoint": TEACHER["endpoint"]}),
        "teacher.model: an endpoint teacher needs the model name to ask for, e.g. gpt-4o",
        distill_spec(teacher={"endpoint": TEACHER["endpoint"], "model": "gpt-4o"}),
    ),
    (
        distill_spec(teacher={"uri": "hf://meta-llama/Llama-3.1-70B-Instruct"}),
        "teacher.acceptLicense: the teacher's model family is under a licence you must accept; "
        "set acceptLicense: true after reading it",
        distill_spec(
            teacher={"uri": "hf://meta-llama/Llama-3.1-70B-Instruct", "acceptLicense": True}
        ),
    ),
]
