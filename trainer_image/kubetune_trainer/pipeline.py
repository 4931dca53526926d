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
5. evaluation of the fine-tuned model and the baselines (the base model zero-shot, and
   few-shot with training examples in the prompt) on the test split, and the quality gate;
6. export (merge, GGUF, manifest), skipped when the gate failed and `export.onGateFailure: skip`;
7. `workdir/result.json` (the full TrainerResult) written, and the result returned.

With several training processes (`kubetune_trainer.distributed`) this runs on rank 0: it hands
the prepared data to the other ranks after step 3, they train beside it in step 4
(`follow_pipeline`) and exit; steps 5-7 are rank 0's alone.

Every exception becomes a Failed result with an actionable message; the traceback goes to
stderr, never into the result. Failures no retry can fix carry a reason in Reason.PERMANENT
(the pod then exits with the permanent-failure code): an invalid spec or setting, the data
policy, an out-of-memory (with the estimated memory of the settings and of each one to lower,
`kubetune.planning.memory`), an unsupported model family or a chat template Ollama cannot
reproduce (both found before training), a failed GGUF verification, a quantized GGUF below
`evaluation.gate.minQuantizedAgreement`. A judge endpoint that does not answer fails the job at
the start, before the data is read, but may be retried: the endpoint may come back.
"""

from __future__ import annotations

import gc
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune.api import constants as c
from kubetune.api.common import Artifact
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_result import Progress, TrainerResult, TrainingSummary
from kubetune_trainer.failures import base_model_geometry, describe_failure, is_out_of_memory

Stage = Literal["data", "train", "evaluate", "export", "done"]
# on_progress(stage, progress): called when a stage starts (progress None) and on every
# training step (stage "train", progress set).
ProgressHook = Callable[[str, Progress | None], None]

RESULT_FILE = "result.json"
EXPORT_DIR = "export"


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
    shared: bool = False
    """Whether the data stage's output went to the other training processes (several ranks)."""

    def share(self, payload: dict[str, Any] | None) -> None:
        """Hand the prepared data (None: nothing, rank 0 failed) to the other ranks, once."""
        from kubetune_trainer import distributed

        if not self.shared:
            self.shared = True
            distributed.share_from_main(payload)

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
    if spec.backend == "openai":  # the provider trains: kubetune_trainer.provider
        from kubetune_trainer.provider import run_provider_pipeline

        return run_provider_pipeline(
            spec, workdir, base_dir=base_dir, artifacts_uri=artifacts_uri, metrics=metrics
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(spec=spec, workdir=workdir, artifacts_uri=artifacts_uri, on_progress=on_progress)
    try:
        _run_stages(run, base_dir, metrics)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        traceback.print_exc(file=sys.stderr)
        run.share(None)  # other ranks still waiting for the data stage stop (no-op alone)
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
    run.share(
        {"base": base, "train": data.train, "validation": data.validation, "format": data.format}
    )

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
        train_records=data.task_train,
        shot_seed=spec.dataset.split.seed,
        teacher=spec.teacher if spec.objective == "distill" else None,
        teacher_base_dir=base_dir,
    )
    run.result["evaluation"] = evaluation.summary
    run.result["gate"] = evaluation.gate
    run.add_artifact(evaluation.predictions_path, "predictions")
    run.add_artifact(evaluation.summary_path, "report", name="eval-summary.json")
    _drift_reference(run, tokenizer, evaluation.rows)
    _free_memory()

    if not evaluation.gate.passed and spec.export.on_gate_failure == "skip":
        print("export skipped: the gate failed and export.onGateFailure is skip", flush=True)
        return
    run.enter("export")
    _export(run, base.path, trained, outcome.kind, data.test)
    from kubetune_trainer.distill.compare import record_student_size

    if record_student_size(evaluation.summary, evaluation.summary_path, run.artifacts):
        run.artifacts = [a for a in run.artifacts if a.name != "eval-summary.json"]
        run.add_artifact(evaluation.summary_path, "report", name="eval-summary.json")


def follow_pipeline(spec: FineTuneJobSpec, workdir: Path) -> None:
    """What a training process of rank > 0 runs (`kubetune_trainer.distributed`): wait for rank
    0's data stage, train beside it, and return; evaluation, export and the result are rank 0's.
    Returns at once when rank 0 failed before training (its result says why)."""
    from kubetune_trainer import distributed
    from kubetune_trainer.models import load_tokenizer, training_device
    from kubetune_trainer.train.run import train_model

    _quiet_libraries()
    shared = distributed.share_from_main(None)
    if shared is None:
        return
    train_model(
        spec,
        shared["base"],
        load_tokenizer(shared["base"]),
        shared["train"],
        shared["validation"],
        Path(workdir),
        data_format=shared["format"],
        device=training_device(),
    )


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


def _drift_reference(run: _Run, tokenizer: Any, rows: list[Any]) -> None:
    """The test split's lengths for the serving gateway's drift tracker. Best effort: a
    trained model is never lost over it (serving then takes a version's first requests)."""
    from kubetune_trainer.evaluation.drift_reference import write_drift_reference

    try:
        path = write_drift_reference(tokenizer, rows, run.workdir / "eval")
    except Exception as exc:
        print(f"no drift reference: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return
    if path is not None:
        run.add_artifact(path, "drift-reference")


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
