"""Progress metrics: what the trainer exports and what the operator parses back."""

from __future__ import annotations

import sys
import urllib.request

import pytest

from kubetune.api.trainer_result import Progress
from kubetune_trainer.progress import (
    ProgressMetrics,
    format_progress_line,
    metrics_port_from_env,
    parse_progress_line,
    parse_progress_metrics,
)

SCRAPE = """\
# HELP kubetune_train_step Optimizer steps done.
# TYPE kubetune_train_step gauge
kubetune_train_step 12.0
# HELP kubetune_train_total_steps Optimizer steps planned.
# TYPE kubetune_train_total_steps gauge
kubetune_train_total_steps 40.0
# TYPE kubetune_train_epoch gauge
kubetune_train_epoch 0.6
# TYPE kubetune_train_loss gauge
kubetune_train_loss 1.2345
# TYPE kubetune_eval_loss gauge
kubetune_eval_loss NaN
# TYPE kubetune_learning_rate gauge
kubetune_learning_rate 0.0002
# TYPE kubetune_tokens_per_second gauge
kubetune_tokens_per_second 812.5
# TYPE kubetune_eta_seconds gauge
kubetune_eta_seconds 35.4
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 123.0
"""


def test_parse_scrape() -> None:
    p = parse_progress_metrics(SCRAPE)
    assert p == Progress(
        step=12,
        total_steps=40,
        percent=30,
        epoch=0.6,
        loss=1.2345,
        eval_loss=None,  # NaN = not evaluated yet
        learning_rate=0.0002,
        tokens_per_second=812.5,
        eta_seconds=35,
    )
    assert "evalLoss" not in p.to_wire()


def test_parse_empty_and_partial() -> None:
    assert parse_progress_metrics("") == Progress()
    p = parse_progress_metrics("kubetune_train_step 5\n")
    assert p.step == 5 and p.total_steps is None and p.percent == 0


def test_percent_is_clamped() -> None:
    p = parse_progress_metrics("kubetune_train_step 50\nkubetune_train_total_steps 40\n")
    assert p.percent == 100


def test_progress_module_does_not_import_torch() -> None:
    # The operator imports this module; it must not drag torch in.
    code = "import sys, kubetune_trainer.progress; sys.exit(int('torch' in sys.modules))"
    import subprocess

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_gauges_round_trip_through_exposition() -> None:
    metrics = ProgressMetrics.create(port=None)
    assert parse_progress_metrics(metrics.exposition()) == Progress()  # all unknown at first
    want = Progress(
        step=3,
        total_steps=10,
        percent=30,
        loss=2.5,
        eval_loss=2.7,
        learning_rate=1e-4,
        eta_seconds=9,
    )
    metrics.update(want)
    assert parse_progress_metrics(metrics.exposition()) == want


def test_two_metric_sets_do_not_collide() -> None:
    a, b = ProgressMetrics.create(), ProgressMetrics.create()
    a.update(Progress(step=1))
    b.update(Progress(step=2))
    assert parse_progress_metrics(a.exposition()).step == 1


def test_http_endpoint_serves_the_gauges() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = ProgressMetrics.create(port=port)
    assert metrics.port == port
    metrics.update(Progress(step=7, total_steps=14))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert parse_progress_metrics(text).percent == 50


def test_busy_port_is_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        metrics = ProgressMetrics.create(port=s.getsockname()[1])
    assert metrics.port is None
    assert "cannot serve" in capsys.readouterr().err


def test_progress_line_round_trip() -> None:
    p = Progress(
        step=12,
        total_steps=40,
        percent=30,
        epoch=0.6,
        loss=1.2345,
        learning_rate=2e-4,
        tokens_per_second=812.5,
        eta_seconds=35,
    )
    line = format_progress_line(p)
    assert line.startswith("progress step=12/40 ")
    assert "eval_loss=nan" in line and "tokens_per_s=812.5" in line and "eta_s=35" in line
    assert parse_progress_line(line) == p
    assert parse_progress_line("{'loss': 1.0}") is None


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({}, 9400),
        ({"KUBETUNE_METRICS_PORT": "9500"}, 9500),
        ({"KUBETUNE_METRICS_PORT": "0"}, None),
        ({"KUBETUNE_METRICS_PORT": "disabled"}, None),
    ],
)
def test_metrics_port_from_env(env: dict[str, str], port: int | None) -> None:
    assert metrics_port_from_env(env) == port


def test_session_throughput_ends_with_the_training_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # TrainingSummary.tokensPerSecond: saving the adapter after train() is not training time.
    import io
    import time

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from kubetune_trainer.train.callbacks import ProgressCallback

    args, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerControl()
    progress = ProgressCallback(stream=io.StringIO())
    state = TrainerState(max_steps=10, num_input_tokens_seen=50)  # resumed: 50 tokens before
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    progress.on_train_begin(args, state, control)
    clock[0], state.global_step, state.num_input_tokens_seen = 104.0, 10, 450
    progress.on_step_end(args, state, control)
    progress.on_train_end(args, state, control)
    clock[0] = 160.0  # the adapter is being saved
    assert progress.session_tokens_per_second(state) == 100.0
    assert progress.progress.step == 10 and progress.progress.eta_seconds == 0
