"""Several training processes in one pod: what the operator sets, what the trainer reads, and
the step arithmetic for any world size (the 2-process run itself: tests/e2e/test_distributed.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.api.trainer_contract import ENV_NPROC_PER_NODE
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.settings import Settings
from kubetune_trainer import distributed
from kubetune_trainer.train.config import planned_steps, training_arguments

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def spec(**overrides: Any) -> FineTuneJobSpec:
    data: dict[str, Any] = {
        "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
        "dataset": {"source": {"uri": "pvc://datasets/train.jsonl"}},
        "training": {"batchSize": 4, "gradientAccumulationSteps": 2, "epochs": 1},
    }
    data.update(overrides)
    return FineTuneJobSpec.model_validate(data)


def trainer_env(s: FineTuneJobSpec) -> dict[str, Any]:
    job = build_training_job("bot", "ml", s, Settings(), uid=UID)
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_operator_asks_for_one_process_per_gpu() -> None:
    env = trainer_env(spec(resources={"gpus": 4}))
    assert env[ENV_NPROC_PER_NODE] == "4"
    job = build_training_job("bot", "ml", spec(resources={"gpus": 4}), Settings(), uid=UID)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"] == ["python", "-m", "kubetune_trainer"]  # it launches torchrun


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_gpu_or_none_leaves_the_pod_as_it_was(gpus: int) -> None:
    assert ENV_NPROC_PER_NODE not in trainer_env(spec(resources={"gpus": gpus}))


def test_requested_processes() -> None:
    assert distributed.requested_processes({}) == 1
    assert distributed.requested_processes({ENV_NPROC_PER_NODE: " 2 "}) == 2
    for bad in ("0", "17", "two", "1.5"):
        with pytest.raises(distributed.ProcessCountError, match="from 1 to 16"):
            distributed.requested_processes({ENV_NPROC_PER_NODE: bad})


def test_torchrun_environment_marks_a_worker() -> None:
    assert distributed.in_worker({"LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert not distributed.in_worker({"LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert not distributed.in_worker({})


def test_global_batch_is_per_process_batch_times_accumulation_times_processes() -> None:
    s = spec()
    # 100 records, 4 per process x 2 accumulation: 8 per step alone, 32 with 4 processes.
    assert planned_steps(s, 100, world_size=1) == 13
    assert planned_steps(s, 100, world_size=4) == 4
    capped = spec(training={"maxSteps": 7, "batchSize": 4})
    assert planned_steps(capped, 100, world_size=4) == 7


def test_ddp_settings_only_with_several_processes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {
        "n_train": 64, "has_eval": False, "device": "cpu", "half_dtype": "float32"
    }
    alone = training_arguments(spec(), tmp_path, **kwargs)
    assert "ddp_find_unused_parameters" not in alone
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp = training_arguments(spec(), tmp_path, **kwargs)
    assert ddp["ddp_find_unused_parameters"] is False
    assert ddp["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert ddp["per_device_train_batch_size"] == 4  # batchSize is per process


def test_device_map_target_is_the_local_rank_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.device_map_target("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.device_map_target("cuda") == 3
    assert distributed.device_map_target("cpu") == "cpu"


def test_more_processes_than_visible_gpus_is_refused_with_the_fix() -> None:
    assert distributed.gpu_shortage(4, 4) is None
    assert distributed.gpu_shortage(2, 0) is None  # CPU processes (the test affordance)
    problem = distributed.gpu_shortage(4, 2)
    assert problem is not None and "2 GPU(s) visible" in problem and "resources.gpus" in problem
