"""Evaluate the fine-tuned model and the baselines on the held-out test split, then decide the gate.

Reads top to bottom: examples (and few-shot shots from the training split) -> answers (and
answer losses) from each model -> judge -> per-example scores -> summary and win rates ->
forgetting -> gate -> files. Models are freed before the judge runs, since judging is
network-bound and may take long.

Answer roles: `fine_tuned`; `base`, the zero-shot baseline (`compareWithBase`, or `zeroShot` in
`evaluation.baselines`); `few_shot`, the base model with training examples before each prompt
(`fewShot` in `evaluation.baselines`, see `few_shot`). Both baselines are the same base model,
loaded once. `teacher` (objective distill): the teacher asked each test prompt through its
endpoint (answers cached with the data stage's, so a prompt it answered there costs nothing),
scored with the same metrics and judge, with its seconds per answer next to the student's.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.alias_generators import to_camel

from kubetune.api.constants import ENV_JUDGE_API_KEY
from kubetune.api.finetunejob import EvaluationSpec
from kubetune.api.trainer_result import (
    EvaluationSummary,
    GateResult,
    ModelScores,
    TeacherComparison,
)
from kubetune_trainer.evaluation.examples import EvalExample, to_eval_examples
from kubetune_trainer.evaluation.few_shot import FEW_SHOT, select_shots, with_shots
from kubetune_trainer.evaluation.gate import decide_gate
from kubetune_trainer.evaluation.generation import (
    BASE,
    FINE_TUNED,
    generate_answers,
    iter_models,
    load_tokenizer,
)
from kubetune_trainer.evaluation.judge import Judge, JudgeOutcome
from kubetune_trainer.evaluation.metrics import corpus_bleu, exact_match, rouge_l, sentence_bleu
from kubetune_trainer.evaluation.metrics.perplexity import (
    AnswerLoss,
    answer_losses,
    corpus_perplexity,
)
from kubetune_trainer.evaluation.report import (
    forgetting_drop,
    mean,
    score_deltas,
    win_rate,
    write_json,
    write_jsonl,
)
from kubetune_trainer.evaluation.rubric import JUDGE_PROMPT_VERSION

if TYPE_CHECKING:
    from kubetune.api.teacher import TeacherSpec

log = logging.getLogger(__name__)

TEACHER = "teacher"
"""The answer role of the distillation teacher."""

# Gate thresholds and the metric each one needs measured.
_GATE_METRICS = {
    "min_exact_match": "exact_match",
    "min_rouge_l": "rouge_l",
    "min_bleu": "bleu",
    "max_perplexity": "perplexity",
}


@dataclass
class ExampleResult:
    """One example with every model's answer, per-metric scores and judge verdict."""

    index: int
    example: EvalExample
    answers: dict[str, str] = field(default_factory=dict)
    """Answer per role (`fine_tuned`, `base`, `few_shot`)."""
    answer_tokens: dict[str, int] = field(default_factory=dict)
    """Tokens each role's answer generated (for the drift reference)."""
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per-example metric scores per model role."""
    judge: dict[str, JudgeOutcome] = field(default_factory=dict)
    """Judge verdict per model role, when a judge is configured."""

    def to_row(self) -> dict[str, Any]:
        """The predictions.jsonl row."""
        return {
            "index": self.index,
            "prompt": self.example.prompt_for_display(),
            "reference": self.example.reference,
            "fine_tuned_answer": self.answers.get(FINE_TUNED),
            "base_answer": self.answers.get(BASE),
            "few_shot_answer": self.answers.get(FEW_SHOT),
            **({"teacher_answer": self.answers[TEACHER]} if TEACHER in self.answers else {}),
            "scores": self.scores,
            "judge": {role: outcome.to_row() for role, outcome in self.judge.items()},
        }


@dataclass
class EvaluationOutcome:
    """Everything evaluation produced; `summary` and `gate` go into the FineTuneJob status."""

    summary: EvaluationSummary
    gate: GateResult
    predictions_path: Path
    summary_path: Path
    rows: list[ExampleResult]
    general_rows: list[ExampleResult]
    judge_unscored: dict[str, int]
    """Answers the judge could not score, per model role (test split only)."""
    skipped_records: int = 0
    """Test records with no usable prompt and reference."""
    shots: list[EvalExample] = field(default_factory=list)
    """The training examples the few-shot baseline saw before each test prompt."""


def metrics_to_compute(spec: EvaluationSpec) -> list[str]:
    """The metrics asked for plus those a gate threshold needs."""
    wanted: list[str] = list(spec.metrics)
    for attr, metric in _GATE_METRICS.items():
        if getattr(spec.gate, attr) is not None and metric not in wanted:
            wanted.append(metric)
    return wanted


def _example_scores(
    answer: str, reference: str, metrics: list[str], loss: AnswerLoss | None
) -> dict[str, float | None]:
    # ROUGE-L is always kept per example: it decides the win rate when there is no judge.
    scores: dict[str, float | None] = {"rouge_l": rouge_l(answer, reference)}
    if "exact_match" in metrics:
        scores["exact_match"] = 1.0 if exact_match(answer, reference) else 0.0
    if "bleu" in metrics:
        scores["bleu"] = sentence_bleu(answer, reference)
    if "perplexity" in metrics and loss is not None:
        scores["perplexity"] = loss.perplexity
    return scores


def _model_scores(
    rows: list[ExampleResult], role: str, metrics: list[str], losses: list[AnswerLoss] | None
) -> ModelScores:
    if not rows:
        return ModelScores()
    answers = [r.answers[role] for r in rows]
    references = [r.example.reference for r in rows]
    judged = [r.judge[role].score for r in rows if role in r.judge]
    return ModelScores(
        exact_match=mean(r.scores[role].get("exact_match") for r in rows)
        if "exact_match" in metrics
        else None,
        rouge_l=mean(r.scores[role]["rouge_l"] for r in rows) if "rouge_l" in metrics else None,
        bleu=corpus_bleu(answers, references) if "bleu" in metrics else None,
        perplexity=corpus_perplexity(losses) if "perplexity" in metrics and losses else None,
        judge_score=mean(float(s) if s is not None else None for s in judged),
    )


def _per_example(rows: list[ExampleResult], role: str, metric: str) -> list[float | None]:
    """One model's per-example judge score (`judge`) or ROUGE-L (`rouge_l`); None if unscored."""
    if metric == "judge":
        return [float(s) if (s := r.judge[role].score) is not None else None for r in rows]
    return [r.scores[role]["rouge_l"] for r in rows]


# The model that gives each answer role its answers.
_MODEL_OF_ROLE = {FINE_TUNED: FINE_TUNED, BASE: BASE, FEW_SHOT: BASE}


def _answer_with_each_model(
    spec: EvaluationSpec,
    *,
    model_dir: Path,
    adapter_dir: Path | None,
    device: str,
    sets: list[tuple[list[ExampleResult], list[str]]],
    perplexity_on: tuple[list[ExampleResult], list[str]],
    shots: list[EvalExample],
    seconds: dict[str, float] | None = None,
) -> dict[str, list[AnswerLoss]]:
    """Fill `row.answers[role]` for each (rows, roles) set, loading each model once, and return
    the reference-answer losses of the `perplexity_on` rows for each of its roles. The
    `few_shot` role is the base model asked each prompt with `shots` before it. `seconds` gets
    each role's mean wall time per answer on the first set."""
    losses: dict[str, list[AnswerLoss]] = {}
    roles = {role for rows, set_roles in sets if rows for role in set_roles}
    if not roles:
        return losses
    tokenizer = load_tokenizer(model_dir, adapter_dir)
    want_base = any(_MODEL_OF_ROLE[role] == BASE for role in roles)
    for model_role, model in iter_models(model_dir, adapter_dir, device, want_base=want_base):
        for role in (r for r in (FINE_TUNED, BASE, FEW_SHOT) if _MODEL_OF_ROLE[r] == model_role):
            for rows, set_roles in sets:
                if role not in set_roles or not rows:
                    continue
                examples = _prompts(rows, role, shots)
                counts: list[int] = []
                started = time.monotonic()
                answers = generate_answers(
                    model, tokenizer, examples, max_new_tokens=spec.max_new_tokens,
                    device=device, token_counts=counts,
                )
                if seconds is not None and rows is sets[0][0]:
                    seconds[role] = (time.monotonic() - started) / len(rows)
                for row, answer, count in zip(rows, answers, counts, strict=True):
                    row.answers[role] = answer
                    row.answer_tokens[role] = count
            if perplexity_on[0] and role in perplexity_on[1]:
                examples = _prompts(perplexity_on[0], role, shots)
                losses[role] = answer_losses(model, tokenizer, examples, device=device)
            if role in roles:
                log.info("%s answered", role)
        del model
        gc.collect()
    return losses


def _prompts(rows: list[ExampleResult], role: str, shots: list[EvalExample]) -> list[EvalExample]:
    """What `role` is asked for each row: the example, with the shots before it for few_shot."""
    if role == FEW_SHOT:
        return [with_shots(r.example, shots) for r in rows]
    return [r.example for r in rows]


def evaluate(
    spec: EvaluationSpec,
    *,
    model_dir: Path,
    adapter_dir: Path | None,
    test_records: list[dict[str, Any]],
    workdir: Path,
    general_records: list[dict[str, Any]] | None = None,
    judge_api_key: str | None = None,
    device: str = "cpu",
    train_records: list[dict[str, Any]] | None = None,
    shot_seed: int = 0,
    teacher: TeacherSpec | None = None,
    teacher_api_key: str | None = None,
    teacher_base_dir: Path | None = None,
) -> EvaluationOutcome:
    """Evaluate the fine-tuned model and the baselines on `test_records`, write `workdir/eval/`,
    decide the gate.

    The fine-tuned model is `model_dir` plus the PEFT adapter in `adapter_dir`, or the full
    model in `adapter_dir`; with `adapter_dir=None`, `model_dir` alone is evaluated (no
    baseline, no forgetting check). The few-shot baseline draws its shots from
    `train_records` (the training split, never the test split) with `shot_seed`.
    `judge_api_key` defaults to $KUBETUNE_JUDGE_API_KEY. With `teacher`, the teacher is
    scored too (`teacher_api_key` defaults to $KUBETUNE_TEACHER_API_KEY; `teacher_base_dir`
    anchors a file:// `teacher.uri`)."""
    examples, skipped = to_eval_examples(test_records, spec.max_examples)
    general, _ = to_eval_examples(general_records or [])
    metrics = metrics_to_compute(spec)
    has_base = adapter_dir is not None
    zero_shot = spec.compare_with_base or "zeroShot" in spec.baselines
    shots: list[EvalExample] = []
    if has_base and "fewShot" in spec.baselines:
        shots = select_shots(
            train_records or [], spec.few_shot_examples, shot_seed, held_out=examples
        )
        if not shots:
            log.warning("few-shot baseline skipped: the training split holds no usable example")
    test_roles = (
        [FINE_TUNED]
        + ([BASE] if has_base and zero_shot else [])
        + ([FEW_SHOT] if shots else [])
    )
    general_roles = [FINE_TUNED, BASE] if has_base and general else []
    log.info(
        "evaluating %d test examples (%d skipped), %d general examples; baselines: %s",
        len(examples),
        skipped,
        len(general),
        ", ".join(r for r in test_roles if r != FINE_TUNED) or "none",
    )

    rows = [ExampleResult(i, ex) for i, ex in enumerate(examples)]
    general_rows = [ExampleResult(i, ex) for i, ex in enumerate(general)] if general_roles else []
    seconds: dict[str, float] = {}
    losses = _answer_with_each_model(
        spec,
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        device=device,
        sets=[(rows, test_roles), (general_rows, general_roles)],
        perplexity_on=(rows if "perplexity" in metrics else [], test_roles),
        shots=shots,
        seconds=seconds,
    )
    local_roles = list(test_roles)
    teacher_seconds: float | None = None
    teacher_bytes: int | None = None
    if teacher is not None and rows:
        teacher_seconds, teacher_bytes = _answer_with_teacher(
            teacher, teacher_api_key, rows, workdir, teacher_base_dir
        )
        test_roles = [*test_roles, TEACHER]

    judge_tokens: int | None = None
    if spec.judge is not None:
        judge = Judge(spec.judge, judge_api_key or os.environ.get(ENV_JUDGE_API_KEY))
        try:
            jobs = [(row, role) for row in rows for role in test_roles]
            jobs += [(row, role) for row in general_rows for role in general_roles]
            items = [
                (r.example.prompt_for_display(), r.example.reference, r.answers[role])
                for r, role in jobs
            ]
            for (row, role), outcome in zip(jobs, judge.score_all(items), strict=True):
                row.judge[role] = outcome
        finally:
            judge.close()
        judge_tokens = judge.tokens

    for role in test_roles:
        for i, row in enumerate(rows):
            loss = losses[role][i] if role in losses else None
            row.scores[role] = _example_scores(
                row.answers[role], row.example.reference, metrics, loss
            )
    for role in general_roles:
        for row in general_rows:
            row.scores[role] = _example_scores(row.answers[role], row.example.reference, [], None)

    scores = {role: _model_scores(rows, role, metrics, losses.get(role)) for role in test_roles}
    fine_tuned = scores[FINE_TUNED]
    base = scores.get(BASE)
    if base is None and general_roles:
        base = ModelScores()  # the base was only run on the general set
    use_judge_general = spec.judge is not None and all(
        any(r.judge[role].scored for r in general_rows) for role in general_roles
    )
    drop: float | None = None
    if general_roles:
        general_metric = "judge" if use_judge_general else "rouge_l"
        fine_tuned.general_score = mean(_per_example(general_rows, FINE_TUNED, general_metric))
        assert base is not None
        base.general_score = mean(_per_example(general_rows, BASE, general_metric))
        drop = forgetting_drop(base.general_score, fine_tuned.general_score)

    win_metric = "judge" if spec.judge is not None else "rouge_l"
    rates = {
        role: win_rate(
            _per_example(rows, FINE_TUNED, win_metric), _per_example(rows, role, win_metric)
        )
        for role in local_roles
        if role != FINE_TUNED
    }
    rate = rates.get(BASE)

    summary = EvaluationSummary(
        examples=len(rows),
        fine_tuned=fine_tuned,
        base=base,
        win_rate=rate,
        few_shot=scores.get(FEW_SHOT),
        few_shot_examples=len(shots) if shots else None,
        few_shot_win_rate=rates.get(FEW_SHOT),
        forgetting_drop=drop,
        judge_tokens=judge_tokens,
        teacher=None
        if TEACHER not in scores or teacher is None
        else TeacherComparison(
            model=teacher.name(),
            scores=scores[TEACHER],
            teacher_size="remote" if teacher_bytes is None else "local",
            teacher_size_bytes=teacher_bytes,
            seconds_per_answer=_rounded(teacher_seconds),
            student_seconds_per_answer=_rounded(seconds.get(FINE_TUNED)),
        ),
    )
    unscored = {
        role: sum(1 for r in rows if role in r.judge and not r.judge[role].scored)
        for role in local_roles
    }
    gate = decide_gate(
        spec.gate,
        summary,
        judge_configured=spec.judge is not None,
        judge_unscored=unscored.get(FINE_TUNED, 0),
    )
    log.info("gate %s: %s", "passed" if gate.passed else "failed", gate.reason)

    eval_dir = workdir / "eval"
    predictions_path = write_jsonl(eval_dir / "predictions.jsonl", (r.to_row() for r in rows))
    if general_rows:
        write_jsonl(eval_dir / "general_predictions.jsonl", (r.to_row() for r in general_rows))
    summary_path = write_json(
        eval_dir / "summary.json",
        {
            "summary": summary.to_wire(),
            "deltas": score_deltas(fine_tuned, scores.get(BASE)),
            "winRateMetric": win_metric if rates else None,
            "baselines": _baselines_report(fine_tuned, scores, rates, shots),
            "teacher": None
            if summary.teacher is None
            else {
                **summary.teacher.to_wire(),
                "deltas": score_deltas(fine_tuned, summary.teacher.scores),
            },
            "forgetting": {
                "examples": len(general_rows),
                "metric": ("judge" if use_judge_general else "rouge_l") if general_rows else None,
                "drop": drop,
            },
            "judge": None
            if spec.judge is None
            else {
                "model": spec.judge.model,
                "promptVersion": JUDGE_PROMPT_VERSION,
                "tokens": judge_tokens,
                "unscored": {to_camel(role): n for role, n in unscored.items()},
            },
            "metrics": metrics,
            "skippedRecords": skipped,
            "gate": gate.to_wire(),
        },
    )
    return EvaluationOutcome(
        summary=summary,
        gate=gate,
        predictions_path=predictions_path,
        summary_path=summary_path,
        rows=rows,
        general_rows=general_rows,
        judge_unscored=unscored,
        skipped_records=skipped,
        shots=shots,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _answer_with_teacher(
    spec: TeacherSpec,
    api_key: str | None,
    rows: list[ExampleResult],
    workdir: Path,
    base_dir: Path | None,
) -> tuple[float | None, int | None]:
    """Fill `row.answers["teacher"]` from the teacher (the data stage's cache first); the mean
    seconds per answer (a cached answer counts its original request) and, for a `uri`
    teacher, the bytes of its weights."""
    from kubetune_trainer.distill import AnswerCache, cache_root, make_teacher
    from kubetune_trainer.distill.local_teacher import LocalTeacher

    client = make_teacher(
        spec, AnswerCache(cache_root(workdir), spec), api_key=api_key, base_dir=base_dir
    )
    try:
        conversations = [
            r.example.messages or [{"role": "user", "content": r.example.text or ""}]
            for r in rows
        ]
        answers = client.ask_all(conversations)
    finally:
        client.close()
    for row, answer in zip(rows, answers, strict=True):
        row.answers[TEACHER] = answer.text or ""
    log.info("teacher answered (%d from the cache)", client.cached)
    size = client.size_bytes() if isinstance(client, LocalTeacher) else None
    return mean(a.seconds for a in answers if a.text is not None), size


def _baselines_report(
    fine_tuned: ModelScores,
    scores: dict[str, ModelScores],
    rates: dict[str, float | None],
    shots: list[EvalExample],
) -> dict[str, Any]:
    """summary.json's `baselines`: each baseline's scores, the fine-tuned model's deltas
    against it and its win rate over it; for fewShot also the shots (from the training split)."""
    report: dict[str, Any] = {}
    for role, name in ((BASE, "zeroShot"), (FEW_SHOT, "fewShot")):
        if role not in scores:
            continue
        report[name] = {
            "scores": scores[role].to_wire(),
            "deltas": score_deltas(fine_tuned, scores[role]),
            "winRate": rates.get(role),
        }
    if "fewShot" in report:
        report["fewShot"]["shotSource"] = "train"
        report["fewShot"]["shots"] = [
            {"prompt": s.prompt_for_display(), "answer": s.reference} for s in shots
        ]
    return report
