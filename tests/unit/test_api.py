"""The API models: defaults, validation messages, the termination-message contract."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kubetune.api import Artifact, FineTuneJobSpec, TrainerResult
from kubetune.api.finetunejob import secret_refs
from kubetune.api.trainer_result import DataReportSummary, GateResult
from tests.spec_rules import JUDGE, RULES

MINIMAL = {
    "baseModel": {"uri": "pvc://models/qwen2.5-7b"},
    "dataset": {"source": {"uri": "pvc://data/train.jsonl"}},
}


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
        (
            {
                "objective": "dpo",
                "dataset": {"source": {"uri": "file://d.jsonl"}, "format": "chat"},
            },
            "",
            "preference",
        ),
        ({"baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B"}}, "", "acceptLicense"),
        ({"export": {"merge": False, "gguf": ["f16"]}}, "export", "needs merge"),
        (
            {
                "dataset": {
                    "source": {"uri": "file://d"},
                    "split": {"validation": 0.5, "test": 0.45},
                }
            },
            "",
            "10%",
        ),
        ({"training": {"packing": True}}, "training", "packed examples would attend to each other"),
        (
            {
                "resources": {"gpus": 0},
                "training": {"attentionImplementation": "flash_attention_2"},
            },
            "",
            "training.attentionImplementation: flash_attention_2 needs a CUDA GPU",
        ),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate({**MINIMAL, **patch})
    errors = info.value.errors()
    paths = [".".join(str(p) for p in e["loc"]) for e in errors]
    assert any(p.startswith(field) for p in paths), paths
    assert words in str(info.value)


def test_gate_and_export_defaults_are_honest() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    gate = spec.evaluation.gate
    assert gate.max_forgetting_drop is None and gate.require_improvement_over_base is None
    assert gate.requires_improvement(judge_configured=False)  # the default gate: beat the base
    assert gate.min_quantized_agreement == 0.9
    assert spec.evaluation.compare_with_base and spec.export.merge


@pytest.mark.parametrize(
    ("patch", "loc", "message", "fix"), RULES, ids=[r[2].split(":")[0] for r in RULES]
)
def test_spec_rules_reject_with_the_exact_message_and_the_fix_works(
    patch: dict[str, object], loc: str, message: str, fix: dict[str, object]
) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate({**MINIMAL, **patch})
    errors = info.value.errors()
    assert [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in errors] == [
        (loc, f"Value error, {message}")
    ]
    FineTuneJobSpec.model_validate({**MINIMAL, **fix})


def test_every_problem_is_reported_at_once() -> None:
    patch = {
        "baseModel": {"uri": "s3://models/x"},
        "evaluation": {"gate": {"maxForgettingDrop": 0.1, "minJudgeScore": 4}},
    }
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate({**MINIMAL, **patch})
    text = str(info.value)
    assert "baseModel.uri: the trainer does not read s3://" in text
    assert (
        "evaluation.gate.maxForgettingDrop needs" in text
        and "evaluation.gate.minJudgeScore needs" in text
    )


def test_secret_refs_name_their_fields() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            **MINIMAL,
            "baseModel": {"uri": "hf://Qwen/Qwen2.5-7B", "tokenSecretRef": {"name": "hf"}},
            "evaluation": {
                "judge": {**JUDGE, "apiKeySecretRef": {"name": "judge", "key": "api-key"}}
            },
        }
    )
    assert [(f, r.name, r.key) for f, r in secret_refs(spec)] == [
        ("baseModel.tokenSecretRef", "hf", "token"),
        ("evaluation.judge.apiKeySecretRef", "judge", "api-key"),
    ]
    assert secret_refs(FineTuneJobSpec.model_validate(MINIMAL)) == []


def test_licensed_model_accepted_with_flag() -> None:
    spec = FineTuneJobSpec.model_validate(
        {**MINIMAL, "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B", "acceptLicense": True}}
    )
    assert spec.base_model.requires_license()


def _artifact(i: int) -> Artifact:
    return Artifact(
        name=f"model-{i}.gguf",
        kind="gguf",
        uri=f"pvc://a/ns/job/model-{i}.gguf",
        size_bytes=10**9,
        sha256="a" * 64,
    )


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


def test_unsupported_model_family_is_rejected_before_anything_is_downloaded() -> None:
    import pydantic

    from kubetune.api.finetunejob import BaseModelSpec

    with pytest.raises(pydantic.ValidationError) as err:
        BaseModelSpec.model_validate({"uri": "hf://google/gemma-2-2b-it", "acceptLicense": True})
    message = str(err.value)
    assert "baseModel.uri" in message and "Gemma" in message
    assert "supported families: llama3 (meta-llama/Llama-3.1-8B-Instruct)" in message
    BaseModelSpec(uri="hf://Qwen/Qwen2.5-7B-Instruct")
    BaseModelSpec(uri="hf://acme/support-bot")  # says nothing: the trainer reads config.json
    BaseModelSpec(uri="builtin://tiny-qwen2")
    with pytest.raises(pydantic.ValidationError, match="unknown builtin model 'tiny-gemma'"):
        BaseModelSpec(uri="builtin://tiny-gemma")


def test_a_crowded_termination_message_keeps_what_serving_needs() -> None:
    """A ModelDeployment resolves a job's version from the GGUF and Modelfile artifacts in its
    status: those survive a result too long for 4 KiB, the rest goes first."""
    extra = [_artifact(i).model_copy(update={"kind": "report", "name": f"report-{i}"}) for i in range(20)]
    gguf = _artifact(100).model_copy(update={"kind": "gguf", "name": "gguf-f16", "quantization": "f16"})
    modelfile = _artifact(101).model_copy(update={"kind": "modelfile", "name": "modelfile-f16"})
    result = TrainerResult(phase="Succeeded", artifacts=[*extra, gguf, modelfile], message="y" * 3900)
    back = TrainerResult.from_termination_message(text := result.to_termination_message())
    assert len(text.encode()) <= 4096
    assert [a.name for a in back.artifacts] == ["gguf-f16", "modelfile-f16"]
    assert back.message and back.message.endswith("…")
