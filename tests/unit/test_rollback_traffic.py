"""Automatic rollback's view of live traffic: the gateway's real metrics page parsed per
version, counter increases over the window summed across pods (resets included), and the
verdict only with enough requests."""

from __future__ import annotations

from prometheus_client import generate_latest

from kubetune.api.modeldeployment import RollbackSpec
from kubetune.operator.reconcile.traffic import (
    TrafficWindows,
    VersionTraffic,
    parse_gateway_metrics,
    rollback_reason,
)
from kubetune.serving.gateway.metrics import GatewayMetrics


def page(ok: int, upstream_errors: int, client_errors: int, version: str = "v2") -> str:
    m = GatewayMetrics()
    if ok:
        m.requests.labels("support", version, "local", "stop").inc(ok)
    if upstream_errors:
        m.requests.labels("support", version, "local", "error").inc(upstream_errors)
        m.errors.labels("support", version, "upstream_status").inc(upstream_errors)
    if client_errors:
        m.errors.labels("support", version, "bad_request").inc(client_errors)
    m.requests.labels("other-deployment", version, "local", "stop").inc(1000)
    return generate_latest(m.registry).decode()


def test_the_gateway_page_is_read_per_version_counting_only_service_errors() -> None:
    sample = parse_gateway_metrics(page(40, 10, 7), "support", 100.0)
    assert sample.requests == {"v2": 50.0}
    assert sample.errors == {"v2": 10.0}  # bad_request is the client's, not the model's


def test_window_increase_sums_pods_and_survives_a_counter_reset() -> None:
    w = TrafficWindows()
    w.add("p0", parse_gateway_metrics(page(100, 0, 0), "support", 0.0), 60)
    w.add("p0", parse_gateway_metrics(page(130, 10, 0), "support", 30.0), 60)
    w.add("p1", parse_gateway_metrics(page(5, 0, 0), "support", 0.0), 60)
    w.add("p1", parse_gateway_metrics(page(1, 2, 0), "support", 30.0), 60)  # restarted: 5 -> 3
    t = w.traffic("v2", 60, 30.0)
    assert (t.requests, t.errors) == (40.0 + 3.0, 10.0 + 2.0)
    assert w.traffic("v1", 60, 30.0).requests == 0


def test_old_samples_leave_the_window() -> None:
    w = TrafficWindows()
    for i, (ok, err) in enumerate([(0, 0), (10, 10), (20, 10), (30, 10)]):
        w.add("p0", parse_gateway_metrics(page(ok, err, 0), "support", i * 100.0), 150)
    t = w.traffic("v2", 150, 300.0)
    assert (t.requests, t.errors) == (20.0, 0.0)  # from the sample at t=100 to t=300


def test_the_verdict_needs_enough_requests_and_names_the_values() -> None:
    spec = RollbackSpec(max_error_rate=0.05, min_requests=20, window_seconds=300)
    assert rollback_reason(spec, VersionTraffic(requests=10, errors=10, drift=None)) is None
    why = rollback_reason(spec, VersionTraffic(requests=50, errors=20, drift=None))
    assert why is not None and "0.40" in why and "20 of 50" in why
    assert rollback_reason(spec, VersionTraffic(requests=50, errors=2, drift=0.9)) is None
    drift = RollbackSpec(max_drift_score=0.5, min_requests=20)
    why = rollback_reason(drift, VersionTraffic(requests=50, errors=0, drift=0.9))
    assert why is not None and "drift score 0.90" in why
    assert rollback_reason(RollbackSpec(enabled=False), VersionTraffic(1000, 1000, None)) is None
