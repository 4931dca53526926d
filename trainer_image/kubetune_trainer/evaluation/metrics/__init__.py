"""Reference-based metrics, one per module. All but perplexity are pure functions of strings."""

from kubetune_trainer.evaluation.metrics.bleu import corpus_bleu, sentence_bleu
from kubetune_trainer.evaluation.metrics.exact_match import exact_match, exact_match_rate, normalise
from kubetune_trainer.evaluation.metrics.rouge import mean_rouge_l, rouge_l

__all__ = [
    "corpus_bleu",
    "exact_match",
    "exact_match_rate",
    "mean_rouge_l",
    "normalise",
    "rouge_l",
    "sentence_bleu",
]
