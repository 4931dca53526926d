"""Training: SFT or DPO with LoRA / QLoRA / full fine-tuning, resumable, with early stopping.

Reads top to bottom: skip if an earlier run of this pod already finished training -> load the
base model as the method needs it -> build trl's SFTTrainer (its loss computed as a plain
Trainer computes it, `sft_trainer.py`) or DPOTrainer (used as it is) -> resume from the
latest checkpoint in `workdir/checkpoints` if there is one -> train (eval every `evalSteps`,
early stopping on eval loss, best checkpoint kept) -> save the adapter to
`workdir/adapter` (or the full model to `workdir/model`) -> diagnose the loss curves.

Raises whatever the libraries raise (out-of-memory included); the pipeline turns it into a
Failed result with advice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import Diagnosis
from kubetune_trainer.models import ResolvedModel, half_dtype_name, load_model, training_device
from kubetune_trainer.progress import ProgressMetrics
from kubetune_trainer.train.callbacks import ProgressCallback, ProgressHook
from kubetune_trainer.train.config import (
    CHECKPOINTS_DIR,
    dpo_config,
    is_chat_format,
    lora_config,
    sft_config,
)
from kubetune_trainer.train.diagnosis import diagnose
from kubetune_trainer.train.masking import tokenize_chat_records, with_runtime_bos
from kubetune_trainer.train.sft_trainer import plain_loss_sft_trainer

OUTCOME_FILE = "train_outcome.json"
FINGERPRINT_FILE = "train_fingerprint.txt"


@dataclass
class TrainOutcome:
    """What training produced; saved beside the output so a restarted pod can skip training."""

    output_dir: str
    """`workdir/adapter` (LoRA, QLoRA) or `workdir/model` (full)."""
    kind: Literal["adapter", "model"]
    global_step: int
    resumed_from_step: int | None
    """Step of the checkpoint this process resumed from (None = started from scratch)."""
    best_checkpoint: str | None
    best_eval_loss: float | None
    final_train_loss: float | None
    stopped_early: bool
    seconds: float
    """Wall time of this process's training."""
    tokens_per_second: float | None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: dict[str, Any] = field(default_factory=dict)

    def save(self, workdir: Path) -> None:
        (workdir / OUTCOME_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> TrainOutcome | None:
        path = workdir / OUTCOME_FILE
        if not path.is_file():
            return None
        outcome = cls(**json.loads(path.read_text()))
        return outcome if Path(outcome.output_dir).is_dir() else None

    def diagnosis_model(self) -> Diagnosis:
        return (
            Diagnosis.model_validate(self.diagnosis)
            if self.diagnosis
            else diagnose(self.log_history)
        )


def training_fingerprint(
    spec: FineTuneJobSpec, train_records: list[dict[str, Any]], eval_records: list[dict[str, Any]]
) -> str:
    """sha256 of what decides the trained weights: model, method, settings and the data."""
    digest = hashlib.sha256()
    decisive = spec.model_dump(
        mode="json",
        include={"base_model", "method", "objective", "lora", "quantization", "training"},
        exclude={"base_model": {"token_secret_ref"}},
    )
    digest.update(json.dumps(decisive, sort_keys=True).encode())
    for record in (*train_records, {"--": "eval"}, *eval_records):
        digest.update(json.dumps(record, sort_keys=True).encode())
    return digest.hexdigest()


def discard_stale_state(workdir: Path, fingerprint: str) -> None:
    """Remove checkpoints and outputs of a training with other settings or data.

    A pod's workdir belongs to one immutable spec, so this only matters for `kubetune run`,
    whose default workdir is reused when the YAML is edited and run again.
    """
    marker = workdir / FINGERPRINT_FILE
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return
    if marker.is_file():
        print(
            f"training settings or data changed since the last run in {workdir}: starting over",
            flush=True,
        )
        for path in (
            workdir / CHECKPOINTS_DIR,
            workdir / OUTCOME_FILE,
            workdir / "adapter",
            workdir / "model",
        ):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")


def latest_checkpoint(workdir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder under `workdir/checkpoints`."""
    root = workdir / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    complete = [
        p
        for p in root.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def preference_conversations(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Preference records as trl's conversational shape, so DPO renders the chat template.

    The prompt (its messages, or the text as one user turn) is rendered with the generation
    prompt and each answer as the assistant turn that follows, exactly as SFT and serving render
    them. A model without a chat template keeps the plain strings (trl appends EOS to answers).
    """
    if not getattr(tokenizer, "chat_template", None):
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]
    return [
        {
            "prompt": r.get("prompt_messages") or [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in records
    ]


def _adapter_weights_to_float32(model: Any) -> None:
    """Undo trl's bf16 cast of QLoRA adapter weights on CPU (before the optimizer exists).

    trl casts them to bf16 as the QLoRA paper does on GPUs; CPUs without native bf16 (most)
    then run the adapter matmuls slowly: bench/train_throughput.py --method qlora measured 0.60x
    the plain-Trainer baseline's tokens per CPU-second with the cast, 0.9x without it.
    """
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.to(torch.float32)


def train_model(
    spec: FineTuneJobSpec,
    base: ResolvedModel,
    tokenizer: Any,
    train_records: list[dict[str, Any]],
    eval_records: list[dict[str, Any]],
    workdir: Path,
    *,
    data_format: str,
    metrics: ProgressMetrics | None = None,
    on_progress: ProgressHook | None = None,
    device: str | None = None,
) -> TrainOutcome:
    """Train on `train_records` (trl-native shapes), evaluating on `eval_records`.

    `data_format` is the prepared data's format (chat/instruction/completion/preference): it
    decides assistant-only vs completion-only loss. A run whose checkpoints exist resumes from
    the latest; a run whose outcome file exists returns it without training again. Both only
    when they were made by the same training settings and data (a fingerprint is kept beside
    them); otherwise they are removed and training starts over.
    """
    from kubetune_trainer import distributed

    if distributed.is_main_process():
        discard_stale_state(workdir, training_fingerprint(spec, train_records, eval_records))
    distributed.barrier()  # every rank sees the same checkpoints and outcome from here on
    done = TrainOutcome.load(workdir)
    if done is not None:
        return done
    if not train_records:
        raise ValueError("dataset: no training examples left after preparation")

    from datasets import Dataset
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    device = device or training_device()
    set_seed(spec.training.seed)
    if spec.objective == "dpo":
        train_records = preference_conversations(train_records, tokenizer)
        eval_records = preference_conversations(eval_records, tokenizer)
    elif is_chat_format(data_format):
        # Assistant-only loss on the stock template: ids and masks computed here, before the
        # weights are loaded (a record the template cannot mask fails now, not mid-training).
        train_records = tokenize_chat_records(train_records, tokenizer)
        eval_records = tokenize_chat_records(eval_records, tokenizer)
    model = load_model(base, spec, device=device)
    train_ds = Dataset.from_list(train_records)
    eval_ds = Dataset.from_list(eval_records) if eval_records else None
    common = {
        "n_train": len(train_records),
        "has_eval": eval_ds is not None,
        "device": device,
        "half_dtype": half_dtype_name(device),
    }
    # Every rank runs the callback; only rank 0's prints and publishes (state.is_world_process_zero).
    progress = ProgressCallback(metrics=metrics, hook=on_progress)
    callbacks: list[Any] = [progress]
    if eval_ds is not None and spec.training.early_stopping.enabled:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=spec.training.early_stopping.patience,
                early_stopping_threshold=spec.training.early_stopping.threshold,
            )
        )

    if spec.objective == "dpo":
        from trl import DPOTrainer  # type: ignore[attr-defined]

        trainer: Any = DPOTrainer(
            model=model,
            args=dpo_config(spec, workdir, **common),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=with_runtime_bos(tokenizer),
            peft_config=lora_config(spec),
            callbacks=callbacks,
        )
    else:
        trainer = plain_loss_sft_trainer(
            model=model,
            args=sft_config(spec, workdir, data_format=data_format, **common),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=lora_config(spec),
            callbacks=callbacks,
        )

    # Our progress line replaces the Trainer's printed log dicts.
    trainer.remove_callback(PrinterCallback)
    if device == "cpu":
        _adapter_weights_to_float32(trainer.model)

    resume = latest_checkpoint(workdir)
    resumed_from_step = int(resume.name.split("-")[-1]) if resume is not None else None
    if resume is not None and distributed.is_main_process():
        print(f"resuming from {resume} (step {resumed_from_step})", flush=True)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.monotonic() - started

    state = trainer.state
    kind: Literal["adapter", "model"] = "model" if spec.method == "full" else "adapter"
    out = workdir / kind
    main = distributed.is_main_process()
    if main and out.exists():
        shutil.rmtree(out)
    # Every rank calls it (FSDP gathers the weights), the Trainer writes from rank 0 only.
    trainer.save_model(str(out))  # the best model when load_best_model_at_end
    if main:
        tokenizer.save_pretrained(str(out))
        state.save_to_json(str(out / "trainer_state.json"))

    history = list(state.log_history)
    train_losses = [e["loss"] for e in history if "loss" in e]
    planned = state.max_steps
    outcome = TrainOutcome(
        output_dir=str(out),
        kind=kind,
        global_step=state.global_step,
        resumed_from_step=resumed_from_step,
        best_checkpoint=state.best_model_checkpoint,
        best_eval_loss=float(state.best_metric) if state.best_metric is not None else None,
        final_train_loss=float(train_losses[-1]) if train_losses else None,
        stopped_early=bool(planned and state.global_step < planned),
        seconds=round(seconds, 3),
        tokens_per_second=progress.session_tokens_per_second(state),
        log_history=history,
        diagnosis=diagnose(history).model_dump(),
    )
    if main:
        outcome.save(workdir)
    return outcome
