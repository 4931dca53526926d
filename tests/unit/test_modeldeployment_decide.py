"""What a ModelDeployment serves: version resolution from FineTuneJobs, promotion only when a
version is ready on every pod, rollback, abort on failure or deadline, and idempotence."""

from __future__ import annotations

from typing import Any

from kubetune.api import serving as s
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ModelVersion
from kubetune.operator.reconcile.serving import (
    Decision,
    MdReason,
    PodView,
    Resolved,
    decide,
    resolve_version,
)

SHA1, SHA2 = "1" * 64, "2" * 64
T0, T1, LATE = "2026-11-29T10:00:00Z", "2026-11-29T10:01:00Z", "2026-11-29T11:00:00Z"


def job(phase: str = "Succeeded", gate: bool | None = True, sha: str = SHA1, quant: str = "q4_k_m") -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "artifacts": [
            {"name": f"gguf-{quant}", "kind": "gguf", "quantization": quant, "sha256": sha,
             "uri": f"pvc://kubetune-artifacts/ml/j/{quant}.gguf", "sizeBytes": 10},
            {"name": f"modelfile-{quant}", "kind": "modelfile", "quantization": quant, "sha256": "f" * 64,
             "uri": f"pvc://kubetune-artifacts/ml/j/{quant}.Modelfile", "sizeBytes": 1},
        ],
    }
    if gate is not None:
        status["gate"] = {"passed": gate, "reason": "judge score 2.1 < 3.5" if not gate else ""}
    return {"status": status}


def resolved(name: str, sha: str) -> Resolved:
    return Resolved(name, s.ServingVersion(name=name, gguf_uri=f"https://x/{name}.gguf", sha256=sha), True)


def spec(active: str | None = "v1", replicas: int = 2) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "versions": [{"name": "v1", "fineTuneJob": "a"}, {"name": "v2", "fineTuneJob": "b"}],
        **({"activeVersion": active} if active else {}),
        "replicas": replicas,
    })


def agent(pod: str, ready: dict[str, str], served: str | None = None, failed: dict[str, str] | None = None) -> PodView:
    shas = {"v1": SHA1, "v2": SHA2}
    versions = [s.AgentVersionState(name=n, sha256=shas[n], phase="Ready", sha256_verified=True) for n in ready]
    for n, step in (failed or {}).items():
        versions.append(s.AgentVersionState(name=n, sha256=shas[n], phase="Failed", step=step,  # type: ignore[arg-type]
                                            permanent=True, message=f"{step} broke"))
    return PodView(pod, s.AgentStatus(pod=pod, ollama_reachable=True, served=served,
                                      served_digest=shas[served] if served else None,
                                      ready=served is not None, versions=versions))


BOTH = [resolved("v1", SHA1), resolved("v2", SHA2)]


def run(sp: ModelDeploymentSpec, pods: list[PodView], current: ModelDeploymentStatus | None = None,
        now: str = T1) -> Decision:
    return decide(sp, 1, BOTH, pods, current or ModelDeploymentStatus(), now)


def test_first_version_is_served_only_when_ready_on_every_pod() -> None:
    half = run(spec(), [agent("p0", {"v1": ""}), agent("p1", {})])
    assert half.served is None and half.status.phase == "Pending"
    assert half.status.versions[0].phase == "Progressing" and half.status.versions[0].pods_ready == 1
    full = run(spec(), [agent("p0", {"v1": ""}), agent("p1", {"v1": ""})])
    assert full.served == "v1"
    assert [(h.from_version, h.to_version, h.digest) for h in full.status.history] == [(None, "v1", SHA1)]
    assert any(reason == MdReason.SERVED for _, reason, _ in full.events)
    assert full.status.phase == "Progressing"  # the pods have not re-pointed their alias yet


def test_switch_waits_for_the_new_version_on_every_pod_and_keeps_both_loaded() -> None:
    serving = run(spec(), [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")])
    assert serving.status.phase == "Ready"
    pods = [agent("p0", {"v1": "", "v2": ""}, "v1"), agent("p1", {"v1": ""}, "v1")]
    pending = run(spec("v2"), pods, serving.status)
    assert pending.served == "v1" and pending.status.phase == "Progressing"
    assert pending.keep_loaded == ["v1", "v2"]
    switched = run(spec("v2"), [agent(p, {"v1": "", "v2": ""}, "v1") for p in ("p0", "p1")], pending.status)
    assert switched.served == "v2"
    assert switched.status.history[-1].reason == "ActiveVersionChanged"
    back = run(spec("v1"), [agent(p, {"v1": "", "v2": ""}, "v2") for p in ("p0", "p1")], switched.status)
    assert back.served == "v1" and back.status.history[-1].reason == "Rollback"
    assert any(reason == MdReason.ROLLED_BACK for _, reason, _ in back.events)


def test_a_decision_repeated_records_no_second_switch() -> None:
    pods = [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")]
    first = run(spec(), pods)
    again = run(spec(), pods, first.status)
    assert len(again.status.history) == 1 and again.events == []


def test_checksum_failure_on_one_pod_fails_the_version_and_keeps_the_last_good_one() -> None:
    serving = run(spec(), [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")])
    pods = [agent("p0", {"v1": "", "v2": ""}, "v1"), agent("p1", {"v1": ""}, "v1", failed={"v2": "checksum"})]
    d = run(spec("v2"), pods, serving.status)
    assert d.served == "v1"
    v2 = d.status.versions[1]
    assert v2.phase == "Failed" and "checksum" in v2.message and "p1" in v2.message
    assert d.status.phase == "Degraded" and "still serving v1" in d.status.message
    degraded = {c.type: c.status for c in d.status.conditions}
    assert degraded["Degraded"] == "True" and degraded["Ready"] == "False"
    assert ("Warning", MdReason.FAILED) in {(t, r) for t, r, _ in d.events}


def test_a_version_not_ready_within_the_deadline_is_given_up() -> None:
    serving = run(spec(), [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")])
    slow = [agent("p0", {"v1": ""}, "v1"), agent("p1", {"v1": ""}, "v1")]
    started = run(spec("v2"), slow, serving.status, now=T1)
    assert started.status.versions[1].phase == "Progressing"
    late = run(spec("v2"), slow, started.status, now=LATE)
    assert late.status.versions[1].phase == "Failed"
    assert late.status.versions[1].reason == MdReason.DEADLINE
    assert late.served == "v1" and late.status.phase == "Degraded"


def test_without_active_version_the_newest_gated_version_is_promoted() -> None:
    sp = spec(active=None)
    gate_failed = [resolve_version(sp.versions[0], job(sha=SHA1)),
                   resolve_version(sp.versions[1], job(gate=False, sha=SHA2))]
    assert gate_failed[1].reason == MdReason.GATE_FAILED and "allowUngated" in gate_failed[1].message
    d = decide(sp, 1, gate_failed, [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")], ModelDeploymentStatus(), T1)
    assert d.status.desired_version == "v1" and d.served == "v1"


def test_resolution_names_the_missing_piece() -> None:
    v = ModelVersion(name="v1", fine_tune_job="a")
    assert resolve_version(v, None).reason == MdReason.JOB_NOT_FOUND
    assert resolve_version(v, job(phase="Running")).reason == MdReason.JOB_NOT_FINISHED
    assert resolve_version(v, job(phase="Failed")).reason == MdReason.JOB_FAILED
    missing = resolve_version(v, job(quant="q8_0"))
    assert missing.reason == MdReason.ARTIFACT_NOT_FOUND and "q8_0" in missing.message
    ungated = resolve_version(ModelVersion(name="v1", fine_tune_job="a", allow_ungated=True), job(gate=False))
    assert ungated.source is not None and ungated.gated is False
    ok = resolve_version(v, job())
    assert ok.source is not None and ok.source.sha256 == SHA1
    assert ok.source.modelfile_uri is not None and ok.source.modelfile_uri.endswith("q4_k_m.Modelfile")


def test_a_pending_new_version_leaves_the_served_one_in_place() -> None:
    serving = run(spec(), [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")])
    pending = [resolved("v1", SHA1), Resolved("v2", None, None, MdReason.JOB_NOT_FINISHED, "not yet")]
    d = decide(spec("v2"), 2, pending, [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")], serving.status, T1)
    assert d.served == "v1" and d.status.phase == "Progressing"
    assert d.status.versions[1].phase == "Pending" and d.status.versions[1].reason == MdReason.JOB_NOT_FINISHED


def test_unhealthy_traffic_rolls_back_to_the_last_healthy_version_until_the_spec_changes() -> None:
    both = [agent(p, {"v1": "", "v2": ""}, "v1") for p in ("p0", "p1")]
    on_v1 = run(spec("v1"), both)
    on_v2 = decide(spec("v2"), 2, BOTH, both, on_v1.status, T1)
    assert on_v2.served == "v2"
    why = "error rate 0.40 > maxErrorRate 0.05 over the last 300 s (20 of 50 requests failed)"
    rolled = decide(spec("v2"), 2, BOTH, both, on_v2.status, T1, unhealthy=why)
    assert rolled.served == "v1"
    last = rolled.status.history[-1]
    assert (last.from_version, last.to_version, last.reason, last.message) == ("v2", "v1", "AutomaticRollback", why)
    assert rolled.status.rolled_back is not None and rolled.status.rolled_back.from_version == "v2"
    assert rolled.status.phase == "Degraded" and rolled.status.desired_version == "v2"
    cond = {c.type: c.status for c in rolled.status.conditions}
    assert cond["RolledBack"] == "True" and cond["Degraded"] == "True"
    assert ("Warning", MdReason.ROLLED_BACK) in {(t, r) for t, r, _ in rolled.events}
    # Healthy again (the traffic moved to v1): it stays rolled back, no flapping.
    held = decide(spec("v2"), 2, BOTH, both, rolled.status, T1)
    assert held.served == "v1" and len(held.status.history) == len(rolled.status.history)
    # A spec change (generation 3) tries the desired version again.
    retried = decide(spec("v2"), 3, BOTH, both, held.status, T1)
    assert retried.served == "v2" and retried.status.rolled_back is None


def test_unhealthy_with_no_earlier_version_keeps_serving_and_says_so() -> None:
    pods = [agent(p, {"v1": ""}, "v1") for p in ("p0", "p1")]
    first = run(spec("v1"), pods)
    d = decide(spec("v1"), 1, BOTH, pods, first.status, T1, unhealthy="error rate 0.9 > 0.05")
    assert d.served == "v1" and d.status.rolled_back is None
    assert any(r == MdReason.NO_HEALTHY_VERSION for _, r, _ in d.events)


def test_a_first_rollout_serves_only_the_desired_version_even_if_another_is_ready_first() -> None:
    v2_first = [agent(p, {"v2": ""}) for p in ("p0", "p1")]
    d = run(spec("v1"), v2_first)
    assert d.served is None and d.status.history == []
    later = run(spec("v1"), [agent(p, {"v1": "", "v2": ""}) for p in ("p0", "p1")], d.status)
    assert later.served == "v1" and [h.to_version for h in later.status.history] == ["v1"]


def test_when_the_served_version_leaves_the_spec_a_ready_one_takes_over() -> None:
    both = [agent(p, {"v1": "", "v2": ""}, "v2") for p in ("p0", "p1")]
    on_v2 = run(spec("v2"), both)
    # v2 is gone from the spec; the new active version v3 is not ready yet: v1 bridges the gap.
    now_listed = [resolved("v1", SHA1), Resolved("v3", None, None, MdReason.JOB_NOT_FINISHED, "not yet")]
    sp = ModelDeploymentSpec.model_validate({
        "versions": [{"name": "v1", "fineTuneJob": "a"}, {"name": "v3", "fineTuneJob": "c"}],
        "activeVersion": "v3"})
    d = decide(sp, 2, now_listed, both, on_v2.status, T1)
    assert d.served == "v1" and d.status.history[-1].reason == "ServedVersionRemoved"


def test_a_job_version_carries_its_test_split_drift_reference() -> None:
    body = job()
    body["status"]["artifacts"].append(
        {"name": "drift-reference.json", "kind": "drift-reference", "sha256": "d" * 64,
         "uri": "pvc://kubetune-artifacts/ml/j/eval/drift-reference.json", "sizeBytes": 300})
    got = resolve_version(ModelVersion(name="v1", fine_tune_job="a"), body).source
    assert got is not None
    assert got.drift_reference_uri == "pvc://kubetune-artifacts/ml/j/eval/drift-reference.json"
    assert got.drift_reference_sha256 == "d" * 64
    plain = resolve_version(ModelVersion(name="v1", fine_tune_job="a"), job()).source
    assert plain is not None and plain.drift_reference_uri is None  # older jobs: first requests


def test_a_uri_version_takes_its_drift_reference_from_the_spec() -> None:
    v = ModelVersion.model_validate({"name": "v3", "uri": "https://x/m.gguf", "sha256": SHA1,
                                     "driftReferenceUri": "https://x/ref.json", "driftReferenceSha256": SHA2})
    got = resolve_version(v, None).source
    assert got is not None and got.drift_reference_uri == "https://x/ref.json"
    assert got.drift_reference_sha256 == SHA2


def test_a_prediction_log_larger_than_its_volume_is_refused_naming_both_fields() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"logging.maxSizeMib 4096 does not fit logging.volumeSize 2Gi"):
        ModelDeploymentSpec.model_validate({"versions": [{"name": "v1", "fineTuneJob": "a"}],
                                            "logging": {"maxSizeMib": 4096}})
    ok = ModelDeploymentSpec.model_validate({"versions": [{"name": "v1", "fineTuneJob": "a"}],
                                             "logging": {"maxSizeMib": 4096, "volumeSize": "8Gi"}})
    assert ok.logging.volume_size == "8Gi" and ok.logging.storage == "PersistentVolumeClaim"


def test_a_deployment_is_not_ready_while_its_pods_roll_to_a_new_template() -> None:
    from kubetune.operator.reconcile.serving import statefulset_rollout

    sts = {"metadata": {"generation": 3},
           "status": {"observedGeneration": 3, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}
    rollout = statefulset_rollout(sts, 2)
    assert rollout == "replacing pods with the current template: 1/2 updated"
    current = run(spec(), [agent("p0", {"v1": ""}, "v1"), agent("p1", {"v1": ""}, "v1")]).status
    both = [agent("p0", {"v1": ""}, "v1"), agent("p1", {"v1": ""}, "v1")]
    rolling = decide(spec(), 1, BOTH, both, current, T1, None, rollout).status
    assert rolling.phase == "Progressing" and rollout in (rolling.conditions[0].message or "")
    done = {"metadata": {"generation": 3},
            "status": {"observedGeneration": 3, "updatedReplicas": 2, "currentRevision": "b", "updateRevision": "b"}}
    assert statefulset_rollout(done, 2) is None
    assert decide(spec(), 1, BOTH, both, current, T1, None, None).status.phase == "Ready"
    assert statefulset_rollout({"metadata": {"generation": 4}, "status": {"observedGeneration": 3}}, 2) is not None
    assert statefulset_rollout(None, 2) == "creating the serving StatefulSet"
