"""What GitOps tools read from kubetune's statuses, judged by their own code: kstatus.Compute
(sigs.k8s.io/cli-utils, as Flux and kpt run it) and the Argo CD health checks in deploy/argocd
(run by gopher-lua, Argo CD's interpreter, the way Argo CD calls them), through kubetune-check.

The statuses come from the operator's own status functions (compute_status for FineTuneJobs,
decide for ModelDeployments) for every phase; tests/integration/test_gitops.py repeats the
FineTuneJob phases with statuses the running operator wrote to a real apiserver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJobStatus, TrainerResult
from kubetune.api import constants as c
from kubetune.api.modeldeployment import ModelDeploymentStatus
from kubetune.api.trainer_result import GateResult
from kubetune.operator.reconcile.serving import MdReason, Resolved, decide
from kubetune.operator.reconcile.status import Observed, compute_status
from tests.kubetune_check import (
    ARGOCD_DIR,
    FINETUNEJOB_HEALTH,
    MODELDEPLOYMENT_HEALTH,
    CheckRefused,
    argo_health,
    kstatus,
)
from tests.unit.test_finetunejob_status import SPEC, job, pod
from tests.unit.test_modeldeployment_decide import BOTH, SHA2, T1, agent, resolved, spec

NOW = "2026-12-01T10:00:00Z"
GENERATION = 2


def _result(gate_passed: bool) -> str:
    return TrainerResult(
        phase="Succeeded",
        gate=GateResult(passed=gate_passed, reason="exact match 0.8 >= 0.6" if gate_passed else "exact match 0.2 < 0.6"),
    ).to_termination_message()


def _done(gate_passed: bool) -> dict[str, Any]:
    return pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": _result(gate_passed)})


# phase name -> what the operator observed
FTJ_OBSERVED: dict[str, Observed] = {
    "pending-unschedulable": Observed(GENERATION, SPEC, job=job(), pods=[pod("Pending", unschedulable="0/6 nodes are available")]),
    "pending-starting": Observed(GENERATION, SPEC, job=job(), pods=[pod("Pending")]),
    "running": Observed(GENERATION, SPEC, job=job(), pods=[pod("Running")]),
    "succeeded": Observed(GENERATION, SPEC, job=job(("Complete", "")), pods=[_done(True)]),
    "succeeded-gate-failed": Observed(GENERATION, SPEC, job=job(("Complete", "")), pods=[_done(False)]),
    "failed-oom": Observed(GENERATION, SPEC, job=job(("Failed", "BackoffLimitExceeded"), failed=1),
                           pods=[pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})]),
    "failed-invalid-spec": Observed(GENERATION, None, spec_error="quantization.computeDtype float16 needs a GPU"),
    "suspended": Observed(GENERATION, SPEC, job=job(suspend=True)),
}

# phase name -> (status.phase, kstatus, Argo CD health)
FTJ_EXPECTED = {
    "pending-unschedulable": ("Pending", "InProgress", "Progressing"),
    "pending-starting": ("Pending", "InProgress", "Progressing"),
    "running": ("Running", "InProgress", "Progressing"),
    "succeeded": ("Succeeded", "Current", "Healthy"),
    "succeeded-gate-failed": ("Succeeded", "Current", "Degraded"),
    "failed-oom": ("Failed", "Failed", "Degraded"),
    "failed-invalid-spec": ("Failed", "Failed", "Degraded"),
    "suspended": ("Suspended", "InProgress", "Suspended"),
}


def _object(kind: str, status: Any, generation: int = GENERATION) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": kind,
        "metadata": {"name": "demo", "namespace": "ml", "generation": generation},
        "spec": {},
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _ftj(name: str) -> dict[str, Any]:
    return _object(c.FINETUNEJOB_KIND, compute_status(FTJ_OBSERVED[name], FineTuneJobStatus(), NOW))


@pytest.mark.parametrize("name", sorted(FTJ_EXPECTED))
def test_finetunejob_phase_reads_as_expected_by_kstatus_and_argo_cd(name: str) -> None:
    obj = _ftj(name)
    phase, want_kstatus, want_health = FTJ_EXPECTED[name]
    assert obj["status"]["phase"] == phase
    assert kstatus(obj)["status"] == want_kstatus
    health = argo_health(FINETUNEJOB_HEALTH, obj)
    assert health["status"] == want_health
    assert health["message"]  # Argo CD shows it beside the status: never blank


def test_finetunejob_messages_carry_the_operators_reason() -> None:
    failed = _ftj("failed-oom")
    assert kstatus(failed)["message"] == failed["status"]["message"]  # Stalled's message
    assert argo_health(FINETUNEJOB_HEALTH, failed)["message"].startswith("OOMKilled: ")
    assert "exact match 0.2 < 0.6" in argo_health(FINETUNEJOB_HEALTH, _ftj("succeeded-gate-failed"))["message"]


@pytest.mark.parametrize("name", ["succeeded", "failed-oom", "running"])
def test_finetunejob_of_an_unobserved_generation_is_in_progress(name: str) -> None:
    obj = _ftj(name)
    obj["metadata"]["generation"] = GENERATION + 1  # the spec changed; the operator has not seen it
    assert kstatus(obj)["status"] == "InProgress"
    health = argo_health(FINETUNEJOB_HEALTH, obj)
    assert health == {"status": "Progressing",
                      "message": f"Waiting for the kubetune operator to observe generation {GENERATION + 1}"}


def test_a_new_object_without_status_is_progressing_for_argo_cd() -> None:
    for script, kind in ((FINETUNEJOB_HEALTH, c.FINETUNEJOB_KIND), (MODELDEPLOYMENT_HEALTH, c.MODELDEPLOYMENT_KIND)):
        obj = {"apiVersion": c.API_VERSION, "kind": kind, "metadata": {"name": "x", "generation": 1}, "spec": {}}
        assert argo_health(script, obj)["status"] == "Progressing"


def _md_status(pods: list[Any], current: ModelDeploymentStatus | None = None, active: str = "v1",
               unhealthy: str | None = None, versions: list[Resolved] = BOTH) -> ModelDeploymentStatus:
    return decide(spec(active=active or None), GENERATION, versions, pods, current or ModelDeploymentStatus(), T1,
                  unhealthy=unhealthy).status


def _unservable(reason: str, *names: str) -> list[Resolved]:
    return [Resolved(n, None, None, reason, f"version {n}: FineTuneJob '{n}': {reason}") for n in names or ("v1",)] + (
        [] if names else [resolved("v2", SHA2)])


def _md_statuses() -> dict[str, ModelDeploymentStatus]:
    both_ready = [agent("p0", {"v1": "", "v2": ""}, served="v1"), agent("p1", {"v1": "", "v2": ""}, served="v1")]
    serving_v1 = _md_status(both_ready)  # v1 promoted; the pods' agents serve it already
    serving_v1 = _md_status(both_ready, serving_v1)
    on_v2 = [agent("p0", {"v1": "", "v2": ""}, served="v2"), agent("p1", {"v1": "", "v2": ""}, served="v2")]
    serving_v2 = _md_status(on_v2, _md_status(on_v2, serving_v1, active="v2"), active="v2")
    return {
        "pending": _md_status([agent("p0", {}), agent("p1", {})]),
        "pending-desired-failed": _md_status([agent("p0", {}, failed={"v1": "checksum"}), agent("p1", {})]),
        "pending-job-failed": _md_status([agent("p0", {}), agent("p1", {})], versions=_unservable(MdReason.JOB_FAILED)),
        "pending-gate-failed": _md_status([agent("p0", {}), agent("p1", {})], versions=_unservable(MdReason.GATE_FAILED)),
        "pending-every-job-failed": _md_status([agent("p0", {}), agent("p1", {})], active="",
                                               versions=_unservable(MdReason.JOB_FAILED, "v1", "v2")),
        "pending-one-job-failed": _md_status([agent("p0", {}), agent("p1", {})], active="", versions=[
            *_unservable(MdReason.JOB_FAILED, "v1"), *_unservable(MdReason.JOB_NOT_FINISHED, "v2")]),
        "pending-job-running": _md_status([agent("p0", {}), agent("p1", {})],
                                          versions=_unservable(MdReason.JOB_NOT_FINISHED)),
        "progressing": _md_status([agent("p0", {"v1": ""}), agent("p1", {"v1": ""})]),
        "ready": serving_v1,
        "degraded-desired-failed": _md_status(
            [agent("p0", {"v1": ""}, served="v1", failed={"v2": "checksum"}),
             agent("p1", {"v1": ""}, served="v1", failed={"v2": "checksum"})], serving_v1, active="v2"),
        "degraded-rolled-back": _md_status(on_v2, serving_v2, active="v2", unhealthy="error rate 0.4 > 0.05"),
    }


# name -> (status.phase, kstatus, Argo CD health)
MD_EXPECTED = {
    "pending": ("Pending", "InProgress", "Progressing"),
    "pending-desired-failed": ("Pending", "Failed", "Degraded"),
    "pending-job-failed": ("Pending", "Failed", "Degraded"),
    "pending-gate-failed": ("Pending", "Failed", "Degraded"),
    "pending-job-running": ("Pending", "InProgress", "Progressing"),
    "pending-every-job-failed": ("Pending", "Failed", "Degraded"),
    "pending-one-job-failed": ("Pending", "InProgress", "Progressing"),
    "progressing": ("Progressing", "InProgress", "Progressing"),
    "ready": ("Ready", "Current", "Healthy"),
    "degraded-desired-failed": ("Degraded", "Failed", "Degraded"),
    "degraded-rolled-back": ("Degraded", "Failed", "Degraded"),
}


@pytest.fixture(scope="module")
def md_statuses() -> dict[str, ModelDeploymentStatus]:
    return _md_statuses()


@pytest.mark.parametrize("name", sorted(MD_EXPECTED))
def test_modeldeployment_phase_reads_as_expected_by_kstatus_and_argo_cd(
    name: str, md_statuses: dict[str, ModelDeploymentStatus]
) -> None:
    obj = _object(c.MODELDEPLOYMENT_KIND, md_statuses[name])
    phase, want_kstatus, want_health = MD_EXPECTED[name]
    assert obj["status"]["phase"] == phase
    assert kstatus(obj)["status"] == want_kstatus
    health = argo_health(MODELDEPLOYMENT_HEALTH, obj)
    assert health["status"] == want_health and health["message"]


def test_modeldeployment_of_an_unobserved_generation_is_in_progress(md_statuses: dict[str, ModelDeploymentStatus]) -> None:
    obj = _object(c.MODELDEPLOYMENT_KIND, md_statuses["ready"], generation=GENERATION + 1)
    assert kstatus(obj)["status"] == "InProgress"
    assert argo_health(MODELDEPLOYMENT_HEALTH, obj)["status"] == "Progressing"


def test_argocd_cm_snippet_holds_the_scripts_verbatim() -> None:
    cm = yaml.safe_load((ARGOCD_DIR / "argocd-cm-health.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"] == {
        f"resource.customizations.health.{c.GROUP}_{c.FINETUNEJOB_KIND}": FINETUNEJOB_HEALTH.read_text(),
        f"resource.customizations.health.{c.GROUP}_{c.MODELDEPLOYMENT_KIND}": MODELDEPLOYMENT_HEALTH.read_text(),
    }


def test_the_checker_treats_a_bad_script_answer_as_argo_cd_does(tmp_path: Path) -> None:
    obj = _ftj("running")
    bogus = tmp_path / "bogus.lua"
    bogus.write_text('return {status = "Fine", message = "x"}')
    assert argo_health(bogus, obj) == {"status": "Unknown", "message": "Lua returned an invalid health status"}
    not_table = tmp_path / "string.lua"
    not_table.write_text('return "Healthy"')
    with pytest.raises(CheckRefused, match="expect table output from Lua script, not string"):
        argo_health(not_table, obj)
    # Argo CD opens only the package, base and table libraries (plus a reduced os): io is absent.
    io = tmp_path / "io.lua"
    io.write_text('io.write("x") return {status = "Healthy"}')
    with pytest.raises(CheckRefused, match="io"):
        argo_health(io, obj)
