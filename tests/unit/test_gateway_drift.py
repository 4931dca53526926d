"""Drift in the gateway: every answered request feeds the DriftTracker behind /metrics, feedback
reaches it with the version that answered, and long-gone versions are forgotten (fake Ollama,
real HTTP; the tracker's windows lowered to 20 requests so a test sends few)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.serving import DriftReference
from kubetune.serving.drift import DriftSettings, DriftTracker
from kubetune.serving.gateway import ServedVersion
from kubetune.serving.gateway.app import VersionRetirement
from kubetune_dev.fake_ollama import FakeOllama
from tests.unit.test_gateway_fake_ollama import GatewayUnderTest, sample

SMALL = DriftSettings(
    reference_size=20, recent_size=20, min_samples=20,
    reference_feedback=4, recent_feedback=4, min_feedback=4,
)  # fmt: skip
LABELS = {"deployment": "support", "version": "v2"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def gateway(fake: FakeOllama, tmp_path: Path) -> Iterator[GatewayUnderTest]:
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", drift=SMALL, content="full")
    yield gw
    gw.close()


def short_prompt(i: int) -> str:
    return " ".join(["word"] * (1 + i % 3))


def test_drift_appears_once_the_windows_fill_and_rises_when_prompts_get_longer(
    gateway: GatewayUnderTest,
) -> None:
    for i in range(19):
        assert gateway.chat(short_prompt(i)).status_code == 200
    text = gateway.metrics()
    assert sample(text, "kubetune_drift_window_samples", **LABELS, window="recent") == 19
    assert sample(text, "kubetune_drift_score", **LABELS) is None  # too few: absent, not 0

    assert gateway.chat(short_prompt(19)).status_code == 200
    baseline = sample(gateway.metrics(), "kubetune_drift_score", **LABELS)
    assert baseline is not None and baseline < 0.1

    for i in range(20):  # streamed ones count too (their usage chunk gives the tokens)
        long = " ".join(["paragraph"] * (40 + i))
        if i % 2:
            with gateway.http.stream(
                "POST", "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": long}], "stream": True},
            ) as response:  # fmt: skip
                assert response.status_code == 200
                response.read()
        else:
            assert gateway.chat(long).status_code == 200
    text = gateway.metrics()
    assert sample(text, "kubetune_drift_score", **LABELS) == 1.0
    psi = sample(text, "kubetune_drift_psi", **LABELS, signal="prompt_length")
    assert psi is not None and psi >= 0.25


def test_failed_requests_are_not_observed_and_feedback_reaches_the_tracker(
    gateway: GatewayUnderTest,
) -> None:
    assert gateway.chat("fail").status_code == 502
    assert gateway.chat("refuse").status_code == 400
    ids = []
    for i in range(20):
        response = gateway.chat(short_prompt(i))
        ids.append(response.headers["x-request-id"])
    text = gateway.metrics()
    assert sample(text, "kubetune_drift_window_samples", **LABELS, window="recent") == 20
    gateway.rows(wait_for=22)
    for request_id in ids[:4]:
        assert gateway.http.post(
            "/v1/feedback", json={"requestId": request_id, "score": 4}
        ).status_code == 200
    # a second score for the same request replaces the first in the log, not in the windows
    gateway.http.post("/v1/feedback", json={"requestId": ids[0], "score": 1})
    text = gateway.metrics()
    assert sample(text, "kubetune_feedback_mean", **LABELS, window="recent") == 4.0
    assert sample(text, "kubetune_feedback_mean", **LABELS, window="reference") == 4.0


def test_a_version_not_served_for_long_is_forgotten() -> None:
    tracker = DriftTracker("support", SMALL)
    retirement = VersionRetirement(tracker, after_s=100.0)
    retirement.served("v1", 0.0)
    tracker.observe("v1", 5, 5, "hi")
    retirement.served("v2", 50.0)  # swept less than a minute ago: nothing yet
    tracker.observe("v2", 5, 5, "hi")
    retirement.served("v2", 120.0)  # v1 last served 120 s ago
    versions = {s.labels["version"] for m in tracker.collect() for s in m.samples}
    assert versions == {"v2"}


def test_a_version_with_a_test_split_reference_is_judged_from_its_first_requests(
    fake: FakeOllama, tmp_path: Path
) -> None:
    """The served version carries its FineTuneJob's drift reference (long prompts); traffic of
    short prompts shows as drift as soon as the recent window is full, where a reference of
    first requests would have called the same traffic stable (the test above)."""
    reference = DriftReference(prompt_tokens=list(range(200, 240)), completion_tokens=list(range(1, 41)),
                               refusal_rate=0.0, empty_rate=0.0, source="test split")
    gw = GatewayUnderTest(fake.url, tmp_path / "log.db", drift=SMALL, content="full",
                          served=ServedVersion("v2", "ab" * 32, reference))
    try:
        for i in range(20):
            assert gw.chat(short_prompt(i)).status_code == 200
        text = gw.metrics()
        assert sample(text, "kubetune_drift_window_samples", **LABELS, window="reference") == 20  # thinned to reference_size
        psi = sample(text, "kubetune_drift_psi", **LABELS, signal="prompt_length")
        assert psi is not None and psi >= 0.25
        assert sample(text, "kubetune_drift_score", **LABELS) == 1.0
    finally:
        gw.close()
