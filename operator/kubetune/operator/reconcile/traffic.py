"""Live traffic of a ModelDeployment's served version, from its pods' gateway /metrics, and
the automatic-rollback verdict (`spec.rollback`).

Each resync reads every ready pod's gateway metrics (Prometheus text): per version, the
requests counter (`kubetune_gateway_requests_total`), the service's own failures among the
errors (`kubetune_gateway_errors_total` with error_type `upstream_*` or `internal`; a client's
malformed request or a dropped log line says nothing about the model) and the drift score
gauge (`kubetune_drift_score`). Counters are kept per pod as samples over
`rollback.windowSeconds`; the window's increase is the last sample minus the oldest one not
older than the window (a counter reset — a restarted pod — counts from zero). A verdict needs
`rollback.minRequests` requests in the window, so a quiet service never flaps.
"""

from __future__ import annotations

import urllib.request
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.modeldeployment import RollbackSpec

SERVICE_ERRORS = ("upstream_unreachable", "upstream_timeout", "upstream_status", "upstream_protocol", "internal")
MAX_SAMPLES = 4096  # per pod: a bound even with a 1 s resync and a 24 h window


@dataclass(frozen=True)
class PodSample:
    """One scrape of one pod's gateway: counters and gauges per version."""

    time: float
    requests: dict[str, float]
    errors: dict[str, float]
    drift: dict[str, float]


def parse_gateway_metrics(text: str, deployment: str, time: float) -> PodSample:
    """The per-version figures of `deployment` in one /metrics page."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    drift: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("deployment") != deployment or "version" not in labels:
                continue
            version = labels["version"]
            if sample.name == "kubetune_gateway_requests_total":
                requests[version] = requests.get(version, 0.0) + sample.value
            elif sample.name == "kubetune_gateway_errors_total" and labels.get("error_type") in SERVICE_ERRORS:
                errors[version] = errors.get(version, 0.0) + sample.value
            elif sample.name == "kubetune_drift_score":
                drift[version] = sample.value
    return PodSample(time, requests, errors, drift)


def scrape_gateway(ip: str, port: int, deployment: str, time: float, timeout: float) -> PodSample | None:
    """GET http://ip:port/metrics; None when the gateway does not answer."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=timeout) as r:
            return parse_gateway_metrics(r.read().decode(), deployment, time)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class VersionTraffic:
    requests: float
    errors: float
    drift: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class TrafficWindows:
    """Samples per pod of one ModelDeployment, bounded in count and age."""

    pods: dict[str, deque[PodSample]] = field(default_factory=dict)

    def add(self, pod: str, sample: PodSample, window: float) -> None:
        samples = self.pods.setdefault(pod, deque(maxlen=MAX_SAMPLES))
        samples.append(sample)
        while len(samples) > 2 and samples[1].time <= sample.time - window:
            samples.popleft()  # keep one sample at or before the window's start

    def forget_pods(self, live: Iterable[str]) -> None:
        keep = set(live)
        for pod in [p for p in self.pods if p not in keep]:
            del self.pods[pod]

    def traffic(self, version: str, window: float, now: float) -> VersionTraffic:
        requests = errors = 0.0
        drift: float | None = None
        for samples in self.pods.values():
            if not samples:
                continue
            last = samples[-1]
            start = next((s for s in reversed(samples) if s.time <= now - window), samples[0])
            requests += _increase(start.requests.get(version, 0.0), last.requests.get(version, 0.0))
            errors += _increase(start.errors.get(version, 0.0), last.errors.get(version, 0.0))
            if version in last.drift:
                drift = max(drift or 0.0, last.drift[version])
        return VersionTraffic(requests, errors, drift)


def _increase(first: float, last: float) -> float:
    return last - first if last >= first else last  # a reset: the pod's counter restarted


def rollback_reason(spec: RollbackSpec, traffic: VersionTraffic) -> str | None:
    """Why the served version must be rolled back, or None."""
    if not spec.enabled or traffic.requests < spec.min_requests:
        return None
    if traffic.error_rate > spec.max_error_rate:
        return (f"error rate {traffic.error_rate:.2f} > maxErrorRate {spec.max_error_rate} over the last "
                f"{spec.window_seconds} s ({traffic.errors:.0f} of {traffic.requests:.0f} requests failed)")
    if spec.max_drift_score is not None and traffic.drift is not None and traffic.drift > spec.max_drift_score:
        return (f"drift score {traffic.drift:.2f} > maxDriftScore {spec.max_drift_score} "
                f"({traffic.requests:.0f} requests in the last {spec.window_seconds} s)")
    return None
