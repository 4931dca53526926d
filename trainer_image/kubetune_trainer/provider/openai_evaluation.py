"""backend openai: the provider's fine-tuned model scored on the held-out test split through its
chat API, next to the base model, with the same metrics, judge and gate as a local job.

The test split never leaves the cluster for training; here each test prompt is sent to
`POST /chat/completions` with the `ft:` model (and, with `compareWithBase`, with
`provider.model`), temperature 0, at most `evaluation.maxNewTokens` tokens, four requests in
flight. Scores are the metric functions of kubetune_trainer.evaluation (exact match, ROUGE-L,
BLEU); perplexity needs the reference's token log-probabilities, which the chat API does not
give, so it stays unmeasured (and `gate.maxPerplexity` is refused for this backend). The judge,
the win rate and the gate verdict (`decide_gate`) are the local job's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.constants import ENV_JUDGE_API_KEY
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import EvaluationSummary, GateResult, ModelScores
from kubetune_trainer.evaluation.examples import EvalExample, to_eval_examples
from kubetune_trainer.evaluation.gate import decide_gate
from kubetune_trainer.evaluation.judge import Judge
from kubetune_trainer.evaluation.metrics import corpus_bleu, exact_match, rouge_l, sentence_bleu
from kubetune_trainer.evaluation.report import mean, win_rate, write_json, write_jsonl

FINE_TUNED, BASE = "fine_tuned", "base"
CONCURRENCY = 4

Call = Callable[[str, Callable[[], Any]], Any]


@dataclass
class ProviderEvaluation:
    """What the evaluation produced: the status summary and gate, and the files written."""

    summary: EvaluationSummary
    gate: GateResult
    predictions_path: Path
    summary_path: Path


def _messages(example: EvalExample) -> list[dict[str, str]]:
    if example.messages is not None:
        return [{"role": m["role"], "content": m["content"]} for m in example.messages]
    return [{"role": "user", "content": example.text or ""}]


def _answers(client: Any, call: Call, model: str, examples: list[EvalExample],
             max_tokens: int) -> list[str]:
    def ask(example: EvalExample) -> str:
        reply = call(
            f"asking {model} for an evaluation answer",
            lambda: client.chat.completions.create(
                model=model, messages=_messages(example), max_tokens=max_tokens, temperature=0
            ),
        )
        return str(reply.choices[0].message.content or "")

    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="provider-eval") as pool:
        return list(pool.map(ask, examples))


def evaluate_provider_model(
    spec: FineTuneJobSpec,
    client: Any,
    call: Call,
    model: str,
    test_records: list[dict[str, Any]],
    workdir: Path,
) -> ProviderEvaluation:
    """Score `model` (and the base, with compareWithBase) on `test_records`; decide the gate."""
    assert spec.provider is not None
    ev = spec.evaluation
    examples, _ = to_eval_examples(test_records, limit=ev.max_examples)
    models = {FINE_TUNED: model}
    if ev.compare_with_base:
        models[BASE] = spec.provider.model
    answers = {role: _answers(client, call, m, examples, ev.max_new_tokens)
               for role, m in models.items()}
    references = [e.reference for e in examples]
    wanted = set(ev.metrics) | {
        metric for attr, metric in (("min_exact_match", "exact_match"), ("min_rouge_l", "rouge_l"),
                                    ("min_bleu", "bleu"))
        if getattr(ev.gate, attr) is not None
    }
    per_example: dict[str, list[dict[str, float | None]]] = {
        role: [
            {"rouge_l": rouge_l(a, ref),
             "exact_match": 1.0 if exact_match(a, ref) else 0.0,
             "bleu": sentence_bleu(a, ref)}
            for a, ref in zip(role_answers, references, strict=True)
        ]
        for role, role_answers in answers.items()
    }
    judged: dict[str, list[float | None]] = {}
    judge_tokens = None
    if ev.judge is not None:
        judge = Judge(ev.judge, os.environ.get(ENV_JUDGE_API_KEY))
        try:
            for role, role_answers in answers.items():
                outcomes = judge.score_all([
                    (e.prompt_for_display(), e.reference, a)
                    for e, a in zip(examples, role_answers, strict=True)
                ])
                judged[role] = [float(o.score) if o.score is not None else None for o in outcomes]
        finally:
            judge.close()
        judge_tokens = judge.tokens

    def scores(role: str) -> ModelScores:
        rows = per_example[role]
        return ModelScores(
            exact_match=mean(r["exact_match"] for r in rows) if "exact_match" in wanted else None,
            rouge_l=mean(r["rouge_l"] for r in rows) if "rouge_l" in wanted else None,
            bleu=corpus_bleu(answers[role], references) if "bleu" in wanted and rows else None,
            judge_score=mean(judged[role]) if role in judged else None,
        )

    def primary(role: str) -> list[float | None]:
        return judged[role] if role in judged else [r["rouge_l"] for r in per_example[role]]

    summary = EvaluationSummary(
        examples=len(examples),
        fine_tuned=scores(FINE_TUNED),
        base=scores(BASE) if BASE in answers else None,
        win_rate=win_rate(primary(FINE_TUNED), primary(BASE)) if BASE in answers else None,
        judge_tokens=judge_tokens,
    )
    unscored = sum(1 for s in judged.get(FINE_TUNED, []) if s is None)
    gate = decide_gate(ev.gate, summary, judge_configured=ev.judge is not None,
                       judge_unscored=unscored)
    out = workdir / "eval"
    rows = [
        {"index": i, "prompt": e.prompt_for_display(), "reference": e.reference,
         "fine_tuned_answer": answers[FINE_TUNED][i], "base_answer": answers.get(BASE, [None] * len(examples))[i],
         "scores": {role: per_example[role][i] for role in answers},
         "judge": {role: judged[role][i] for role in judged}}
        for i, e in enumerate(examples)
    ]
    predictions = write_jsonl(out / "predictions.jsonl", rows)
    summary_path = write_json(out / "summary.json", {
        "models": models, "summary": summary.to_wire(), "gate": gate.to_wire(),
    })
    return ProviderEvaluation(summary, gate, predictions, summary_path)
