"""kubetune.serving.drift: PSI, feedback, refusal and empty-answer rates, the drift score, and
the bounded per-version windows exported as gauges. Numbers checkable by hand."""

from __future__ import annotations

import math
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubetune.serving.drift import (
    PSI_CRITICAL,
    DriftSettings,
    DriftSignals,
    DriftTracker,
    bin_proportions,
    drift_score,
    is_empty_answer,
    is_refusal,
    psi,
    quantile_edges,
)

LENGTHS = list(range(1, 101))  # 1..100: deciles cut at 10.9, 20.8, ..., 90.1


def test_quantile_bins_hold_equal_shares_of_the_reference() -> None:
    edges = quantile_edges(LENGTHS, bins=10)
    assert len(edges) == 9
    assert bin_proportions(LENGTHS, edges) == pytest.approx([0.1] * 10)


def test_ties_merge_bins_and_outer_bins_are_open() -> None:
    # integer lengths with many ties: 80 % are 7, so most cut points coincide
    edges = quantile_edges([7] * 80 + [8, 9, 10, 11] * 5, bins=10)
    assert edges == sorted(set(edges)) and len(edges) < 9
    # values far beyond the reference land in the outer bins, not outside
    shares = bin_proportions([-1000, 10**6], edges)
    assert shares[0] == 0.5 and shares[-1] == 0.5


def test_identical_distributions_have_psi_zero() -> None:
    assert psi(LENGTHS, LENGTHS) == 0.0
    assert psi(LENGTHS, list(reversed(LENGTHS)) * 3) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_a_two_bin_shift_by_hand() -> None:
    # bins=2 cut the reference at its median 50.5: shares 0.5 / 0.5.
    # 75 % of the recent values below it: (0.75-0.5)·ln(1.5) + (0.25-0.5)·ln(0.5) = 0.2747
    recent = [10] * 75 + [90] * 25
    expected = 0.25 * math.log(1.5) + 0.25 * math.log(2.0)
    assert psi(LENGTHS, recent, bins=2) == pytest.approx(expected)
    assert expected == pytest.approx(0.274653, abs=1e-6)
    assert psi(LENGTHS, recent, bins=2) > PSI_CRITICAL


def test_empty_bins_use_the_epsilon_floor() -> None:
    # everything recent in the first decile: 0.9·ln(9) + 9·(1e-4 - 0.1)·ln(1e-4/0.1)
    recent = [1] * 50
    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert psi(LENGTHS, recent) == pytest.approx(expected)


def test_a_known_length_shift_is_significant_and_a_small_one_is_not() -> None:
    assert psi(LENGTHS, [x + 30 for x in LENGTHS]) > PSI_CRITICAL
    assert psi(LENGTHS, [x + 1 for x in LENGTHS]) < 0.1


def test_psi_refuses_too_little_data() -> None:
    with pytest.raises(ValueError):
        psi([5], [5, 6])
    with pytest.raises(ValueError):
        psi(LENGTHS, [])


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("  **I cannot** share that.", True),
        ("I’m sorry — that is not possible.", True),  # curly apostrophe
        ("As an AI language model, I ...", True),
        ("> sorry, no.", True),
        ("Sure. I can't promise it, but here is how.", False),  # not at the start
        ("The sorry state of the logs ...", False),
        ("", False),
    ],
)
def test_refusal_detector_looks_at_the_start_only(answer: str, refused: bool) -> None:
    assert is_refusal(answer) is refused


def test_empty_answers() -> None:
    assert is_empty_answer("", 3)
    assert is_empty_answer(" \n ", 2)
    assert is_empty_answer(None, 0)
    assert not is_empty_answer("ok", 1)
    assert not is_empty_answer(None, 12)


def test_drift_score_is_the_max_of_signals_over_their_critical_levels() -> None:
    assert drift_score(DriftSignals()) is None
    assert drift_score(DriftSignals(psi_prompt=0.1, psi_response=0.0)) == pytest.approx(0.4)
    # feedback 4.2 -> 3.7: a drop of 0.5 over the critical 1.0
    assert drift_score(
        DriftSignals(psi_prompt=0.0, feedback_reference=4.2, feedback_recent=3.7)
    ) == pytest.approx(0.5)
    # refusals 2 % -> 12 %: +0.10 over the critical +0.20
    assert drift_score(DriftSignals(refusal_reference=0.02, refusal_recent=0.12)) == pytest.approx(
        0.5
    )
    # empty answers 0 -> 5 %: +0.05 over the critical +0.10
    assert drift_score(DriftSignals(empty_reference=0.0, empty_recent=0.05)) == pytest.approx(0.5)
    # capped at 1; one strong signal is not averaged away by quiet ones
    assert (
        drift_score(
            DriftSignals(
                psi_prompt=3.0, psi_response=0.0, refusal_reference=0.1, refusal_recent=0.1
            )
        )
        == 1.0
    )
    # improvements count as no drift
    assert (
        drift_score(
            DriftSignals(
                feedback_reference=3.0,
                feedback_recent=4.5,
                refusal_reference=0.3,
                refusal_recent=0.0,
            )
        )
        == 0.0
    )


SMALL = DriftSettings(
    reference_size=100,
    recent_size=50,
    reference_feedback=40,
    recent_feedback=20,
    min_samples=50,
    min_feedback=10,
)


def _scrape(tracker: DriftTracker) -> dict[str, float]:
    registry = CollectorRegistry()
    tracker.register(registry)
    samples: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "deployment")
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def test_tracker_shows_nothing_below_the_minimum_sample_size() -> None:
    tracker = DriftTracker("support", SMALL)
    for i in range(49):
        tracker.observe("v1", 100 + i, 50, "fine")
    samples = _scrape(tracker)
    assert samples == {
        "kubetune_drift_window_samples{version=v1,window=recent}": 49,
        "kubetune_drift_window_samples{version=v1,window=reference}": 49,
    }
    tracker.observe("v1", 120, 50, "fine")
    assert _scrape(tracker)["kubetune_drift_score{version=v1}"] == 0.0


def test_tracker_sees_a_length_shift_refusals_and_a_feedback_drop() -> None:
    tracker = DriftTracker("support", SMALL)
    for i in range(100):  # reference: the first 100 requests after promotion
        tracker.observe("v2", 20 + i % 50, 100 + i % 50, "Here you go.", feedback=4 + i % 2)
    samples = _scrape(tracker)
    # the recent window (last 50) is the same distribution as the reference
    assert samples["kubetune_drift_psi{signal=prompt_length,version=v2}"] < 0.1
    assert samples["kubetune_drift_score{version=v2}"] < 0.4
    assert samples["kubetune_feedback_mean{version=v2,window=reference}"] == pytest.approx(4.5)

    for i in range(50):  # prompts twice as long, 10 refusals, worse feedback
        answer = "I'm sorry, I can't." if i % 5 == 0 else "Here you go."
        tracker.observe("v2", 2 * (20 + i), 100 + i, answer)
    for _ in range(20):
        tracker.observe_feedback("v2", 3)
    samples = _scrape(tracker)
    assert samples["kubetune_drift_psi{signal=prompt_length,version=v2}"] > PSI_CRITICAL
    assert samples["kubetune_drift_psi{signal=response_length,version=v2}"] < 0.1
    assert samples["kubetune_refusal_rate{version=v2}"] == pytest.approx(0.2)
    assert samples["kubetune_empty_answer_rate{version=v2}"] == 0.0
    assert samples["kubetune_feedback_mean{version=v2,window=recent}"] == 3.0
    assert samples["kubetune_feedback_mean{version=v2,window=reference}"] == pytest.approx(4.5)
    assert samples["kubetune_drift_score{version=v2}"] == 1.0
    signals = tracker.signals("v2")
    assert signals is not None and signals.refusal_reference == 0.0


def test_supplied_reference_sample_replaces_the_first_requests_lengths() -> None:
    tracker = DriftTracker("support", SMALL)
    tracker.set_reference("v1", list(range(1000, 1100)), list(range(1, 101)))
    for i in range(50):
        tracker.observe("v1", 10 + i, 1 + 2 * i, "ok")
    signals = tracker.signals("v1")
    assert (
        signals is not None and signals.psi_prompt is not None and signals.psi_response is not None
    )
    assert signals.psi_prompt > PSI_CRITICAL  # far shorter prompts than the test split
    assert signals.psi_response < 0.1  # same spread as the test split


def test_windows_and_versions_stay_bounded() -> None:
    settings = DriftSettings(
        reference_size=100,
        recent_size=50,
        reference_feedback=40,
        recent_feedback=20,
        min_samples=50,
        min_feedback=10,
        max_versions=3,
    )
    tracker = DriftTracker("support", settings)
    long_answer = "x" * 10_000
    for i in range(20_000):  # five versions one after the other, 4000 requests each
        tracker.observe(f"v{i // 4000}", i, i, long_answer, feedback=1 + i % 5)
    versions = tracker._versions
    assert list(versions) == ["v2", "v3", "v4"]  # the oldest observed are dropped
    for windows in versions.values():
        assert len(windows.recent) == 50
        assert len(windows.reference) == 100
        assert len(windows.recent_feedback) == 20
        assert len(windows.reference_feedback) == 40
        # the answer text is never kept: a request is four small values
        assert all(len(request) == 4 for request in windows.recent)
    size = sum(sys.getsizeof(w.recent) + sys.getsizeof(w.reference) for w in versions.values())
    assert size < 50_000
    tracker.forget("v4")
    assert "v4" not in tracker._versions


def test_exposition_names_and_labels() -> None:
    tracker = DriftTracker("support", SMALL)
    for i in range(60):
        tracker.observe("v1", 10 + i, 20 + i, "" if i % 10 == 0 else "ok")
    registry = CollectorRegistry()
    tracker.register(registry)
    text = generate_latest(registry).decode()
    assert 'kubetune_drift_score{deployment="support",version="v1"}' in text
    assert 'kubetune_drift_psi{deployment="support",signal="prompt_length",version="v1"}' in text
    assert 'kubetune_empty_answer_rate{deployment="support",version="v1"} 0.1' in text
    assert "# TYPE kubetune_drift_score gauge" in text
    with pytest.raises(ValueError):  # registering twice is refused: the names are described
        tracker.register(registry)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        DriftSettings(min_samples=600, recent_size=500)
    with pytest.raises(ValueError):
        DriftSettings(recent_feedback=1)


def test_a_supplied_reference_judges_a_version_from_its_first_requests() -> None:
    """With the test split as reference, drift shows once the *recent* window is full: no wait
    for a reference of first requests that would already be the drifted traffic."""
    tracker = DriftTracker("support", SMALL)
    tracker.set_reference("v1", list(range(20, 60)), list(range(30, 70)), refusal_rate=0.0,
                          empty_rate=0.0)
    assert tracker.has_reference("v1") and not tracker.has_reference("v2")
    for _ in range(SMALL.min_samples):  # every answer truncated to one token
        tracker.observe("v1", 40, 1, "x")
    signals = tracker.signals("v1")
    assert signals is not None and signals.psi_response is not None
    assert signals.psi_response > PSI_CRITICAL
    assert signals.refusal_reference == 0.0 and signals.empty_reference == 0.0
    assert drift_score(signals) == 1.0
    samples = _scrape(tracker)
    assert samples["kubetune_drift_window_samples{version=v1,window=reference}"] == 40


def test_supplied_reference_rates_are_the_refusal_baseline() -> None:
    tracker = DriftTracker("support", SMALL)
    tracker.set_reference("v1", [10, 20, 30], [5, 6, 7], refusal_rate=0.0)
    for i in range(SMALL.min_samples):
        tracker.observe("v1", 20, 6, "I'm sorry, I can't help with that." if i % 2 else "Sure.")
    signals = tracker.signals("v1")
    assert signals is not None
    assert signals.refusal_reference == 0.0 and signals.refusal_recent == pytest.approx(0.5)
    assert signals.empty_reference == 0.0  # not supplied: the first requests (none empty)
