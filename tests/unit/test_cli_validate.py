"""`kubetune validate`: the spec's rules with the field named, and (with a cluster) its Secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.cli import main, validate_documents
from kubetune.operator.reconcile.finetunejob import secret_problems

HEAD = "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j, namespace: ml}\n"
SPEC = (
    "spec:\n"
    "  baseModel: {uri: pvc://models/m}\n"
    "  dataset: {source: {uri: pvc://datasets/train.jsonl}}\n"
)


def _validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "ftj.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


def test_the_newcomers_export_is_rejected_before_any_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _validate(tmp_path, HEAD + SPEC + "  export: {merge: false, gguf: []}\n", capsys)
    assert code == 1
    assert err.splitlines() == [
        f"{tmp_path / 'ftj.yaml'} (document 1): spec.export: export.gguf: list at least one GGUF type "
        "(f16, q8_0, q5_k_m or q4_k_m), e.g. gguf: [q4_k_m]: every job exports its merged model as GGUF"
    ]


def test_cross_field_rules_name_their_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _validate(tmp_path, HEAD + SPEC + "  evaluation: {gate: {maxForgettingDrop: 0.1}}\n", capsys)
    assert code == 1
    assert err.splitlines() == [
        f"{tmp_path / 'ftj.yaml'} (document 1): spec: evaluation.gate.maxForgettingDrop needs "
        "evaluation.forgettingSet: add a general set that is scored before and after fine-tuning, "
        "or remove maxForgettingDrop"
    ]


def test_secrets_are_checked_in_the_documents_namespace() -> None:
    text = HEAD + SPEC + (
        "  evaluation:\n"
        "    judge: {endpoint: 'https://judge.example/v1', model: m, apiKeySecretRef: {name: judge-key, key: api-key}}\n"
    )
    asked: list[tuple[str, str]] = []

    def keys(namespace: str, name: str) -> list[str] | None:
        asked.append((namespace, name))
        return None

    def check(spec: FineTuneJobSpec, namespace: str) -> list[str]:
        return secret_problems(spec, namespace, keys)

    problems = validate_documents(text, "ftj.yaml", check, namespace="default")
    assert asked == [("ml", "judge-key")]
    assert problems == [
        "ftj.yaml (document 1): spec.evaluation.judge.apiKeySecretRef: Secret 'judge-key' not found in "
        "namespace 'ml'; create it with key 'api-key' (kubectl create secret generic judge-key -n ml "
        "--from-literal=api-key=...)"
    ]
    without_ns = text.replace("namespace: ml", "labels: {}")
    validate_documents(without_ns, "ftj.yaml", check, namespace="team-a")
    assert asked[-1] == ("team-a", "judge-key")


def test_an_unusable_kubeconfig_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ftj.yaml"
    path.write_text(HEAD + SPEC)
    code = main(["validate", "--kubeconfig", str(tmp_path / "missing"), str(path)])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"--kubeconfig {tmp_path / 'missing'}: cannot use it: ")
