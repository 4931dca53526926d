"""Preflight before any GPU time (kubetune.planning): the GPU table, the fit check and its WontFit message, the
time and cost estimate, and what is not estimated (kubetune.planning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.planning.gpus import GPUS, MIB, gpu_from_label, known_gpu
from kubetune.planning.memory import GIB, LLAMA_3_1_8B, estimate_training_memory
from kubetune.planning.models import KNOWN_MODELS, known_geometry
from kubetune.planning.preflight import CUDA_CONTEXT_BYTES, Prices, fits, plan, training_tokens


def llama_spec(method: str = "qlora", gpus: int = 1, product: str | None = None,
               **training: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "acceptLicense": True},
        "method": method,
        "dataset": {"source": {"uri": "file://d.jsonl"}},
        "training": training,
        "resources": {"gpus": gpus, **({"gpuProduct": product} if product else {})},
    })


@pytest.mark.parametrize(
    ("product", "gib"),
    [("NVIDIA-A100-SXM4-40GB", 40), ("NVIDIA-A100-SXM4-80GB", 80), ("NVIDIA-H100-80GB-HBM3", 79.6),
     ("NVIDIA-H200", 140.4), ("NVIDIA-L4", 22.5), ("NVIDIA-A10G", 22.5), ("Tesla-T4", 15),
     ("NVIDIA-L40S", 45), ("NVIDIA-GeForce-RTX-4090", 24)],
)
def test_gpu_table_memory_as_the_driver_reports_it(product: str, gib: float) -> None:
    gpu = known_gpu(product)
    assert gpu is not None and abs(gpu.memory_bytes / GIB - gib) < 0.1


def test_gpu_names_match_ignoring_case_and_dashes_and_unknown_ones_are_none() -> None:
    assert known_gpu("nvidia a100 sxm4 80gb") == known_gpu("NVIDIA-A100-SXM4-80GB")
    assert known_gpu("NVIDIA-B300") is None
    assert len({g.product for g in GPUS}) == len(GPUS)


def test_node_label_memory_overrides_the_table_and_garbage_is_refused() -> None:
    labelled = gpu_from_label("NVIDIA-A100-SXM4-80GB", "40960")
    assert labelled is not None and labelled.memory_bytes == 40960 * MIB
    assert labelled.tflops == 312  # throughput still from the table
    assert gpu_from_label("NVIDIA-A100-SXM4-80GB", "80GB") is None


def test_known_models_parameter_counts_match_their_published_ones() -> None:
    # config.json-derived counts against the model cards (Qwen's q/k/v biases left out).
    assert KNOWN_MODELS["meta-llama/llama-3.1-8b-instruct"].parameters == 8_030_261_248
    assert KNOWN_MODELS["mistralai/mistral-7b-instruct-v0.3"].parameters == 7_248_023_552
    assert KNOWN_MODELS["microsoft/phi-3.5-mini-instruct"].parameters == 3_821_079_552
    assert KNOWN_MODELS["qwen/qwen2.5-0.5b-instruct"].parameters == 494_032_768 - 27_648
    assert KNOWN_MODELS["meta-llama/llama-3.2-1b-instruct"].parameters == 1_235_814_400


def test_unknown_models_are_not_estimated_and_the_status_says_why() -> None:
    geometry, why = known_geometry("hf://someone/private-llama3-finetune")
    assert geometry is None and "not in kubetune's table" in why
    assert known_geometry("pvc://models/llama")[0] is None
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "file://d.jsonl"}},
        "resources": {"gpuProduct": "NVIDIA-L4"},
    })
    result = plan(spec, known_gpu("NVIDIA-L4"), "table", None)
    assert result.memory is None and result.problem is None and result.fits is None
    assert result.message.startswith("Memory not estimated: the operator cannot read")


def test_a_job_that_does_not_fit_gets_wontfit_naming_estimate_gpu_memory_and_settings_that_fit() -> None:
    spec = llama_spec("lora", product="Tesla-T4")
    result = plan(spec, known_gpu("Tesla-T4"), "table", None)
    assert result.fits is False and result.problem is not None
    estimate = estimate_training_memory(spec, LLAMA_3_1_8B)
    assert f"≈{estimate.total / GIB:.1f} GiB" in result.problem
    assert "Tesla-T4 has 15.0 GiB (kubetune's GPU table)" in result.problem
    # no single change is enough for LoRA on a 16 GB T4 (16-bit weights alone are 15 GiB): the
    # combination that is
    assert "Settings that would fit: method: qlora and training.batchSize: 2" in result.problem
    assert "kubetune.dev/preflight=skip" in result.problem


def test_single_changes_that_fit_are_listed_with_their_estimates() -> None:
    result = plan(llama_spec("qlora", product="Tesla-T4"), known_gpu("Tesla-T4"), "table", None)
    assert result.problem is not None
    assert "training.batchSize: 2 with gradientAccumulationSteps: 8 (same effective batch) (" in result.problem
    assert "training.maxLength: 1024 (" in result.problem


def test_a_job_that_fits_has_its_estimate_and_no_problem() -> None:
    result = plan(llama_spec("qlora", product="NVIDIA-A100-SXM4-80GB"),
                  known_gpu("NVIDIA-A100-SXM4-80GB"), "table", None)
    assert result.fits is True and result.problem is None and result.memory is not None
    assert result.memory.total + CUDA_CONTEXT_BYTES <= 80 * GIB
    assert "time not estimated" in result.message


def test_the_skip_annotation_keeps_the_estimate_without_failing() -> None:
    result = plan(llama_spec("lora", product="NVIDIA-L4"), known_gpu("NVIDIA-L4"), "table", None,
                  skip_fit=True)
    assert result.fits is False and result.problem is None and "check skipped" in result.message


def test_fit_counts_the_cuda_context() -> None:
    gpu = known_gpu("NVIDIA-L4")
    assert gpu is not None
    memory = estimate_training_memory(llama_spec("qlora", batchSize=2), LLAMA_3_1_8B)
    assert fits(memory, gpu) == (memory.total + GIB // 2 <= gpu.memory_bytes)


def test_gpu_hours_and_cost_from_max_steps_price_list_and_throughput_table() -> None:
    spec = llama_spec("qlora", gpus=2, product="NVIDIA-H100-80GB-HBM3", maxSteps=100)
    # 100 steps x batch 4 x accumulation 4 x 2048 tokens x 2 GPUs
    assert training_tokens(spec) == 100 * 4 * 4 * 2048 * 2
    prices, problems = Prices.from_configmap_data(
        {"NVIDIA-H100-80GB-HBM3": "4.50", "default": "2", "currency": "EUR"})
    assert problems == []
    gpu = known_gpu("NVIDIA-H100-80GB-HBM3")
    assert gpu is not None
    result = plan(spec, gpu, "table", prices)
    per_gpu = gpu.tokens_per_second("qlora", LLAMA_3_1_8B.parameters)
    assert result.gpu_hours == pytest.approx(100 * 4 * 4 * 2048 * 2 / per_gpu / 3600 * 2)
    assert result.price_per_gpu_hour == 4.5 and result.currency == "EUR"
    assert result.estimated_cost == pytest.approx(result.gpu_hours * 4.5)
    assert prices.price("NVIDIA-L4") == 2.0  # default for an unlisted product


def test_price_list_values_that_are_not_prices_are_reported() -> None:
    prices, problems = Prices.from_configmap_data({"NVIDIA-L4": "cheap", "NVIDIA-H200": "-1"})
    assert prices.per_gpu_hour == {}
    assert problems == ["NVIDIA-L4: 'cheap' is not a price per GPU-hour (a number >= 0)",
                        "NVIDIA-H200: '-1' is not a price per GPU-hour (a number >= 0)"]


def test_the_torchtune_calibrated_throughput_gives_back_its_own_figures() -> None:
    rtx = known_gpu("NVIDIA-GeForce-RTX-4090")
    assert rtx is not None
    assert rtx.tokens_per_second("lora", LLAMA_3_1_8B.parameters) == pytest.approx(3083)
    assert rtx.tokens_per_second("qlora", LLAMA_3_1_8B.parameters) == pytest.approx(2413)


def test_cpu_jobs_are_not_estimated() -> None:
    result = plan(llama_spec(gpus=0), None, None, None)
    assert result.memory is None and "trains on CPU" in result.message


def _job_yaml(method: str, product: str, annotations: str = "") -> str:
    return f"""apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: j{annotations}
spec:
  baseModel: {{uri: hf://meta-llama/Llama-3.1-8B-Instruct, acceptLicense: true}}
  method: {method}
  dataset: {{source: {{uri: pvc://d/train.jsonl}}}}
  resources: {{gpus: 1, gpuProduct: {product}}}
"""


def test_kubetune_validate_reports_wontfit_for_a_gpu_it_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main

    wont = tmp_path / "wont.yaml"
    wont.write_text(_job_yaml("lora", "Tesla-T4"))
    assert main(["validate", str(wont)]) == 1
    err = capsys.readouterr().err
    assert f"{wont} (document 1): Won't fit: estimated training peak per GPU ≈29.3 GiB" in err
    assert "Tesla-T4 has 15.0 GiB (kubetune's GPU table)" in err
    fits = tmp_path / "fits.yaml"
    fits.write_text(_job_yaml("qlora", "NVIDIA-H100-80GB-HBM3"))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(_job_yaml("full", "Some-Future-GPU"))
    skipped = tmp_path / "skipped.yaml"
    skipped.write_text(_job_yaml("lora", "Tesla-T4", "\n  annotations: {kubetune.dev/preflight: skip}"))
    assert main(["validate", str(fits), str(unknown), str(skipped)]) == 0


def test_the_price_configmap_setting_takes_a_namespace_or_the_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.operator.settings import Settings

    monkeypatch.setenv("KUBETUNE_GPU_PRICES_CONFIGMAP", "billing/gpu-prices")
    assert Settings.from_env().gpu_prices_configmap == "billing/gpu-prices"
    monkeypatch.setenv("KUBETUNE_GPU_PRICES_CONFIGMAP", "gpu-prices")
    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")
    monkeypatch.setenv("KUBETUNE_LEADER_ELECTION", "false")
    assert Settings.from_env().gpu_prices_configmap == "kubetune-system/gpu-prices"
    monkeypatch.delenv("POD_NAMESPACE")
    with pytest.raises(ValueError, match="names no namespace: write <namespace>/gpu-prices"):
        Settings.from_env()
