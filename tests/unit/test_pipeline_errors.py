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
from kubetune.api.finetunejob import BaseModelSpec, FineTuneJobSpec
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer import models
from kubetune_trainer.__main__ import main
from kubetune_trainer.failures import describe_failure
from kubetune_trainer.pipeline import run_pipeline
from tests.model_configs import LLAMA_3_1_8B_CONFIG

REPO = Path(__file__).resolve().parents[2]


def run_entry(tmp_path: Path, spec: Path, workdir: Path) -> tuple[int, TrainerResult]:
    """`python -m kubetune_trainer run` in-process: its exit code and the termination message."""
    log = tmp_path / "log"
    code = main(
        ["run", "--spec", str(spec), "--workdir", str(workdir), "--termination-log", str(log)]
    )
    return code, TrainerResult.from_termination_message(log.read_text())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(user: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


_USER_CACHE = os.environ.get("KUBETUNE_CACHE")


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
        models.resolve_base_model(BaseModelSpec(uri="hf://meta-llama/Llama-3.2-1B"))


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
            uri="hf://meta-llama/Llama-3.2-1B",
            revision="abc123",
            accept_license=True,
            trust_remote_code=True,
        )
    )
    assert resolved.path == tmp_path and resolved.trust_remote_code is True
    assert calls[0]["repo_id"] == "meta-llama/Llama-3.2-1B"
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
            "base_model_spec": BaseModelSpec.model_construct(
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

    assert exit_code(TrainerResult(phase="Failed", reason="DataUnavailable")) == 1
    assert exit_code(TrainerResult(phase="Failed", reason="TrainingFailed")) == 1
    assert (
        exit_code(TrainerResult(phase="Failed", reason="DataPolicyFailed"))
        == PERMANENT_FAILURE_EXIT_CODE
    )
    assert exit_code(TrainerResult(phase="Succeeded")) == 0


# --- failures no retry can fix ---------------------------------------------------------------------

CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 3.91 GiB. GPU 0 has a total capacity of 23.55 GiB "
    "of which 1.20 GiB is free. Of the allocated memory 20.1 GiB is allocated by PyTorch"
)


def _llama_8b_dir(tmp_path: Path) -> Path:
    model = tmp_path / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_3_1_8B_CONFIG))
    return model


@pytest.mark.parametrize(
    "reason",
    [
        "OutOfMemory",
        "UnsupportedChatTemplate",
        "UnsupportedModel",
        "ExportVerificationFailed",
        "QuantizationDisagrees",
        "InvalidSpec",
        "InvalidData",
    ],
)
def test_failures_no_retry_can_fix_exit_with_the_permanent_code(reason: str) -> None:
    from kubetune_trainer.__main__ import exit_code

    assert exit_code(TrainerResult(phase="Failed", reason=reason)) == PERMANENT_FAILURE_EXIT_CODE


def test_gpu_out_of_memory_in_training_estimates_each_setting_that_lowers_it(
    tmp_path: Path,
) -> None:
    import torch

    from kubetune_trainer.failures import base_model_geometry

    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "file://llama-8b", "acceptLicense": True},
            "dataset": {"source": {"uri": "file://d.jsonl"}},
            "training": {"batchSize": 4, "maxLength": 2048},
        }
    )
    _llama_8b_dir(tmp_path)
    geometry = base_model_geometry(spec, tmp_path)
    assert geometry is not None and geometry.parameters == 8_030_261_248
    reason, message = describe_failure(
        torch.cuda.OutOfMemoryError(CUDA_OOM), "train", spec, geometry=geometry
    )
    assert reason == "OutOfMemory"
    assert "GPU memory (23.6 GiB)" in message and "not retried" in message
    # qlora, batch 4 x 2048 tokens on Llama 3.1 8B (kubetune.planning.memory's estimate)
    assert "estimated training peak with examples at full maxLength ≈19.7 GiB" in message
    assert "logits 11.7 GiB" in message
    assert (
        "training.batchSize: 2 with gradientAccumulationSteps: 8 (same effective batch) -> 12.8 GiB"
        in message
    )
    assert "training.maxLength: 1024 -> 12.8 GiB" in message
    assert "resources.gpuProduct" in message


def test_out_of_memory_without_the_models_config_still_names_the_settings() -> None:
    import torch

    reason, message = describe_failure(
        torch.cuda.OutOfMemoryError(CUDA_OOM),
        "train",
        _spec(batchSize=8, gradientCheckpointing=False),
    )
    assert reason == "OutOfMemory"
    for setting in (
        "method: qlora",
        "batchSize (now 8)",
        "maxLength",
        "gradientCheckpointing: true",
    ):
        assert setting in message


def test_out_of_memory_message_fits_the_stage(tmp_path: Path) -> None:
    import torch

    from kubetune.planning.memory import ModelGeometry

    geometry = ModelGeometry.from_config(LLAMA_3_1_8B_CONFIG)
    spec = _spec()
    _, evaluate = describe_failure(
        torch.cuda.OutOfMemoryError(CUDA_OOM), "evaluate", spec, geometry=geometry
    )
    assert "evaluation.maxNewTokens (now 256)" in evaluate and "15.0 GiB" in evaluate
    _, export = describe_failure(
        torch.cuda.OutOfMemoryError(CUDA_OOM), "export", spec, geometry=geometry
    )
    assert "verifying the GGUF files" in export and "16.7 GiB" in export
    reason, host = describe_failure(
        RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes"
        ),
        "export",
        _spec().model_copy(
            update={"resources": _spec().resources.model_copy(update={"memory": "32Gi"})}
        ),
        geometry=geometry,
    )
    assert reason == "OutOfMemory"
    assert "host memory" in host and "resources.memory (now 32Gi)" in host


def test_hf_model_geometry_comes_from_the_cache_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from kubetune_trainer.failures import base_model_geometry

    config = _llama_8b_dir(tmp_path) / "config.json"
    asked: list[tuple[str, str, str | None]] = []

    def cached(repo_id: str, filename: str, revision: str | None = None, **_: Any) -> str:
        asked.append((repo_id, filename, revision))
        return str(config)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda **_: pytest.fail("no download")
    )
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {
                "uri": "hf://meta-llama/Llama-3.1-8B",
                "revision": "abc",
                "acceptLicense": True,
            },
            "dataset": {"source": {"uri": "file://d.jsonl"}},
        }
    )
    geometry = base_model_geometry(spec)
    assert geometry is not None and geometry.vocab_size == 128256
    assert asked == [("meta-llama/Llama-3.1-8B", "config.json", "abc")]
    assert base_model_geometry(_spec()) is None  # pvc://m/x is not mounted here


def test_oom_in_the_pod_exits_permanently_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from kubetune_trainer import pipeline

    model = _llama_8b_dir(tmp_path)

    def oom_in_training(run: Any, base_dir: Any, metrics: Any) -> None:
        run.enter("train")
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(pipeline, "_run_stages", oom_in_training)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "baseModel": {"uri": f"file://{model}", "acceptLicense": True},
                "dataset": {"source": {"uri": "file://d.jsonl"}},
            }
        )
    )
    code, result = run_entry(tmp_path, spec, tmp_path / "work")
    assert code == PERMANENT_FAILURE_EXIT_CODE
    assert (result.reason, result.stage) == ("OutOfMemory", "train")
    assert "≈19.7 GiB" in result.message and "batchSize: 2" in result.message


def test_unsupported_chat_template_is_permanent_and_says_what_to_do() -> None:
    from kubetune_trainer.export.chat_format import UnsupportedChatTemplate

    reason, message = describe_failure(
        UnsupportedChatTemplate("a system message changes the first user turn"), "export", _spec()
    )
    assert reason == "UnsupportedChatTemplate"
    assert "a system message changes the first user turn" in message
    assert "retry cannot" in message and "base model" in message


def test_failed_gguf_verification_is_permanent_and_points_at_the_report(tmp_path: Path) -> None:
    from kubetune_trainer.export.pipeline import ExportResult, ExportVerificationError
    from kubetune_trainer.export.verify import GgufCheck, PromptComparison, VerificationReport

    wrong = PromptComparison(
        prompt=0,
        served_prompt_matches=True,
        reference_tokens=(1, 2, 3),
        gguf_tokens=(1, 9, 9),
        matching_prefix=1,
        forced_matches=1,
        forced_clear_mismatches=2,
        max_logit_delta=4.2,
        gguf_text="",
    )
    report = VerificationReport(16, 0.01, (GgufCheck("gguf-f16", "f16", True, (wrong,)),))
    exc = ExportVerificationError(
        ExportResult(tmp_path, (), tmp_path / "manifest.json", report, "b1234")
    )
    reason, message = describe_failure(exc, "export", _spec())
    assert reason == "ExportVerificationFailed"
    assert "gguf-f16: llama.cpp picks another token" in message
    assert "manifest.json" in message and "newer llama.cpp" in message


def test_a_setting_the_device_cannot_run_is_an_invalid_spec() -> None:
    from kubetune_trainer.train.config import UnsupportedSettingError, attention_implementation

    spec = _spec(attentionImplementation="flash_attention_2")
    with pytest.raises(UnsupportedSettingError) as info:
        attention_implementation(spec, "cpu")
    reason, message = describe_failure(info.value, "train", spec)
    assert reason == "InvalidSpec" and "training.attentionImplementation" in message


def test_unsupported_chat_template_found_before_training_says_nothing_was_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt-oss's real template (from the pinned llama.cpp sdist) on a real Llama 3 tokenizer:
    it writes a system block of its own around other text, which no Ollama TEMPLATE derived
    per role reproduces."""
    from kubetune_trainer import model_support, tiny_families
    from kubetune_trainer.export.chat_format import UnsupportedChatTemplate

    # The real llama.cpp tree and converted tokenizers live in the user's cache, not the
    # isolated one of this module.
    if _USER_CACHE is None:
        monkeypatch.delenv("KUBETUNE_CACHE", raising=False)
    else:
        monkeypatch.setenv("KUBETUNE_CACHE", _USER_CACHE)
    tokenizer = tiny_families.load_family_tokenizer(tiny_families.family("llama3"))
    template = tiny_families.models_dir() / "templates" / "openai-gpt-oss-120b.jinja"
    tokenizer.chat_template = template.read_text(encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnsupportedChatTemplate) as info:
        model_support.check_model_support(tmp_path, tokenizer)
    finding = "without a system message the template writes"
    reason, message = describe_failure(info.value, "data", _spec())
    assert reason == "UnsupportedChatTemplate"
    assert message.count(finding) == 1
    assert "Nothing was trained" in message and "trained weights" not in message
    assert "retry cannot" in message and "tokenizer_config.json" in message


def test_unsupported_model_family_is_permanent_and_names_the_supported_ones(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from kubetune_trainer.__main__ import exit_code
    from kubetune_trainer.model_support import UnsupportedModelError, check_model_support

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    with pytest.raises(UnsupportedModelError) as info:
        check_model_support(tmp_path, SimpleNamespace(chat_template=None))
    reason, message = describe_failure(info.value, "data", _spec())
    assert reason == "UnsupportedModel"
    assert "'falcon'" in message and "supported families" in message and "llama3" in message
    assert message.endswith("nothing was trained")
    assert exit_code(TrainerResult(phase="Failed", reason=reason)) == PERMANENT_FAILURE_EXIT_CODE


def test_a_conversation_that_cannot_be_masked_is_invalid_data() -> None:
    from kubetune_trainer.train.masking import ChatMaskError

    exc = ChatMaskError("messages[1]: the answer renders as no tokens")
    reason, message = describe_failure(exc, "train", _spec())
    assert reason == "InvalidData"
    assert "messages[1]: the answer renders as no tokens" in message
    assert "assistant-only loss" in message and "dataset" in message


def test_a_quantized_file_below_the_agreement_is_permanent_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    from kubetune.api.finetunejob import GateSpec
    from kubetune_trainer.evaluation.gate import quantization_verdicts
    from kubetune_trainer.export.pipeline import ExportResult, QuantizationDisagreesError
    from kubetune_trainer.export.verify import GgufCheck, PromptComparison, VerificationReport

    def check(quantization: str, matches: int) -> GgufCheck:
        forced = PromptComparison(
            prompt=0,
            served_prompt_matches=True,
            reference_tokens=tuple(range(20)),
            gguf_tokens=tuple(range(20)),
            matching_prefix=20,
            forced_matches=matches,
            forced_clear_mismatches=0,
            max_logit_delta=1.0,
            gguf_text="",
        )
        return GgufCheck(f"gguf-{quantization}", quantization, quantization == "f16", (forced,))

    report = VerificationReport(16, 0.01, (check("f16", 20), check("q4_k_m", 17)))
    report = report.with_verdicts(quantization_verdicts(GateSpec(), report.agreements()))
    exc = QuantizationDisagreesError(
        ExportResult(tmp_path, (), tmp_path / "manifest.json", report, "b1234")
    )
    reason, message = describe_failure(exc, "export", _spec())
    assert reason == "QuantizationDisagrees"
    assert (
        "model-q4_k_m.gguf: token agreement 0.850 < evaluation.gate.minQuantizedAgreement 0.9"
        in message
    )
    assert "manifest.json" in message and "retry quantizes the same weights" in message
    assert "Lower evaluation.gate.minQuantizedAgreement" in message
    assert "export.gguf" in message and "q8_0" in message
    assert "f16" not in message.replace("q4_k_m", "")


# --- the judge endpoint, before the data is read ------------------------------------------------


def _judge_job(endpoint: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "builtin://tiny-llama"},
            # Missing: reading it fails with DataUnavailable, which shows the data was reached.
            "dataset": {"source": {"uri": "file://nope.jsonl"}},
            "evaluation": {"judge": {"endpoint": endpoint, "model": "judge-model"}},
        }
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_judge_fails_the_job_before_the_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer.__main__ import exit_code

    monkeypatch.delenv("KUBETUNE_JUDGE_API_KEY", raising=False)
    _forbid_model_loading(monkeypatch)
    spec = _judge_job(f"http://127.0.0.1:{_closed_port()}/v1")
    result = run_pipeline(spec, tmp_path / "work", base_dir=tmp_path)
    assert (result.phase, result.reason, result.stage) == ("Failed", "JudgeUnreachable", "data")
    assert result.message.startswith("evaluation.judge.endpoint: cannot reach")
    assert "nothing was trained" in result.message and "nope.jsonl" not in result.message
    assert exit_code(result) == 1  # the endpoint may come back: the Job retries


def test_a_judge_that_answers_lets_the_job_go_on_and_warns_of_an_unlisted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.judge_server import FakeJudgeServer

    monkeypatch.delenv("KUBETUNE_JUDGE_API_KEY", raising=False)
    _forbid_model_loading(monkeypatch)
    for listed, warned in (("judge-model", False), ("another-model", True)):
        with FakeJudgeServer(model=listed) as server:
            result = run_pipeline(_judge_job(server.url), tmp_path / listed, base_dir=tmp_path)
        assert server.model_list_requests == 1 and server.requests == []
        assert result.reason == "DataUnavailable"  # past the judge check, at the data
        err = capsys.readouterr().err
        warning = "warning: evaluation.judge.model 'judge-model' is not among the models"
        assert (warning in err) is warned, err
        if warned:
            assert "another-model" in err
