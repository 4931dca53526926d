"""Jobs that must fail early, with an actionable result and without touching a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.constants import PERMANENT_FAILURE_EXIT_CODE
from kubetune.api.finetunejob import BaseModelSpec, FineTuneJobSpec, TrainerResult
from kubetune_trainer import models
from kubetune_trainer.__main__ import main
from kubetune_trainer.pipeline import describe_failure, run_pipeline

REPO = Path(__file__).resolve().parents[2]


def run_entry(tmp_path: Path, spec: Path, workdir: Path) -> tuple[int, TrainerResult]:
    """`python -m kubetune_trainer run` in-process: its exit code and the termination message."""
    log = tmp_path / "log"
    code = main(["run", "--spec", str(spec), "--workdir", str(workdir), "--termination-log", str(log)])
    return code, TrainerResult.from_termination_message(log.read_text())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(user: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
    monkeypatch.delenv("KUBETUNE_ARTIFACTS_URI", raising=False)


def _forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model must not be resolved or loaded")

    monkeypatch.setattr(models, "resolve_base_model", forbidden)
    monkeypatch.setattr(models, "load_model", forbidden)
    monkeypatch.setattr(models, "load_tokenizer", forbidden)


# --- invalid spec ------------------------------------------------------------------------------


def test_bad_spec_json_is_failed_invalid_spec_with_camel_case_paths(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "baseModel": {"uri": "ftp://nowhere"},
                "dataset": {"source": {"uri": "file://data.jsonl"}},
                "training": {"learningRate": 5, "earlyStopping": {"patience": 0}},
                "bogusField": 1,
            }
        )
    )
    code, result = run_entry(tmp_path, spec, tmp_path / "work")
    assert code == PERMANENT_FAILURE_EXIT_CODE
    assert (result.phase, result.reason, result.stage) == ("Failed", "InvalidSpec", "data")
    for path in (
        "baseModel.uri",
        "training.learningRate",
        "training.earlyStopping.patience",
        "bogusField",
    ):
        assert path in result.message
    assert "Traceback" not in result.message
    saved = json.loads((tmp_path / "work" / "result.json").read_text())
    assert saved["reason"] == "InvalidSpec"


def test_spec_that_is_not_json(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("baseModel: {uri: hf://x}")  # YAML, not the JSON the operator mounts
    code, result = run_entry(tmp_path, spec, tmp_path / "w")
    assert code == PERMANENT_FAILURE_EXIT_CODE
    assert result.reason == "InvalidSpec" and "not JSON" in result.message


def test_missing_spec_file(tmp_path: Path) -> None:
    code, result = run_entry(tmp_path, tmp_path / "nope.json", tmp_path / "w")
    assert code == PERMANENT_FAILURE_EXIT_CODE
    assert "not found" in result.message


def test_whole_finetunejob_object_is_accepted_as_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer.__main__ import load_spec

    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "x"},
                "spec": {
                    "baseModel": {"uri": "pvc://models/m"},
                    "dataset": {"source": {"uri": "file://d.jsonl"}},
                },
            }
        )
    )
    assert load_spec(path).base_model.uri == "pvc://models/m"


# --- licence ----------------------------------------------------------------------------------


def test_licence_without_accept_license_is_an_invalid_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B"},
                "dataset": {"source": {"uri": "file://d.jsonl"}},
            }
        )
    )
    code, result = run_entry(tmp_path, spec, tmp_path / "w")
    assert code == PERMANENT_FAILURE_EXIT_CODE
    assert result.reason == "InvalidSpec"
    assert "acceptLicense" in result.message


def test_licence_check_comes_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_download(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("snapshot_download must not be called before the licence is accepted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(models.LicenseNotAcceptedError, match="acceptLicense"):
        models.resolve_base_model(BaseModelSpec(uri="hf://google/gemma-2-2b"))


def test_hf_download_uses_revision_and_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    resolved = models.resolve_base_model(
        BaseModelSpec(
            uri="hf://google/gemma-2-2b",
            revision="abc123",
            accept_license=True,
            trust_remote_code=True,
        )
    )
    assert resolved.path == tmp_path and resolved.trust_remote_code is True
    assert calls[0]["repo_id"] == "google/gemma-2-2b"
    assert calls[0]["revision"] == "abc123" and calls[0]["token"] == "hf_secret"


def test_pipeline_fails_on_licence_before_reading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's validation normally stops this spec; the trainer checks again.
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "hf://org/plain-model"},
            "dataset": {"source": {"uri": "file://missing.jsonl"}},
        }
    )
    spec = spec.model_copy(
        update={
            "base_model": BaseModelSpec.model_construct(
                uri="hf://meta-llama/Llama-3.1-8B",
                accept_license=False,
                revision=None,
                trust_remote_code=False,
                token_secret_ref=None,
            )
        }
    )
    _forbid_model_loading(monkeypatch)
    result = run_pipeline(spec, tmp_path / "work")
    assert (result.phase, result.reason, result.stage) == ("Failed", "LicenseNotAccepted", "data")
    assert "acceptLicense" in result.message


def test_missing_local_model_folder(tmp_path: Path) -> None:
    with pytest.raises(models.ModelError, match=r"config\.json"):
        models.resolve_base_model(BaseModelSpec(uri="file://no-such-model"), base_dir=tmp_path)


# --- data policy --------------------------------------------------------------------------------


def test_data_policy_failure_stops_before_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [chat(f"Ticket {i}: where is my parcel number {i}?", "shipping") for i in range(30)]
    rows.append(chat("Here is my key AKIAIOSFODNN7EXAMPLE, please check it", "account"))
    write_jsonl(tmp_path / "data.jsonl", rows)
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://data.jsonl"}},
            "dataPolicy": {"action": "fail", "dedup": "none"},
        }
    )
    _forbid_model_loading(monkeypatch)
    import kubetune_trainer.train.run as train_run

    monkeypatch.setattr(
        train_run, "train_model", lambda *a, **k: pytest.fail("training must not start")
    )
    result = run_pipeline(spec, tmp_path / "work", base_dir=tmp_path)
    assert (result.phase, result.reason, result.stage) == ("Failed", "DataPolicyFailed", "data")
    assert "data.jsonl:31" in result.message
    assert not (tmp_path / "cache").exists()  # the builtin model was never built
    saved = TrainerResult.model_validate_json((tmp_path / "work" / "result.json").read_text())
    assert saved.reason == "DataPolicyFailed"
    assert (tmp_path / "work" / "data" / "report.json").is_file()


def test_missing_dataset_is_data_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://nope.jsonl"}},
        }
    )
    _forbid_model_loading(monkeypatch)
    result = run_pipeline(spec, tmp_path / "work", base_dir=tmp_path)
    assert (result.phase, result.reason, result.stage) == ("Failed", "DataUnavailable", "data")
    assert "nope.jsonl" in result.message


# --- failure messages -----------------------------------------------------------------------------


def _spec(**training: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "pvc://m/x"},
            "method": "lora",
            "dataset": {"source": {"uri": "file://d"}},
            "training": training,
        }
    )


def test_out_of_memory_suggests_qlora_smaller_batch_shorter_length() -> None:
    import torch

    exc = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    reason, message = describe_failure(exc, "train", _spec(batchSize=8, maxLength=4096))
    assert reason == "OutOfMemory"
    assert "qlora" in message and "batchSize" in message and "maxLength" in message
    reason, _ = describe_failure(
        RuntimeError("DefaultCPUAllocator: can't allocate memory"), "train", _spec()
    )
    assert reason == "OutOfMemory"


def test_unexpected_error_names_stage_without_traceback() -> None:
    reason, message = describe_failure(ValueError("bad thing\nmore lines"), "export", _spec())
    assert reason == "ExportFailed"
    assert message.startswith("stage export failed: ValueError: bad thing")
    assert "\n" not in message


def test_module_entry_point_runs(tmp_path: Path) -> None:
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(tmp_path / "log")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune_trainer",
            "run",
            "--spec",
            str(tmp_path / "none.json"),
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == PERMANENT_FAILURE_EXIT_CODE, proc.stderr
    assert (
        TrainerResult.from_termination_message((tmp_path / "log").read_text()).reason
        == "InvalidSpec"
    )


def test_transient_failures_exit_1_so_the_job_retries() -> None:
    from kubetune_trainer.__main__ import exit_code

    assert exit_code(TrainerResult(phase="Failed", reason="OutOfMemory")) == 1
    assert exit_code(TrainerResult(phase="Failed", reason="DataUnavailable")) == 1
    assert exit_code(TrainerResult(phase="Failed", reason="DataPolicyFailed")) == PERMANENT_FAILURE_EXIT_CODE
    assert exit_code(TrainerResult(phase="Succeeded")) == 0
