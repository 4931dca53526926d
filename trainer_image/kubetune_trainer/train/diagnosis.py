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

DPO (objective `dpo`, or a history carrying trl's `rewards/*` metrics) is judged on what DPO
optimises instead: trl's DPOTrainer logs `rewards/margins` (mean of beta x (chosen - rejected)
log-ratio against the reference model) and `rewards/accuracies` (share of pairs whose chosen
answer gets the higher reward; 0.5 is chance), and `eval_rewards/*` on the validation split.
Its loss starts at ln 2 = 0.693 and falls slowly at DPO's small learning rates, so a loss
that "barely fell" says nothing. Checked in this order, on the validation curves when there are
any (the train ones are averages of a few pairs per step, so they are smoothed):

- unstable: a loss or margin is NaN/inf, or the train margin fell below zero and where it
  started with the train accuracy under 0.45 (the optimizer moves away from its objective);
- overfitting: the eval reward accuracy fell from its best (or the eval loss rose from its
  minimum) while the train accuracy kept rising, or the train accuracy is clearly above chance
  but the eval accuracy is not: the preferences were memorised, not learnt;
- underfitting: the reward accuracy stays under 0.55, or the margin stays under 0.1 (both start
  at chance: margin 0, accuracy 0.5, while the policy is the reference model; accuracy counts
  signs, so a hair's movement already scores high, and the margin says how far it moved);
- healthy: the margin grew past 0.1 and the reward accuracy rose above 0.55.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubetune.api.trainer_result import Diagnosis

# Relative rise of eval loss above its minimum that counts as overfitting (noise is smaller).
OVERFIT_RISE = 0.05
# Relative fall below which a curve "barely moved".
UNDERFIT_FALL = 0.10
# Share of successive eval-loss changes that flip sign, and their typical size, for "unstable".
OSCILLATION_FLIPS = 0.6
OSCILLATION_SIZE = 0.03

# DPO: reward accuracy a run must reach (0.5 is chance), and the fall of the eval accuracy
# from its best that counts as overfitting (an eval set of ~100 pairs moves by ~0.05 on noise).
DPO_MIN_ACCURACY = 0.55
DPO_ACCURACY_DROP = 0.05
# DPO: margin a learning run must reach. The margin is the argument of DPO's loss
# -log sigmoid(margin): at 0.1 the chosen answer is preferred with p = 0.525 and the loss is
# ~0.644 against ln 2 = 0.693 at the start. Reward accuracy alone is not enough: it counts signs,
# so a policy that moved by a hair (margin 0.001, loss 0.6928) already scores 0.75.
DPO_MIN_MARGIN = 0.1
DPO_KEYS = ("rewards/margins", "eval_rewards/margins")

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


def diagnose(log_history: Sequence[Mapping[str, Any]], objective: str | None = None) -> Diagnosis:
    """The verdict on a run's curves, with why and what to change. `objective` "dpo" judges the
    DPO reward metrics; None tells DPO from SFT by the metrics the history carries."""
    if objective is None:
        objective = "dpo" if any(k in e for e in log_history for k in DPO_KEYS) else "sft"
    if objective == "dpo":
        verdict = _diagnose_dpo(log_history)
        if verdict is not None:
            return verdict
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


def _ends(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter (at least one value, at most five)."""
    k = max(1, min(5, len(values) // 4))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def _at(curve: Curve, step: int) -> float:
    """Value at (or just before) `step`."""
    before = [v for s, v in curve if s <= step]
    return before[-1] if before else curve[0][1]


def _diagnose_dpo(log_history: Sequence[Mapping[str, Any]]) -> Diagnosis | None:
    """The DPO verdict from trl's reward metrics; None when none were logged."""
    train_margin = _curve(log_history, "rewards/margins")
    train_acc = _curve(log_history, "rewards/accuracies")
    eval_margin = _curve(log_history, "eval_rewards/margins")
    eval_acc = _curve(log_history, "eval_rewards/accuracies")
    if not (train_margin or eval_margin):
        return None

    for name, curve in (
        ("train loss", _curve(log_history, "loss")),
        ("eval loss", _curve(log_history, "eval_loss")),
        ("reward margin", train_margin),
        ("eval reward margin", eval_margin),
    ):
        bad = [s for s, v in curve if not math.isfinite(v)]
        if bad:
            return Diagnosis(
                verdict="unstable",
                message=f"DPO {name} became NaN/inf at step {bad[0]}",
                suggestion="lower training.learningRate (e.g. ÷3), raise training.warmupRatio, "
                "or use computeDtype bfloat16 instead of float16",
            )

    smooth_acc = list(
        zip([s for s, _ in train_acc], _smooth([v for _, v in train_acc], 5), strict=True)
    )
    train_m0, train_m1 = _ends([v for _, v in train_margin]) if train_margin else (0.0, 0.0)
    train_a1 = _ends([v for _, v in train_acc])[1] if train_acc else None

    if (
        len(train_margin) >= 4
        and train_m1 < min(0.0, train_m0)
        and train_a1 is not None
        and train_a1 < 1 - DPO_MIN_ACCURACY
    ):
        return Diagnosis(
            verdict="unstable",
            message=f"the DPO reward margin on training pairs fell from {train_m0:.3f} to {train_m1:.3f} "
            f"and the train reward accuracy to {train_a1:.2f}: the policy moves away from the "
            "chosen answers it is trained towards",
            suggestion="lower training.learningRate (e.g. ÷3), raise training.warmupRatio or "
            "training.gradientAccumulationSteps",
        )

    eval_loss = _curve(log_history, "eval_loss")
    if len(eval_acc) >= 3 and smooth_acc and train_margin:
        accs = [v for _, v in eval_acc]
        best = max(range(len(accs)), key=lambda i: accs[i])
        best_step = eval_acc[best][0]
        drop = accs[best] - accs[-1]
        losses = [v for _, v in eval_loss]
        rise = (
            (losses[-1] - min(losses)) / min(losses)
            if len(losses) >= 3 and min(losses) > 0
            else 0.0
        )
        train_rising = smooth_acc[-1][1] > _at(smooth_acc, best_step) or train_m1 > _at(
            train_margin, best_step
        )
        if (drop >= DPO_ACCURACY_DROP or rise > OVERFIT_RISE) and train_rising:
            return Diagnosis(
                verdict="overfitting",
                message=(
                    f"eval reward accuracy fell from {accs[best]:.2f} at step {best_step} to {accs[-1]:.2f}"
                    + (
                        f" and eval loss rose {rise:.0%} from its minimum"
                        if rise > OVERFIT_RISE
                        else ""
                    )
                    + f" while the train accuracy rose to {smooth_acc[-1][1]:.2f}; the best checkpoint was kept"
                ),
                suggestion="train fewer epochs (or keep early stopping on), add more or more varied "
                "preference pairs, or raise training.dpoBeta to keep the policy nearer the reference",
            )

    on_eval = bool(eval_acc and eval_margin)
    acc_curve = [v for _, v in (eval_acc if on_eval else train_acc)]
    margin_curve = [v for _, v in (eval_margin if on_eval else train_margin)]
    if on_eval:
        acc_first, acc_last = acc_curve[0], acc_curve[-1]
        margin_first, margin_last = margin_curve[0], margin_curve[-1]
    else:
        acc_first, acc_last = _ends(acc_curve) if acc_curve else (math.nan, math.nan)
        margin_first, margin_last = train_m0, train_m1
    split = "eval" if on_eval else "train"
    summary = (
        f"{split} reward accuracy {acc_first:.2f} -> {acc_last:.2f}, "
        f"margin {margin_first:.3f} -> {margin_last:.3f}"
    )

    if (
        on_eval
        and train_a1 is not None
        and train_a1 >= DPO_MIN_ACCURACY + 0.1
        and acc_last < DPO_MIN_ACCURACY
    ):
        return Diagnosis(
            verdict="overfitting",
            message=f"the training pairs are learnt (train reward accuracy {train_a1:.2f}) but the "
            f"validation pairs are not ({summary}): the preferences do not carry to held-out prompts",
            suggestion="add more or more varied preference pairs, train fewer epochs, or raise "
            "training.dpoBeta; check that chosen and rejected are labelled consistently",
        )

    # Both start at chance: margin 0 and accuracy 0.5 while the policy equals the reference.
    if not (acc_last >= DPO_MIN_ACCURACY and margin_last >= DPO_MIN_MARGIN):
        return Diagnosis(
            verdict="underfitting",
            message=f"the policy barely tells chosen from rejected answers: {summary} "
            f"(a learning DPO run rises above accuracy {DPO_MIN_ACCURACY} and margin {DPO_MIN_MARGIN}; "
            "0.5 and 0 are chance)",
            suggestion="raise training.learningRate (the DPO defaults are 5e-7 full, 5e-6 LoRA; try 2-5x), "
            "train longer (training.epochs or maxSteps), lower training.dpoBeta to let the policy "
            "move further, and check that chosen and rejected answers really differ",
        )

    losses = [v for _, v in eval_loss] if on_eval else [v for _, v in _curve(log_history, "loss")]
    loss_note = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if len(losses) >= 2 else ""
    no_eval = "" if on_eval else " (no validation split, so overfitting was not checked)"
    return Diagnosis(
        verdict="healthy",
        message=f"DPO rewards separate chosen from rejected: {summary}{loss_note}{no_eval}",
        suggestion="",
    )
