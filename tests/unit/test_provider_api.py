"""spec.backend / spec.provider: defaults, rules (the CRD carries the same ones, see
tests/integration/test_openai_backend_on_cluster.py) and the pod the operator builds for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec, secret_refs
from kubetune.cli import main, validate_documents
from kubetune.operator.builders.provider_cancel import build_provider_cancel_job
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.reconcile.finetunejob import secret_problems
from kubetune.operator.settings import Settings
from tests.provider_spec_rules import PROVIDER_RULE_CASES, openai_spec


def test_local_is_the_default_backend_and_openai_needs_no_base_model() -> None:
    local = FineTuneJobSpec.model_validate(
        {"baseModel": {"uri": "pvc://models/qwen2.5-7b"}, "dataset": openai_spec()["dataset"]}
    )
    assert local.backend == "local" and local.provider is None
    spec = FineTuneJobSpec.model_validate(openai_spec())
    assert spec.provider is not None and spec.base_model_spec is None
    assert spec.base_model.uri == "openai://gpt-4o-mini-2024-07-18"
    assert spec.provider.method == "supervised" and spec.provider.hyperparameters.n_epochs is None
    wire = spec.to_wire()
    assert "baseModel" not in wire and wire["provider"]["apiKeySecretRef"]["name"] == "openai"
    assert FineTuneJobSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("spec", "message", "fix"), PROVIDER_RULE_CASES, ids=[m.split(":")[0] for _, m, _ in PROVIDER_RULE_CASES]
)
def test_provider_rules_reject_with_the_exact_message_and_the_fix_works(
    spec: dict[str, Any], message: str, fix: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(spec)
    assert [e["msg"] for e in info.value.errors()] == [f"Value error, {message}"]
    FineTuneJobSpec.model_validate(fix)


def test_suffix_over_64_characters_is_refused() -> None:
    spec = openai_spec()
    spec["provider"] = {**spec["provider"], "suffix": "s" * 65}
    with pytest.raises(ValidationError, match=r"provider\.suffix"):
        FineTuneJobSpec.model_validate(spec)
    spec["provider"]["suffix"] = "s" * 64
    FineTuneJobSpec.model_validate(spec)


def test_the_api_key_secret_is_a_checked_reference() -> None:
    spec = FineTuneJobSpec.model_validate(openai_spec())
    refs = dict(secret_refs(spec))
    assert refs["provider.apiKeySecretRef"].name == "openai"
    assert refs["provider.apiKeySecretRef"].key == "api-key"


def test_an_openai_pod_asks_for_no_gpu_and_reads_the_key_from_the_secret() -> None:
    spec = FineTuneJobSpec.model_validate(openai_spec(resources={"gpus": 1}))
    job = build_training_job("ft", "team-a", spec, Settings(), uid="0123456789ab")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert c.GPU_RESOURCE not in str(container.get("resources", {}))
    assert c.GPU_RESOURCE not in str(pod.get("tolerations", []))
    env = {e["name"]: e for e in container["env"]}
    assert env[c.ENV_PROVIDER_API_KEY]["valueFrom"] == {
        "secretKeyRef": {"name": "openai", "key": "api-key"}
    }
    assert "value" not in env[c.ENV_PROVIDER_API_KEY]


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune-openai.yaml"


def test_kubetune_validate_accepts_the_example_and_names_the_broken_provider_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    broken = tmp_path / "ftj.yaml"
    broken.write_text(EXAMPLE.read_text().replace("  backend: openai\n", ""))
    assert main(["validate", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "provider: only read with backend: openai; set backend: openai, or remove provider" in err
    assert "baseModel: backend local fine-tunes baseModel" in err


def test_kubetune_validate_checks_the_api_key_secret_in_the_cluster() -> None:
    asked: list[tuple[str, str]] = []

    def keys(namespace: str, name: str) -> list[str] | None:
        asked.append((namespace, name))
        return ["token"]  # the Secret exists, without the key the spec names

    def check(spec: FineTuneJobSpec, namespace: str) -> list[str]:
        return secret_problems(spec, namespace, keys)

    problems = validate_documents(EXAMPLE.read_text(), "ftj.yaml", check, namespace="default")
    assert asked == [("ml", "openai")]
    assert len(problems) == 1 and "spec.provider.apiKeySecretRef" in problems[0]
    assert "'api-key'" in problems[0]


def test_the_cancel_job_of_a_deleted_openai_job_reuses_the_trainer_pod_with_cancel() -> None:
    spec = FineTuneJobSpec.model_validate(openai_spec())
    job = build_provider_cancel_job("ft", "team-a", spec, Settings(), uid="0123456789ab")
    assert job["metadata"]["name"] == "ft-012345-cancel" and "ownerReferences" not in job["metadata"]
    assert c.LABEL_FINETUNEJOB not in job["metadata"]["labels"]  # not taken for a trainer
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["artifacts"]  # the spec ConfigMap is gone
    container = pod["containers"][0]
    assert container["args"] == ["cancel", "--workdir", "/artifacts/team-a/ft",
                                 "--endpoint", "https://api.openai.com/v1"]
    env = {e["name"]: e for e in container["env"]}
    assert env[c.ENV_PROVIDER_API_KEY]["valueFrom"]["secretKeyRef"]["name"] == "openai"
    assert pod["automountServiceAccountToken"] is False
