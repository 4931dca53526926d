"""evaluate() without models: what it computes and writes when there is nothing to answer."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.finetunejob import EvaluationSpec
from kubetune_trainer.evaluation import evaluate
from kubetune_trainer.evaluation.evaluate import metrics_to_compute


def test_metrics_needed_by_the_gate_are_computed_even_when_not_asked_for() -> None:
    spec = EvaluationSpec.model_validate(
        {"metrics": ["rouge_l"], "gate": {"min_bleu": 10, "max_perplexity": 50}}
    )
    assert metrics_to_compute(spec) == ["rouge_l", "bleu", "perplexity"]
    assert metrics_to_compute(EvaluationSpec()) == ["exact_match", "rouge_l", "bleu", "perplexity"]


def test_no_usable_records_loads_no_model_and_fails_a_threshold(tmp_path: Path) -> None:
    spec = EvaluationSpec.model_validate({"gate": {"min_rouge_l": 0.3}})
    outcome = evaluate(
        spec,
        model_dir=tmp_path / "missing-model",  # never opened: nothing to answer
        adapter_dir=tmp_path / "missing-adapter",
        test_records=[{"text": "not a supported shape"}],
        workdir=tmp_path,
    )
    assert outcome.summary.examples == 0 and outcome.skipped_records == 1
    assert (
        not outcome.gate.passed
        and outcome.gate.reason == "failed: rougeL not measured (needed by minRougeL)"
    )
    data = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert data["skippedRecords"] == 1 and data["gate"]["passed"] is False
    assert (tmp_path / "eval" / "predictions.jsonl").read_text() == ""
