"""Each verdict of the loss-curve diagnosis, on synthetic curves."""

from __future__ import annotations

import math

import pytest

from kubetune_trainer.train.diagnosis import diagnose


def history(train: list[float], evals: list[float], eval_every: int = 5) -> list[dict[str, float]]:
    """A Trainer-shaped log history: one train entry per step, one eval entry every `eval_every`."""
    out: list[dict[str, float]] = []
    for i, loss in enumerate(train, start=1):
        out.append({"step": i, "loss": loss, "learning_rate": 1e-4})
        if i % eval_every == 0 and i // eval_every <= len(evals):
            out.append({"step": i, "eval_loss": evals[i // eval_every - 1]})
    return out


def falling(start: float, end: float, n: int) -> list[float]:
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def test_healthy_when_both_losses_fall() -> None:
    d = diagnose(history(falling(3.0, 0.8, 30), falling(3.1, 1.0, 6)))
    assert d.verdict == "healthy"
    assert "eval loss" in d.message
    assert d.suggestion == ""


def test_overfitting_when_eval_rises_while_train_falls() -> None:
    evals = [2.5, 1.8, 1.5, 1.6, 1.8, 2.1]
    d = diagnose(history(falling(3.0, 0.2, 30), evals))
    assert d.verdict == "overfitting"
    assert "step 15" in d.message  # where the best checkpoint was
    assert "epochs" in d.suggestion and "dropout" in d.suggestion


def test_underfitting_when_losses_barely_fall() -> None:
    d = diagnose(history(falling(3.0, 2.9, 30), falling(3.05, 2.95, 6)))
    assert d.verdict == "underfitting"
    assert "learningRate" in d.suggestion or "longer" in d.suggestion


def test_underfitting_without_validation_split() -> None:
    d = diagnose(history(falling(4.0, 3.8, 20), []))
    assert d.verdict == "underfitting"


def test_unstable_when_eval_loss_oscillates() -> None:
    evals = [2.0, 1.4, 2.1, 1.3, 2.2, 1.5, 2.0]
    d = diagnose(history(falling(3.0, 1.0, 35), evals))
    assert d.verdict == "unstable"
    assert "learningRate" in d.suggestion


def test_unstable_on_nan_loss() -> None:
    train = falling(3.0, 1.0, 10)
    train[6] = math.nan
    d = diagnose(history(train, [2.0]))
    assert d.verdict == "unstable"
    assert "step 7" in d.message


def test_small_noise_is_not_instability() -> None:
    evals = [2.0, 1.6, 1.4, 1.3, 1.31, 1.30, 1.305]
    d = diagnose(history(falling(3.0, 1.0, 35), evals))
    assert d.verdict == "healthy"


def test_unknown_without_losses() -> None:
    assert diagnose([]).verdict == "unknown"
    assert diagnose([{"step": 1, "loss": 2.0}]).verdict == "unknown"


@pytest.mark.parametrize("verdict_history", [history(falling(3.0, 0.8, 30), falling(3.1, 1.0, 6))])
def test_messages_fit_the_status_field(verdict_history: list[dict[str, float]]) -> None:
    d = diagnose(verdict_history)
    assert len(d.message) <= 1024 and len(d.suggestion) <= 1024
