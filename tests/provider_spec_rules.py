"""backend: openai specs that break one rule each, with the exact message and a spec the
message's fix makes valid; shared by the unit tests of the models and the test of the generated
CRD on a real kube-apiserver (the same words must come from both)."""

from __future__ import annotations

import copy
from typing import Any

DATASET: dict[str, Any] = {"source": {"uri": "pvc://data/train.jsonl"}}
PROVIDER: dict[str, Any] = {
    "model": "gpt-4o-mini-2024-07-18",
    "apiKeySecretRef": {"name": "openai", "key": "api-key"},
}
OPENAI: dict[str, Any] = {
    "backend": "openai",
    "provider": PROVIDER,
    "dataset": DATASET,
    "resources": {"gpus": 0},
}


def openai_spec(**changes: Any) -> dict[str, Any]:
    """OPENAI with top-level fields replaced (a deep copy)."""
    spec = copy.deepcopy(OPENAI)
    spec.update(copy.deepcopy(changes))
    return spec


def _provider(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(PROVIDER), **changes}


# (spec breaking one rule, exact message, spec fixed as the message says)
PROVIDER_RULE_CASES: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    (
        {"dataset": DATASET},
        "baseModel: backend local fine-tunes baseModel; set baseModel.uri (or backend: openai "
        "with a provider block)",
        {"dataset": DATASET, "baseModel": {"uri": "pvc://models/qwen2.5-7b"}},
    ),
    (
        {"backend": "openai", "dataset": DATASET},
        "provider: backend openai needs a provider block with model and apiKeySecretRef "
        "(the Secret holding the API key)",
        {"backend": "openai", "dataset": DATASET, "provider": PROVIDER},
    ),
    (
        {"baseModel": {"uri": "pvc://models/qwen2.5-7b"}, "dataset": DATASET, "provider": PROVIDER},
        "provider: only read with backend: openai; set backend: openai, or remove provider",
        {"baseModel": {"uri": "pvc://models/qwen2.5-7b"}, "dataset": DATASET},
    ),
    (
        openai_spec(baseModel={"uri": "pvc://models/qwen2.5-7b"}),
        "baseModel: backend openai fine-tunes provider.model on the provider's machines; "
        "remove baseModel",
        openai_spec(),
    ),
    (
        openai_spec(objective="dpo"),
        "provider.method: objective dpo trains with provider.method dpo, objective sft with "
        "supervised; make them agree",
        openai_spec(objective="dpo", provider=_provider(method="dpo")),
    ),
    (
        openai_spec(provider=_provider(hyperparameters={"beta": 0.1})),
        "provider.hyperparameters.beta: only used by method dpo; remove it, or set method: dpo",
        openai_spec(provider=_provider(hyperparameters={"nEpochs": 2})),
    ),
    (
        openai_spec(evaluation={"gate": {"maxPerplexity": 20}}),
        "evaluation: backend openai scores the provider's model through its chat API, which "
        "gives no perplexity and runs no forgetting set or few-shot baseline; remove "
        "gate.maxPerplexity, gate.maxForgettingDrop, forgettingSet and baselines",
        openai_spec(evaluation={"gate": {"minRougeL": 0.5}}),
    ),
    (
        openai_spec(resources={"gpus": 2, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}),
        "resources: backend openai trains on the provider's machines and its pod asks for no GPU; "
        "remove resources.gpus and resources.gpuProduct (or set gpus: 0)",
        openai_spec(resources={"gpus": 0}),
    ),
]
