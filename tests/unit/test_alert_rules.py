"""deploy/monitoring/ is rendered by kubetune.serving.alerts, and its rules fire (and stay quiet)
as intended under Debian's real promtool (`promtool check rules`, `promtool test rules`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.serving.alerts import (
    MONITORING_DIR,
    RULE_FILE,
    AlertThresholds,
    dashboard_queries,
    main,
    render_all,
    render_prometheus_rule,
    rule_groups,
)
from kubetune_dev.tools import ToolchainError, find_promtool

ALERTS = {
    "KubetuneErrorRateHigh",
    "KubetuneLatencyP95High",
    "KubetuneLengthDrift",
    "KubetuneFeedbackDrop",
    "KubetuneDriftScoreHigh",
}


def test_files_in_the_repository_match_the_renderer() -> None:
    for name, text in render_all().items():
        path = MONITORING_DIR / name
        assert path.is_file(), f"{path} missing: run `python -m kubetune.serving.alerts`"
        assert path.read_text() == text, f"{path} is stale: run `python -m kubetune.serving.alerts`"
    assert main(["--check"]) == 0


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    (tmp_path / RULE_FILE).write_text("groups: []\n")
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_every_alert_has_a_warning_and_a_critical_rule_with_for_and_annotations() -> None:
    rules = rule_groups()[0]["rules"]
    assert {(r["alert"], r["labels"]["severity"]) for r in rules} == {
        (a, s) for a in ALERTS for s in ("warning", "critical")
    }
    for rule in rules:
        assert rule["for"] == ("15m" if rule["labels"]["severity"] == "warning" else "5m")
        for text in rule["annotations"].values():
            assert "{{ $labels.deployment }}" in text and "{{ $labels.version }}" in text


def test_thresholds_are_parameters() -> None:
    t = AlertThresholds(
        psi_warning=0.2, error_rate_critical=0.5, rate_window="1m", for_warning="2s"
    )
    rules = {(r["alert"], r["labels"]["severity"]): r for r in rule_groups(t)[0]["rules"]}
    assert rules["KubetuneLengthDrift", "warning"]["expr"].endswith(">= 0.2")
    assert rules["KubetuneLengthDrift", "warning"]["for"] == "2s"
    assert ") > 0.5\n" in rules["KubetuneErrorRateHigh", "critical"]["expr"]
    assert "[1m]" in rules["KubetuneErrorRateHigh", "critical"]["expr"]
    assert (
        "threshold 50%" in rules["KubetuneErrorRateHigh", "critical"]["annotations"]["description"]
    )


def test_prometheus_rule_wraps_the_same_groups() -> None:
    rule = yaml.safe_load(render_prometheus_rule(namespace="monitoring", labels={"release": "kps"}))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == rule_groups()


def test_dashboard_panels_query_the_exported_series() -> None:
    dashboard = json.loads(render_all()["grafana-dashboard.json"])
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) == len(dashboard_queries())
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for name in (
        "kubetune_gateway_requests_total",
        "kubetune_gateway_errors_total",
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "kubetune_feedback_score_count",
        "kubetune_drift_score",
        "kubetune_drift_psi",
        "kubetune_feedback_mean",
        "kubetune_refusal_rate",
        "kubetune_empty_answer_rate",
    ):
        assert any(name in e for e in exprs), name
    assert all('deployment=~"$deployment", version=~"$version"' in e for e in exprs)


# --- promtool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return find_promtool()
    except ToolchainError as error:
        pytest.fail(str(error), pytrace=False)


def test_promtool_checks_the_rule_files(promtool: Path, tmp_path: Path) -> None:
    # the PrometheusRule's spec is a rule file too
    spec = yaml.safe_load((MONITORING_DIR / "kubetune-prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "from-prometheusrule.yaml").write_text(yaml.safe_dump(spec))
    for path in (MONITORING_DIR / RULE_FILE, tmp_path / "from-prometheusrule.yaml"):
        done = subprocess.run(
            [promtool, "check", "rules", path], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS: 10 rules found" in done.stdout


def _annotations(alert: str, severity: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them for these labels and $value text."""
    rule = next(
        r
        for r in rule_groups()[0]["rules"]
        if r["alert"] == alert and r["labels"]["severity"] == severity
    )
    out = {}
    for key, text in rule["annotations"].items():
        text = text.replace(
            "{{ with $labels.namespace }}{{ . }}/{{ end }}", ""
        )  # no namespace here
        for name, label in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", label)
        out[key] = re.sub(r"\{\{ \$value \| [^}]+ \}\}", value, text)
    return out


def _expected(
    alert: str, cases: dict[str, tuple[list[str], str]], extra: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """cases: version -> (severities expected to fire, $value as the annotations show it)."""
    out = []
    for version, (severities, value) in cases.items():
        for severity in severities:
            labels = {"deployment": "support", "version": version, **(extra or {})}
            out.append(
                {
                    "exp_labels": {**labels, "severity": severity},
                    "exp_annotations": _annotations(alert, severity, labels, value),
                }
            )
    return out


def _series(name: str, version: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {
        "deployment": "support",
        "version": version,
        "pod": f"support-{version}-0",
        **labels,
    }
    text = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _error_series() -> list[dict[str, str]]:
    # per minute: 100 requests; ok 1 % errors, warn 10 %, crit 50 %; quiet: 50 % of 0.5 per 5m;
    # clients: 50 % of the requests are the client's fault or dropped log writes, not failures
    out = []
    for version, requests, errors, error_type in (
        ("ok", 100, 1, "upstream_status"),
        ("warn", 100, 10, "upstream_timeout"),
        ("crit", 100, 50, "internal"),
        ("quiet", 0.1, 0.05, "upstream_unreachable"),
        ("clients", 100, 25, "bad_request"),
        ("clients", 100, 25, "log_dropped"),
    ):
        out.append(
            _series(
                "kubetune_gateway_errors_total", version, f"0+{errors}x40", error_type=error_type
            )
        )
        if error_type != "log_dropped":
            out.append(
                _series(
                    "kubetune_gateway_requests_total", version, f"0+{requests}x40", route="local"
                )
            )
    return out


def _latency_series() -> list[dict[str, str]]:
    # every request of a version in one bucket: ok (1, 5] s, warn (30, 60] s, crit (60, 120] s
    out = []
    buckets = ["1", "5", "10", "30", "60", "120", "+Inf"]
    for version, lowest_filled in (("ok", "5"), ("warn", "60"), ("crit", "120")):
        filled = buckets[buckets.index(lowest_filled) :]
        for le in buckets:
            values = "0+100x40" if le in filled else "0x40"
            out.append(
                _series("gen_ai_server_request_duration_seconds_bucket", version, values, le=le)
            )
        out.append(_series("gen_ai_server_request_duration_seconds_count", version, "0+100x40"))
    return out


def _gauge_series() -> list[dict[str, str]]:
    out = []
    for version, psi, recent, score in (
        ("ok", "0.05", "4.3", "0.2"),
        ("warn", "0.15", "3.8", "0.6"),
        ("crit", "0.4", "3", "1"),
    ):
        out.append(_series("kubetune_drift_psi", version, f"{psi}x40", signal="prompt_length"))
        out.append(_series("kubetune_drift_psi", version, "0.01x40", signal="response_length"))
        out.append(_series("kubetune_feedback_mean", version, "4.5x40", window="reference"))
        out.append(_series("kubetune_feedback_mean", version, f"{recent}x40", window="recent"))
        out.append(_series("kubetune_drift_score", version, f"{score}x40"))
    return out


def _rule_tests() -> dict[str, Any]:
    both, warn_only = ["warning", "critical"], ["warning"]
    at_20m = [
        ("KubetuneErrorRateHigh", {"warn": (warn_only, "10%"), "crit": (both, "50%")}, None),
        ("KubetuneLatencyP95High", {"warn": (warn_only, "58.5s"), "crit": (both, "1m 57s")}, None),
        (
            "KubetuneLengthDrift",
            {"warn": (warn_only, "0.15"), "crit": (both, "0.40")},
            {"signal": "prompt_length"},
        ),
        ("KubetuneFeedbackDrop", {"warn": (warn_only, "0.70"), "crit": (both, "1.50")}, None),
        ("KubetuneDriftScoreHigh", {"warn": (warn_only, "0.60"), "crit": (both, "1.00")}, None),
    ]
    # after 10m only the critical rules (for: 5m) fire; the warnings need 15m; at 3m nothing
    at_10m = [(a, {"crit": (["critical"], cases["crit"][1])}, extra) for a, cases, extra in at_20m]
    alert_tests = []
    for eval_time, table in (("20m", at_20m), ("10m", at_10m)):
        alert_tests += [
            {"eval_time": eval_time, "alertname": a, "exp_alerts": _expected(a, cases, extra)}
            for a, cases, extra in table
        ]
    alert_tests += [{"eval_time": "3m", "alertname": a, "exp_alerts": []} for a in sorted(ALERTS)]
    return {
        "rule_files": [str(MONITORING_DIR / RULE_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _error_series() + _latency_series() + _gauge_series(),
                "alert_rule_test": alert_tests,
            }
        ],
    }


def test_promtool_fires_each_alert_on_bad_series_and_none_on_healthy_ones(
    promtool: Path, tmp_path: Path
) -> None:
    tests = tmp_path / "kubetune-rules.test.yaml"
    tests.write_text(yaml.safe_dump(_rule_tests(), sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", tests], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
