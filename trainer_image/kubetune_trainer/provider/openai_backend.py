"""backend openai: prepare the data, fine-tune on OpenAI's API, report as a local job does.

`run_provider_pipeline` reads top to bottom:

1. data preparation and scans under the data policy (kubetune_trainer.data, no tokenizer: the
   provider tokenizes); a policy failure ends the job before anything is uploaded;
2. the train and validation splits written in OpenAI's format (openai_format.py) and uploaded
   (`files.create`, purpose fine-tune); the test split stays here for evaluation;
3. the provider's job created (`fine_tuning.jobs.create`: model, method supervised or dpo with
   its hyperparameters, "auto" where unset, suffix, seed);
4. the job followed until it ends: its events are logged, its metrics events become the same
   progress gauges and `progress …` lines as local training (step, total steps, losses, the
   estimated finish as eta), its checkpoints are recorded;
5. the resulting model id recorded as a `provider-model` artifact (`provider/model.json`,
   sha256 as for every artifact) and the trained tokens in `training.trainedTokens`;
6. the model evaluated on the test split through the provider's chat API, next to the base
   model, with the same metrics, judge and gate as a local job (openai_evaluation.py).

Restarts are safe: the uploaded file ids and the job id are kept in `provider/state.json` on the
artifact volume, so a retried or resumed pod follows the same provider job and never pays twice.
SIGTERM (the pod deleted: `spec.suspend: true`, or the FineTuneJob deleted) pauses a running
provider job (`jobs.pause`), so nothing is trained unobserved; the next pod resumes it
(`jobs.resume`); on a deletion the operator's cancel Job runs `cancel_provider_job`, which
cancels it. Failures: see openai_errors.py; the API key (from `KUBETUNE_PROVIDER_API_KEY`)
is redacted from every message, log line and file this module writes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.provider import ProviderSpec
from kubetune.api.trainer_result import Progress, TrainerResult, TrainingSummary
from kubetune_trainer.provider.openai_errors import ProviderFailure, classify, job_failure, redact
from kubetune_trainer.provider.openai_format import to_openai_lines, write_jsonl

PROVIDER_DIR = "provider"
STATE_FILE = "state.json"
MODEL_FILE = "model.json"
TERMINAL = ("succeeded", "failed", "cancelled")


class Stopped(BaseException):
    """SIGTERM reached the runner while it followed the provider's job. A BaseException, like
    KeyboardInterrupt: raised inside an HTTP request, the openai client's `except Exception`
    would take it for a connection error and retry instead of letting the runner stop."""


@dataclass
class _Follow:
    """What has been seen of the provider's job so far."""

    seen_events: set[str] = field(default_factory=set)
    step: int = 0
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


def run_provider_pipeline(
    spec: FineTuneJobSpec,
    workdir: Path,
    *,
    base_dir: Path | None = None,
    artifacts_uri: str | None = None,
    metrics: Any | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainerResult:
    """Run a backend-openai FineTuneJob in `workdir`; never raises for a failing job."""
    from kubetune_trainer.failures import describe_failure
    from kubetune_trainer.pipeline import _Run

    assert spec.provider is not None  # the spec rules require it with backend openai
    env = os.environ if environ is None else environ
    secret = env.get(c.ENV_PROVIDER_API_KEY) or None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(spec=spec, workdir=workdir, artifacts_uri=artifacts_uri, on_progress=None)
    try:
        with _stop_on_sigterm():
            _stages(run, spec.provider, secret, base_dir, metrics)
    except ProviderFailure as exc:
        _say(f"failed in stage {run.stage}: {exc.reason}: {exc.message}", err=True)
        return run.finish("Failed", exc.reason, exc.message)
    except Stopped:
        message = "the pod was stopped (suspend or deletion) while the provider's job ran"
        _say(message, err=True)
        return run.finish("Failed", c.Reason.SUSPENDED, message)
    except Exception as exc:
        reason, message = describe_failure(exc, run.stage, spec)
        message = redact(message, secret)
        _say(f"failed in stage {run.stage}: {reason}: {message}", err=True)
        return run.finish("Failed", reason, message)
    return run.finish("Succeeded", c.Reason.SUCCEEDED, "")


def _stages(
    run: Any, provider: ProviderSpec, secret: str | None, base_dir: Path | None, metrics: Any
) -> None:
    from kubetune_trainer.data import prepare_dataset
    from kubetune_trainer.preflight import check_judge_endpoint

    spec, workdir = run.spec, run.workdir
    run.enter("data")
    check_judge_endpoint(spec)  # a judge that cannot answer fails now, not after the provider bills
    data = prepare_dataset(spec, workdir, base_dir=base_dir)
    run.result["data"] = data.report.summary()
    run.add_artifact(workdir / "data" / "report.json", "report", name="data-report.json")
    folder = workdir / PROVIDER_DIR
    try:
        train = write_jsonl(folder / "train.jsonl", to_openai_lines(data.train, provider.method))
        validation = (
            write_jsonl(folder / "validation.jsonl", to_openai_lines(data.validation, provider.method))
            if data.validation
            else None
        )
    except ValueError as exc:
        raise ProviderFailure(c.Reason.INVALID_DATA, str(exc)) from exc

    run.enter("train")
    key_ref = f"Secret {provider.api_key_secret_ref.name}, key {provider.api_key_secret_ref.key}"
    if not secret:
        raise ProviderFailure(
            c.Reason.PROVIDER_AUTH_FAILED,
            f"no API key: {c.ENV_PROVIDER_API_KEY} is empty; put the key in {key_ref} "
            "(provider.apiKeySecretRef)",
        )
    client = _client(provider, secret)

    def call(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            raise classify(exc, what=what, secret=secret, key_ref=key_ref) from None

    state_path = folder / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    job_id = state.get("job")
    if job_id is None:
        with _STOP.deferred():  # a job created but not recorded would be paid for twice
            job_id = _create_job(client, provider, call, state, state_path, train, validation)
    else:
        _say(f"following provider job {job_id} created by an earlier attempt")
    job, seen = _follow(client, job_id, provider, call, metrics, secret)
    if job.status != "succeeded":
        raise job_failure(job, secret)
    _record_model(run, client, job, seen, call)

    run.enter("evaluate")
    from kubetune_trainer.provider.openai_evaluation import evaluate_provider_model

    evaluation = evaluate_provider_model(
        spec, client, call, job.fine_tuned_model, data.test, workdir
    )
    run.result["evaluation"] = evaluation.summary
    run.result["gate"] = evaluation.gate
    run.add_artifact(evaluation.predictions_path, "predictions")
    run.add_artifact(evaluation.summary_path, "report", name="eval-summary.json")
    _say(f"evaluation of {job.fine_tuned_model}: gate "
         f"{'passed' if evaluation.gate.passed else 'FAILED'}: {evaluation.gate.reason}")


def _create_job(
    client: Any,
    provider: ProviderSpec,
    call: Callable[[str, Callable[[], Any]], Any],
    state: dict[str, Any],
    state_path: Path,
    train: Path,
    validation: Path | None,
) -> str:
    """Upload the splits and create the provider's job, recording each id as it is known."""
    if "trainingFile" not in state:
        state["trainingFile"] = call("uploading the training file", lambda: _upload(client, train)).id
    if validation is not None and "validationFile" not in state:
        state["validationFile"] = call(
            "uploading the validation file", lambda: _upload(client, validation)
        ).id
    _save(state_path, state)
    job = call("creating the fine-tuning job", lambda: client.fine_tuning.jobs.create(
        **job_request(provider, state["trainingFile"], state.get("validationFile"))
    ))
    state["job"] = job.id
    _save(state_path, state)
    _say(f"provider job {job.id} created: {provider.model} on {state['trainingFile']}")
    return str(job.id)


def cancel_provider_job(
    workdir: Path,
    endpoint: str,
    *,
    organization: str | None = None,
    project: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Cancel the provider job recorded in `workdir`/provider/state.json (the FineTuneJob was
    deleted). 0 when it is cancelled, already ended, or was never created; 1 when the provider
    could not be asked (the Job retries)."""
    env = os.environ if environ is None else environ
    secret = env.get(c.ENV_PROVIDER_API_KEY) or None
    state_path = Path(workdir) / PROVIDER_DIR / STATE_FILE
    job_id = json.loads(state_path.read_text()).get("job") if state_path.exists() else None
    if job_id is None:
        _say(f"no provider job recorded in {state_path}: nothing to cancel")
        return 0
    if not secret:
        _say(f"cannot cancel provider job {job_id}: {c.ENV_PROVIDER_API_KEY} is empty", err=True)
        return 1
    import openai

    client = openai.OpenAI(api_key=secret, base_url=endpoint.rstrip("/"),
                           organization=organization, project=project)
    try:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            _say(f"provider job {job_id} already ended ({job.status}): nothing to cancel")
            return 0
        client.fine_tuning.jobs.cancel(job_id)
    except Exception as exc:
        failure = classify(exc, what=f"cancelling provider job {job_id}", secret=secret,
                           key_ref="the provider Secret")
        _say(f"{failure.reason}: {failure.message}", err=True)
        return 1
    _say(f"cancelled provider job {job_id}: its FineTuneJob was deleted")
    return 0


def job_request(
    provider: ProviderSpec, training_file: str, validation_file: str | None
) -> dict[str, Any]:
    """Keyword arguments of `fine_tuning.jobs.create` for `provider` (unset = "auto")."""
    hp = provider.hyperparameters
    hyper: dict[str, Any] = {
        "n_epochs": hp.n_epochs if hp.n_epochs is not None else "auto",
        "batch_size": hp.batch_size if hp.batch_size is not None else "auto",
        "learning_rate_multiplier": (
            hp.learning_rate_multiplier if hp.learning_rate_multiplier is not None else "auto"
        ),
    }
    if provider.method == "dpo":
        hyper["beta"] = hp.beta if hp.beta is not None else "auto"
    request: dict[str, Any] = {
        "model": provider.model,
        "training_file": training_file,
        "method": {"type": provider.method, provider.method: {"hyperparameters": hyper}},
    }
    if validation_file is not None:
        request["validation_file"] = validation_file
    if provider.suffix is not None:
        request["suffix"] = provider.suffix
    if provider.seed is not None:
        request["seed"] = provider.seed
    return request


def _follow(
    client: Any,
    job_id: str,
    provider: ProviderSpec,
    call: Callable[[str, Callable[[], Any]], Any],
    metrics: Any,
    secret: str | None,
) -> tuple[Any, _Follow]:
    """Poll the job until it ends, logging events and exporting progress; pause it on SIGTERM.
    Returns the ended job and what its metrics events said."""
    seen = _Follow()
    job = None
    # Made now, used only to pause: a signal may cut a request of `client` mid-way and leave its
    # connection pool unusable, and making a client on the way out costs time the pod's grace
    # period may not give.
    pauser = _client(provider, secret or "", timeout=10, max_retries=1)
    try:
        while True:
            job = call("reading the fine-tuning job", lambda: client.fine_tuning.jobs.retrieve(job_id))
            if job.status == "paused":
                _say(f"provider job {job_id} is paused; resuming it")
                job = call("resuming the fine-tuning job",
                           lambda: client.fine_tuning.jobs.resume(job_id))
            events = call(
                "reading the job's events",
                lambda: client.fine_tuning.jobs.list_events(job_id, limit=100),
            )
            _take_events(list(events.data), seen, secret)
            _report(job, seen, metrics)
            if job.status in TERMINAL:
                return job, seen
            time.sleep(provider.poll_interval_seconds)
    except Stopped:
        if job is None or job.status not in TERMINAL:  # None: stopped during the first read
            try:
                pauser.fine_tuning.jobs.pause(job_id)
                _say(f"paused provider job {job_id}: the pod is stopping; the next pod resumes it")
            except Exception as exc:  # best effort: the pod is going away
                _say(f"could not pause provider job {job_id}: {redact(str(exc), secret)}", err=True)
        raise


def _take_events(events: list[Any], seen: _Follow, secret: str | None) -> None:
    """Log events not seen yet (oldest first); metrics events update the losses and steps."""
    for event in sorted(events, key=lambda e: (e.created_at, e.id)):
        if event.id in seen.seen_events:
            continue
        seen.seen_events.add(event.id)
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == "metrics" and data:
            seen.step = int(data.get("step") or seen.step)
            if data.get("total_steps"):
                seen.total_steps = int(data["total_steps"])
            seen.train_loss = _float(data.get("train_loss"), seen.train_loss)
            seen.valid_loss = _float(data.get("valid_loss"), seen.valid_loss)
        else:
            _say(f"provider event [{event.level}]: {redact(str(event.message), secret)}")


def _float(value: Any, default: float | None) -> float | None:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _report(job: Any, seen: _Follow, metrics: Any) -> None:
    from kubetune_trainer.progress import format_progress_line

    eta = None
    if job.estimated_finish:
        eta = max(0, int(job.estimated_finish - time.time()))
    epochs = getattr(job.hyperparameters, "n_epochs", None) if job.hyperparameters else None
    epoch = None
    if seen.total_steps and isinstance(epochs, int):
        epoch = round(epochs * seen.step / seen.total_steps, 2)
    step = seen.total_steps if job.status == "succeeded" and seen.total_steps else seen.step
    progress = Progress(
        step=step,
        total_steps=seen.total_steps,
        percent=min(100, int(100 * step / seen.total_steps)) if seen.total_steps else 0,
        epoch=epoch,
        loss=seen.train_loss,
        eval_loss=seen.valid_loss,
        eta_seconds=eta,
    )
    if metrics is not None:
        metrics.update(progress)
    _say(f"provider job {job.id}: {job.status}; {format_progress_line(progress)}")


def _record_model(
    run: Any, client: Any, job: Any, seen: _Follow, call: Callable[[str, Callable[[], Any]], Any]
) -> None:
    """The model id as the job's artifact, the checkpoints beside it, the summary in result."""
    checkpoints = call(
        "listing the job's checkpoints",
        lambda: client.fine_tuning.jobs.checkpoints.list(job.id, limit=100),
    )
    record = {
        "provider": "openai",
        "model": job.fine_tuned_model,
        "baseModel": job.model,
        "job": job.id,
        "trainedTokens": job.trained_tokens,
        "resultFiles": list(job.result_files or []),
        "checkpoints": [
            {"model": ck.fine_tuned_model_checkpoint, "step": ck.step_number,
             "metrics": ck.metrics.model_dump(exclude_none=True) if ck.metrics else {}}
            for ck in checkpoints.data
        ],
    }
    path = run.workdir / PROVIDER_DIR / MODEL_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    run.add_artifact(path, "provider-model", name=job.fine_tuned_model)
    seconds = (job.finished_at - job.created_at) if job.finished_at else None
    # Checkpoints first (the provider's full validation loss); the metrics events otherwise.
    steps = max([ck.step_number for ck in checkpoints.data] or [seen.total_steps or seen.step])
    losses = [ck.metrics.full_valid_loss or ck.metrics.valid_loss
              for ck in checkpoints.data if ck.metrics is not None]
    valid = [loss for loss in losses if loss is not None]
    last_train = next(
        (ck.metrics.train_loss for ck in sorted(checkpoints.data, key=lambda k: -k.step_number)
         if ck.metrics is not None and ck.metrics.train_loss is not None), None)
    run.result["training"] = TrainingSummary(
        steps=steps,
        best_eval_loss=min(valid) if valid else seen.valid_loss,
        final_train_loss=last_train if last_train is not None else seen.train_loss,
        seconds=float(seconds) if seconds is not None else None,
        trained_tokens=job.trained_tokens,
    )
    _say(f"provider job {job.id} succeeded: model {job.fine_tuned_model}, "
         f"{job.trained_tokens} trained tokens")


def _client(
    provider: ProviderSpec, secret: str, *, timeout: float | None = None,
    max_retries: int | None = None,
) -> Any:
    from openai import OpenAI

    return OpenAI(
        api_key=secret,
        base_url=str(provider.endpoint).rstrip("/"),
        organization=provider.organization,
        project=provider.project,
        max_retries=provider.max_retries if max_retries is None else max_retries,
        timeout=provider.timeout_seconds if timeout is None else timeout,
    )


def _upload(client: Any, path: Path) -> Any:
    with path.open("rb") as handle:
        return client.files.create(file=(path.name, handle), purpose="fine-tune")


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _say(line: str, *, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


class _Stopper:
    """SIGTERM raises Stopped in the main thread, except inside `deferred()`, which raises it
    when the block ends (uploads and the job's creation are not cut between the request and
    the record of its id)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = True
            return
        raise Stopped()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            self.pending = False
            raise Stopped()


_STOP = _Stopper()


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises Stopped (see _Stopper) while the block runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _STOP.handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
