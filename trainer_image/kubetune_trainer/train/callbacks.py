"""The Trainer callback that reports progress: one log line per logging step, the Prometheus
gauges, and an optional hook (the local run's progress bar)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune.api.trainer_result import Progress
from kubetune_trainer.progress import ProgressMetrics, format_progress_line

ProgressHook = Callable[[Progress], None]


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's logs into `Progress`: printed, exported, and handed to `hook`.

    With several training processes only rank 0 reports; the Trainer's token count and logged
    loss are already gathered over all ranks. Throughput counts the non-padding input tokens of
    this process's session
    (`include_num_input_tokens_seen="non_padding"`), so a resumed run does not count the steps it
    skipped; the ETA extrapolates this session's seconds per step.
    """

    def __init__(
        self,
        metrics: ProgressMetrics | None = None,
        hook: ProgressHook | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.metrics = metrics
        self.hook = hook
        self.stream = stream
        self.progress = Progress()
        self._start_time: float | None = None
        self._start_step = 0
        self._start_tokens = 0
        self._last_time: float | None = None
        self._last_tokens = 0
        self._end_time: float | None = None
        self._main = True

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        self._main = state.is_world_process_zero  # one progress line and endpoint per pod
        self._start_time = self._last_time = now
        self._end_time = None
        self._start_step = state.global_step
        self._start_tokens = self._last_tokens = int(state.num_input_tokens_seen or 0)
        self.progress = self._with(
            state, step=state.global_step, total_steps=state.max_steps or None
        )
        self._publish(print_line=False)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Gauges follow every step; the log line only follows logging steps.
        self.progress = self._with(state, eta_seconds=self._eta(state))
        self._publish(print_line=False)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        now = time.monotonic()
        updates: dict[str, Any] = {"eta_seconds": self._eta(state)}
        if "eval_loss" in logs:
            updates["eval_loss"] = float(logs["eval_loss"])
        is_train_log = "loss" in logs
        if is_train_log:
            updates["loss"] = float(logs["loss"])
            if "learning_rate" in logs:
                updates["learning_rate"] = float(logs["learning_rate"])
            tokens = int(state.num_input_tokens_seen or 0)
            if self._last_time is not None and now > self._last_time and tokens > self._last_tokens:
                updates["tokens_per_second"] = (tokens - self._last_tokens) / (
                    now - self._last_time
                )
            self._last_time, self._last_tokens = now, tokens
        self.progress = self._with(state, **updates)
        self._publish(print_line=is_train_log)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._end_time = time.monotonic()
        self.progress = self._with(state, eta_seconds=0)
        self._publish(print_line=False)

    # --- helpers -------------------------------------------------------------------------

    def session_tokens_per_second(self, state: TrainerState) -> float | None:
        """Mean throughput of this process's part of the training, up to the end of the training
        loop: saving the result afterwards is not training."""
        if self._start_time is None:
            return None
        end = self._end_time if self._end_time is not None else time.monotonic()
        elapsed = end - self._start_time
        tokens = int(state.num_input_tokens_seen or 0) - self._start_tokens
        return tokens / elapsed if elapsed > 0 and tokens > 0 else None

    def _eta(self, state: TrainerState) -> int | None:
        done = state.global_step - self._start_step
        if self._start_time is None or done <= 0 or not state.max_steps:
            return None
        per_step = (time.monotonic() - self._start_time) / done
        return max(0, round(per_step * (state.max_steps - state.global_step)))

    def _with(self, state: TrainerState, **updates: Any) -> Progress:
        total = state.max_steps or self.progress.total_steps
        step = state.global_step
        values = self.progress.model_dump()
        values.update(step=step, total_steps=total or None, epoch=state.epoch)
        values.update(updates)
        values["percent"] = max(0, min(100, int(100 * step / total))) if total else 0
        return Progress(**values)

    def _publish(self, *, print_line: bool) -> None:
        if not self._main:
            return
        if self.metrics is not None:
            self.metrics.update(self.progress)
        if print_line:
            print(format_progress_line(self.progress), file=self.stream or sys.stdout, flush=True)
        if self.hook is not None:
            self.hook(self.progress)
