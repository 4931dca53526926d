"""Distillation end to end on the demo task: a teacher labels the tickets, the tiny student
learns from its labels, and the evaluation puts teacher and student side by side.

The teacher is the local OpenAI-compatible chat stand-in (tests/judge_server.py; no hosted
model can be reached here) answering each demo ticket with its label: a perfect teacher. Half
the tickets reach the data stage without an answer (distillation needs only prompts); the other
half keep theirs, and the test split is scored against the dataset's own labels.
Augmentation is covered by tests/unit/test_distill.py, to keep this run short.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer.pipeline import run_pipeline
from tests.judge_server import FakeJudgeServer, Reply

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DEMO_DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"
KEY = "sk-teacher-e2e-SECRET-42"


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrainerResult, Path, int]]:
    records = _records()
    labels = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in records}
    # Every other ticket without its answer: the teacher writes it.
    data = [r if i % 2 else {"messages": r["messages"][:1]} for i, r in enumerate(records)]
    folder = tmp_path_factory.mktemp("distill")
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))

    def teacher(body: dict[str, Any]) -> Reply:
        return Reply(content=labels[body["messages"][-1]["content"]])

    previous = os.environ.get(c.ENV_TEACHER_API_KEY)
    os.environ[c.ENV_TEACHER_API_KEY] = KEY
    try:
        with FakeJudgeServer(responder=teacher, api_key=KEY, model="teacher-oracle") as server:
            spec = FineTuneJobSpec.model_validate(
                {
                    "baseModel": {"uri": "builtin://tiny-llama"},
                    "method": "lora",
                    "objective": "distill",
                    "teacher": {
                        "endpoint": server.url,
                        "model": "teacher-oracle",
                        "apiKeySecretRef": {"name": "teacher", "key": "api-key"},
                        "maxTokens": 8,
                        "concurrency": 4,
                    },
                    "dataset": {
                        "source": {"uri": "file://prompts.jsonl"},
                        "format": "chat",
                        "split": {"validation": 0.1, "test": 0.1, "seed": 42},
                    },
                    "dataPolicy": {"dedup": "exact"},
                    "training": {
                        "maxSteps": 60,
                        "learningRate": 3e-3,
                        "batchSize": 8,
                        "gradientAccumulationSteps": 1,
                        "maxLength": 64,
                        "evalSteps": 30,
                        "gradientCheckpointing": False,
                    },
                    "evaluation": {
                        "metrics": ["exact_match", "rouge_l"],
                        "maxExamples": 12,
                        "maxNewTokens": 4,
                        "gate": {"minExactMatch": 0.0, "minQuantizedAgreement": 0.0},
                    },
                    "export": {"gguf": ["f16"]},
                }
            )
            workdir = folder / "run"
            result = run_pipeline(spec, workdir, base_dir=folder)
            yield result, workdir, len(server.requests)
    finally:
        if previous is None:
            os.environ.pop(c.ENV_TEACHER_API_KEY, None)
        else:
            os.environ[c.ENV_TEACHER_API_KEY] = previous


def test_the_teacher_answers_every_prompt_once_and_the_student_trains_on_them(
    run: tuple[TrainerResult, Path, int],
) -> None:
    result, workdir, requests = run
    assert result.phase == "Succeeded", f"{result.reason}: {result.message}"
    assert result.data is not None and result.data.teacher is not None
    usage = result.data.teacher
    # The builtin model's data stage runs twice (its tokenizer learns from the data): the
    # second pass and the evaluation's teacher role take every answer from the cache.
    assert usage.answered == 240 and usage.requests == 0 and usage.cached >= 240
    assert requests == 240
    # The stand-in reports 50 + 12 tokens per answer: the teacher data's cost, paid in the
    # first pass, still reads in status.
    assert (usage.prompt_tokens, usage.completion_tokens) == (240 * 50, 240 * 12)
    assert usage.failed == 0 and usage.rejected == 0
    labels = {"billing", "technical", "account", "shipping"}
    train = [json.loads(line) for line in (workdir / "data" / "train.jsonl").open()]
    assert {r["messages"][-1]["content"] for r in train} <= labels


def test_teacher_and_student_are_scored_side_by_side_with_latency_and_size(
    run: tuple[TrainerResult, Path, int],
) -> None:
    result, workdir, _ = run
    ev = result.evaluation
    assert ev is not None and ev.teacher is not None
    teacher = ev.teacher
    assert teacher.model == "teacher-oracle" and teacher.teacher_size == "remote"
    assert teacher.scores.exact_match == 1.0  # the stand-in teacher knows every label
    assert ev.fine_tuned.exact_match is not None
    assert teacher.seconds_per_answer is not None and teacher.seconds_per_answer > 0
    assert teacher.student_seconds_per_answer is not None
    gguf = [a for a in result.artifacts if a.kind == "gguf"]
    assert gguf and teacher.student_size_bytes == min(a.size_bytes for a in gguf)
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert summary["teacher"]["studentSizeBytes"] == teacher.student_size_bytes
    assert summary["teacher"]["scores"]["exactMatch"] == 1.0
    assert "exactMatch" in summary["teacher"]["deltas"]
    rows = [json.loads(line) for line in (workdir / "eval" / "predictions.jsonl").open()]
    assert all(r["teacher_answer"] == r["reference"] for r in rows)


def test_the_teacher_key_is_in_no_artifact(run: tuple[TrainerResult, Path, int]) -> None:
    result, workdir, _ = run
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert any("teacher" in p.parts for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in json.dumps(result.to_wire())
