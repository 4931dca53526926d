"""Evaluation and quality gate: base vs fine-tuned on the held-out test split (exact match,
ROUGE-L, BLEU, perplexity, LLM judge), forgetting check on a general set, and the gate verdict.

`evaluate()` loads models (torch, transformers); `decide_gate()` is pure.
"""

from kubetune_trainer.evaluation.evaluate import EvaluationOutcome, ExampleResult, evaluate
from kubetune_trainer.evaluation.gate import decide_gate
from kubetune_trainer.evaluation.judge import Judge, JudgeOutcome
from kubetune_trainer.evaluation.rubric import JUDGE_PROMPT_VERSION

__all__ = [
    "JUDGE_PROMPT_VERSION",
    "EvaluationOutcome",
    "ExampleResult",
    "Judge",
    "JudgeOutcome",
    "decide_gate",
    "evaluate",
]
