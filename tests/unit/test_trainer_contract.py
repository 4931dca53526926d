"""The trainer <-> operator contract lives in one module, kubetune.api.trainer_contract, and the
operator imports nothing from kubetune_trainer (#11)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import trainer_contract as contract
from kubetune.api.constants import Reason
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.operator.builders.training_job import build_training_job
from kubetune.operator.settings import Settings
from kubetune_trainer.progress import ProgressMetrics

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "kubetune" / "operator"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_operator_module_imports_the_trainer_package() -> None:
    offenders = {str(p.relative_to(OPERATOR)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "kubetune_trainer")
                 for p in OPERATOR.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_starting_the_operator_loads_no_trainer_module() -> None:
    code = ("import sys, kubetune.operator.handlers, kubetune.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubetune_trainer'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("phase", "reason", "code"), [
    ("Succeeded", "", contract.EXIT_SUCCEEDED),
    ("Failed", Reason.JUDGE_UNREACHABLE, contract.EXIT_RETRYABLE),
    ("Failed", Reason.DATA_POLICY, contract.PERMANENT_FAILURE_EXIT_CODE),
])
def test_exit_codes(phase: str, reason: str, code: int) -> None:
    assert contract.exit_code_for(contract.TrainerResult(phase=phase, reason=reason)) == code  # type: ignore[arg-type]


def test_the_job_fails_at_once_on_the_contracts_permanent_exit_code() -> None:
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "pvc://m/x"}, "dataset": {"source": {"uri": "pvc://d/x"}}})
    job = build_training_job("x", "ns", spec, Settings(), uid="u-1")
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [contract.PERMANENT_FAILURE_EXIT_CODE]


def test_what_the_trainer_exposes_the_operator_reads_back() -> None:
    metrics = ProgressMetrics.create(port=None)
    metrics.update(contract.Progress(step=12, total_steps=40, loss=1.25, eta_seconds=35))
    parsed = contract.parse_progress_metrics(metrics.exposition())
    assert (parsed.step, parsed.total_steps, parsed.percent, parsed.loss, parsed.eta_seconds, parsed.eval_loss) == (
        12, 40, 30, 1.25, 35, None)
    assert set(contract.PROGRESS_GAUGES) <= {line.split()[2] for line in metrics.exposition().splitlines()
                                               if line.startswith("# TYPE")}
