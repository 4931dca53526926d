"""Why a trainer run failed, in words a user can act on, and whether a retry can help.

:func:`describe_failure` turns the exception that ended :func:`kubetune_trainer.pipeline.run_pipeline`
into a ``(reason, message)`` pair. Reasons in ``Reason.PERMANENT`` make the pod exit with the
permanent-failure code, so the Job's podFailurePolicy stops at once: an invalid spec or setting,
the data policy, out-of-memory (with the estimated memory of the settings and of each one to
lower, :mod:`kubetune.planning.memory`), an unsupported model family or chat template (both found
before training), a failed GGUF verification, a quantized GGUF below the agreement threshold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec

if TYPE_CHECKING:
    from kubetune.planning.memory import ModelGeometry
    from kubetune_trainer.export.pipeline import ExportVerificationError, QuantizationDisagreesError

REASON_INVALID_DATA = c.Reason.INVALID_DATA
REASON_DATA_UNAVAILABLE = c.Reason.DATA_UNAVAILABLE
REASON_LICENSE = c.Reason.LICENSE_NOT_ACCEPTED
REASON_MODEL_UNAVAILABLE = c.Reason.MODEL_UNAVAILABLE
REASON_OUT_OF_MEMORY = c.Reason.OUT_OF_MEMORY
REASON_STAGE_FAILED: dict[str, str] = {
    "data": c.Reason.TRAINER_FAILED,
    "train": c.Reason.TRAINING_FAILED,
    "evaluate": c.Reason.EVALUATION_FAILED,
    "export": c.Reason.EXPORT_FAILED,
    "done": c.Reason.TRAINER_FAILED,
}


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, host allocation failure, or a library's wrapped 'out of memory' error."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc).lower()
    return (
        "out of memory" in text
        or "can't allocate memory" in text
        or "cannot allocate memory" in text
    )


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or another accelerator's) allocation failure, as opposed to host memory."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc).lower()
    return "out of memory" in text and any(word in text for word in ("cuda", "gpu", "device"))


def gpu_capacity_gib(exc: BaseException) -> float | None:
    """The GPU's capacity from torch's message ("GPU 0 has a total capacity of 23.55 GiB")."""
    match = re.search(r"total capacity of ([0-9.]+) GiB", str(exc))
    return float(match.group(1)) if match else None


def base_model_geometry(
    spec: FineTuneJobSpec, base_dir: Path | None = None
) -> ModelGeometry | None:
    """The base model's geometry from a config.json already on this machine (a mounted or
    local folder, or the Hugging Face cache); None otherwise. Never downloads."""
    from kubetune.planning.memory import ModelGeometry

    scheme, _, rest = spec.base_model.uri.partition("://")
    try:
        if scheme in ("file", "pvc"):
            from kubetune_trainer.storage import local_path

            return ModelGeometry.read(local_path(spec.base_model.uri, base_dir))
        if scheme == "hf":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(
                rest.strip("/"), "config.json", revision=spec.base_model.revision
            )
            return ModelGeometry.read(Path(cached).parent) if isinstance(cached, str) else None
    except (OSError, ValueError):
        return None
    return None


def oom_advice(spec: FineTuneJobSpec, geometry: ModelGeometry | None = None) -> str:
    """What to change after running out of memory in training, most saving first; with the
    model's geometry, the estimated peak now and after each change (`kubetune.planning.memory`)."""
    from kubetune.planning.memory import estimate_training_memory, gib, lower_memory_options

    tail = "or ask for a GPU with more memory (resources.gpuProduct)"
    if geometry is not None:
        now = estimate_training_memory(spec, geometry)
        options = lower_memory_options(spec, geometry)
        steps = [f"{change} -> {gib(memory.total)}" for change, memory in options]
        return (
            f"estimated training peak with examples at full maxLength {now.describe()}; "
            "each of these alone lowers it: " + "; ".join([*steps, tail])
        )
    t = spec.training
    steps = []
    if spec.method != "qlora":
        steps.append("use method: qlora (4-bit base weights, about a quarter of the memory)")
    if t.batch_size > 1:
        steps.append(
            f"lower training.batchSize (now {t.batch_size}) and raise training.gradientAccumulationSteps "
            "to keep the effective batch"
        )
    if t.max_length > 512:
        steps.append(f"lower training.maxLength (now {t.max_length})")
    if not t.gradient_checkpointing:
        steps.append("set training.gradientCheckpointing: true")
    steps.append(tail)
    return "activations and logits grow with batchSize × maxLength: " + "; ".join(steps)


def out_of_memory_message(
    exc: BaseException, stage: str, spec: FineTuneJobSpec, geometry: ModelGeometry | None = None
) -> str:
    """Why the job ran out of memory, and the settings to change: a retry cannot help."""
    from kubetune.planning.memory import gib
    from kubetune_trainer.export.verify import verification_peak_bytes

    gpu = is_gpu_out_of_memory(exc)
    capacity = gpu_capacity_gib(exc)
    where = "GPU memory" + (f" ({capacity:.1f} GiB)" if capacity else "") if gpu else "host memory"
    head = (
        f"out of {where} in stage {stage}; the same settings need the same memory, "
        "so the job is not retried: "
    )
    if not gpu:
        now = f" (now {spec.resources.memory})" if spec.resources.memory else ""
        size = f"; this model is {gib(2 * geometry.parameters)} in 16-bit" if geometry else ""
        advice = f"raise resources.memory{now}{size}"
        if stage == "train":
            advice += "; or lower what training holds: " + oom_advice(spec, geometry)
        return head + advice
    if stage == "evaluate":
        size = f" ({gib(2 * geometry.parameters)} for this model)" if geometry else ""
        return head + (
            f"evaluation holds the model in 16-bit{size} and generates several answers at once: lower "
            f"evaluation.maxNewTokens (now {spec.evaluation.max_new_tokens}), or ask for a GPU with more "
            "memory (resources.gpuProduct)"
        )
    if stage == "export":
        size = (
            f" (about {gib(verification_peak_bytes(geometry, tokens=spec.training.max_length).total)} "
            "for this model)"
            if geometry
            else ""
        )
        return head + (
            f"verifying the GGUF files holds the merged model in 16-bit on the GPU{size}: ask for a "
            "GPU with more memory (resources.gpuProduct)"
        )
    return head + oom_advice(spec, geometry)


def _first_line(exc: BaseException, limit: int = 2000) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def verification_failure_message(exc: ExportVerificationError) -> str:
    """What failed in the GGUF verification, where the report is, and what can change it."""
    problems = exc.result.verification.problems
    hints = []
    if any("tokenizes the served prompt differently" in p for p in problems):
        hints.append(
            "a served prompt tokenizes differently from training: the model's chat template or "
            "tokenizer is not reproduced by llama.cpp/Ollama for this model family"
        )
    if any("picks another token" in p or "could not run it" in p for p in problems):
        hints.append(
            "llama.cpp does not reproduce this architecture: a trainer image with a newer "
            "llama.cpp (spec.image) may"
        )
    if any("generated nothing" in p for p in problems):
        hints.append("the model ends its answer at once: check the training data's answers")
    listed = "; ".join(problems)
    return (
        f"the exported GGUF files do not behave like the fine-tuned model, so the export is not "
        f"published: {listed[:1500]}. The files and export/manifest.json (with the full "
        "verification report) are in the job's artifacts folder; a retry converts the same "
        "model the same way. " + ("; ".join(hints) + "." if hints else "")
    ).strip()


def unsupported_template_message(exc: BaseException, stage: str) -> str:
    """Why the chat template cannot be served, and what to do. `check_model_support` raises
    this right after the tokenizer loads (stage data), so nothing has been trained."""
    # check_model_support wraps the finding in its own sentence: name the finding once.
    cause = exc.__cause__ if isinstance(exc.__cause__, type(exc)) else exc
    kept = (
        "Nothing was trained: this is checked before training"
        if stage == "data"
        else "The trained weights are kept in the artifacts"
    )
    return (
        f"the base model's chat template cannot be served as it is trained: {_first_line(cause)}. "
        "Ollama renders prompts from fixed text around each role's message, and this template "
        f"does more, so served prompts would differ from training. {kept}; a retry cannot change "
        "the template. Fine-tune a base model of a supported family (Llama 3, Qwen2, Phi-3 or "
        "Mistral instruct models), or fix the chat template in the model's tokenizer_config.json."
    )


def quantization_failure_message(exc: QuantizationDisagreesError) -> str:
    """Which quantized GGUF files agree too little with the merged model, and what to change."""
    files = "; ".join(
        f"{exc.files[v.quantization]}: token agreement {v.agreement:.3f} < "
        f"evaluation.gate.minQuantizedAgreement {v.min_agreement:g}"
        if v.agreement is not None and v.min_agreement is not None
        else f"{exc.files[v.quantization]}: {v.reason}"
        for v in exc.failed
    )
    return (
        f"quantized GGUF files disagree with the fine-tuned model on too many tokens, so the "
        f"export is not published: {files}. The files and export/manifest.json (each "
        "quantization's verdict is in its verification report) are in the job's artifacts "
        "folder; a retry quantizes the same weights the same way. Lower "
        "evaluation.gate.minQuantizedAgreement if this agreement is acceptable, or drop that "
        "quantization from export.gguf (q8_0 agrees most closely)."
    )


def describe_failure(
    exc: BaseException,
    stage: str,
    spec: FineTuneJobSpec,
    *,
    geometry: ModelGeometry | None = None,
) -> tuple[str, str]:
    """(reason, actionable message) for an exception raised in `stage`; `geometry` (the base
    model's) turns out-of-memory advice into estimates."""
    from kubetune_trainer.data import DataPolicyError, DataSourceError, DataValidationError
    from kubetune_trainer.export.chat_format import UnsupportedChatTemplate
    from kubetune_trainer.export.pipeline import ExportVerificationError, QuantizationDisagreesError
    from kubetune_trainer.model_support import UnsupportedModelError
    from kubetune_trainer.models import LicenseNotAcceptedError, ModelError
    from kubetune_trainer.preflight import JudgeUnreachableError
    from kubetune_trainer.train.config import UnsupportedSettingError
    from kubetune_trainer.train.masking import ChatMaskError

    if isinstance(exc, DataPolicyError):
        return (
            c.Reason.DATA_POLICY,
            f"{exc} (see data/report.json; or set dataPolicy.action to drop or flag)",
        )
    if isinstance(exc, DataValidationError):
        return REASON_INVALID_DATA, str(exc)
    if isinstance(exc, DataSourceError):
        return REASON_DATA_UNAVAILABLE, str(exc)
    if isinstance(exc, LicenseNotAcceptedError):
        return REASON_LICENSE, str(exc)
    if isinstance(exc, UnsupportedSettingError):
        return c.Reason.INVALID_SPEC, str(exc)
    if isinstance(exc, JudgeUnreachableError):
        return exc.reason, (
            f"{exc}. Checked before the data is read, so nothing was trained; not a permanent "
            "failure: a retry (the Job's backoffLimit) succeeds once the endpoint answers"
        )
    if isinstance(exc, UnsupportedModelError):
        return exc.reason, f"{exc}; nothing was trained"
    if isinstance(exc, ChatMaskError):
        return REASON_INVALID_DATA, (
            f"a training conversation cannot be masked for assistant-only loss: {_first_line(exc)}. "
            "Fix or remove that conversation in the dataset; a retry reads the same data"
        )
    if is_out_of_memory(exc):
        return REASON_OUT_OF_MEMORY, out_of_memory_message(exc, stage, spec, geometry)
    if isinstance(exc, ModelError):
        return REASON_MODEL_UNAVAILABLE, str(exc)
    if isinstance(exc, UnsupportedChatTemplate):
        return c.Reason.UNSUPPORTED_CHAT_TEMPLATE, unsupported_template_message(exc, stage)
    if isinstance(exc, QuantizationDisagreesError):
        return c.Reason.QUANTIZATION_DISAGREES, quantization_failure_message(exc)
    if isinstance(exc, ExportVerificationError):
        return c.Reason.EXPORT_VERIFICATION_FAILED, verification_failure_message(exc)
    return (
        REASON_STAGE_FAILED.get(stage, c.Reason.TRAINER_FAILED),
        f"stage {stage} failed: {type(exc).__name__}: {_first_line(exc)} (the traceback is in the trainer's log)",
    )
