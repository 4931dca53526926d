"""Reference metrics on known strings, the strict verdict parser, record -> example, and the
base-vs-fine-tuned comparisons."""

from __future__ import annotations

import math

import pytest
import rouge_score  # noqa: F401  (a missing dependency fails, never skips)
import sacrebleu  # noqa: F401  (a missing dependency fails, never skips)

from kubetune.api.trainer_result import ModelScores
from kubetune_trainer.evaluation.examples import (
    UnsupportedRecord,
    to_eval_example,
    to_eval_examples,
)
from kubetune_trainer.evaluation.metrics import (
    corpus_bleu,
    exact_match,
    exact_match_rate,
    mean_rouge_l,
    normalise,
    rouge_l,
    sentence_bleu,
)
from kubetune_trainer.evaluation.metrics.perplexity import AnswerLoss, corpus_perplexity
from kubetune_trainer.evaluation.report import forgetting_drop, score_deltas, win_rate
from kubetune_trainer.evaluation.rubric import (
    JUDGE_PROMPT_VERSION,
    JUDGE_SYSTEM_PROMPT,
    VerdictError,
    judge_messages,
    parse_verdict,
)


def test_exact_match_normalises_case_and_whitespace() -> None:
    assert normalise("  Hello \n\t World  ") == "hello world"
    assert exact_match("PARIS", " paris ")
    assert exact_match("Straße", "STRASSE")  # casefold, not lower
    assert not exact_match("Paris.", "Paris")
    assert exact_match_rate(["a", "b", "c", "d"], ["A", "x", "c ", "y"]) == 0.5
    assert exact_match_rate([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match_rate(["a"], [])


def test_rouge_l_on_known_strings() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("completely different", "the cat sat") == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens each way -> P = R = F = 5/6.
    assert rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert mean_rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)


def test_bleu_on_known_strings() -> None:
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == 100.0
    assert corpus_bleu(["zzz"], ["the cat sat on the mat"]) == 0.0
    assert corpus_bleu([], []) == 0.0
    partial = corpus_bleu(["the cat is on the mat today"], ["the cat sat on the mat today"])
    assert 0.0 < partial < 100.0
    assert 0.0 < sentence_bleu("the cat is on the mat", "the cat sat on the mat") < 100.0


def test_corpus_perplexity_is_token_weighted() -> None:
    losses = [AnswerLoss(nll=2.0, tokens=2), AnswerLoss(nll=6.0, tokens=2), AnswerLoss(0.0, 0)]
    assert corpus_perplexity(losses) == pytest.approx(math.exp(2.0))
    assert losses[0].perplexity == pytest.approx(math.e)
    assert losses[2].perplexity is None
    assert corpus_perplexity([AnswerLoss(0.0, 0)]) is None


@pytest.mark.parametrize(
    ("text", "score", "reason"),
    [
        ('{"score": 5, "reason": "Same facts."}', 5, "Same facts."),
        ('  {"reason": "meh", "score": 1}\n', 1, "meh"),
        ('```json\n{"score": 3, "reason": "partly"}\n```', 3, "partly"),
        ('```\n{"score": 2, "reason": "x"}\n```', 2, "x"),
    ],
)
def test_parse_verdict_accepts_strict_json(text: str, score: int, reason: str) -> None:
    verdict = parse_verdict(text)
    assert (verdict.score, verdict.reason) == (score, reason)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "score: 5",
        'Sure! {"score": 5, "reason": "ok"}',
        '{"score": 5, "reason": "ok"} Hope this helps',
        '{"score": 6, "reason": "too high"}',
        '{"score": 0, "reason": "too low"}',
        '{"score": 4.5, "reason": "not an int"}',
        '{"score": "4", "reason": "a string"}',
        '{"score": true, "reason": "a bool"}',
        '{"score": 4}',
        '{"score": 4, "reason": 7}',
        '{"score": 4, "reason": "ok", "confidence": 0.9}',
        '[{"score": 4, "reason": "ok"}]',
        "I'm sorry, but I can't help with that.",
        '```python\n{"score": 3, "reason": "wrong fence"}\n```',
    ],
)
def test_parse_verdict_rejects_anything_else(text: str | None) -> None:
    with pytest.raises(VerdictError):
        parse_verdict(text)


def test_judge_prompt_is_versioned_and_carries_all_three_texts() -> None:
    assert JUDGE_PROMPT_VERSION == "kubetune-judge-v1"
    system, user = judge_messages("What is 2+2?", "4", "four")
    assert system == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert "What is 2+2?" in user["content"] and "four" in user["content"]
    assert '{"score": <integer 1-5>, "reason": "<one sentence>"}' in JUDGE_SYSTEM_PROMPT


def test_records_become_prompt_and_reference() -> None:
    chat = to_eval_example(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ]
        }
    )
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert chat.reference == "Paris." and chat.text is None
    assert chat.prompt_for_display() == "system: Be brief.\nuser: Capital of France?"

    multi = to_eval_example(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye"},
            ]
        }
    )
    assert multi.reference == "Goodbye" and multi.messages is not None and len(multi.messages) == 3

    completion = to_eval_example({"prompt": "2+2=", "completion": "4"})
    assert (completion.text, completion.messages, completion.reference) == ("2+2=", None, "4")
    assert completion.prompt_for_display() == "2+2="

    preference = to_eval_example({"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."})
    assert (preference.text, preference.reference) == ("Say hi", "Hi!")

    conversational = to_eval_example(
        {
            "prompt": [{"role": "user", "content": "Q"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    )
    assert conversational.messages == [{"role": "user", "content": "Q"}]
    assert conversational.reference == "good"
    assert conversational.prompt_for_display() == "Q"


@pytest.mark.parametrize(
    "record",
    [
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "assistant", "content": "no prompt"}]},
        {"text": "raw"},
        {"prompt": 3, "completion": "x"},
    ],
)
def test_unusable_records_are_rejected(record: dict[str, object]) -> None:
    with pytest.raises(UnsupportedRecord):
        to_eval_example(record)


def test_to_eval_examples_caps_and_counts_skipped() -> None:
    records = [{"text": "bad"}] + [{"prompt": str(i), "completion": str(i)} for i in range(5)]
    examples, skipped = to_eval_examples(records, limit=3)
    assert [e.text for e in examples] == ["0", "1", "2"] and skipped == 1


def test_win_rate_counts_ties_half_and_skips_missing() -> None:
    assert win_rate([5, 3, 4, None], [4, 3, 5, 1]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert win_rate([1.0, 1.0], [0.0, 0.0]) == 1.0
    assert win_rate([None], [3]) is None
    assert win_rate([], []) is None


def test_forgetting_drop_is_relative() -> None:
    assert forgetting_drop(0.5, 0.4) == pytest.approx(0.2)
    assert forgetting_drop(4.0, 4.4) == pytest.approx(-0.1)  # better after fine-tuning
    assert forgetting_drop(0.0, 0.0) == 0.0
    assert forgetting_drop(None, 0.3) is None


def test_score_deltas_cover_scores_both_models_have() -> None:
    tuned = ModelScores(rouge_l=0.6, bleu=30.0, perplexity=8.0, judge_score=4.5)
    base = ModelScores(rouge_l=0.4, bleu=None, perplexity=10.0, judge_score=3.0)
    assert score_deltas(tuned, base) == pytest.approx(
        {"rougeL": 0.2, "perplexity": -2.0, "judgeScore": 1.5}
    )
    assert score_deltas(tuned, None) == {}
