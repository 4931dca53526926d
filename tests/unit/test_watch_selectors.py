"""The operator's watches select server-side (handlers.WATCH_SELECTORS): every Job and pod that
kubetune makes must match them, or the operator would never see it."""

from __future__ import annotations

from typing import Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.operator.builders.provider_cancel import build_provider_cancel_job
from kubetune.operator.builders.serving import build_statefulset
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.handlers import WATCH_SELECTORS
from kubetune.operator.settings import Settings
from tests.provider_spec_rules import openai_spec

SPEC = {"baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://datasets/d.jsonl"}}}


def matches(labels: dict[str, str], selector: str) -> bool:
    """A label selector of `key` (exists) and `key=value` terms joined by commas."""
    for term in selector.split(","):
        key, eq, value = term.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def test_a_selector_without_its_label_matches_nothing() -> None:
    selector = WATCH_SELECTORS["v1", "pods"]
    assert not matches({c.LABEL_FINETUNEJOB: "bot"}, selector)  # a pod not made by kubetune
    assert not matches({c.LABEL_MANAGED_BY: "helm"}, selector)


def test_trainer_jobs_and_their_pods_match_the_watch_selectors() -> None:
    job = build_training_job("bot", "ml", FineTuneJobSpec.model_validate(SPEC), Settings(), uid="0123456789ab")
    assert matches(job["metadata"]["labels"], WATCH_SELECTORS["batch", "v1", "jobs"])
    assert matches(job["spec"]["template"]["metadata"]["labels"], WATCH_SELECTORS["v1", "pods"])


def test_provider_cancel_pods_match_the_pod_selector() -> None:
    spec = FineTuneJobSpec.model_validate(openai_spec())
    job = build_provider_cancel_job("ft", "team-a", spec, Settings(), uid="0123456789ab")
    assert matches(job["spec"]["template"]["metadata"]["labels"], WATCH_SELECTORS["v1", "pods"])


def test_serving_pods_match_the_pod_selector() -> None:
    md: dict[str, Any] = {"apiVersion": c.API_VERSION, "kind": c.MODELDEPLOYMENT_KIND,
                          "metadata": {"name": "support", "namespace": "ml", "uid": "u-1"}}
    spec = ModelDeploymentSpec.model_validate({"versions": [{"name": "v1", "fineTuneJob": "a"}]})
    sts = build_statefulset(md, spec, [], agent_image="kubetune:dev", agent_command=["kubetune", "serve-agent"],
                            ollama_command=["ollama", "serve"])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(labels, WATCH_SELECTORS["v1", "pods"]) and c.LABEL_MODELDEPLOYMENT in labels
