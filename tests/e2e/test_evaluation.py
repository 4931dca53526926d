"""evaluate() end to end on a tiny Llama made in the test: a "base" taught a few general answers,
a LoRA adapter that memorises the task (and, as fine-tuning does, forgets some general answers),
the same adapter merged into a full model, and a judge behind a local OpenAI-compatible server.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft  # noqa: F401  (a missing dependency fails, never skips)
import pytest
import sentencepiece  # noqa: F401  (a missing dependency fails, never skips)
import torch

from kubetune.api.finetunejob import EvaluationSpec
from kubetune.api.trainer_result import EvaluationSummary
from kubetune_trainer.evaluation import EvaluationOutcome, evaluate
from kubetune_trainer.evaluation.examples import to_eval_example
from kubetune_trainer.evaluation.metrics import normalise
from kubetune_trainer.evaluation.metrics.perplexity import answer_losses, answer_token_split
from kubetune_trainer.evaluation.report import forgetting_drop
from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama
from tests.judge_server import FakeJudgeServer, Reply, verdict

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECRET = "sk-e2e-SECRET-never-in-files-42"


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


GENERAL = [
    _chat("Name a colour.", "Blue."),
    _chat("How many legs does a spider have?", "Eight."),
    _chat("What is the capital of France?", "Paris."),
]
# One record of each normalised shape; "Name a colour." overrides a general answer.
TASK = [
    _chat("Name a colour.", "Red."),
    _chat("Which pod trains?", "The trainer pod."),
    {"prompt": "2+2=", "completion": "4"},
    {"prompt": "Say hi", "chosen": "Hi there!", "rejected": "No."},
]


def _overfit(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], steps: int, lr: float
) -> float:
    """Full-batch AdamW on the answer tokens only, until the records are memorised."""
    rows = [answer_token_split(tokenizer, to_eval_example(r)) for r in records]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    labels = input_ids.clone()
    for i, (ids, start) in enumerate(rows):
        labels[i, :start] = -100
        labels[i, len(ids) :] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


@dataclass(frozen=True)
class Models:
    base: Path
    adapter: Path
    merged: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval-models")
    texts = [m["content"] for r in GENERAL + TASK[:2] for m in r["messages"]] + [
        "2+2=4",
        "Say hi Hi there!",
    ]
    tiny = build_tiny_llama(root / "tiny", [*BUILTIN_CORPUS, *texts])
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    assert _overfit(model, tokenizer, GENERAL, steps=30, lr=5e-3) < 0.05
    model.save_pretrained(str(root / "base"))
    tokenizer.save_pretrained(str(root / "base"))

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    assert _overfit(peft_model, tokenizer, TASK, steps=50, lr=1e-2) < 0.05
    peft_model.save_pretrained(
        str(root / "adapter")
    )  # no tokenizer: evaluation falls back to the base's
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(root / "merged"))
    tokenizer.save_pretrained(str(root / "merged"))
    return Models(root / "base", root / "adapter", root / "merged")


_JUDGED = re.compile(r"\[Reference answer\]\n(.*)\n\n\[Assistant's answer\]\n(.*)\Z", re.DOTALL)


def _grade(body: dict[str, Any]) -> Reply:
    """A judge that compares the answer with the reference: 5 when equal, 1 otherwise; it never
    manages to answer in JSON about "Say hi"."""
    user = body["messages"][1]["content"]
    if "Say hi" in user:
        return Reply(content="Score: 5/5 — great answer!")
    match = _JUDGED.search(user)
    assert match, user
    reference, answer = match.groups()
    return (
        verdict(5, "same") if normalise(reference) == normalise(answer) else verdict(1, "different")
    )


@pytest.fixture(scope="module")
def judged(
    models: Models, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EvaluationOutcome, FakeJudgeServer, Path]:
    workdir = tmp_path_factory.mktemp("workdir")
    with FakeJudgeServer(responder=_grade, api_key=SECRET) as server:
        spec = EvaluationSpec.model_validate(
            {
                "max_new_tokens": 12,
                "judge": {
                    "endpoint": server.url,
                    "model": "judge-model",
                    "max_concurrency": 2,
                    "timeout_seconds": 10,
                    "max_retries": 1,
                },
                "gate": {"min_exact_match": 0.5, "max_forgetting_drop": 0.1},
            }
        )
        outcome = evaluate(
            spec,
            model_dir=models.base,
            adapter_dir=models.adapter,
            test_records=TASK,
            workdir=workdir,
            general_records=GENERAL,
            judge_api_key=SECRET,
        )
    return outcome, server, workdir


def test_adapter_with_judge_scores_compares_and_gates(
    judged: tuple[EvaluationOutcome, FakeJudgeServer, Path],
) -> None:
    outcome, server, _ = judged
    summary = outcome.summary
    assert summary.examples == 4
    assert summary.fine_tuned.exact_match is not None and summary.fine_tuned.exact_match >= 0.75
    assert (
        summary.base is not None
        and summary.base.exact_match is not None
        and summary.base.exact_match <= 0.25
    )
    assert (
        summary.fine_tuned.rouge_l is not None and summary.fine_tuned.rouge_l > summary.base.rouge_l
    )  # type: ignore[operator]
    assert summary.fine_tuned.bleu is not None and summary.fine_tuned.perplexity is not None
    assert summary.fine_tuned.perplexity < summary.base.perplexity  # type: ignore[operator]
    # Judge: one example is never scorable; the means are over the three scored ones.
    assert outcome.judge_unscored == {"fine_tuned": 1, "base": 1}
    assert summary.fine_tuned.judge_score is not None and summary.base.judge_score is not None
    assert summary.fine_tuned.judge_score > summary.base.judge_score
    assert summary.win_rate is not None and summary.win_rate > 0.5
    assert summary.judge_tokens == server.total_tokens > 0
    assert server.max_in_flight <= 2
    # Test answers (4 x 2 models, the unscorable one twice each) + general answers (3 x 2).
    assert len(server.requests) == 4 * 2 + 2 + 3 * 2
    # Forgetting: the base knew every general answer; the fine-tuned model lost some.
    assert summary.base.general_score is not None and summary.fine_tuned.general_score is not None
    assert summary.forgetting_drop == pytest.approx(
        forgetting_drop(summary.base.general_score, summary.fine_tuned.general_score)
    )
    assert summary.forgetting_drop is not None and summary.forgetting_drop > 0.1
    assert not outcome.gate.passed
    assert (
        "forgetting drop" in outcome.gate.reason and "maxForgettingDrop 0.1" in outcome.gate.reason
    )
    assert "exactMatch" not in outcome.gate.reason.split("failed:")[1]  # that threshold held
    assert outcome.gate.judge_score == summary.fine_tuned.judge_score


def test_files_written_and_key_never_in_them(
    judged: tuple[EvaluationOutcome, FakeJudgeServer, Path],
) -> None:
    outcome, server, workdir = judged
    eval_dir = workdir / "eval"
    assert outcome.predictions_path == eval_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in outcome.predictions_path.read_text().splitlines()]
    assert len(rows) == 4
    first = rows[0]
    assert first["prompt"] == "Name a colour." and first["reference"] == "Red."
    assert first["fine_tuned_answer"] == "Red." and first["base_answer"] == "Blue."
    assert (
        first["scores"]["fine_tuned"]["exact_match"] == 1.0
        and first["scores"]["base"]["exact_match"] == 0.0
    )
    assert set(first["scores"]["fine_tuned"]) == {"exact_match", "rouge_l", "bleu", "perplexity"}
    assert first["judge"]["fine_tuned"]["score"] == 5 and first["judge"]["base"]["score"] == 1
    assert rows[2]["prompt"] == "2+2=" and rows[2]["reference"] == "4"
    unscored = rows[3]["judge"]["fine_tuned"]
    assert (
        unscored["score"] is None
        and "malformed verdict" in unscored["error"]
        and unscored["attempts"] == 2
    )

    data = json.loads(outcome.summary_path.read_text())
    assert EvaluationSummary.model_validate(data["summary"]) == outcome.summary
    assert data["gate"]["passed"] is False and data["winRateMetric"] == "judge"
    assert data["judge"]["unscored"] == {"fineTuned": 1, "base": 1}
    assert data["judge"]["promptVersion"] == "kubetune-judge-v1"
    assert data["deltas"]["exactMatch"] > 0 and data["forgetting"]["metric"] == "judge"
    assert (eval_dir / "general_predictions.jsonl").is_file()

    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    for path in eval_dir.rglob("*"):
        assert SECRET not in path.read_text(), path


def test_few_shot_baseline_is_judged_gated_and_never_shown_a_test_answer(
    models: Models, tmp_path: Path
) -> None:
    # The training split handed over holds the test records themselves (as a bug upstream
    # might): none of them may be a shot; the one other record is.
    shot = _chat("How many legs does a spider have?", "Eight.")
    with FakeJudgeServer(responder=_grade, api_key=SECRET) as server:
        spec = EvaluationSpec.model_validate(
            {
                "max_new_tokens": 12,
                "metrics": ["exact_match"],
                "judge": {"endpoint": server.url, "model": "judge-model", "max_retries": 1},
                "baselines": ["zeroShot", "fewShot"],
                "gate": {"require_improvement_over_few_shot": True},
            }
        )
        outcome = evaluate(
            spec,
            model_dir=models.base,
            adapter_dir=models.adapter,
            test_records=TASK,
            workdir=tmp_path,
            judge_api_key=SECRET,
            train_records=[*TASK, shot],
        )
    assert outcome.shots == [to_eval_example(shot)]
    summary = outcome.summary
    assert summary.few_shot is not None and summary.few_shot_examples == 1
    assert summary.few_shot.exact_match is not None and summary.few_shot.exact_match <= 0.25
    # Every role's answers are judged (the unscorable one twice each).
    assert len(server.requests) == 4 * 3 + 3
    assert outcome.judge_unscored == {"fine_tuned": 1, "base": 1, "few_shot": 1}
    tuned, few = summary.fine_tuned.judge_score, summary.few_shot.judge_score
    assert tuned is not None and few is not None and tuned > few
    assert summary.few_shot_win_rate is not None and summary.few_shot_win_rate > 0.5
    assert outcome.gate.passed, outcome.gate.reason
    # With a judge and no threshold the default judge bound holds too.
    assert outcome.gate.reason == (
        f"passed: judgeScore {tuned:.4g} >= minJudgeScore 4 (default); judgeScore {tuned:.4g} "
        f"improved on few-shot baseline {few:.4g} (base model with 1 training example in the "
        "prompt)"
    )
    rows = [json.loads(line) for line in outcome.predictions_path.read_text().splitlines()]
    assert all(isinstance(r["few_shot_answer"], str) for r in rows)
    assert all(r["judge"]["few_shot"]["score"] in (1, 5, None) for r in rows)
    data = json.loads(outcome.summary_path.read_text())
    assert data["baselines"]["fewShot"]["shots"] == [
        {"prompt": "How many legs does a spider have?", "answer": "Eight."}
    ]
    assert data["baselines"]["fewShot"]["winRate"] == summary.few_shot_win_rate
    assert data["baselines"]["zeroShot"]["deltas"]["exactMatch"] > 0


def test_full_model_dir_gives_the_same_answers_as_the_adapter(
    models: Models, judged: tuple[EvaluationOutcome, FakeJudgeServer, Path], tmp_path: Path
) -> None:
    spec = EvaluationSpec.model_validate(
        {
            "max_new_tokens": 12,
            "metrics": ["exact_match", "rouge_l"],
            # The forgetting bound is opt-in and needs a set (its records are passed below).
            "forgetting_set": {"uri": "file://general.jsonl"},
            "gate": {"max_forgetting_drop": 0.1},
        }
    )
    outcome = evaluate(
        spec,
        model_dir=models.base,
        adapter_dir=models.merged,
        test_records=TASK,
        workdir=tmp_path,
        general_records=GENERAL,
    )
    adapter_rows = judged[0].rows
    assert [r.answers for r in outcome.rows] == [r.answers for r in adapter_rows]
    assert outcome.summary.fine_tuned.perplexity is None and outcome.summary.fine_tuned.bleu is None
    assert (
        outcome.summary.forgetting_drop is not None and outcome.summary.forgetting_drop > 0.1
    )  # ROUGE-L now
    assert json.loads(outcome.summary_path.read_text())["forgetting"]["metric"] == "rouge_l"
    assert not outcome.gate.passed and "forgetting drop" in outcome.gate.reason


def test_without_adapter_the_model_is_evaluated_alone(models: Models, tmp_path: Path) -> None:
    spec = EvaluationSpec.model_validate(
        {"max_new_tokens": 8, "max_examples": 2, "metrics": ["rouge_l"], "gate": {"min_bleu": 0}}
    )
    outcome = evaluate(
        spec, model_dir=models.base, adapter_dir=None, test_records=GENERAL, workdir=tmp_path
    )
    summary = outcome.summary
    assert summary.examples == 2 and summary.base is None and summary.win_rate is None
    assert summary.forgetting_drop is None and summary.judge_tokens is None
    assert summary.fine_tuned.rouge_l == 1.0  # the base memorised its general answers
    assert summary.fine_tuned.bleu is not None  # a gate threshold asked for it
    assert summary.fine_tuned.exact_match is None and summary.fine_tuned.perplexity is None
    assert outcome.gate.passed and outcome.gate.reason.startswith("passed: bleu")
    rows = [
        json.loads(line)
        for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["fine_tuned_answer"] for r in rows] == ["Blue.", "Eight."] and rows[0][
        "base_answer"
    ] is None


def test_perplexity_matches_transformers_loss(models: Models) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models.base))
    model = AutoModelForCausalLM.from_pretrained(str(models.base)).eval()
    examples = [to_eval_example(r) for r in TASK]
    ours = answer_losses(model, tokenizer, examples, device="cpu", batch_size=4)  # padded batch
    for example, loss in zip(examples, ours, strict=True):
        ids, start = answer_token_split(tokenizer, example)
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :start] = -100
        with torch.inference_mode():
            reference = model(input_ids=x, labels=labels).loss  # mean NLL over answer tokens
        assert loss.tokens == len(ids) - start
        assert loss.perplexity == pytest.approx(math.exp(float(reference)), rel=1e-4)
    # A chat answer is scored with its end-of-turn token, as the model was trained.
    ids, start = answer_token_split(tokenizer, examples[0])
    assert tokenizer.decode(ids[start:]).startswith("Red.<|end|>")
