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


# --- DPO ----------------------------------------------------------------------------------------
# Shaped like trl 1.16's DPOTrainer.log: every train entry carries loss and the batch-averaged
# rewards/* metrics; every eval entry eval_loss and eval_rewards/*. A DPO run starts at
# loss ln 2, margin 0 and (policy == reference) accuracy 0 on ties, then ~0.5.


def dpo_history(
    train_acc: list[float],
    train_margin: list[float],
    eval_acc: list[float],
    eval_margin: list[float],
    *,
    log_every: int = 10,
    eval_every: int = 50,
    beta: float = 0.1,
) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    evals = iter(zip(eval_acc, eval_margin, strict=True))
    for i, (acc, margin) in enumerate(zip(train_acc, train_margin, strict=True), start=1):
        step = i * log_every
        out.append(
            {
                "step": step,
                "epoch": step / 200,
                "loss": math.log1p(math.exp(-margin)),  # -log sigmoid(margin), as DPO's loss
                "grad_norm": 3.2,
                "learning_rate": 5e-7,
                "rewards/chosen": margin * 0.2,
                "rewards/rejected": -margin * 0.8,
                "rewards/accuracies": acc,
                "rewards/margins": margin,
                "logps/chosen": -310.0 - step * 0.01,
                "logps/rejected": -330.0 - step * 0.05 * beta,
                "logits/chosen": -2.1,
                "logits/rejected": -2.2,
            }
        )
        if step % eval_every == 0:
            item = next(evals, None)
            if item is not None:
                e_acc, e_margin = item
                out.append(
                    {
                        "step": step,
                        "epoch": step / 200,
                        "eval_loss": math.log1p(math.exp(-e_margin)),
                        "eval_rewards/chosen": e_margin * 0.2,
                        "eval_rewards/rejected": -e_margin * 0.8,
                        "eval_rewards/accuracies": e_acc,
                        "eval_rewards/margins": e_margin,
                        "eval_runtime": 12.5,
                    }
                )
    return out


def ramp(start: float, end: float, n: int) -> list[float]:
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def noisy(values: list[float], amplitude: float) -> list[float]:
    """Deterministic batch noise (train metrics average only a few pairs)."""
    return [
        v + amplitude * (1 if i % 3 == 0 else -1 if i % 3 == 1 else 0) for i, v in enumerate(values)
    ]


def test_dpo_zephyr_like_run_is_healthy_although_its_loss_barely_fell() -> None:
    # Full DPO at 5e-7: loss 0.693 -> ~0.62 (a 10% fall the SFT rules would call underfitting).
    train_acc = noisy([0.0, *ramp(0.5, 0.72, 39)], 0.08)
    train_margin = noisy(ramp(0.0, 0.14, 40), 0.02)
    d = diagnose(dpo_history(train_acc, train_margin, ramp(0.56, 0.71, 8), ramp(0.03, 0.13, 8)))
    assert d.verdict == "healthy", d
    assert "eval reward accuracy 0.56 -> 0.71" in d.message
    assert "margin 0.030 -> 0.130" in d.message
    assert d.suggestion == ""


def test_dpo_is_detected_from_the_metrics_and_can_be_forced() -> None:
    h = dpo_history(ramp(0.5, 0.8, 20), ramp(0.0, 0.5, 20), ramp(0.6, 0.8, 4), ramp(0.1, 0.5, 4))
    assert diagnose(h).verdict == diagnose(h, objective="dpo").verdict == "healthy"
    # With objective sft the same curves are judged on the loss, as before.
    assert "reward" not in diagnose(h, objective="sft").message


def test_dpo_not_learning_is_underfitting() -> None:
    train_acc = noisy([0.0, *ramp(0.48, 0.52, 29)], 0.1)
    train_margin = noisy(ramp(0.0, 0.002, 30), 0.003)
    d = diagnose(
        dpo_history(train_acc, train_margin, [0.5, 0.49, 0.52, 0.51, 0.5, 0.5], [0.001] * 6)
    )
    assert d.verdict == "underfitting"
    assert "eval reward accuracy 0.50 -> 0.50" in d.message
    assert "learningRate" in d.suggestion and "dpoBeta" in d.suggestion


def test_dpo_without_validation_split_is_judged_on_train_metrics() -> None:
    d = diagnose(dpo_history(noisy(ramp(0.5, 0.85, 40), 0.1), ramp(0.0, 0.6, 40), [], []))
    assert d.verdict == "healthy"
    assert "train reward accuracy" in d.message and "no validation split" in d.message
    flat = diagnose(dpo_history(noisy([0.5] * 40, 0.1), noisy([0.0] * 40, 0.004), [], []))
    assert flat.verdict == "underfitting"


def test_dpo_eval_accuracy_falling_while_train_rises_is_overfitting() -> None:
    # Several epochs: train pairs memorised (accuracy -> 1, margins large), eval accuracy and
    # margin peak at step 100 and fall.
    train_acc = ramp(0.55, 1.0, 40)
    train_margin = ramp(0.05, 4.0, 40)
    d = diagnose(
        dpo_history(
            train_acc,
            train_margin,
            [0.62, 0.70, 0.66, 0.61, 0.58, 0.57, 0.55, 0.56],
            [0.2, 0.5, 0.4, 0.1, -0.2, -0.4, -0.6, -0.7],
        )
    )
    assert d.verdict == "overfitting", d
    assert "0.70 at step 100" in d.message
    assert "epochs" in d.suggestion and "dpoBeta" in d.suggestion


def test_dpo_train_learnt_but_eval_never_is_overfitting() -> None:
    d = diagnose(
        dpo_history(
            ramp(0.5, 0.9, 30), ramp(0.0, 1.2, 30), [0.5, 0.51, 0.5, 0.49, 0.5, 0.5], [0.0] * 6
        )
    )
    assert d.verdict == "overfitting"
    assert "train reward accuracy 0.8" in d.message  # mean of the last quarter


def test_dpo_margins_turning_negative_on_train_is_unstable() -> None:
    train_acc = [0.0, *ramp(0.5, 0.2, 29)]
    train_margin = ramp(0.0, -1.5, 30)
    d = diagnose(dpo_history(train_acc, train_margin, [], []))
    assert d.verdict == "unstable"
    assert "learningRate" in d.suggestion


def test_dpo_nan_margin_is_unstable() -> None:
    h = dpo_history(ramp(0.5, 0.8, 10), ramp(0.0, 0.5, 10), [], [])
    h[6]["rewards/margins"] = math.nan
    d = diagnose(h)
    assert d.verdict == "unstable" and "step 70" in d.message


def test_dpo_messages_fit_the_status_field() -> None:
    d = diagnose(dpo_history(ramp(0.5, 0.9, 30), ramp(0.0, 1.2, 30), [0.5] * 6, [0.0] * 6))
    assert len(d.message) <= 1024 and len(d.suggestion) <= 1024


def test_dpo_that_moved_by_a_hair_is_underfitting_despite_high_accuracy() -> None:
    # Recorded from trl 1.16's DPOTrainer: LoRA DPO of a tiny Llama at 5e-6 for 20 steps. Reward
    # accuracy counts signs, so it reads 0.75 while the loss never left ln 2.
    h: list[dict[str, float]] = []
    for step, (loss, acc, margin) in enumerate(
        [(0.6931, 0.0, 0.0), (0.6931, 0.5, 0.0001), (0.6930, 0.625, 0.0002), (0.6929, 0.75, 0.0004)]
        * 5,
        start=1,
    ):
        h.append({"step": step, "loss": loss, "rewards/accuracies": acc, "rewards/margins": margin})
        if step % 5 == 0:
            e_acc, e_margin, e_loss = {
                5: (0.7083, 0.0002, 0.6930),
                10: (0.75, 0.0005, 0.6929),
                15: (0.75, 0.0007, 0.6928),
                20: (0.75, 0.0007, 0.6928),
            }[step]
            h.append(
                {
                    "step": step,
                    "eval_loss": e_loss,
                    "eval_rewards/accuracies": e_acc,
                    "eval_rewards/margins": e_margin,
                    "eval_rewards/chosen": 0.0005,
                    "eval_rewards/rejected": -0.0002,
                }
            )
    d = diagnose(h)
    assert d.verdict == "underfitting", d
    assert "eval reward accuracy 0.71 -> 0.75, margin 0.000 -> 0.001" in d.message
    assert "margin 0.1" in d.message
