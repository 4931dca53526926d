"""Entry point of the trainer image.

    python -m kubetune_trainer run --spec /etc/kubetune/spec.json --workdir /artifacts/ns/job
    python -m kubetune_trainer cancel --workdir /artifacts/ns/job --endpoint URL   (backend openai)

Validates the spec with the same pydantic models the operator uses (a bad spec ends as a Failed
result with reason InvalidSpec and camelCase field paths), runs the pipeline, writes the
result's termination message (≤ 4 KiB) to the termination log, and exits 0 when the job
succeeded, 3 when it failed in a way no retry can fix (Reason.PERMANENT: the Job then
fails at once), 1 on other failures. Environment: KUBETUNE_ARTIFACTS_URI (the workdir's URI in the
artifact store), KUBETUNE_METRICS_PORT (progress metrics, default 9400, 0 = off),
KUBETUNE_TERMINATION_LOG (default /dev/termination-log when writable), HF_TOKEN.
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
from kubetune.api.trainer_contract import TrainerResult, exit_code_for


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
    termination_log = args.termination_log or default_termination_log()
    result = run(args.spec, args.workdir, termination_log)
    print(f"result: {result.phase} {result.reason} {result.message}".rstrip(), flush=True)
    return exit_code(result)


def exit_code(result: TrainerResult) -> int:
    """The exit code the contract gives `result` (kubetune.api.trainer_contract.exit_code_for)."""
    return exit_code_for(result)


if __name__ == "__main__":
    sys.exit(main())
