"""Two training processes in one pod, proven on CPU: DDP over gloo on loopback.

The trainer is started as the pod starts it (`python -m kubetune_trainer run`), with
`KUBETUNE_NPROC_PER_NODE=2` (what the operator sets from `resources.gpus: 2`): it launches two
torchrun workers that train the tiny Llama together. Checked against one process with the same
global batch (batchSize 4 vs 2 per process x 2): the same loss at every step, one result, one
termination message, one adapter, and a resume from the 2-process run's checkpoint.

Tolerance: the two runs see the same records per step (accelerate shards the one seeded batch
order between the ranks) and the Trainer normalises the loss by the token count of the whole
global batch on both, so the only difference is float32 summation order and padding to the
longest record per rank rather than per step: 1e-4 absolute on losses near 7 (measured 4.8e-7).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.trainer_contract import ENV_NPROC_PER_NODE, exit_code_for
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer.progress import parse_progress_line
from tests.e2e.test_training import chat_records, make_spec

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
LOSS_TOLERANCE = 1e-4


def write_spec(tmp_path: Path, name: str, batch_size: int) -> Path:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in chat_records(80, 11)))
    spec = make_spec(
        dataset={"source": {"uri": f"file://{data}"}, "split": {"validation": 0.1, "test": 0.1}},
        dataPolicy={"dedup": "none"},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},  # dropout masks would differ per rank
        training={"maxSteps": STEPS, "evalSteps": 2, "batchSize": batch_size},
        # A gate that cannot pass and export skipped: this test is about training.
        evaluation={
            "metrics": ["perplexity"],
            "maxExamples": 4,
            "maxNewTokens": 4,
            "compareWithBase": False,
            "gate": {"maxPerplexity": 1.0001},
        },
        export={"onGateFailure": "skip"},
    )
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec.to_wire()))
    return path


def run_trainer(spec: Path, workdir: Path, nproc: int) -> tuple[int, str, Path]:
    """The trainer's exit code, its log, and the termination log it wrote."""
    termination_log = workdir.parent / f"{workdir.name}.termination-log"
    termination_log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_TERMINATION_LOG": str(termination_log),
        "OMP_NUM_THREADS": "1",  # two ranks on a 2-core machine
    }
    env.pop(ENV_NPROC_PER_NODE, None)
    if nproc > 1:
        env[ENV_NPROC_PER_NODE] = str(nproc)
    done = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "run", "--spec", str(spec), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    return done.returncode, done.stdout + done.stderr, termination_log


def step_losses(workdir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in train_logs(workdir)}


def train_logs(workdir: Path) -> list[dict[str, Any]]:
    history = json.loads((workdir / "train_outcome.json").read_text())["log_history"]
    return [e for e in history if "loss" in e]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp")
    out: dict[str, Any] = {"tmp": tmp}
    for name, nproc, batch in (("single", 1, 4), ("ddp", 2, 2)):
        spec = write_spec(tmp, name, batch)
        code, log, termination_log = run_trainer(spec, tmp / name, nproc)
        assert code == 0, log[-12000:]
        out[name] = {"spec": spec, "log": log, "termination_log": termination_log}
    return out


def test_two_processes_match_one_with_the_same_global_batch(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    single, ddp = step_losses(tmp / "single"), step_losses(tmp / "ddp")
    assert sorted(single) == sorted(ddp) == list(range(1, STEPS + 1))
    diffs = {s: abs(single[s] - ddp[s]) for s in single}
    print("step  1 process x batch 4   2 processes x batch 2   |diff|")
    for s in sorted(single):
        print(f"{s:4d}  {single[s]:.7f}            {ddp[s]:.7f}              {diffs[s]:.2e}")
    print(f"max abs diff per step: {max(diffs.values()):.2e} (tolerance {LOSS_TOLERANCE})")
    assert max(diffs.values()) <= LOSS_TOLERANCE
    assert single[STEPS] < single[1], "the model did not train"
    # The same global batch walks the same fraction of an epoch per step.
    epochs = [[e["epoch"] for e in train_logs(tmp / name)] for name in ("single", "ddp")]
    assert epochs[0] == epochs[1]


def test_only_rank_zero_reports(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    log = runs["ddp"]["log"]
    assert "launching 2 training processes" in log
    # Each stage and each step is reported once, by rank 0.
    for stage in ("data", "train", "evaluate"):
        assert log.count(f"stage {stage}\n") == 1, stage
    progress = [p for p in map(parse_progress_line, log.splitlines()) if p is not None]
    assert [p.step for p in progress] == list(range(1, STEPS + 1))
    assert {p.total_steps for p in progress} == {STEPS}
    result = TrainerResult.model_validate_json((tmp / "ddp" / "result.json").read_text())
    assert result.phase == "Succeeded" and result.training is not None
    assert result.training.steps == STEPS
    message = runs["ddp"]["termination_log"].read_text()
    assert TrainerResult.from_termination_message(message).training == result.training
    # One adapter, checkpoints written once per save step (rank 0's), one outcome.
    assert (tmp / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp / "ddp" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # Both ranks kept their RNG state in the checkpoint, for an exact resume.
    rng = sorted(p.name for p in (tmp / "ddp" / "checkpoints" / "checkpoint-2").glob("rng_state*"))
    assert rng == ["rng_state_0.pth", "rng_state_1.pth"]


def test_two_process_checkpoint_resumes(runs: dict[str, Any]) -> None:
    """The run stopped after its step-2 checkpoint (what a killed pod leaves) resumes there."""
    tmp = runs["tmp"]
    resumed = tmp / "resumed"
    shutil.copytree(tmp / "ddp", resumed)
    for later in ("checkpoints/checkpoint-4", "adapter", "train_outcome.json", "result.json"):
        path = resumed / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    code, log, _ = run_trainer(runs["ddp"]["spec"], resumed, 2)
    assert code == 0, log[-12000:]
    assert "(step 2)" in log
    outcome = json.loads((resumed / "train_outcome.json").read_text())
    assert outcome["resumed_from_step"] == 2 and outcome["global_step"] == STEPS
    first, again = step_losses(tmp / "ddp"), step_losses(resumed)
    diffs = {s: abs(first[s] - again[s]) for s in (3, 4)}
    print(f"resumed at step 2: |diff| of steps 3, 4 vs the uninterrupted run: {diffs}")
    assert max(diffs.values()) <= LOSS_TOLERANCE
    result = TrainerResult.model_validate_json((resumed / "result.json").read_text())
    assert result.training is not None and result.training.resumed_from_step == 2


def test_a_data_stage_failure_ends_every_process_with_one_result(tmp_path: Path) -> None:
    """Rank 0 fails before training: the waiting rank stops too (no hang), one Failed result."""
    spec = write_spec(tmp_path, "broken", 2)
    (tmp_path / "data.jsonl").write_text("not json\n" * 20)
    code, log, termination_log = run_trainer(spec, tmp_path / "work", 2)
    result = TrainerResult.model_validate_json((tmp_path / "work" / "result.json").read_text())
    assert result.phase == "Failed" and result.stage == "data", log[-4000:]
    assert code == exit_code_for(result)
    assert TrainerResult.from_termination_message(termination_log.read_text()).reason == result.reason
    assert log.count("failed in stage data") == 1


def test_sigterm_stops_every_training_process(tmp_path: Path) -> None:
    """Deletion or suspension sends SIGTERM to the pod's process: the launcher stops both ranks
    and exits (the next pod resumes from the last checkpoint), none is left running."""
    spec = tmp_path / "long.json"
    data = json.loads(write_spec(tmp_path, "short", 2).read_text())
    data["training"]["maxSteps"] = 200
    spec.write_text(json.dumps(data))
    log_path = tmp_path / "trainer.log"
    env = {**os.environ, "KUBETUNE_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"}
    env[ENV_NPROC_PER_NODE] = "2"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer", "run", "--spec", str(spec),
             "--workdir", str(tmp_path / "work"),
             "--termination-log", str(tmp_path / "termination-log")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )
    try:
        for _ in range(600):  # until the ranks train (the first progress line)
            if "progress step=" in log_path.read_text() or launcher.poll() is not None:
                break
            time.sleep(0.5)
        assert launcher.poll() is None, log_path.read_text()[-4000:]
        workers = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
        ).stdout.split()]
        assert len(workers) == 2, workers
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    log = log_path.read_text()
    assert "stopped by signal 15" in log
    # The launcher waited for its workers: they are gone, not orphaned.
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []
    assert not (tmp_path / "work" / "result.json").exists()
