"""Entry point of the trainer image.

    python -m kubetune_trainer run --spec /etc/kubetune/spec.json --workdir /artifacts/ns/job
    python -m kubetune_trainer cancel --workdir /artifacts/ns/job --endpoint URL   (backend openai)

Validates the spec with the same pydantic models the operator uses (a bad spec ends as a Failed
result with reason InvalidSpec and camelCase field paths), runs the pipeline, writes the
result's termination message (≤ 4 KiB) to the termination log, and exits 0 when the job
succeeded, 3 when it failed in a way no retry can fix (Reason.PERMANENT: the Job then
fails at once), 1 on other failures. Environment: KUBETUNE_ARTIFACTS_URI (the workdir's URI in the
artifact store), KUBETUNE_METRICS_PORT (progress metrics, default 9400, 0 = off),
KUBETUNE_TERMINATION_LOG (default /dev/termination-log when writable), HF_TOKEN,
KUBETUNE_NPROC_PER_NODE (training processes, one per GPU: this process then launches them
through torchrun and writes the termination message from rank 0's result;
`kubetune_trainer.distributed`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_contract import RESULT_FILE_NAME, TrainerResult, exit_code_for


def format_validation_error(exc: ValidationError) -> str:
    """`field.path: message` per error, with the camelCase paths a user wrote."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}" if path else msg)
    return "; ".join(lines)


def load_spec(path: Path) -> FineTuneJobSpec:
    """The spec in `path`: a bare FineTuneJob spec, or a whole FineTuneJob object."""
    data: Any = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("kind") == c.FINETUNEJOB_KIND and "spec" in data:
        data = data["spec"]
    return FineTuneJobSpec.model_validate(data)


def invalid_spec_result(message: str) -> TrainerResult:
    return TrainerResult(
        phase="Failed", reason=c.Reason.INVALID_SPEC, message=message, stage="data"
    )


def default_termination_log() -> Path | None:
    """$KUBETUNE_TERMINATION_LOG, else /dev/termination-log where it can be written."""
    configured = os.environ.get(c.ENV_TERMINATION_LOG)
    if configured:
        return Path(configured)
    path = Path(c.TERMINATION_MESSAGE_PATH)
    if path.exists() and os.access(path, os.W_OK):
        return path
    if not path.exists() and os.access(path.parent, os.W_OK) and path.parent != Path("/dev"):
        return path
    return None


def write_termination_log(result: TrainerResult, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.write_text(result.to_termination_message())
    except OSError as exc:
        print(f"cannot write the termination log {path}: {exc}", file=sys.stderr)


def run(spec_path: Path, workdir: Path, termination_log: Path | None) -> TrainerResult:
    """Validate, run the pipeline, report; never raises for a failing job."""
    try:
        spec = load_spec(spec_path)
    except FileNotFoundError:
        result = invalid_spec_result(
            f"spec file {spec_path} not found: the operator mounts it at "
            f"{c.SPEC_MOUNT_DIR}/{c.SPEC_FILE_NAME}"
        )
    except json.JSONDecodeError as exc:
        result = invalid_spec_result(f"{spec_path} is not JSON: {exc}")
    except ValidationError as exc:
        result = invalid_spec_result(format_validation_error(exc))
    else:
        try:
            from kubetune_trainer.pipeline import run_pipeline
            from kubetune_trainer.progress import ProgressMetrics, metrics_port_from_env

            metrics = ProgressMetrics.create(metrics_port_from_env())
        except Exception as exc:  # a broken image or environment: still leave a result
            traceback.print_exc()
            result = TrainerResult(
                phase="Failed",
                reason=c.Reason.TRAINER_FAILED,
                message=f"the trainer could not start: {type(exc).__name__}: {exc}",
                stage="data",
            )
            print(result.message, file=sys.stderr)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "result.json").write_text(json.dumps(result.to_wire(), indent=2) + "\n")
            write_termination_log(result, termination_log)
            return result
        result = run_pipeline(
            spec,
            workdir,
            artifacts_uri=os.environ.get(c.ENV_ARTIFACTS_URI) or None,
            metrics=metrics,
        )
        write_termination_log(result, termination_log)
        return result
    # An invalid spec never reached the pipeline: record its result here.
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "result.json").write_text(json.dumps(result.to_wire(), indent=2) + "\n")
    print(f"invalid spec: {result.message}", file=sys.stderr)
    write_termination_log(result, termination_log)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune_trainer", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="run the pipeline for a FineTuneJob spec")
    run_cmd.add_argument(
        "--spec", type=Path, required=True, help="FineTuneJob spec JSON (as the operator mounts it)"
    )
    run_cmd.add_argument(
        "--workdir", type=Path, required=True, help="folder for checkpoints and artifacts"
    )
    run_cmd.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        help=f"where the ≤4 KiB result goes (default ${c.ENV_TERMINATION_LOG} or {c.TERMINATION_MESSAGE_PATH})",
    )
    cancel_cmd = sub.add_parser(
        "cancel",
        help="backend openai: cancel the provider job recorded in WORKDIR (its FineTuneJob was deleted)",
    )
    cancel_cmd.add_argument("--workdir", type=Path, required=True, help="the job's workdir")
    cancel_cmd.add_argument("--endpoint", required=True, help="the provider's base URL")
    cancel_cmd.add_argument("--organization", default=None)
    cancel_cmd.add_argument("--project", default=None)
    args = parser.parse_args(argv)
    if args.command == "cancel":
        from kubetune_trainer.provider.openai_backend import cancel_provider_job

        return cancel_provider_job(
            args.workdir, args.endpoint, organization=args.organization, project=args.project
        )
    from kubetune_trainer import distributed

    if distributed.in_worker():  # one of several training processes (kubetune_trainer.distributed)
        return run_worker(args.spec, args.workdir)
    termination_log = args.termination_log or default_termination_log()
    try:
        nproc = distributed.requested_processes()
    except distributed.ProcessCountError as exc:
        result = invalid_spec_result(str(exc))
        write_termination_log(result, termination_log)
        print(f"result: {result.phase} {result.reason} {result.message}", flush=True)
        return exit_code(result)
    if nproc > 1 and _readable_spec(args.spec):
        result = launch(nproc, args.workdir, distributed.worker_args(argv), termination_log)
    else:
        result = run(args.spec, args.workdir, termination_log)
    print(f"result: {result.phase} {result.reason} {result.message}".rstrip(), flush=True)
    return exit_code(result)


def _readable_spec(path: Path) -> bool:
    """Whether workers may start: an unreadable spec is reported by `run` in this process."""
    try:
        load_spec(path)
    except (OSError, ValueError):  # JSONDecodeError and ValidationError are ValueErrors
        return False
    return True


def launch(
    nproc: int, workdir: Path, trainer_args: list[str], termination_log: Path | None
) -> TrainerResult:
    """Run the pipeline in `nproc` torchrun workers; rank 0 writes `result.json`, this process
    reads it and writes the one termination message (a result it makes itself when the workers
    ended without one)."""
    from kubetune_trainer import distributed

    workdir.mkdir(parents=True, exist_ok=True)
    distributed.remove_stale_result(workdir, RESULT_FILE_NAME)
    failure = distributed.gpu_shortage(nproc, distributed.visible_gpus())
    if failure is None:
        failure = distributed.launch_workers(nproc, trainer_args)
    path = workdir / RESULT_FILE_NAME
    if path.is_file():
        result = TrainerResult.model_validate(json.loads(path.read_text()))
    else:
        result = TrainerResult(
            phase="Failed",
            reason=c.Reason.TRAINER_FAILED,
            message=failure or "the training processes ended without writing a result",
            stage="train",
        )
        path.write_text(json.dumps(result.to_wire(), indent=2) + "\n")
    write_termination_log(result, termination_log)
    return result


def run_worker(spec_path: Path, workdir: Path) -> int:
    """One torchrun worker: rank 0 runs the pipeline and exits with the result's code; the other
    ranks train beside it and exit 0 (1 on an error, which makes torchrun stop all of them)."""
    from kubetune_trainer import distributed
    from kubetune_trainer.models import training_device

    spec = load_spec(spec_path)  # the launcher's workers start only for a spec it could read
    distributed.init_worker(training_device())
    try:
        if distributed.is_main_process():
            from kubetune_trainer.pipeline import run_pipeline
            from kubetune_trainer.progress import ProgressMetrics, metrics_port_from_env

            result = run_pipeline(
                spec,
                workdir,
                artifacts_uri=os.environ.get(c.ENV_ARTIFACTS_URI) or None,
                metrics=ProgressMetrics.create(metrics_port_from_env()),
            )
            return exit_code(result)
        from kubetune_trainer.pipeline import follow_pipeline

        follow_pipeline(spec, workdir)
        return 0
    finally:
        distributed.finish_worker()


def exit_code(result: TrainerResult) -> int:
    """The exit code the contract gives `result` (kubetune.api.trainer_contract.exit_code_for)."""
    return exit_code_for(result)


if __name__ == "__main__":
    sys.exit(main())
