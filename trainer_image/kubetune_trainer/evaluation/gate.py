"""The quality gate: does the fine-tuned model meet `spec.evaluation.gate`? And does each
quantized GGUF file agree with the model it was made from?

Pure functions of the spec and the measured figures, so the operator and tests can call them
without a model. A reason names every check with the measured value and the bound (spec field
names in camelCase, as the user wrote them), e.g.
`failed: rougeL 0.312 < minRougeL 0.4; forgetting drop 0.15 > maxForgettingDrop 0.1`.

Rules of `decide_gate` (GateSpec documents them for users):
- the quality thresholds are minJudgeScore, minExactMatch, minRougeL, minBleu, maxPerplexity;
  with a judge configured and none of them set, the gate is a mean judge score >= 4.0
  (`DEFAULT_MIN_JUDGE_SCORE`);
- a threshold on a metric that was not measured fails (it cannot be shown to hold);
- with a judge configured, more than half of the examples unscored fails the gate;
- maxForgettingDrop fails when the drop is larger, or was not measured;
- requireImprovementOverBase (on by default when no threshold and no judge is set: the default
  gate) compares the primary metric (judge score with a judge, else the first thresholded of
  rougeL, exactMatch, bleu, perplexity, else the first measured of them) with the base's;
- requireImprovementOverFewShot compares the same metric with the few-shot baseline's (the
  base model with training examples in the prompt), and fails when it was not evaluated;
- a gate with no check at all (requireImprovementOverBase: false, no threshold, no judge, no
  maxForgettingDrop) fails with "no gate configured": it never passes without a check.

`quantization_verdicts` holds each quantized GGUF file to `minQuantizedAgreement`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.api.finetunejob import GateSpec
from kubetune.api.trainer_result import EvaluationSummary, GateResult, ModelScores

DEFAULT_MIN_JUDGE_SCORE = 4.0
"""Gate on the mean judge score when a judge is configured and no threshold is given."""
NO_GATE = "no gate configured"
REASON_MAX_CHARS = 1024
STRICT_QUANTIZATIONS = ("f16",)
"""GGUF types export verification holds to token-for-token agreement instead of
minQuantizedAgreement."""


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
    if gate.checks_nothing(judge_configured):
        failed.append(
            f"{NO_GATE} (requireImprovementOverBase is false, and no threshold, judge or "
            "maxForgettingDrop is set); set a threshold such as minRougeL, or "
            "requireImprovementOverBase: true"
        )
    for t in _thresholds(gate, judge_configured):
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

    if gate.max_forgetting_drop is not None:
        drop, bound = summary.forgetting_drop, gate.max_forgetting_drop
        if drop is None:
            failed.append(
                "forgetting drop not measured (needed by maxForgettingDrop; "
                "does evaluation.forgettingSet hold usable records?)"
            )
        else:
            ok = drop <= bound
            text = f"forgetting drop {_fmt(drop)} {'<=' if ok else '>'} maxForgettingDrop {_fmt(bound)}"
            (held if ok else failed).append(text)

    if gate.requires_improvement(judge_configured):
        note = " (default gate)" if gate.require_improvement_over_base is None else ""
        metric, label, higher = primary_metric(gate, judge_configured, scores)
        tuned = getattr(scores, metric)
        base = getattr(summary.base, metric) if summary.base is not None else None
        if summary.base is None:
            failed.append(
                f"requireImprovementOverBase{note}: the base was not evaluated (set compareWithBase: true)"
            )
        elif tuned is None or base is None:
            failed.append(f"requireImprovementOverBase{note}: {label} not measured for both models")
        else:
            better = tuned > base if higher else tuned < base
            verb = "improved on" if better else "did not improve on"
            (held if better else failed).append(
                f"{label} {_fmt(tuned)} {verb} base {_fmt(base)}{note}"
            )

    if gate.require_improvement_over_few_shot:
        _few_shot_check(summary, gate, judge_configured, held, failed)

    reason = ("failed: " + "; ".join(failed)) if failed else ("passed: " + "; ".join(held))
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[: REASON_MAX_CHARS - 1] + "…"
    return GateResult(passed=not failed, reason=reason, judge_score=scores.judge_score)


def _few_shot_check(
    summary: EvaluationSummary,
    gate: GateSpec,
    judge_configured: bool,
    held: list[str],
    failed: list[str],
) -> None:
    """requireImprovementOverFewShot: the fine-tuned model must beat the few-shot baseline on
    the primary metric; the message carries both figures and the number of shots."""
    metric, label, higher = primary_metric(gate, judge_configured, summary.fine_tuned)
    if summary.few_shot is None:
        failed.append(
            "requireImprovementOverFewShot: the few-shot baseline was not evaluated (list fewShot "
            "in evaluation.baselines; the training split must hold an example)"
        )
        return
    tuned, shot = getattr(summary.fine_tuned, metric), getattr(summary.few_shot, metric)
    if tuned is None or shot is None:
        failed.append(
            f"requireImprovementOverFewShot: {label} not measured for both the fine-tuned model "
            "and the few-shot baseline"
        )
        return
    better = tuned > shot if higher else tuned < shot
    verb = "improved on" if better else "did not improve on"
    k = summary.few_shot_examples
    (held if better else failed).append(
        f"{label} {_fmt(tuned)} {verb} few-shot baseline {_fmt(shot)} (base model with {k} "
        f"training example{'s' if k != 1 else ''} in the prompt)"
        + ("" if better else "; prompting does as well: fine-tuning did not pay on this metric")
    )


@dataclass(frozen=True)
class QuantizationVerdict:
    """Whether one GGUF file agrees with the model it was made from closely enough."""

    quantization: str
    """GGUF type, e.g. `q4_k_m`."""
    agreement: float | None
    """Measured top-1 token agreement (0-1); None when it was not measured."""
    min_agreement: float | None
    """The bound it was held to (`minQuantizedAgreement`); None for STRICT_QUANTIZATIONS."""
    passed: bool
    reason: str
    """One line naming the quantization, the measured value and the bound, e.g.
    `q4_k_m: token agreement 0.85 < minQuantizedAgreement 0.9`."""


def quantization_verdicts(
    gate: GateSpec, agreements: Mapping[str, float | None]
) -> list[QuantizationVerdict]:
    """One verdict per entry of `agreements` (GGUF type -> top-1 token agreement with the
    merged model, as `verify.GgufCheck.token_agreement` measures it; None when the file did not
    run), in the mapping's order.

    Quantized types pass when agreement >= `gate.minQuantizedAgreement`; an unmeasured one
    fails. Types in STRICT_QUANTIZATIONS (f16) pass here: export verification already holds
    them to agreement wherever the model's choice is clear."""
    bound = gate.min_quantized_agreement
    verdicts = []
    for quantization, agreement in agreements.items():
        if quantization in STRICT_QUANTIZATIONS:
            verdicts.append(
                QuantizationVerdict(
                    quantization,
                    agreement,
                    None,
                    True,
                    f"{quantization}: not held to minQuantizedAgreement (verified token for token)",
                )
            )
            continue
        if agreement is None:
            verdicts.append(
                QuantizationVerdict(
                    quantization,
                    None,
                    bound,
                    False,
                    f"{quantization}: token agreement not measured (the file did not run in "
                    f"llama.cpp; needed by minQuantizedAgreement {_fmt(bound)})",
                )
            )
            continue
        ok = agreement >= bound
        verdicts.append(
            QuantizationVerdict(
                quantization,
                agreement,
                bound,
                ok,
                f"{quantization}: token agreement {_fmt(agreement)} {'>=' if ok else '<'} "
                f"minQuantizedAgreement {_fmt(bound)}",
            )
        )
    return verdicts
