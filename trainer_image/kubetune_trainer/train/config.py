"""From `spec.training` / `spec.lora` to trl's SFTConfig / DPOConfig and peft's LoraConfig.

Kept apart from the training loop so the mapping can be read (and tested) on its own. Choices
that are not in the spec, with the reason:

- checkpoints every `evalSteps` (a multiple of the eval interval, which `load_best_model_at_end`
  needs), at most two kept: the latest for resuming and the best for the final model;
- logging about twenty times per run (at most every 10 steps, at least every `evalSteps`), so a
  short run still shows a curve and a long one does not flood the pod log;
- throughput counts non-padding tokens;
- with several training processes (`kubetune_trainer.distributed`), `batchSize` is per process
  (per GPU): an optimizer step sees batchSize x gradientAccumulationSteps x processes records,
  and the step count of an epoch shrinks accordingly (`planned_steps`);
- no tqdm bars (the progress line replaces them in pod logs) and no experiment trackers.

An unset `learningRate` is resolved by `TrainingSpec.effective_learning_rate` (the default of
the method and objective), the one place operator and trainer take it from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec

CHECKPOINTS_DIR = "checkpoints"
SAVE_TOTAL_LIMIT = 2


def planned_steps(spec: FineTuneJobSpec, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take (before early stopping)."""
    t = spec.training
    if t.max_steps is not None:
        return t.max_steps
    per_step = t.batch_size * t.gradient_accumulation_steps * world_size
    per_epoch = max(1, math.ceil(n_train / per_step))
    return max(1, math.ceil(per_epoch * t.epochs))


def logging_steps(total_steps: int, eval_steps: int) -> int:
    """About twenty log lines per run, never rarer than every 10 steps or `eval_steps`."""
    return max(1, min(10, eval_steps, total_steps // 20 or 1))


def training_arguments(
    spec: FineTuneJobSpec,
    workdir: Path,
    *,
    n_train: int,
    has_eval: bool,
    device: str,
    half_dtype: str,
) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and DPOConfig (both are TrainingArguments)."""
    from kubetune_trainer import distributed

    t = spec.training
    world = distributed.world_size()
    total = planned_steps(spec, n_train, world)
    on_gpu = device == "cuda"
    evaluate = has_eval
    args: dict[str, Any] = {
        "output_dir": str(workdir / CHECKPOINTS_DIR),
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "num_train_epochs": float(t.epochs),
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "learning_rate": t.effective_learning_rate(spec.method, spec.objective),
        "lr_scheduler_type": t.lr_scheduler,
        "optim": t.optimizer,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "warmup_steps": t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "gradient_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_strategy": "steps",
        "logging_steps": logging_steps(total, t.eval_steps),
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": t.eval_steps if evaluate else None,
        "save_strategy": "steps",
        "save_steps": t.eval_steps,
        "save_total_limit": SAVE_TOTAL_LIMIT,
        "load_best_model_at_end": evaluate,
        "metric_for_best_model": "eval_loss" if evaluate else None,
        "greater_is_better": False if evaluate else None,
        "restore_callback_states_from_checkpoint": True,  # early-stopping patience survives a restart
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": not on_gpu,
        "bf16": on_gpu and half_dtype == "bfloat16",
        "fp16": on_gpu and half_dtype == "float16",
        "max_length": t.max_length,
    }
    if world > 1:
        # DDP: every trainable (LoRA or full) parameter gets a gradient each step, so no search
        # for unused ones; non-reentrant checkpointing is the variant DDP's hooks work with.
        args["ddp_find_unused_parameters"] = False
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


class UnsupportedSettingError(ValueError):
    """A training setting that cannot work on this device or in this trainer image; the
    message names the field and the fix. No retry can help (reported as InvalidSpec)."""


def attention_implementation(spec: FineTuneJobSpec, device: str) -> str | None:
    """`training.attentionImplementation` for `from_pretrained` (None: transformers chooses),
    checked before any weights load: the device (`TrainingSpec.device_problems`) and, for
    flash_attention_2, the flash-attn package, which the stock trainer image does not ship."""
    import importlib.util

    t = spec.training
    problems = t.device_problems(device)
    if (
        not problems
        and t.attention_implementation == "flash_attention_2"
        and importlib.util.find_spec("flash_attn") is None
    ):
        problems.append(
            "training.attentionImplementation: flash_attention_2 needs the flash-attn package, "
            "which this trainer image does not have; leave it unset (sdpa), or set spec.image to "
            "an image with flash-attn installed"
        )
    if problems:
        raise UnsupportedSettingError("; ".join(problems))
    return t.attention_implementation


def sft_config(spec: FineTuneJobSpec, workdir: Path, *, data_format: str, **kwargs: Any) -> Any:
    """SFTConfig: loss on the assistant turns (chat) or the completion (prompt/completion).

    Chat data arrives tokenized, with the assistant mask computed from the model's own template
    (:mod:`kubetune_trainer.train.masking`), so trl's ``assistant_only_loss`` (which needs
    ``{% generation %}`` markers no stock template has) stays off and trl builds the labels
    from the ``assistant_masks`` column.
    """
    from trl import SFTConfig  # type: ignore[attr-defined]

    chat = is_chat_format(data_format)
    return SFTConfig(
        **training_arguments(spec, workdir, **kwargs),
        packing=spec.training.packing,
        assistant_only_loss=False,
        completion_only_loss=None if chat else True,
    )


def is_chat_format(data_format: str) -> bool:
    """Whether prepared records of ``data_format`` are ``{"messages": […]}`` conversations."""
    return data_format in ("chat", "instruction", "messages")


def dpo_config(spec: FineTuneJobSpec, workdir: Path, **kwargs: Any) -> Any:
    """DPOConfig with `training.dpoBeta`."""
    from trl import DPOConfig  # type: ignore[attr-defined]

    return DPOConfig(**training_arguments(spec, workdir, **kwargs), beta=spec.training.dpo_beta)


def lora_config(spec: FineTuneJobSpec) -> Any:
    """peft LoraConfig from `spec.lora`; None for method `full`."""
    if spec.method == "full":
        return None
    from peft import LoraConfig

    targets = spec.lora.target_modules
    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        # peft's "all-linear" shortcut is a plain string, not a list entry.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
