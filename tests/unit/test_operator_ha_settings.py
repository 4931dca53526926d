"""Leader-election settings and the REST request verbs counted in rest_client_requests_total."""

from __future__ import annotations

import pytest

from kubetune.operator.kube import request_verb
from kubetune.operator.settings import Settings


def test_leader_election_is_on_in_a_pod_and_off_for_a_local_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("POD_NAMESPACE", "POD_NAME", "KUBETUNE_LEADER_ELECTION"):
        monkeypatch.delenv(var, raising=False)
    local = Settings.from_env()
    assert local.leader_election is False
    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")
    monkeypatch.setenv("POD_NAME", "kubetune-operator-7d9f-abcde")
    in_pod = Settings.from_env()
    assert in_pod.leader_election is True
    assert (in_pod.lease_name, in_pod.lease_namespace) == ("kubetune-operator", "kubetune-system")
    assert in_pod.identity == "kubetune-operator-7d9f-abcde"
    assert (in_pod.lease_duration, in_pod.lease_renew_deadline, in_pod.lease_retry_period) == (10, 7, 2)
    monkeypatch.setenv("KUBETUNE_LEADER_ELECTION", "false")
    assert Settings.from_env().leader_election is False


def test_leader_election_without_a_namespace_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv("KUBETUNE_LEADER_ELECTION", "true")
    with pytest.raises(ValueError, match="POD_NAMESPACE"):
        Settings.from_env()


def test_lease_timings_out_of_order_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    monkeypatch.setenv("KUBETUNE_LEASE_DURATION", "5")
    monkeypatch.setenv("KUBETUNE_LEASE_RENEW_DEADLINE", "7")
    with pytest.raises(ValueError, match="KUBETUNE_LEASE_RENEW_DEADLINE < KUBETUNE_LEASE_DURATION"):
        Settings.from_env()
    monkeypatch.setenv("KUBETUNE_LEASE_DURATION", "ten")
    with pytest.raises(ValueError, match="KUBETUNE_LEASE_DURATION must be a number of seconds"):
        Settings.from_env()


@pytest.mark.parametrize(("method", "url", "content_type", "verb"), [
    ("GET", "https://h/api/v1/namespaces/ns/pods", None, "list"),
    ("GET", "https://h/api/v1/namespaces/ns/pods/p1", None, "get"),
    ("GET", "https://h/api/v1/namespaces/ns/pods?watch=true&labelSelector=a", None, "watch"),
    ("GET", "https://h/apis/kubetune.dev/v1alpha1/finetunejobs?limit=1", None, "list"),
    ("GET", "https://h/apis/coordination.k8s.io/v1/namespaces/ns/leases/kubetune-operator", None, "get"),
    ("GET", "https://h/api/v1/namespaces/ns", None, "get"),
    ("POST", "https://h/apis/batch/v1/namespaces/ns/jobs", None, "create"),
    ("PUT", "https://h/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", None, "update"),
    ("PATCH", "https://h/api/v1/namespaces/ns/configmaps/c", "application/apply-patch+yaml", "apply"),
    ("PATCH", "https://h/apis/kubetune.dev/v1alpha1/namespaces/ns/finetunejobs/f/status",
     "application/merge-patch+json", "patch"),
    ("DELETE", "https://h/apis/policy/v1/namespaces/ns/poddisruptionbudgets/p", None, "delete"),
])
def test_request_verbs(method: str, url: str, content_type: str | None, verb: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    assert request_verb(method, url, headers) == verb


def test_the_operator_refuses_a_bad_probe_address_or_lease_setting_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("KUBETUNE_LEADER_ELECTION", raising=False)
    assert main(["operator", "--liveness", "0.0.0.0:8081"]) == 2
    assert "must look like http://0.0.0.0:8081/healthz" in capsys.readouterr().err
    monkeypatch.setenv("KUBETUNE_LEADER_ELECTION", "on")
    assert main(["operator"]) == 2
    assert "POD_NAMESPACE" in capsys.readouterr().err
