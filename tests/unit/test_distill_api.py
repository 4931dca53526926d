"""objective: distill, spec.teacher and dataset.augment: defaults, rules (one message each; the
CRD carries the same CEL rules) and the teacher's API key reaching the pod by reference only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec, secret_refs
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.settings import Settings
from tests.teacher_spec_rules import TEACHER_RULE_CASES, distill_spec


def test_teacher_defaults_and_wire_round_trip() -> None:
    spec = FineTuneJobSpec.model_validate(distill_spec())
    assert spec.teacher is not None
    assert spec.teacher.concurrency == 4 and spec.teacher.max_retries == 5
    assert spec.teacher.temperature == 0.0 and spec.teacher.max_tokens == 512
    assert spec.dataset.augment is None
    assert FineTuneJobSpec.model_validate(spec.to_wire()) == spec


@pytest.mark.parametrize(
    ("spec", "message", "fix"),
    TEACHER_RULE_CASES,
    ids=[f"{i}-{m.split(':')[0]}" for i, (_, m, _) in enumerate(TEACHER_RULE_CASES)],
)
def test_teacher_rules_reject_with_the_exact_message_and_the_fix_works(
    spec: dict[str, Any], message: str, fix: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(spec)
    assert [e["msg"] for e in info.value.errors()] == [f"Value error, {message}"]
    FineTuneJobSpec.model_validate(fix)


def test_augment_per_example_is_bounded() -> None:
    with pytest.raises(ValidationError, match="perExample"):
        FineTuneJobSpec.model_validate(
            distill_spec(
                dataset={"source": {"uri": "pvc://d/x.jsonl"}, "augment": {"perExample": 0}}
            )
        )


def test_the_teacher_key_reaches_the_pod_by_secret_reference_only() -> None:
    spec = FineTuneJobSpec.model_validate(distill_spec())
    assert ("teacher.apiKeySecretRef", spec.teacher.api_key_secret_ref) in secret_refs(spec)  # type: ignore[union-attr]
    job = build_training_job("distill", "team-a", spec, Settings(), uid="0123456789ab")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    teacher = [e for e in env if e["name"] == c.ENV_TEACHER_API_KEY]
    assert teacher == [
        {
            "name": c.ENV_TEACHER_API_KEY,
            "valueFrom": {"secretKeyRef": {"name": "teacher", "key": "api-key"}},
        }
    ]
    assert "valueFrom" in json.dumps(teacher)


def test_a_missing_teacher_secret_key_is_named_before_the_job_exists() -> None:
    from kubetune.operator.reconcile.finetunejob import secret_problems

    asked: list[tuple[str, str]] = []

    def keys(namespace: str, name: str) -> list[str] | None:
        asked.append((namespace, name))
        return ["token"]  # the Secret exists, without the key the spec names

    spec = FineTuneJobSpec.model_validate(distill_spec())
    problems = secret_problems(spec, "team-a", keys)
    assert asked == [("team-a", "teacher")]
    assert len(problems) == 1 and problems[0].startswith("teacher.apiKeySecretRef: Secret ")
    assert "'api-key'" in problems[0]


def test_kubetune_run_summary_shows_the_teacher_and_teacher_vs_student(tmp_path: Any) -> None:
    from rich.console import Console

    from kubetune.api.trainer_result import (
        DataReportSummary,
        EvaluationSummary,
        ModelScores,
        TeacherComparison,
        TeacherUsage,
        TrainerResult,
    )
    from kubetune_trainer.local import summary

    result = TrainerResult(
        phase="Succeeded",
        data=DataReportSummary(
            format="chat",
            total=240,
            train=192,
            synthetic=12,
            teacher=TeacherUsage(model="oracle", answered=240, cached=3, requests=237),
        ),
        evaluation=EvaluationSummary(
            examples=24,
            fine_tuned=ModelScores(exact_match=0.75),
            teacher=TeacherComparison(
                model="oracle",
                scores=ModelScores(exact_match=1.0),
                seconds_per_answer=0.004,
                student_seconds_per_answer=0.012,
                student_size_bytes=3 * 1024 * 1024,
            ),
        ),
    )
    console = Console(width=200, record=True)
    console.print(summary(result, tmp_path))
    text = console.export_text()
    assert "oracle: 240 answered (3 cached, 237 requests" in text
    assert "12 synthetic examples in train" in text
    assert "exact match 1.000 vs 0.750" in text and "size remote vs 3.0 MiB" in text
