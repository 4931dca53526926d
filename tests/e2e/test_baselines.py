"""Should we fine-tune at all? The whole pipeline on a tiny routing task with both baselines.

builtin://tiny-llama is fine-tuned with LoRA on support tickets whose answers are four labels,
one of them rare (the data report flags the imbalance before training, and trains anyway);
then the base model is evaluated zero-shot and with three training examples in the prompt,
next to the fine-tuned model, with the same metrics, and the gate requires beating both.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer.pipeline import run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DEMO_DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-chat.jsonl"
RARE = "shipping"
RARE_KEPT = 5


def _routing_records() -> list[dict[str, Any]]:
    """The demo's tickets with all but RARE_KEPT of the RARE label left out: 60:5 = 12:1."""
    records, seen = [], Counter[str]()
    for line in DEMO_DATA.read_text().splitlines():
        record = json.loads(line)
        label = record["messages"][-1]["content"]
        seen[label] += 1
        if label != RARE or seen[label] <= RARE_KEPT:
            records.append(record)
    return records


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerResult, Path]:
    folder = tmp_path_factory.mktemp("baselines")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _routing_records()))
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            "method": "lora",
            "dataset": {
                "source": {"uri": "file://data.jsonl"},
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
                "baselines": ["zeroShot", "fewShot"],
                "fewShotExamples": 3,
                "gate": {
                    "requireImprovementOverBase": True,
                    "requireImprovementOverFewShot": True,
                    "minQuantizedAgreement": 0.0,
                },
            },
            "export": {"gguf": ["f16"]},
        }
    )
    workdir = folder / "run"
    return run_pipeline(spec, workdir, base_dir=folder), workdir


def test_the_data_report_flags_the_rare_label_before_training(
    run: tuple[TrainerResult, Path],
) -> None:
    result, workdir = run
    assert result.phase == "Succeeded", f"{result.reason}: {result.message}"
    assert result.data is not None and result.data.class_balance is not None
    balance = result.data.class_balance
    assert (balance.classes, balance.minority, balance.minority_count) == (4, RARE, RARE_KEPT)
    assert balance.ratio == 12.0 and balance.imbalanced
    report = json.loads((workdir / "data" / "report.json").read_text())
    assert any(w.startswith("class imbalance: ") for w in report["warnings"])


def test_fine_tuned_beats_zero_and_few_shot_and_the_gate_says_by_how_much(
    run: tuple[TrainerResult, Path],
) -> None:
    result, workdir = run
    ev = result.evaluation
    assert ev is not None and ev.base is not None and ev.few_shot is not None
    assert ev.few_shot_examples == 3
    tuned, zero, few = ev.fine_tuned.rouge_l, ev.base.rouge_l, ev.few_shot.rouge_l
    assert tuned is not None and zero is not None and few is not None
    assert tuned > few and tuned > zero
    assert ev.few_shot_win_rate is not None and ev.few_shot_win_rate > 0.5
    assert result.gate is not None and result.gate.passed, result.gate
    assert f"improved on few-shot baseline {few:.4g} (base model with 3 training" in (
        result.gate.reason
    )
    assert f"improved on base {zero:.4g}" in result.gate.reason
    # The few-shot answers are the base model's with the shots in the prompt: not the
    # zero-shot answers, and one per test example.
    rows = [json.loads(line) for line in (workdir / "eval" / "predictions.jsonl").open()]
    assert len(rows) == ev.examples == 12
    assert all(isinstance(r["few_shot_answer"], str) for r in rows)
    assert [r["few_shot_answer"] for r in rows] != [r["base_answer"] for r in rows]


def test_shots_are_training_examples_and_never_test_ones(run: tuple[TrainerResult, Path]) -> None:
    _, workdir = run
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    few_shot = summary["baselines"]["fewShot"]
    assert few_shot["shotSource"] == "train" and len(few_shot["shots"]) == 3
    assert set(summary["baselines"]) == {"zeroShot", "fewShot"}
    assert few_shot["scores"]["rougeL"] == pytest.approx(
        summary["summary"]["fewShot"]["rougeL"]
    )

    def prompts(split: str) -> set[str]:
        path = workdir / "data" / f"{split}.jsonl"
        return {json.loads(line)["messages"][0]["content"] for line in path.open()}

    shot_prompts = {shot["prompt"] for shot in few_shot["shots"]}
    assert shot_prompts <= prompts("train")
    assert not shot_prompts & (prompts("test") | prompts("validation"))
