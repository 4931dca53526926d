"""decide_gate: the default gate, every threshold, forgetting, unscored answers and improvement;
quantization_verdicts: each quantized GGUF file against minQuantizedAgreement."""

from __future__ import annotations

import pytest

from kubetune.api.finetunejob import GateSpec
from kubetune.api.trainer_result import EvaluationSummary, ModelScores
from kubetune_trainer.evaluation.gate import (
    DEFAULT_MIN_JUDGE_SCORE,
    NO_GATE,
    QuantizationVerdict,
    decide_gate,
    primary_metric,
    quantization_verdicts,
)

SCORES = ModelScores(exact_match=0.5, rouge_l=0.42, bleu=21.5, perplexity=7.25, judge_score=4.2)
WORSE_BASE = ModelScores(exact_match=0.1, rouge_l=0.3, bleu=10.0, perplexity=9.0, judge_score=3.0)


def _summary(scores: ModelScores = SCORES, **kw: object) -> EvaluationSummary:
    return EvaluationSummary.model_validate({"examples": 10, "fine_tuned": scores, **kw})


def _gate(**kw: object) -> GateSpec:
    return GateSpec.model_validate(kw)


def test_default_gate_requires_improvement_over_the_base() -> None:
    better = decide_gate(_gate(), _summary(base=WORSE_BASE), judge_configured=False)
    assert better.passed
    assert better.reason == "passed: rougeL 0.42 improved on base 0.3 (default gate)"
    assert better.judge_score == 4.2
    worse = decide_gate(_gate(), _summary(base=ModelScores(rouge_l=0.42)), judge_configured=False)
    assert not worse.passed
    assert worse.reason == "failed: rougeL 0.42 did not improve on base 0.42 (default gate)"


def test_default_gate_without_a_base_fails() -> None:
    result = decide_gate(_gate(), _summary(), judge_configured=False)
    assert not result.passed
    assert result.reason == (
        "failed: requireImprovementOverBase (default gate): the base was not evaluated "
        "(set compareWithBase: true)"
    )


def test_a_gate_with_no_check_fails() -> None:
    result = decide_gate(
        _gate(require_improvement_over_base=False),
        _summary(base=WORSE_BASE),
        judge_configured=False,
    )
    assert not result.passed
    assert result.reason == (
        f"failed: {NO_GATE} (requireImprovementOverBase is false, and no threshold, judge or "
        "maxForgettingDrop is set); set a threshold such as minRougeL, or "
        "requireImprovementOverBase: true"
    )


def test_forgetting_alone_is_a_check() -> None:
    result = decide_gate(
        _gate(require_improvement_over_base=False, max_forgetting_drop=0.1),
        _summary(forgetting_drop=0.05),
        judge_configured=False,
    )
    assert (
        result.passed and result.reason == "passed: forgetting drop 0.05 <= maxForgettingDrop 0.1"
    )


def test_default_gate_reports_forgetting_that_held() -> None:
    result = decide_gate(
        _gate(max_forgetting_drop=0.1),
        _summary(base=WORSE_BASE, forgetting_drop=0.05),
        judge_configured=False,
    )
    assert result.passed
    assert result.reason == (
        "passed: forgetting drop 0.05 <= maxForgettingDrop 0.1; "
        "rougeL 0.42 improved on base 0.3 (default gate)"
    )


@pytest.mark.parametrize(
    ("gate", "judge", "improvement", "nothing"),
    [
        ({}, False, True, False),
        ({}, True, False, False),
        ({"min_rouge_l": 0.3}, False, False, False),
        ({"require_improvement_over_base": True, "min_rouge_l": 0.3}, False, True, False),
        ({"require_improvement_over_base": False}, False, False, True),
        ({"require_improvement_over_base": False}, True, False, False),
        ({"require_improvement_over_base": False, "max_forgetting_drop": 0.1}, False, False, False),
    ],
)
def test_when_improvement_is_required(
    gate: dict[str, object], judge: bool, improvement: bool, nothing: bool
) -> None:
    spec = _gate(**gate)
    assert spec.requires_improvement(judge) is improvement
    assert spec.checks_nothing(judge) is nothing


def test_judge_default_threshold_passes_and_fails() -> None:
    assert DEFAULT_MIN_JUDGE_SCORE == 4.0
    ok = decide_gate(_gate(), _summary(), judge_configured=True)
    assert ok.passed and ok.reason == "passed: judgeScore 4.2 >= minJudgeScore 4 (default)"
    low = decide_gate(_gate(), _summary(ModelScores(judge_score=3.9)), judge_configured=True)
    assert not low.passed and low.reason == "failed: judgeScore 3.9 < minJudgeScore 4 (default)"
    assert low.judge_score == 3.9


def test_judge_default_does_not_apply_when_another_threshold_is_set() -> None:
    # GateSpec: "With a judge configured and no threshold given, the gate is a mean judge score >= 4.0".
    result = decide_gate(
        _gate(min_rouge_l=0.4),
        _summary(ModelScores(rouge_l=0.5, judge_score=2.0)),
        judge_configured=True,
    )
    assert result.passed and "judgeScore" not in result.reason


def test_judge_configured_but_nothing_scored_fails() -> None:
    result = decide_gate(_gate(), _summary(ModelScores()), judge_configured=True, judge_unscored=10)
    assert not result.passed
    assert "judgeScore not measured (needed by minJudgeScore (default))" in result.reason
    assert "judge could not score 10/10 examples" in result.reason


@pytest.mark.parametrize(
    ("field", "bound", "passes", "message"),
    [
        ("min_judge_score", 4.0, True, "judgeScore 4.2 >= minJudgeScore 4"),
        ("min_judge_score", 4.5, False, "judgeScore 4.2 < minJudgeScore 4.5"),
        ("min_exact_match", 0.5, True, "exactMatch 0.5 >= minExactMatch 0.5"),
        ("min_exact_match", 0.6, False, "exactMatch 0.5 < minExactMatch 0.6"),
        ("min_rouge_l", 0.4, True, "rougeL 0.42 >= minRougeL 0.4"),
        ("min_rouge_l", 0.45, False, "rougeL 0.42 < minRougeL 0.45"),
        ("min_bleu", 20, True, "bleu 21.5 >= minBleu 20"),
        ("min_bleu", 30, False, "bleu 21.5 < minBleu 30"),
        ("max_perplexity", 8, True, "perplexity 7.25 <= maxPerplexity 8"),
        ("max_perplexity", 7, False, "perplexity 7.25 > maxPerplexity 7"),
    ],
)
def test_each_threshold(field: str, bound: float, passes: bool, message: str) -> None:
    result = decide_gate(
        _gate(**{field: bound}), _summary(), judge_configured=field == "min_judge_score"
    )
    assert result.passed is passes
    assert result.reason == ("passed: " if passes else "failed: ") + message


def test_every_failed_threshold_is_named() -> None:
    gate = _gate(min_exact_match=0.9, min_rouge_l=0.1, min_bleu=50, max_perplexity=5)
    result = decide_gate(gate, _summary(), judge_configured=False)
    assert not result.passed
    assert result.reason == (
        "failed: exactMatch 0.5 < minExactMatch 0.9; bleu 21.5 < minBleu 50; perplexity 7.25 > maxPerplexity 5"
    )


def test_threshold_on_an_unmeasured_metric_fails() -> None:
    result = decide_gate(
        _gate(min_bleu=10), _summary(ModelScores(rouge_l=0.9)), judge_configured=False
    )
    assert not result.passed and result.reason == "failed: bleu not measured (needed by minBleu)"


@pytest.mark.parametrize(("unscored", "passes"), [(0, True), (5, True), (6, False)])
def test_more_than_half_unscored_fails(unscored: int, passes: bool) -> None:
    result = decide_gate(_gate(), _summary(), judge_configured=True, judge_unscored=unscored)
    assert result.passed is passes
    if not passes:
        assert "judge could not score 6/10 examples" in result.reason


def test_unscored_count_is_ignored_without_a_judge() -> None:
    summary = _summary(base=WORSE_BASE)
    assert decide_gate(_gate(), summary, judge_configured=False, judge_unscored=10).passed


@pytest.mark.parametrize(
    ("drop", "limit", "passes"),
    [(0.05, 0.1, True), (0.1, 0.1, True), (0.15, 0.1, False), (-0.2, 0.0, True), (0.9, None, True)],
)
def test_forgetting_drop(drop: float, limit: float | None, passes: bool) -> None:
    result = decide_gate(
        _gate(min_rouge_l=0.1, max_forgetting_drop=limit),
        _summary(forgetting_drop=drop),
        judge_configured=False,
    )
    assert result.passed is passes
    if not passes:
        assert result.reason == "failed: forgetting drop 0.15 > maxForgettingDrop 0.1"


def test_unmeasured_forgetting_fails() -> None:
    result = decide_gate(
        _gate(min_rouge_l=0.1, max_forgetting_drop=0.1), _summary(), judge_configured=False
    )
    assert not result.passed
    assert result.reason == (
        "failed: forgetting drop not measured (needed by maxForgettingDrop; "
        "does evaluation.forgettingSet hold usable records?)"
    )


def test_require_improvement_on_the_judge_score() -> None:
    gate = _gate(require_improvement_over_base=True)
    better = decide_gate(gate, _summary(base=ModelScores(judge_score=3.0)), judge_configured=True)
    assert better.passed and "judgeScore 4.2 improved on base 3" in better.reason
    worse = decide_gate(gate, _summary(base=ModelScores(judge_score=4.2)), judge_configured=True)
    assert not worse.passed and "judgeScore 4.2 did not improve on base 4.2" in worse.reason


def test_require_improvement_without_judge_uses_rouge_l_or_the_thresholded_metric() -> None:
    base = ModelScores(exact_match=0.1, rouge_l=0.5, bleu=10.0, perplexity=9.0)
    plain = decide_gate(
        _gate(require_improvement_over_base=True), _summary(base=base), judge_configured=False
    )
    assert not plain.passed and plain.reason == "failed: rougeL 0.42 did not improve on base 0.5"
    on_bleu = decide_gate(
        _gate(require_improvement_over_base=True, min_bleu=5),
        _summary(base=base),
        judge_configured=False,
    )
    assert on_bleu.passed and "bleu 21.5 improved on base 10" in on_bleu.reason
    on_ppl = decide_gate(
        _gate(require_improvement_over_base=True, max_perplexity=100),
        _summary(base=base),
        judge_configured=False,
    )
    assert (
        on_ppl.passed and "perplexity 7.25 improved on base 9" in on_ppl.reason
    )  # lower is better


def test_require_improvement_without_a_base_fails() -> None:
    result = decide_gate(
        _gate(require_improvement_over_base=True), _summary(), judge_configured=False
    )
    assert not result.passed and "the base was not evaluated" in result.reason


def test_primary_metric_falls_back_to_what_was_measured() -> None:
    assert primary_metric(_gate(), False, ModelScores(bleu=3.0)) == ("bleu", "bleu", True)
    assert primary_metric(_gate(), False, ModelScores()) == ("rouge_l", "rougeL", True)
    assert primary_metric(_gate(min_rouge_l=0.2), True, SCORES) == (
        "judge_score",
        "judgeScore",
        True,
    )


def test_reason_fits_the_status_field() -> None:
    gate = _gate(
        min_exact_match=1,
        min_rouge_l=1,
        min_bleu=100,
        max_perplexity=1,
        require_improvement_over_base=True,
    )
    result = decide_gate(
        gate, _summary(forgetting_drop=0.5), judge_configured=True, judge_unscored=9
    )
    assert not result.passed and len(result.reason) <= 1024


def test_quantized_files_are_held_to_min_quantized_agreement() -> None:
    verdicts = quantization_verdicts(
        _gate(), {"f16": 0.97, "q8_0": 0.99, "q5_k_m": 0.9, "q4_k_m": 0.85}
    )
    assert [(v.quantization, v.passed) for v in verdicts] == [
        ("f16", True),
        ("q8_0", True),
        ("q5_k_m", True),
        ("q4_k_m", False),
    ]
    assert [v.reason for v in verdicts] == [
        "f16: not held to minQuantizedAgreement (verified token for token)",
        "q8_0: token agreement 0.99 >= minQuantizedAgreement 0.9",
        "q5_k_m: token agreement 0.9 >= minQuantizedAgreement 0.9",
        "q4_k_m: token agreement 0.85 < minQuantizedAgreement 0.9",
    ]
    assert verdicts[3] == QuantizationVerdict("q4_k_m", 0.85, 0.9, False, verdicts[3].reason)
    assert verdicts[0].min_agreement is None


def test_quantization_threshold_comes_from_the_spec_and_unmeasured_fails() -> None:
    verdicts = quantization_verdicts(
        _gate(min_quantized_agreement=0.5), {"q4_k_m": 0.6, "q8_0": None}
    )
    assert [v.passed for v in verdicts] == [True, False]
    assert verdicts[0].reason == "q4_k_m: token agreement 0.6 >= minQuantizedAgreement 0.5"
    assert verdicts[1].reason == (
        "q8_0: token agreement not measured (the file did not run in llama.cpp; "
        "needed by minQuantizedAgreement 0.5)"
    )
    assert quantization_verdicts(_gate(), {}) == []


FEW_SHOT = ModelScores(exact_match=0.4, rouge_l=0.5, bleu=30.0, perplexity=8.0, judge_score=3.5)


def test_few_shot_gate_fails_with_both_figures_when_prompting_does_as_well() -> None:
    gate = _gate(require_improvement_over_few_shot=True)
    result = decide_gate(
        gate, _summary(few_shot=FEW_SHOT, few_shot_examples=3), judge_configured=False
    )
    assert not result.passed
    # A check of its own: the default comparison with the base is off, so no base is needed.
    assert result.reason == (
        "failed: rougeL 0.42 did not improve on few-shot baseline 0.5 (base model with 3 "
        "training examples in the prompt); prompting does as well: fine-tuning did not pay on "
        "this metric"
    )


def test_few_shot_gate_passes_and_adds_to_the_base_comparison() -> None:
    gate = _gate(require_improvement_over_few_shot=True, require_improvement_over_base=True)
    weaker = ModelScores(rouge_l=0.35)
    result = decide_gate(
        gate,
        _summary(base=WORSE_BASE, few_shot=weaker, few_shot_examples=1),
        judge_configured=False,
    )
    assert result.passed
    assert result.reason == (
        "passed: rougeL 0.42 improved on base 0.3; rougeL 0.42 improved on few-shot baseline "
        "0.35 (base model with 1 training example in the prompt)"
    )
    judged = decide_gate(
        gate,
        _summary(base=WORSE_BASE, few_shot=FEW_SHOT, few_shot_examples=3),
        judge_configured=True,
    )
    assert judged.passed and "judgeScore 4.2 improved on few-shot baseline 3.5" in judged.reason


def test_few_shot_gate_without_the_baseline_fails() -> None:
    result = decide_gate(
        _gate(require_improvement_over_few_shot=True), _summary(), judge_configured=False
    )
    assert not result.passed
    assert result.reason == (
        "failed: requireImprovementOverFewShot: the few-shot baseline was not evaluated (list "
        "fewShot in evaluation.baselines; the training split must hold an example)"
    )
    assert not _gate(require_improvement_over_few_shot=True).checks_nothing(False)
