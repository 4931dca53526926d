"""What the loss curves say about a training run, and what to change.

A pure function over the Trainer's `log_history` (the list saved in `trainer_state.json`):
train entries carry `loss`, evaluation entries carry `eval_loss`, both carry `step`.

Verdicts, checked in this order:

- unstable: a loss is NaN/inf, or the eval loss zig-zags (most successive changes flip sign, by
  more than a few percent) -> lower the learning rate, raise warm-up / effective batch;
- overfitting: the eval loss rose clearly from its minimum for the last evaluations while the
  train loss kept falling -> fewer epochs, more data, more dropout, smaller rank;
- underfitting: train and eval loss fell by less than a tenth of where they started -> more
  epochs / steps, higher learning rate, larger rank;
- healthy: otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubetune.api.finetunejob import Diagnosis

# Relative rise of eval loss above its minimum that counts as overfitting (noise is smaller).
OVERFIT_RISE = 0.05
# Relative fall below which a curve "barely moved".
UNDERFIT_FALL = 0.10
# Share of successive eval-loss changes that flip sign, and their typical size, for "unstable".
OSCILLATION_FLIPS = 0.6
OSCILLATION_SIZE = 0.03

Curve = list[tuple[int, float]]


def _curve(history: Iterable[Mapping[str, Any]], key: str) -> Curve:
    points: Curve = []
    for entry in history:
        if key in entry and entry[key] is not None:
            points.append((int(entry.get("step", len(points))), float(entry[key])))
    return points


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean, so one noisy batch does not decide a verdict."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _fell_by(values: Sequence[float]) -> float:
    """Relative fall from the first to the last value (positive = fell)."""
    first, last = values[0], values[-1]
    return (first - last) / abs(first) if first else 0.0


def _loss_at(curve: Curve, step: int) -> float:
    """Train loss at (or just before) `step`."""
    before = [loss for s, loss in curve if s <= step]
    return before[-1] if before else curve[0][1]


def _oscillates(values: Sequence[float]) -> bool:
    """Most successive changes flip sign, and both sides of each flip are more than noise."""
    if len(values) < 4:
        return False
    mean = sum(values) / len(values)
    if mean <= 0:
        return False
    diffs = [b - a for a, b in itertools.pairwise(values)]
    big = [abs(d) / mean > OSCILLATION_SIZE for d in diffs]
    flips = sum(
        1 for i in range(len(diffs) - 1) if diffs[i] * diffs[i + 1] < 0 and big[i] and big[i + 1]
    )
    return flips / (len(diffs) - 1) >= OSCILLATION_FLIPS


def diagnose(log_history: Sequence[Mapping[str, Any]]) -> Diagnosis:
    """The verdict on a run's loss curves, with why and what to change."""
    train = _curve(log_history, "loss")
    evals = _curve(log_history, "eval_loss")
    if not train and not evals:
        return Diagnosis(verdict="unknown", message="no losses were logged", suggestion="")

    bad = [
        (name, s)
        for name, curve in (("train", train), ("eval", evals))
        for s, v in curve
        if not math.isfinite(v)
    ]
    if bad:
        name, step = bad[0]
        return Diagnosis(
            verdict="unstable",
            message=f"{name} loss became NaN/inf at step {step}",
            suggestion="lower training.learningRate (e.g. ÷3), raise training.warmupRatio, "
            "or use computeDtype bfloat16 instead of float16",
        )

    eval_values = [v for _, v in evals]
    train_values = _smooth([v for _, v in train], window=3) if train else []

    if len(evals) >= 3 and train:
        best = min(range(len(evals)), key=lambda i: eval_values[i])
        rise = (
            (eval_values[-1] - eval_values[best]) / eval_values[best]
            if eval_values[best] > 0
            else 0.0
        )
        after = eval_values[best:]
        rising = len(after) >= 2 and after[-1] >= 0.98 * max(after[1:])
        best_step = evals[best][0]
        train_then = _loss_at(
            list(zip([s for s, _ in train], train_values, strict=True)), best_step
        )
        if rise > OVERFIT_RISE and rising and train_values[-1] < train_then:
            return Diagnosis(
                verdict="overfitting",
                message=(
                    f"eval loss rose {rise:.0%} from its minimum {eval_values[best]:.4f} at step {best_step} "
                    f"to {eval_values[-1]:.4f} while train loss fell to {train_values[-1]:.4f}; "
                    f"the best checkpoint (step {best_step}) was kept"
                ),
                suggestion="train fewer epochs (or keep early stopping on), add more or more varied data, "
                "raise lora.dropout, or lower lora.r",
            )

    if _oscillates(eval_values):
        return Diagnosis(
            verdict="unstable",
            message=f"eval loss oscillates across {len(evals)} evaluations "
            f"(between {min(eval_values):.4f} and {max(eval_values):.4f})",
            suggestion="lower training.learningRate, raise training.gradientAccumulationSteps "
            "or training.batchSize, or raise training.warmupRatio",
        )

    curves = [c for c in (train_values, eval_values) if len(c) >= 2]
    if not curves:
        return Diagnosis(
            verdict="unknown",
            message="too few logged losses to judge the curves",
            suggestion="log more often: lower training.evalSteps or train more steps",
        )
    falls = [_fell_by(c) for c in curves]
    if all(f < UNDERFIT_FALL for f in falls):
        parts = []
        if len(train_values) >= 2:
            parts.append(f"train loss {train_values[0]:.4f} -> {train_values[-1]:.4f}")
        if len(eval_values) >= 2:
            parts.append(f"eval loss {eval_values[0]:.4f} -> {eval_values[-1]:.4f}")
        return Diagnosis(
            verdict="underfitting",
            message="losses barely fell: " + ", ".join(parts),
            suggestion="train longer (training.epochs or maxSteps), raise training.learningRate, "
            "or raise lora.r (or use method full)",
        )

    parts = []
    if len(train_values) >= 2:
        parts.append(f"train loss {train_values[0]:.4f} -> {train_values[-1]:.4f}")
    if eval_values:
        parts.append(
            f"eval loss {eval_values[0]:.4f} -> {eval_values[-1]:.4f} (best {min(eval_values):.4f})"
        )
    else:
        parts.append("no validation split, so overfitting was not checked")
    return Diagnosis(
        verdict="healthy", message="losses fell steadily: " + ", ".join(parts), suggestion=""
    )
