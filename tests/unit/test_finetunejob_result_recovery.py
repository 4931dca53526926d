"""Results never lost (#11): when the trainer Job was removed (ttlSecondsAfterFinished) before
the operator read its result, the result comes from result.json on the artifact volume when the
operator can read it, else the job fails as ResultLost saying where the result is; never
JobDeleted for a job that succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api.constants import Phase, Reason
from kubetune.api.trainer_contract import GateResult, TrainerResult
from kubetune.operator.reconcile.finetunejob import FineTuneJobReconciler
from kubetune.operator.settings import Settings

NOW = "2026-11-22T10:00:00Z"
SPEC = {"baseModel": {"uri": "pvc://m/x"}, "dataset": {"source": {"uri": "pvc://d/x"}}, "ttlSecondsAfterFinished": 0}
RUNNING = {"phase": "Running", "reason": "Training", "jobName": "bot-u1-train", "observedGeneration": 1,
           "startTime": "2026-11-22T09:00:00Z"}


class _Api:
    """The reconciler's KubeApi calls: the trainer Job is gone; writes are recorded."""

    core = None

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any], uid: str | None = None) -> str:
        self.patches.append(status)
        return str(len(self.patches))

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass


def _reconcile(settings: Settings, spec: dict[str, Any] | None = None) -> Any:
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "spec": spec or SPEC, "status": RUNNING,
            "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "7"}}
    return FineTuneJobReconciler(_Api(), settings, clock=lambda: NOW).reconcile(body, None, [])  # type: ignore[arg-type]


def _write_result(root: Path, result: TrainerResult, folder: str = "ml/bot") -> None:
    workdir = root / "ml" / "kubetune-artifacts" / folder
    workdir.mkdir(parents=True)
    (workdir / "result.json").write_text(result.model_dump_json(by_alias=True, exclude_none=True))


def test_the_result_is_recovered_from_result_json(tmp_path: Path) -> None:
    result = TrainerResult(phase="Succeeded", gate=GateResult(passed=True, reason="ok"), artifacts=[{
        "name": "model.gguf", "kind": "gguf", "uri": "pvc://kubetune-artifacts/ml/bot/model.gguf",
        "sizeBytes": 5, "sha256": "ab" * 32}])
    _write_result(tmp_path, result)
    status = _reconcile(Settings(claims_root=str(tmp_path)))
    assert (status.phase, status.reason) == (Phase.SUCCEEDED, Reason.SUCCEEDED)
    assert "read from result.json" in status.message
    assert status.artifacts[0].sha256 == "ab" * 32 and status.gate.passed


def test_a_failed_result_is_recovered_as_failed(tmp_path: Path) -> None:
    _write_result(tmp_path, TrainerResult(phase="Failed", reason=Reason.DATA_POLICY, message="3 records hold secrets."))
    status = _reconcile(Settings(claims_root=str(tmp_path)))
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.DATA_POLICY)
    assert status.message.startswith("3 records hold secrets.")


def test_an_unreadable_volume_is_result_lost_saying_where_the_result_is() -> None:
    status = _reconcile(Settings())
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.RESULT_LOST)
    assert "pvc://kubetune-artifacts/ml/bot/result.json" in status.message and "KUBETUNE_CLAIMS_ROOT" in status.message


def test_no_result_file_is_result_lost_not_job_deleted(tmp_path: Path) -> None:
    status = _reconcile(Settings(claims_root=str(tmp_path)))
    assert status.reason == Reason.RESULT_LOST and "does not exist" in status.message


def test_a_symlink_leading_out_of_the_claim_is_not_followed(tmp_path: Path) -> None:
    # A trainer may leave anything on its volume, e.g. its workdir as a link into another
    # namespace's claim: that namespace's result must not land in this job's status.
    other = tmp_path / "other-ns" / "kubetune-artifacts" / "x"
    other.mkdir(parents=True)
    (other / "result.json").write_text(TrainerResult(phase="Succeeded").model_dump_json())
    (tmp_path / "ml" / "kubetune-artifacts" / "ml").mkdir(parents=True)
    (tmp_path / "ml" / "kubetune-artifacts" / "ml" / "bot").symlink_to(other)
    status = _reconcile(Settings(claims_root=str(tmp_path)))
    assert status.reason == Reason.RESULT_LOST and "outside the claim" in status.message


def test_without_a_ttl_a_missing_job_is_still_job_deleted() -> None:
    spec = {k: v for k, v in SPEC.items() if k != "ttlSecondsAfterFinished"}
    status = _reconcile(Settings(), spec)
    assert (status.phase, status.reason) == (Phase.FAILED, Reason.JOB_DELETED)
