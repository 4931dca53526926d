"""The trainer pipeline: data -> train -> evaluate -> gate -> export -> result.

`run_pipeline` is what the trainer pod runs (through `python -m kubetune_trainer run`) and what
`kubetune run FILE` runs in-process. It reads top to bottom:

1. licence check (before any download), then one request to the judge endpoint, if any
   (`preflight.check_judge_endpoint`);
2. base model resolved to a local folder, tokenizer loaded (a `builtin://` model is built after
   the data is read, since its tokenizer learns from the job's text), model family and chat
   template checked (`model_support`, before any weight is loaded);
3. data prepared under the data policy: a policy failure ends the job here, before the model's
   weights are loaded;
4. training (resumes from the latest checkpoint of an earlier attempt), loss-curve diagnosis;
5. evaluation of base vs fine-tuned on the test split, and the quality gate;
6. export (merge, GGUF, manifest), skipped when the gate failed and `export.onGateFailure: skip`;
7. `workdir/result.json` (the full TrainerResult) written, and the result returned.

Every exception becomes a Failed result with an actionable message; the traceback goes to
stderr, never into the result. Failures no retry can fix carry a reason in Reason.PERMANENT
(the pod then exits with the permanent-failure code): an invalid spec or setting, the data
policy, an out-of-memory (with the estimated memory of the settings and of each one to lower,
`kubetune_trainer.memory`), an unsupported model family or a chat template Ollama cannot
reproduce (both found before training), a failed GGUF verification, a quantized GGUF below
`evaluation.gate.minQuantizedAgreement`. A judge endpoint that does not answer fails the job at
the start, before the data is read, but may be retried: the endpoint may come back.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubetune.api import constants as c
from kubetune.api.common import Artifact
from kubetune.api.finetunejob import FineTuneJobSpec, Progress, TrainerResult, TrainingSummary

if TYPE_CHECKING:
    from kubetune_trainer.export.pipeline import ExportVerificationError, QuantizationDisagreesError
    from kubetune_trainer.memory import ModelGeometry

Stage = Literal["data", "train", "evaluate", "export", "done"]
# on_progress(stage, progress): called when a stage starts (progress None) and on every
# training step (stage "train", progress set).
ProgressHook = Callable[[str, Progress | None], None]

RESULT_FILE = "result.json"
EXPORT_DIR = "export"

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


@dataclass
class _Run:
    """What the pipeline has so far; becomes the TrainerResult however it ends."""

    spec: FineTuneJobSpec
    workdir: Path
    artifacts_uri: str | None
    on_progress: ProgressHook | None
    stage: Stage = "data"
    result: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    manifest_uri: str | None = None

    def enter(self, stage: Stage) -> None:
        self.stage = stage
        print(f"stage {stage}", flush=True)
        if self.on_progress is not None:
            self.on_progress(stage, None)

    def uri(self, path: Path) -> str:
        """`artifacts_uri` + path relative to the workdir, or `file://<abs path>` locally."""
        if self.artifacts_uri:
            rel = path.resolve().relative_to(self.workdir.resolve()).as_posix()
            return f"{self.artifacts_uri.rstrip('/')}/{rel}"
        return f"file://{path.resolve()}"

    def add_artifact(
        self, path: Path, kind: str, *, name: str | None = None, quantization: str | None = None
    ) -> None:
        from kubetune_trainer.export.manifest import sha256_dir, sha256_file, size_of

        if not path.exists():
            return
        self.artifacts.append(
            Artifact(
                name=name or path.name,
                kind=kind,
                uri=self.uri(path),
                size_bytes=size_of(path),
                sha256=sha256_dir(path) if path.is_dir() else sha256_file(path),
                quantization=quantization,
            )
        )

    def finish(
        self, phase: Literal["Succeeded", "Failed"], reason: str = "", message: str = ""
    ) -> TrainerResult:
        result = TrainerResult(
            phase=phase,
            reason=reason,
            message=message[:32000],
            stage="done" if phase == "Succeeded" else self.stage,
            artifacts=self.artifacts,
            manifest_uri=self.manifest_uri,
            **self.result,
        )
        path = self.workdir / RESULT_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result.to_wire(), indent=2) + "\n")
        tmp.replace(path)
        return result


def run_pipeline(
    spec: FineTuneJobSpec,
    workdir: Path,
    *,
    base_dir: Path | None = None,
    artifacts_uri: str | None = None,
    on_progress: ProgressHook | None = None,
    metrics: Any | None = None,
) -> TrainerResult:
    """Run every stage for `spec` in `workdir`; never raises for a failing job.

    `base_dir` anchors relative `file://` URIs (the YAML's folder for `kubetune run`);
    `artifacts_uri` is the workdir's URI in the artifact store (e.g. `pvc://claim/ns/job`),
    used to name artifacts; `metrics` is a `progress.ProgressMetrics` to export training
    progress to (the pod's Prometheus endpoint).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(spec=spec, workdir=workdir, artifacts_uri=artifacts_uri, on_progress=on_progress)
    try:
        _run_stages(run, base_dir, metrics)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        traceback.print_exc(file=sys.stderr)
        geometry = base_model_geometry(spec, base_dir) if is_out_of_memory(exc) else None
        reason, message = describe_failure(exc, run.stage, spec, geometry=geometry)
        print(f"failed in stage {run.stage}: {reason}: {message}", file=sys.stderr, flush=True)
        return run.finish("Failed", reason, message)
    return run.finish("Succeeded", c.Reason.SUCCEEDED, "")


def _run_stages(run: _Run, base_dir: Path | None, metrics: Any | None) -> None:
    from kubetune_trainer.data import prepare_dataset
    from kubetune_trainer.models import (
        check_license,
        is_builtin,
        load_tokenizer,
        resolve_base_model,
    )

    spec, workdir = run.spec, run.workdir
    _quiet_libraries()

    run.enter("data")
    check_license(spec.base_model)
    _check_judge(spec)
    corpus: list[str] = []
    if is_builtin(spec.base_model):
        # The tiny model's tokenizer learns from the job's own text; a policy failure still
        # stops the job here, before any model exists.
        from kubetune_trainer.data.formats import record_text

        first = prepare_dataset(spec, workdir, base_dir=base_dir)
        corpus = [record_text(r) for r in first.train + first.validation]
    base = resolve_base_model(
        spec.base_model,
        base_dir=base_dir,
        download_dir=None,  # the Hugging Face cache: a base model is no job artifact
        corpus=corpus,
    )
    tokenizer = load_tokenizer(base)
    from kubetune_trainer.model_support import check_model_support

    check_model_support(base.path, tokenizer, spec.export.ollama)  # before any weight loads
    data = prepare_dataset(spec, workdir, tokenizer=tokenizer, base_dir=base_dir)
    run.result["data"] = data.report.summary()
    run.add_artifact(workdir / "data" / "report.json", "report", name="data-report.json")

    run.enter("train")
    from kubetune_trainer.models import training_device
    from kubetune_trainer.train.run import train_model

    device = training_device()
    hook = (lambda p: run.on_progress("train", p)) if run.on_progress is not None else None  # type: ignore[misc]
    outcome = train_model(
        spec,
        base,
        tokenizer,
        data.train,
        data.validation,
        workdir,
        data_format=data.format,
        metrics=metrics,
        on_progress=hook,
        device=device,
    )
    run.result["diagnosis"] = outcome.diagnosis_model()
    run.result["training"] = TrainingSummary(
        steps=outcome.global_step,
        resumed_from_step=outcome.resumed_from_step,
        final_train_loss=outcome.final_train_loss,
        best_eval_loss=outcome.best_eval_loss,
        stopped_early=outcome.stopped_early,
        tokens_per_second=outcome.tokens_per_second,
        seconds=round(outcome.seconds, 1),
    )
    trained = Path(outcome.output_dir)
    run.add_artifact(
        trained, "adapter" if outcome.kind == "adapter" else "merged", name=trained.name
    )
    _free_memory()

    run.enter("evaluate")
    from kubetune_trainer.evaluation import evaluate

    evaluation = evaluate(
        spec.evaluation,
        model_dir=base.path,
        adapter_dir=trained,
        test_records=data.test,
        workdir=workdir,
        general_records=_forgetting_records(spec, base_dir),
        device=device,
    )
    run.result["evaluation"] = evaluation.summary
    run.result["gate"] = evaluation.gate
    run.add_artifact(evaluation.predictions_path, "predictions")
    run.add_artifact(evaluation.summary_path, "report", name="eval-summary.json")
    _free_memory()

    if not evaluation.gate.passed and spec.export.on_gate_failure == "skip":
        print("export skipped: the gate failed and export.onGateFailure is skip", flush=True)
        return
    run.enter("export")
    _export(run, base.path, trained, outcome.kind, data.test)


def _export(
    run: _Run, base_dir: Path, trained: Path, kind: str, test_records: list[dict[str, Any]]
) -> None:
    from kubetune_trainer.evaluation.examples import to_eval_examples
    from kubetune_trainer.export import export_model

    spec = run.spec
    examples, _ = to_eval_examples(test_records, limit=3)
    verify_prompts: list[str | list[dict[str, str]]] = [
        e.messages if e.messages is not None else (e.text or "") for e in examples
    ]
    out_dir = run.workdir / EXPORT_DIR
    # A LoRA job exports base + adapter (merged in 16-bit); a full job exports its own model.
    result = export_model(
        base_dir if kind == "adapter" else trained,
        trained if kind == "adapter" else None,
        out_dir,
        list(spec.export.gguf),
        merge=spec.export.merge,
        adapter_gguf=spec.export.adapter_gguf,
        verify_prompts=verify_prompts,
        min_quantized_agreement=spec.evaluation.gate.min_quantized_agreement,
        ollama=spec.export.ollama,
    )
    for verdict in result.verification.verdicts:  # also in export/manifest.json
        print(f"verified {verdict.reason}", flush=True)
    kinds = {
        "merged-safetensors": "merged",
        "gguf": "gguf",
        "adapter-gguf": "adapter-gguf",
        "modelfile": "modelfile",
    }
    for artifact in result.artifacts:
        path = out_dir / artifact.path
        run.artifacts.append(
            Artifact(
                name=path.name,
                kind=kinds.get(artifact.kind, "other"),
                uri=run.uri(path),
                size_bytes=artifact.size_bytes,
                sha256=artifact.sha256,
                quantization=artifact.quantization,
            )
        )
    run.add_artifact(result.manifest_path, "manifest")
    run.manifest_uri = run.uri(result.manifest_path)


def _check_judge(spec: FineTuneJobSpec) -> None:
    """A judge that cannot be reached fails the job now, not after training
    (`preflight.check_judge_endpoint` raises JudgeUnreachableError)."""
    from kubetune_trainer.preflight import check_judge_endpoint

    endpoint = check_judge_endpoint(spec)
    if endpoint is not None and endpoint.lists_model is False:
        # Not a failure: some servers (llama.cpp) answer to any model name.
        listed = ", ".join((endpoint.models or ())[:10])
        print(
            f"warning: evaluation.judge.model {endpoint.model!r} is not among the models "
            f"{endpoint.url} lists ({listed}); the judge may reject every request",
            file=sys.stderr,
            flush=True,
        )


def _forgetting_records(spec: FineTuneJobSpec, base_dir: Path | None) -> list[dict[str, Any]]:
    """The general set scored before and after fine-tuning, normalised; [] when none."""
    source = spec.evaluation.forgetting_set
    if source is None:
        return []
    from kubetune_trainer.data.formats import detect_record_format, normalise
    from kubetune_trainer.data.sources import read_source

    records = []
    for row in read_source(source, base_dir):
        fmt = detect_record_format(row.value) if row.error is None else None
        if fmt is None:
            continue
        data, _ = normalise(row.value, fmt)
        if data is not None:
            records.append(data)
    return records


def _quiet_libraries() -> None:
    """Our progress line and stage lines replace the libraries' progress bars in the log."""
    import warnings

    import datasets
    import transformers

    # transformers 5 renames (gradient -> activation checkpointing) warned from inside trl/peft.
    warnings.filterwarnings(
        "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
    )
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# --- failures -------------------------------------------------------------------------------


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
    from kubetune_trainer.memory import ModelGeometry

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
    model's geometry, the estimated peak now and after each change (`kubetune_trainer.memory`)."""
    from kubetune_trainer.memory import estimate_training_memory, gib, lower_memory_options

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
    from kubetune_trainer.export.verify import verification_peak_bytes
    from kubetune_trainer.memory import gib

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
