"""spec.training: defaults per method and objective, the optimiser settings practitioners tune,
and their mapping to transformers' TrainingArguments and model loading."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetune.api.crdgen import render_all
from kubetune.api.finetunejob import TRAINING_RULES, FineTuneJobSpec, TrainingSpec
from kubetune_trainer.train.config import (
    UnsupportedSettingError,
    attention_implementation,
    dpo_config,
    sft_config,
    training_arguments,
)
from tests.model_configs import method_spec


@pytest.mark.parametrize(
    ("method", "objective", "expected"),
    [
        ("qlora", "sft", 2e-4),  # QLoRA paper
        ("lora", "sft", 2e-4),
        ("full", "sft", 2e-5),  # Alpaca / Vicuna full fine-tuning
        ("full", "dpo", 5e-7),  # Zephyr-7B-beta full DPO
        ("qlora", "dpo", 5e-6),  # alignment-handbook QLoRA DPO
        ("lora", "dpo", 5e-6),
    ],
)
def test_unset_learning_rate_takes_the_default_of_method_and_objective(
    method: str, objective: str, expected: float, tmp_path: Path
) -> None:
    s = method_spec(method, objective)
    assert s.training.learning_rate is None
    assert s.training.effective_learning_rate(method, objective) == expected
    args = training_arguments(
        s, tmp_path, n_train=100, has_eval=True, device="cpu", half_dtype="float32"
    )
    assert args["learning_rate"] == expected


def test_explicit_learning_rate_wins(tmp_path: Path) -> None:
    s = method_spec("full", "dpo", learningRate=1e-6)
    assert s.training.effective_learning_rate("full", "dpo") == 1e-6
    # An unset rate stays unset on the wire (the trainer resolves it with the same function).
    assert "learningRate" not in method_spec().to_wire()["training"]
    assert s.to_wire()["training"]["learningRate"] == 1e-6


def test_optimiser_settings_default_to_transformers_and_map_to_training_arguments(
    tmp_path: Path,
) -> None:
    t = TrainingSpec()
    assert (t.optimizer, t.weight_decay, t.max_grad_norm, t.attention_implementation) == (
        "adamw_torch_fused",
        0.0,
        1.0,
        None,
    )
    s = method_spec(optimizer="paged_adamw_8bit", weightDecay=0.01, maxGradNorm=0.3)
    args = training_arguments(
        s, tmp_path, n_train=100, has_eval=False, device="cuda", half_dtype="bfloat16"
    )
    assert (args["optim"], args["weight_decay"], args["max_grad_norm"]) == (
        "paged_adamw_8bit",
        0.01,
        0.3,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"optimizer": "adam"},
        {"optimizer": "adamw_8bit"},  # an alias: one name per optimiser
        {"weightDecay": -0.1},
        {"weightDecay": 2},
        {"maxGradNorm": -1},
        {"attentionImplementation": "flash_attention_3"},
        {"learningRate": 0},
    ],
)
def test_out_of_range_settings_are_rejected_with_their_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        method_spec(**bad)
    assert next(iter(bad)) in str(info.value)


def test_every_optimizer_is_one_transformers_accepts(tmp_path: Path) -> None:
    from transformers.training_args import OptimizerNames

    names = {o.value for o in OptimizerNames}
    enum = TrainingSpec.model_fields["optimizer"].annotation.__args__  # type: ignore[union-attr]
    assert set(enum) <= names
    # And trl's configs take them (validation happens in TrainingArguments.__post_init__).
    s = method_spec(optimizer="adafactor", weightDecay=0.1, maxGradNorm=0.5)
    common = {"n_train": 10, "has_eval": False, "device": "cpu", "half_dtype": "float32"}
    sft = sft_config(s, tmp_path, data_format="chat", **common)
    assert (sft.optim, sft.weight_decay, sft.max_grad_norm, sft.learning_rate) == (
        "adafactor",
        0.1,
        0.5,
        2e-4,
    )
    dpo = dpo_config(method_spec("lora", "dpo", optimizer="sgd"), tmp_path, **common)
    assert (dpo.optim, dpo.learning_rate, dpo.beta) == ("sgd", 5e-6, 0.1)


def test_crd_documents_defaults_and_sources() -> None:
    crd = yaml.safe_load(render_all()["kubetune.dev_finetunejobs.yaml"])
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["training"]["properties"]
    lr = training["learningRate"]
    assert "default" not in lr
    for source in (
        "QLoRA",
        "Alpaca",
        "Zephyr",
        "config_qlora.yaml",
        "2e-4",
        "2e-5",
        "5e-7",
        "5e-6",
    ):
        assert source in lr["description"], source
    assert training["optimizer"]["default"] == "adamw_torch_fused"
    assert "paged_adamw_32bit" in training["optimizer"]["enum"]
    assert training["weightDecay"]["default"] == 0.0 and training["maxGradNorm"]["default"] == 1.0
    assert set(training["attentionImplementation"]["enum"]) == {
        "eager",
        "sdpa",
        "flash_attention_2",
    }
    assert "DPO paper" in training["dpoBeta"]["description"]


# --- device and image checks ----------------------------------------------------------------------


def test_flash_attention_on_cpu_is_refused_before_loading() -> None:
    s = method_spec(attentionImplementation="flash_attention_2")
    assert s.training.device_problems("cuda") == []
    assert "attentionImplementation" in s.training.device_problems("cpu")[0]
    with pytest.raises(UnsupportedSettingError, match="needs a CUDA GPU"):
        attention_implementation(s, "cpu")


def test_flash_attention_without_flash_attn_in_the_image_is_refused() -> None:
    # The stock trainer image has no flash-attn (see pyproject's trainer extra).
    with pytest.raises(UnsupportedSettingError, match="flash-attn package"):
        attention_implementation(method_spec(attentionImplementation="flash_attention_2"), "cuda")


@pytest.mark.parametrize("impl", [None, "eager", "sdpa"])
def test_other_attention_implementations_pass_through(impl: str | None) -> None:
    s = method_spec(attentionImplementation=impl) if impl else method_spec()
    assert attention_implementation(s, "cpu") == impl


def test_bitsandbytes_optimizers_are_allowed_on_cpu() -> None:
    # bitsandbytes 0.50 runs AdamW8bit and the paged optimizers on CPU (checked by a Trainer
    # step on a tiny Llama when this was written), so they are not refused there.
    for name in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        assert method_spec(optimizer=name).training.device_problems("cpu") == []


def test_load_model_passes_the_attention_implementation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import transformers

    from kubetune_trainer import models

    seen: dict[str, Any] = {}

    def fake_from_pretrained(path: str, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return SimpleNamespace(config=SimpleNamespace(use_cache=True))

    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(fake_from_pretrained)
    )
    resolved = models.ResolvedModel(uri="file://m", path=tmp_path)
    models.load_model(resolved, method_spec("lora", attentionImplementation="eager"), device="cpu")
    assert seen["attn_implementation"] == "eager"
    models.load_model(resolved, method_spec("lora"), device="cpu")
    assert seen["attn_implementation"] is None
    with pytest.raises(UnsupportedSettingError):
        models.load_model(
            resolved, method_spec("lora", attentionImplementation="flash_attention_2"), device="cpu"
        )


# --- packing ----------------------------------------------------------------------------------------

PACKING_NEEDS_FLASH = (
    "training.packing: packed examples would attend to each other unless "
    "training.attentionImplementation is flash_attention_2 (the only kernel that keeps each "
    "packed example to itself, on a CUDA GPU with flash-attn); set attentionImplementation: "
    "flash_attention_2, or packing: false"
)


@pytest.mark.parametrize("impl", [None, "eager", "sdpa"])
def test_packing_without_flash_attention_is_refused_naming_both_fields(impl: str | None) -> None:
    # sdpa and eager ignore the position ids trl's padding-free packing separates examples by.
    training: dict[str, Any] = {"packing": True}
    if impl is not None:
        training["attentionImplementation"] = impl
    with pytest.raises(ValidationError) as info:
        method_spec(**training)
    [error] = info.value.errors()
    assert (error["loc"], error["msg"]) == (("training",), f"Value error, {PACKING_NEEDS_FLASH}")
    packed = method_spec(packing=True, attentionImplementation="flash_attention_2").training
    assert packed.packing and packed.device_problems("cuda") == []
    assert TrainingSpec(attention_implementation=impl).packing is False  # the default passes


def test_the_crd_carries_the_packing_rule_with_the_same_words() -> None:
    crd = yaml.safe_load(render_all()["kubetune.dev_finetunejobs.yaml"])
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["training"]
    rules = [(r["rule"], r["message"]) for r in training["x-kubernetes-validations"]]
    assert [(r.cel, r.message) for r in TRAINING_RULES] == rules[: len(TRAINING_RULES)]
    assert rules[0][1] == PACKING_NEEDS_FLASH
    assert "flash_attention_2" in training["properties"]["packing"]["description"]


def test_flash_attention_without_a_gpu_is_refused_at_validation() -> None:
    cpu = {"resources": {"gpus": 0}, "training": {"attentionImplementation": "flash_attention_2"}}
    with pytest.raises(ValidationError, match="flash_attention_2 needs a CUDA GPU"):
        FineTuneJobSpec.model_validate(
            {
                "baseModel": {"uri": "pvc://models/m"},
                "dataset": {"source": {"uri": "file://d"}},
                **cpu,
            }
        )
    # With a GPU it validates; the trainer then checks the device and flash-attn when it starts.
    assert method_spec(attentionImplementation="flash_attention_2").resources.gpus == 1
