"""The API models: defaults, validation messages, the termination-message contract."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kubetune.api import Artifact, FineTuneJobSpec, TrainerResult
from kubetune.api.finetunejob import DataReportSummary, GateResult

MINIMAL = {"baseModel": {"uri": "pvc://models/qwen2.5-7b"}, "dataset": {"source": {"uri": "pvc://data/train.jsonl"}}}


def test_defaults_are_the_proven_ones() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    assert (spec.method, spec.objective) == ("qlora", "sft")
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (16, 32, 0.05)
    assert spec.training.effective_learning_rate(spec.method, spec.objective) == 2e-4
    assert spec.training.epochs == 3
    assert spec.quantization.type == "nf4" and spec.quantization.double_quant
    assert spec.quantization.compute_dtype == "bfloat16"
    assert spec.base_model.trust_remote_code is False
    assert (spec.dataset.split.validation, spec.dataset.split.test) == (0.1, 0.1)
    assert spec.export.gguf == ["q4_k_m"]


def test_wire_format_is_camel_case_and_round_trips() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    wire = spec.to_wire()
    assert "baseModel" in wire and "gradientAccumulationSteps" in wire["training"]
    assert FineTuneJobSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"method": "prefix-tuning"}, "method", "qlora"),
        ({"lora": {"r": 0}}, "lora.r", "greater than or equal to 1"),
        ({"baseModel": {"uri": "ftp://x"}}, "baseModel.uri", "pattern"),
        ({"dataset": {"source": {}}}, "dataset.source", "exactly one of uri or configMap"),
        ({"training": {"learningRate": 2e-4, "typo": 1}}, "training.typo", "Extra inputs"),
        ({"objective": "dpo", "dataset": {"source": {"uri": "file://d.jsonl"}, "format": "chat"}}, "", "preference"),
        ({"baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B"}}, "", "acceptLicense"),
        ({"export": {"merge": False, "gguf": ["f16"]}}, "export", "needs merge"),
        ({"dataset": {"source": {"uri": "file://d"}, "split": {"validation": 0.5, "test": 0.45}}}, "", "10%"),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate({**MINIMAL, **patch})
    errors = info.value.errors()
    paths = [".".join(str(p) for p in e["loc"]) for e in errors]
    assert any(p.startswith(field) for p in paths), paths
    assert words in str(info.value)


def test_licensed_model_accepted_with_flag() -> None:
    spec = FineTuneJobSpec.model_validate(
        {**MINIMAL, "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B", "acceptLicense": True}}
    )
    assert spec.base_model.requires_license()


def _artifact(i: int) -> Artifact:
    return Artifact(name=f"model-{i}.gguf", kind="gguf", uri=f"pvc://a/ns/job/model-{i}.gguf", size_bytes=10**9, sha256="a" * 64)


def test_termination_message_fits_4kib_and_keeps_the_verdict() -> None:
    result = TrainerResult(
        phase="Succeeded",
        data=DataReportSummary(total=1000, train=800),
        gate=GateResult(passed=True, reason="judge 4.4 >= 4.0", judge_score=4.4),
        artifacts=[_artifact(i) for i in range(40)],
        manifest_uri="pvc://a/ns/job/manifest.json",
        message="x" * 10000,
    )
    text = result.to_termination_message()
    assert len(text.encode()) <= 4096
    back = TrainerResult.from_termination_message(text)
    assert back.gate is not None and back.gate.passed
    assert back.manifest_uri == "pvc://a/ns/job/manifest.json"


def test_small_result_keeps_artifacts() -> None:
    result = TrainerResult(phase="Succeeded", artifacts=[_artifact(1)])
    back = TrainerResult.from_termination_message(result.to_termination_message())
    assert back.artifacts[0].sha256 == "a" * 64
    assert json.loads(result.to_termination_message())["artifacts"][0]["sizeBytes"] == 10**9
