"""The quality gate: does the fine-tuned model meet the thresholds of `spec.evaluation.gate`?

A pure function of the spec and the measured summary, so the operator and tests can call it
without a model. The reason names every failed check with the measured value and the bound
(spec field names in camelCase, as the user wrote them), e.g.
`failed: rougeL 0.312 < minRougeL 0.4; forgetting drop 0.15 > maxForgettingDrop 0.1`.

Rules:
- the quality thresholds are minJudgeScore, minExactMatch, minRougeL, minBleu, maxPerplexity;
  with a judge configured and none of them set, the gate is a mean judge score >= 4.0
  (`DEFAULT_MIN_JUDGE_SCORE`), as GateSpec documents;
- a threshold on a metric that was not measured fails (it cannot be shown to hold);
- with a judge configured, more than half of the examples unscored fails the gate;
- maxForgettingDrop applies when a forgetting drop was measured;
- requireImprovementOverBase compares the primary metric (judge score with a judge, else the
  first thresholded of rougeL, exactMatch, bleu, perplexity, else the first measured of them);
- with no threshold and no judge, and nothing else failing, the gate passes with
  "no gate thresholds configured".
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.finetunejob import EvaluationSummary, GateResult, GateSpec, ModelScores

DEFAULT_MIN_JUDGE_SCORE = 4.0
"""Gate on the mean judge score when a judge is configured and no threshold is given."""
NO_THRESHOLDS = "no gate thresholds configured"
REASON_MAX_CHARS = 1024


@dataclass(frozen=True)
class _Threshold:
    field: str  # GateSpec field as written in YAML
    metric: str  # ModelScores attribute
    label: str  # metric name in messages
    bound: float
    higher_is_better: bool
    note: str = ""


# (GateSpec attribute, YAML name, ModelScores attribute, label, higher is better)
_THRESHOLDS = (
    ("min_judge_score", "minJudgeScore", "judge_score", "judgeScore", True),
    ("min_exact_match", "minExactMatch", "exact_match", "exactMatch", True),
    ("min_rouge_l", "minRougeL", "rouge_l", "rougeL", True),
    ("min_bleu", "minBleu", "bleu", "bleu", True),
    ("max_perplexity", "maxPerplexity", "perplexity", "perplexity", False),
)

_BY_METRIC = {t[2]: t for t in _THRESHOLDS}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _thresholds(gate: GateSpec, judge_configured: bool) -> list[_Threshold]:
    found = [
        _Threshold(yaml, metric, label, float(getattr(gate, attr)), higher)
        for attr, yaml, metric, label, higher in _THRESHOLDS
        if getattr(gate, attr) is not None
    ]
    if not found and judge_configured:
        found.append(
            _Threshold(
                "minJudgeScore",
                "judge_score",
                "judgeScore",
                DEFAULT_MIN_JUDGE_SCORE,
                True,
                " (default)",
            )
        )
    return found


def primary_metric(
    gate: GateSpec, judge_configured: bool, scores: ModelScores
) -> tuple[str, str, bool]:
    """(ModelScores attribute, label, higher is better) of the metric that decides whether the
    fine-tuned model improved on the base."""
    if judge_configured:
        return "judge_score", "judgeScore", True
    # ROUGE-L first: of the reference metrics it suits free-text answers best.
    ordered = [_BY_METRIC[m] for m in ("rouge_l", "exact_match", "bleu", "perplexity")]
    chosen = next((t for t in ordered if getattr(gate, t[0]) is not None), None)
    chosen = chosen or next((t for t in ordered if getattr(scores, t[2]) is not None), ordered[0])
    return chosen[2], chosen[3], chosen[4]


def decide_gate(
    gate: GateSpec, summary: EvaluationSummary, *, judge_configured: bool, judge_unscored: int = 0
) -> GateResult:
    """The gate verdict for `summary` under `gate`.

    `judge_unscored` is how many of the fine-tuned model's `summary.examples` answers the judge
    could not score."""
    scores = summary.fine_tuned
    failed: list[str] = []
    held: list[str] = []
    thresholds = _thresholds(gate, judge_configured)
    for t in thresholds:
        value = getattr(scores, t.metric)
        if value is None:
            failed.append(f"{t.label} not measured (needed by {t.field}{t.note})")
            continue
        ok = value >= t.bound if t.higher_is_better else value <= t.bound
        sign = (">=" if ok else "<") if t.higher_is_better else ("<=" if ok else ">")
        (held if ok else failed).append(
            f"{t.label} {_fmt(value)} {sign} {t.field} {_fmt(t.bound)}{t.note}"
        )

    if judge_configured and summary.examples > 0 and judge_unscored * 2 > summary.examples:
        failed.append(f"judge could not score {judge_unscored}/{summary.examples} examples")

    if gate.max_forgetting_drop is not None and summary.forgetting_drop is not None:
        drop, bound = summary.forgetting_drop, gate.max_forgetting_drop
        ok = drop <= bound
        text = f"forgetting drop {_fmt(drop)} {'<=' if ok else '>'} maxForgettingDrop {_fmt(bound)}"
        (held if ok else failed).append(text)

    if gate.require_improvement_over_base:
        metric, label, higher = primary_metric(gate, judge_configured, scores)
        tuned = getattr(scores, metric)
        base = getattr(summary.base, metric) if summary.base is not None else None
        if summary.base is None:
            failed.append(
                "requireImprovementOverBase: the base was not evaluated (set compareWithBase: true)"
            )
        elif tuned is None or base is None:
            failed.append(f"requireImprovementOverBase: {label} not measured for both models")
        else:
            better = tuned > base if higher else tuned < base
            verb = "improved on" if better else "did not improve on"
            (held if better else failed).append(f"{label} {_fmt(tuned)} {verb} base {_fmt(base)}")

    if failed:
        reason = "failed: " + "; ".join(failed)
    elif not thresholds:
        reason = "; ".join([NO_THRESHOLDS, *held])
    else:
        reason = "passed: " + "; ".join(held)
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[: REASON_MAX_CHARS - 1] + "…"
    return GateResult(passed=not failed, reason=reason, judge_score=scores.judge_score)
