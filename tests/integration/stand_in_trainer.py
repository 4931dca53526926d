"""Stand-in for `python -m kubetune_trainer` in operator tests on the local pod runner.

It honours the trainer's contract without training anything: reads the mounted spec JSON,
validates it with the same API model, writes one artifact into the workdir with its real
sha256, writes result.json and the termination message, and exits 0. The real trainer runs
through the same path in tests/e2e.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from kubetune.api import Artifact, FineTuneJobSpec, TrainerResult
from kubetune.api import constants as c
from kubetune.api.trainer_result import DataReportSummary, GateResult


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    spec = FineTuneJobSpec.model_validate_json(Path(args.spec).read_text())
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    payload = f"stand-in model for {spec.base_model.uri}\n".encode()
    (workdir / "model-f16.gguf").write_bytes(payload)
    base_uri = os.environ[c.ENV_ARTIFACTS_URI]
    result = TrainerResult(
        phase="Succeeded",
        data=DataReportSummary(format="chat", total=10, train=8, validation=1, test=1),
        gate=GateResult(passed=True, reason="no gate thresholds configured"),
        artifacts=[
            Artifact(
                name="model-f16.gguf",
                kind="gguf",
                uri=f"{base_uri}/model-f16.gguf",
                size_bytes=len(payload),
                sha256=hashlib.sha256(payload).hexdigest(),
                quantization="f16",
            )
        ],
        manifest_uri=f"{base_uri}/manifest.json",
    )
    (workdir / "result.json").write_text(result.model_dump_json(by_alias=True, exclude_none=True))
    Path(os.environ.get(c.ENV_TERMINATION_LOG, c.TERMINATION_MESSAGE_PATH)).write_text(
        result.to_termination_message()
    )
    print(f"stand-in trainer wrote {workdir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
