"""Alert rules and a Grafana dashboard for ModelDeployments, rendered from one set of thresholds.

The rules read the series each serving pod's gateway exports (request and error counters,
the request-duration histogram) and the drift gauges of :mod:`kubetune.serving.drift`. Every
alert exists twice, with the same name and a ``severity`` label of ``warning`` or ``critical``
(route or inhibit on it in Alertmanager: a critical alert also fires its warning). Series are
aggregated by ``namespace, deployment, version``, so the pods of one version count together
(a PodMonitor adds ``namespace``; without it the label is empty and nothing changes).

Rendered three ways into ``deploy/monitoring/`` (``python -m kubetune.serving.alerts``; a
test fails when those files differ from this module, as ``--check`` does):

- ``kubetune-prometheusrule.yaml``: a ``monitoring.coreos.com/v1`` PrometheusRule for the
  Prometheus Operator,
- ``kubetune-rules.yaml``: the same groups as a plain rule file (``promtool check rules``),
- ``grafana-dashboard.json``: traffic, errors, latency, tokens, drift and feedback panels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MONITORING_DIR = Path(__file__).resolve().parents[3] / "deploy" / "monitoring"
PROMETHEUS_RULE_FILE = "kubetune-prometheusrule.yaml"
RULE_FILE = "kubetune-rules.yaml"
DASHBOARD_FILE = "grafana-dashboard.json"
GROUP_BY = "namespace, deployment, version"


@dataclass(frozen=True)
class AlertThresholds:
    """Thresholds and durations of the alert rules; the defaults are what deploy/ ships."""

    error_rate_warning: float = 0.05
    """Share of failed requests over ``rate_window`` above which a warning fires."""
    error_rate_critical: float = 0.20
    """… and above which a critical alert fires."""
    server_error_types: tuple[str, ...] = (
        "upstream_unreachable",
        "upstream_timeout",
        "upstream_status",
        "upstream_protocol",
        "internal",
    )
    """``error_type`` values of kubetune_gateway_errors_total that count as failed requests: the
    service's own failures. Left out: the client's (``bad_request``, ``body_too_large``,
    ``client_disconnected``) and ``log_dropped``, which is a dropped log write, not a request."""
    min_requests: int = 10
    """Requests a version must have had in ``rate_window`` for its error rate or latency to be
    judged (2 failures out of 3 requests on a quiet service pages nobody)."""
    latency_p95_warning_seconds: float = 20.0
    """p95 of a whole request (not streamed tokens): a chat answer of a few hundred tokens on
    an 8B q4_k_m model takes a few seconds, so 20 s means queueing or a model off the GPU."""
    latency_p95_critical_seconds: float = 60.0
    """p95 at which clients with a 60 s timeout start failing."""
    psi_warning: float = 0.1
    """PSI of prompt or response length at which a distribution has moved (moderate shift)."""
    psi_critical: float = 0.25
    """PSI at which it has shifted significantly."""
    feedback_drop_warning: float = 0.5
    """Drop of the recent feedback mean below the version's reference mean (scores 1..5)."""
    feedback_drop_critical: float = 1.0
    drift_score_warning: float = 0.5
    """Drift score (0..1; 1 = some signal at its critical level, see kubetune.serving.drift)."""
    drift_score_critical: float = 1.0
    rate_window: str = "5m"
    """Range of the rate() and increase() in the error-rate and latency rules."""
    for_warning: str = "15m"
    """How long a warning condition must hold before it fires (drift moves slowly)."""
    for_critical: str = "5m"
    """How long a critical condition must hold before it fires."""


@dataclass(frozen=True)
class _Alert:
    name: str
    expr: str  # with {threshold}
    thresholds: tuple[float, float]  # warning, critical
    summary: str
    description: str


_TARGET = (
    "ModelDeployment {{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.deployment }} "
    "version {{ $labels.version }}"
)


def _alerts(t: AlertThresholds) -> list[_Alert]:
    w = t.rate_window
    server_errors = f'error_type=~"{"|".join(t.server_error_types)}"'
    enough = (
        f"and on ({GROUP_BY})\n"
        f"  sum by ({GROUP_BY}) (increase({{series}}[{w}])) >= {t.min_requests}"
    )
    return [
        _Alert(
            "KubetuneErrorRateHigh",
            f"(\n  sum by ({GROUP_BY}) (rate(kubetune_gateway_errors_total{{{server_errors}}}[{w}]))"
            "\n/\n"
            f"  sum by ({GROUP_BY}) (rate(kubetune_gateway_requests_total[{w}]))\n"
            f") > {{threshold}}\n" + enough.format(series="kubetune_gateway_requests_total"),
            (t.error_rate_warning, t.error_rate_critical),
            "{{ $labels.deployment }} {{ $labels.version }}: "
            "{{ $value | humanizePercentage }} of requests fail",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {_TARGET} failed over the "
            f"last {w} (threshold {{threshold_pct}}). kubetune_gateway_errors_total by "
            "error_type says which step fails.",
        ),
        _Alert(
            "KubetuneLatencyP95High",
            f"histogram_quantile(0.95,\n  sum by ({GROUP_BY}, le) "
            f"(rate(gen_ai_server_request_duration_seconds_bucket[{w}]))\n) > {{threshold}}\n"
            + enough.format(series="gen_ai_server_request_duration_seconds_count"),
            (t.latency_p95_warning_seconds, t.latency_p95_critical_seconds),
            "{{ $labels.deployment }} {{ $labels.version }}: p95 latency "
            "{{ $value | humanizeDuration }}",
            f"95 % of the requests to {_TARGET} took up to {{{{ $value | humanizeDuration }}}} "
            f"over the last {w} (threshold {{threshold}}s).",
        ),
        _Alert(
            "KubetuneLengthDrift",
            f"max by ({GROUP_BY}, signal) (kubetune_drift_psi) >= {{threshold}}",
            (t.psi_warning, t.psi_critical),
            "{{ $labels.deployment }} {{ $labels.version }}: {{ $labels.signal }} PSI "
            '{{ $value | printf "%.2f" }}',
            "The {{ $labels.signal }} distribution of " + _TARGET + " moved away from the "
            'version\'s reference: PSI {{ $value | printf "%.2f" }} (threshold {threshold}; '
            "0.1 moderate, 0.25 significant shift).",
        ),
        _Alert(
            "KubetuneFeedbackDrop",
            f'avg by ({GROUP_BY}) (kubetune_feedback_mean{{window="reference"}})\n'
            f'- avg by ({GROUP_BY}) (kubetune_feedback_mean{{window="recent"}})\n'
            ">= {threshold}",
            (t.feedback_drop_warning, t.feedback_drop_critical),
            "{{ $labels.deployment }} {{ $labels.version }}: feedback down "
            '{{ $value | printf "%.2f" }} points',
            "Recent user feedback of " + _TARGET + " is "
            '{{ $value | printf "%.2f" }} points (of 1..5) below the version\'s reference '
            "window (threshold {threshold}).",
        ),
        _Alert(
            "KubetuneDriftScoreHigh",
            f"max by ({GROUP_BY}) (kubetune_drift_score) >= {{threshold}}",
            (t.drift_score_warning, t.drift_score_critical),
            "{{ $labels.deployment }} {{ $labels.version }}: drift score "
            '{{ $value | printf "%.2f" }}',
            "The drift score of " + _TARGET + ' is {{ $value | printf "%.2f" }} (threshold '
            "{threshold}; 1 means a length PSI, feedback drop, refusal or empty-answer rate is "
            "at its critical level). kubetune_drift_psi, kubetune_feedback_mean and "
            "kubetune_refusal_rate say which.",
        ),
    ]


def _fill(text: str, threshold: float) -> str:
    return text.replace("{threshold_pct}", f"{threshold:.0%}").replace(
        "{threshold}", f"{threshold:g}"
    )


def rule_groups(t: AlertThresholds | None = None) -> list[dict[str, Any]]:
    """The rule groups (Prometheus rule-file shape), a warning and a critical rule per alert."""
    t = t or AlertThresholds()
    rules: list[dict[str, Any]] = []
    for alert in _alerts(t):
        for severity, threshold, duration in (
            ("warning", alert.thresholds[0], t.for_warning),
            ("critical", alert.thresholds[1], t.for_critical),
        ):
            rules.append(
                {
                    "alert": alert.name,
                    "expr": _fill(alert.expr, threshold),
                    "for": duration,
                    "labels": {"severity": severity},
                    "annotations": {
                        "summary": alert.summary,
                        "description": _fill(alert.description, threshold),
                    },
                }
            )
    return [{"name": "kubetune-serving", "rules": rules}]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as literal blocks, so the files read like hand-written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_HEADER = (
    "# Generated by kubetune.serving.alerts (python -m kubetune.serving.alerts): do not edit.\n"
)


def _dump(document: dict[str, Any]) -> str:
    return _HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000)


def render_rule_file(t: AlertThresholds | None = None) -> str:
    """A plain Prometheus rule file (``groups:``), for ``rule_files`` and promtool."""
    return _dump({"groups": rule_groups(t)})


def render_prometheus_rule(
    t: AlertThresholds | None = None,
    *,
    name: str = "kubetune",
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """A ``monitoring.coreos.com/v1`` PrometheusRule. kube-prometheus-stack only loads rules
    whose labels match its ``ruleSelector`` (by default ``release: <its release name>``): pass
    that label in ``labels``."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/component": "alerts",
        **(labels or {}),
    }
    return _dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": {"groups": rule_groups(t)},
        }
    )


SELECTOR = 'deployment=~"$deployment", version=~"$version"'
BY = "deployment, version"


def dashboard_queries(t: AlertThresholds | None = None) -> list[tuple[str, list[str]]]:
    """(panel title, PromQL queries) of every dashboard panel, in order."""
    t = t or AlertThresholds()
    s, r = SELECTOR, "$__rate_interval"
    server_errors = f'{s}, error_type=~"{"|".join(t.server_error_types)}"'
    requests = f"sum by ({BY}) (rate(kubetune_gateway_requests_total{{{s}}}[{r}]))"
    errors = f"sum by ({BY}) (rate(kubetune_gateway_errors_total{{{server_errors}}}[{r}]))"

    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by ({BY}, le) (rate({metric}_bucket{{{s}}}[{r}])))"

    return [
        ("Requests per second", [requests]),
        ("Error rate", [f"{errors}\n/\n{requests}"]),
        (
            "Errors per second by type",
            [f"sum by ({BY}, error_type) (rate(kubetune_gateway_errors_total{{{s}}}[{r}]))"],
        ),
        (
            "Request latency p50 / p95",
            [
                quantile(0.5, "gen_ai_server_request_duration_seconds"),
                quantile(0.95, "gen_ai_server_request_duration_seconds"),
            ],
        ),
        ("Time to first token p95", [quantile(0.95, "gen_ai_server_time_to_first_token_seconds")]),
        (
            "Tokens per second",
            [f"sum by ({BY}, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{s}}}[{r}]))"],
        ),
        ("Drift score", [f"max by ({BY}) (kubetune_drift_score{{{s}}})"]),
        ("Length drift (PSI)", [f"max by ({BY}, signal) (kubetune_drift_psi{{{s}}})"]),
        (
            "Feedback mean: recent vs reference",
            [f"avg by ({BY}, window) (kubetune_feedback_mean{{{s}}})"],
        ),
        (
            "Feedback scores per second",
            [f"sum by ({BY}) (rate(kubetune_feedback_score_count{{{s}}}[{r}]))"],
        ),
        (
            "Refusal and empty-answer rates",
            [
                f"max by ({BY}) (kubetune_refusal_rate{{{s}}})",
                f"max by ({BY}) (kubetune_empty_answer_rate{{{s}}})",
            ],
        ),
    ]


_UNITS = {
    "Error rate": "percentunit",
    "Request latency p50 / p95": "s",
    "Time to first token p95": "s",
    "Requests per second": "reqps",
    "Refusal and empty-answer rates": "percentunit",
}


def _legend(query: str) -> str:
    extra = [
        label
        for label in ("signal", "window", "error_type", "gen_ai_token_type")
        if f", {label})" in query
    ]
    name = "{{deployment}} {{version}}" + "".join(f" {{{{{label}}}}}" for label in extra)
    if query.startswith("histogram_quantile("):
        name += " p" + query.split(",")[0].removeprefix("histogram_quantile(0.")
    elif "kubetune_empty_answer_rate" in query:
        name += " empty"
    elif "kubetune_refusal_rate" in query:
        name += " refusals"
    return name


def _thresholds(title: str, t: AlertThresholds) -> list[tuple[str, float]]:
    table = {
        "Error rate": (t.error_rate_warning, t.error_rate_critical),
        "Request latency p50 / p95": (
            t.latency_p95_warning_seconds,
            t.latency_p95_critical_seconds,
        ),
        "Drift score": (t.drift_score_warning, t.drift_score_critical),
        "Length drift (PSI)": (t.psi_warning, t.psi_critical),
    }
    if title not in table:
        return []
    warning, critical = table[title]
    return [("orange", warning), ("red", critical)]


def render_dashboard(t: AlertThresholds | None = None) -> str:
    """The Grafana dashboard (JSON model), with the alert thresholds drawn on its panels."""
    t = t or AlertThresholds()
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels: list[dict[str, Any]] = []
    for index, (title, queries) in enumerate(dashboard_queries(t)):
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        steps += [{"color": color, "value": value} for color, value in _thresholds(title, t)]
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {
                    "defaults": {
                        "unit": _UNITS.get(title, "short"),
                        "thresholds": {"mode": "absolute", "steps": steps},
                        "custom": {
                            "thresholdsStyle": {"mode": "line" if len(steps) > 1 else "off"}
                        },
                    },
                    "overrides": [],
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": q,
                        "legendFormat": _legend(q),
                        "datasource": datasource,
                    }
                    for i, q in enumerate(queries)
                ],
            }
        )

    def variable(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": datasource,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "sort": 1,
            "current": {"selected": True, "text": "All", "value": "$__all"},
        }

    dashboard = {
        "uid": "kubetune-serving",
        "title": "kubetune / ModelDeployments",
        "description": "Traffic, errors, latency, drift and feedback of the versions a "
        "ModelDeployment serves (generated by kubetune.serving.alerts).",
        "tags": ["kubetune"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                },
                variable("deployment", "label_values(kubetune_gateway_requests_total, deployment)"),
                variable(
                    "version",
                    'label_values(kubetune_gateway_requests_total{deployment=~"$deployment"}, version)',
                ),
            ]
        },
        "panels": panels,
    }
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def render_all(t: AlertThresholds | None = None) -> dict[str, str]:
    """File name in deploy/monitoring/ → content, rendered with ``t`` (default thresholds)."""
    return {
        PROMETHEUS_RULE_FILE: render_prometheus_rule(t),
        RULE_FILE: render_rule_file(t),
        DASHBOARD_FILE: render_dashboard(t),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write deploy/monitoring/ (or, with --check, fail when it differs from the renderer)."""
    parser = argparse.ArgumentParser(
        prog="python -m kubetune.serving.alerts", description=main.__doc__
    )
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    parser.add_argument(
        "--out", type=Path, default=MONITORING_DIR, help="folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in render_all().items():
        target = args.out / name
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(str(target))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    if stale:
        print(
            "out of date (run `python -m kubetune.serving.alerts`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
