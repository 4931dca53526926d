"""Drift of a served version's live traffic against its own reference, as Prometheus gauges.

The gateway in each serving pod feeds a :class:`DriftTracker` one observation per request
(prompt and completion token counts, the answer text or its flags, an optional feedback score)
and registers it on the registry behind its ``/metrics``. Standard library only: the serving
image carries no numpy.

Signals, each comparing a version's **recent** window with its **reference**. The reference is
the version's FineTuneJob test split when the version has one (``drift-reference.json``: each
test prompt's length and the fine-tuned model's answer length, in tokens, and the share of those
answers that are refusals or empty; :meth:`DriftTracker.set_reference`), so a version is judged
against what it was trained and evaluated for from its first request; otherwise it is the
version's first ``reference_size`` requests after promotion.

- **PSI** (population stability index) of prompt length and of response length, in tokens.
  Bins are fixed by the reference: the interior cut points are its deciles (``bins - 1``
  quantiles, ties merged, so integer lengths with many equal values give fewer, wider bins);
  the outer bins are open, so a value beyond anything seen in the reference still lands in
  the first or last bin. ``PSI = Σ (c_i − r_i) · ln(c_i / r_i)`` over the bins, with ``r_i``
  and ``c_i`` the reference and recent proportions, each floored at ``PSI_EPSILON`` so that an
  empty bin costs a large but finite amount instead of ``ln 0``. The usual reading: below 0.1
  stable, 0.1–0.25 moderate shift, 0.25 and above a significant shift.
- **feedback mean** of the last ``recent_feedback`` scores (1..5) against the mean of the
  version's first ``reference_feedback`` scores (the generalised "recent 100 vs history").
- **refusal rate** and **empty-answer rate** of the recent window. An answer is a refusal when,
  lower-cased with leading whitespace, quotes and markdown marks removed and curly apostrophes
  made straight, it *starts with* one of :data:`REFUSAL_PREFIXES` ("i can't", "i'm sorry", "as
  an ai", …). This is a cheap heuristic for a change in behaviour, not a classifier: a phrase
  later in the answer does not count, so "Sure — I can't promise X, but…" is no refusal while
  "Sorry, but …" is. An answer is empty when it has no completion tokens or only whitespace.

The **drift score** folds the signals into one number in [0, 1]::

    drift_score = max( min(1, psi_prompt / 0.25),
                       min(1, psi_response / 0.25),
                       clamp((feedback_reference − feedback_recent) / 1.0, 0, 1),
                       clamp((refusal_recent − refusal_reference) / 0.2, 0, 1),
                       clamp((empty_recent − empty_reference) / 0.1, 0, 1) )

Each term is its signal divided by that signal's *critical* level (PSI 0.25, a feedback drop
of one point on the 1..5 scale, 20 more refusals or 10 more empty answers per hundred
requests), so 1 means "at least one signal is at or past critical" and 0.4–0.5 about a
warning. The maximum, not a mean, so that one strong signal is never averaged away by four
quiet ones; a signal only counts when it moved the bad way (more refusals, lower feedback).

Nothing is computed on too little data, so a quiet service does not flap: a version's PSI,
rates and drift score appear only once both its reference and recent windows hold at least
``min_samples`` requests (a supplied reference counts as full), and its feedback means once both feedback windows hold at least
``min_feedback`` scores (until then the score is computed without the feedback term). Series
that are not computed are absent from ``/metrics``, never 0.

Memory is bounded: per version, the recent window is a ring of ``recent_size`` requests (four
small numbers each, the answer text is never kept), the reference holds at most
``reference_size`` requests, and at most ``max_versions`` versions are tracked (the one
observed longest ago is dropped first).
"""

from __future__ import annotations

import math
import statistics
import threading
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

PSI_WARNING = 0.1
"""PSI at which a distribution is usually said to have moved (moderate shift)."""
PSI_CRITICAL = 0.25
"""PSI at which a distribution is usually said to have shifted significantly."""
PSI_EPSILON = 1e-4
"""Floor for a bin's proportion: an empty bin adds a large, finite term instead of ln 0."""
DEFAULT_BINS = 10

FEEDBACK_DROP_CRITICAL = 1.0
"""Drop of the recent feedback mean below the reference (scores 1..5) that scores 1."""
REFUSAL_INCREASE_CRITICAL = 0.2
"""Increase of the refusal rate over the reference that scores 1."""
EMPTY_INCREASE_CRITICAL = 0.1
"""Increase of the empty-answer rate over the reference that scores 1."""

REFUSAL_PREFIXES: tuple[str, ...] = (
    "i'm sorry",
    "i am sorry",
    "sorry,",
    "i apologize",
    "i apologise",
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "as an ai",
)
"""Lower-case starts of an answer that count as a refusal (see the module docstring)."""

_LEADING_NOISE = " \t\r\n\"'`*_>#-“”‘’"  # quotes and markdown marks before the first word


def is_refusal(answer: str) -> bool:
    """Whether ``answer`` starts with one of :data:`REFUSAL_PREFIXES`, case-insensitively."""
    text = answer.lstrip(_LEADING_NOISE).lower().replace("’", "'")
    return text.startswith(REFUSAL_PREFIXES)


def is_empty_answer(answer: str | None, completion_tokens: int) -> bool:
    """An answer with no completion tokens, or only whitespace."""
    return completion_tokens <= 0 or (answer is not None and not answer.strip())


def quantile_edges(reference: Sequence[float], bins: int = DEFAULT_BINS) -> list[float]:
    """Interior cut points of ``bins`` equal-frequency bins of ``reference`` (ties merged).

    Bin 0 is ``(-inf, e_0]``, bin i is ``(e_{i-1}, e_i]``, the last ``(e_last, +inf)``.
    """
    if bins < 2:
        raise ValueError("bins must be at least 2")
    if len(reference) < 2:
        raise ValueError("a reference needs at least 2 values")
    cuts = statistics.quantiles(reference, n=bins, method="inclusive")
    return sorted(set(cuts))


def bin_proportions(values: Iterable[float], edges: Sequence[float]) -> list[float]:
    """Share of ``values`` in each bin that ``edges`` (from :func:`quantile_edges`) define."""
    counts = [0] * (len(edges) + 1)
    total = 0
    for value in values:
        counts[bisect_left(edges, value)] += 1
        total += 1
    if total == 0:
        raise ValueError("no values to bin")
    return [count / total for count in counts]


def psi(
    reference: Sequence[float],
    recent: Sequence[float],
    bins: int = DEFAULT_BINS,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``recent`` against ``reference`` (bins from the reference)."""
    edges = quantile_edges(reference, bins)
    expected = bin_proportions(reference, edges)
    actual = bin_proportions(recent, edges)
    total = 0.0
    for r, c in zip(expected, actual, strict=True):
        r, c = max(r, epsilon), max(c, epsilon)
        total += (c - r) * math.log(c / r)
    return total


@dataclass(frozen=True)
class DriftSignals:
    """The inputs of the drift score; ``None`` where a signal had too little data."""

    psi_prompt: float | None = None
    psi_response: float | None = None
    feedback_reference: float | None = None
    feedback_recent: float | None = None
    refusal_reference: float | None = None
    refusal_recent: float | None = None
    empty_reference: float | None = None
    empty_recent: float | None = None


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def drift_score(signals: DriftSignals) -> float | None:
    """The max of the normalised signals (formula in the module docstring); None with none."""
    terms: list[float] = []
    for value in (signals.psi_prompt, signals.psi_response):
        if value is not None:
            terms.append(_clamp(value / PSI_CRITICAL))
    pairs = (
        (signals.feedback_recent, signals.feedback_reference, -FEEDBACK_DROP_CRITICAL),
        (signals.refusal_recent, signals.refusal_reference, REFUSAL_INCREASE_CRITICAL),
        (signals.empty_recent, signals.empty_reference, EMPTY_INCREASE_CRITICAL),
    )
    for recent, reference, critical in pairs:
        if recent is not None and reference is not None:
            # a negative critical level turns "recent below reference" into a positive term
            terms.append(_clamp((recent - reference) / critical))
    return max(terms) if terms else None


@dataclass(frozen=True)
class DriftSettings:
    """Window sizes and minimum samples of a :class:`DriftTracker`."""

    reference_size: int = 1000
    """Requests kept as the reference: the first ones after promotion."""
    recent_size: int = 500
    """Requests in the recent window (a ring)."""
    reference_feedback: int = 500
    """Feedback scores kept as the reference: the first ones after promotion."""
    recent_feedback: int = 100
    """Feedback scores in the recent window."""
    min_samples: int = 100
    """Requests each window needs before PSI, rates and the drift score are computed."""
    min_feedback: int = 20
    """Scores each feedback window needs before the feedback means are computed."""
    bins: int = DEFAULT_BINS
    max_versions: int = 16
    """Versions tracked at once; the one observed longest ago is dropped first."""

    def __post_init__(self) -> None:
        for name in ("reference_size", "recent_size", "reference_feedback", "recent_feedback"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2")
        if self.min_samples < 2 or self.min_feedback < 1 or self.max_versions < 1:
            raise ValueError("min_samples >= 2, min_feedback >= 1 and max_versions >= 1")
        if self.min_samples > min(self.reference_size, self.recent_size):
            raise ValueError("min_samples cannot exceed reference_size or recent_size")
        if self.min_feedback > min(self.reference_feedback, self.recent_feedback):
            raise ValueError("min_feedback cannot exceed the feedback window sizes")


# one request: (prompt tokens, completion tokens, refused, empty)
_Request = tuple[int, int, bool, bool]


@dataclass
class _VersionWindows:
    settings: DriftSettings
    recent: deque[_Request] = field(init=False)
    reference: list[_Request] = field(default_factory=list)
    reference_prompt: list[int] | None = None  # a supplied reference sample replaces the
    reference_response: list[int] | None = None  # lengths of `reference`, and its rates
    reference_refusal: float | None = None  # when given; else those of the first requests
    reference_empty: float | None = None
    recent_feedback: deque[float] = field(init=False)
    reference_feedback: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.settings.recent_size)
        self.recent_feedback = deque(maxlen=self.settings.recent_feedback)

    def add(self, request: _Request) -> None:
        self.recent.append(request)
        if len(self.reference) < self.settings.reference_size:
            self.reference.append(request)

    def add_feedback(self, score: float) -> None:
        self.recent_feedback.append(score)
        if len(self.reference_feedback) < self.settings.reference_feedback:
            self.reference_feedback.append(score)

    def reference_count(self) -> int:
        """Requests (or supplied examples) the reference holds."""
        if self.reference_prompt is not None:
            return len(self.reference_prompt)
        return len(self.reference)

    def signals(self) -> DriftSignals | None:
        s = self.settings
        supplied = self.reference_prompt is not None and self.reference_response is not None
        first_enough = len(self.reference) >= s.min_samples
        if len(self.recent) < s.min_samples or not (supplied or first_enough):
            return None
        ref_prompt = self.reference_prompt if supplied else [r[0] for r in self.reference]
        ref_response = self.reference_response if supplied else [r[1] for r in self.reference]
        assert ref_prompt is not None and ref_response is not None
        refusal_reference = self.reference_refusal
        empty_reference = self.reference_empty
        if refusal_reference is None and first_enough:
            refusal_reference = _share(r[2] for r in self.reference)
        if empty_reference is None and first_enough:
            empty_reference = _share(r[3] for r in self.reference)
        values = {
            "psi_prompt": psi(ref_prompt, [r[0] for r in self.recent], s.bins),
            "psi_response": psi(ref_response, [r[1] for r in self.recent], s.bins),
            "refusal_reference": refusal_reference,
            "refusal_recent": _share(r[2] for r in self.recent),
            "empty_reference": empty_reference,
            "empty_recent": _share(r[3] for r in self.recent),
        }
        if (
            len(self.recent_feedback) >= s.min_feedback
            and len(self.reference_feedback) >= s.min_feedback
        ):
            values["feedback_reference"] = statistics.fmean(self.reference_feedback)
            values["feedback_recent"] = statistics.fmean(self.recent_feedback)
        return DriftSignals(**values)


def _share(flags: Iterable[bool]) -> float:
    items = list(flags)
    return sum(items) / len(items)


_SERIES = {
    "score": (
        "kubetune_drift_score",
        "Drift of a version's recent traffic, 0..1 (max of its signals, each over its critical level).",
    ),
    "psi": (
        "kubetune_drift_psi",
        "Population stability index of a length distribution, recent vs reference window.",
    ),
    "feedback": (
        "kubetune_feedback_mean",
        "Mean feedback score (1..5) of the recent and the reference window.",
    ),
    "refusal": ("kubetune_refusal_rate", "Share of refusals among the recent window's answers."),
    "empty": ("kubetune_empty_answer_rate", "Share of empty answers in the recent window."),
    "samples": ("kubetune_drift_window_samples", "Requests held in each drift window."),
}


class DriftTracker(Collector):
    """Bounded drift windows per version of one deployment, exported as Prometheus gauges.

    Feed it :meth:`observe` once per request (and :meth:`observe_feedback` when a score arrives
    after its answer); :meth:`register` it on the registry the gateway serves on ``/metrics``.
    Thread-safe: the gateway observes while the metrics endpoint collects.
    """

    def __init__(self, deployment: str, settings: DriftSettings | None = None) -> None:
        self.deployment = deployment
        self.settings = settings or DriftSettings()
        self._versions: OrderedDict[str, _VersionWindows] = OrderedDict()
        self._lock = threading.Lock()

    def _windows(self, version: str) -> _VersionWindows:
        windows = self._versions.get(version)
        if windows is None:
            windows = _VersionWindows(self.settings)
            self._versions[version] = windows
            while len(self._versions) > self.settings.max_versions:
                self._versions.popitem(last=False)
        self._versions.move_to_end(version)
        return windows

    def set_reference(
        self,
        version: str,
        prompt_tokens: Sequence[int],
        completion_tokens: Sequence[int],
        *,
        refusal_rate: float | None = None,
        empty_rate: float | None = None,
    ) -> None:
        """Use a supplied sample (the FineTuneJob's test split: ``drift-reference.json``) as
        the version's reference, from its first request on.

        PSI is then computed as soon as the recent window holds ``min_samples`` requests. The
        refusal and empty-answer references are the rates given; a rate not given still
        comes from the first requests served. Samples longer than ``reference_size`` keep an
        evenly spaced subset.
        """
        if len(prompt_tokens) < 2 or len(completion_tokens) < 2:
            raise ValueError("a reference sample needs at least 2 values of each length")
        with self._lock:
            windows = self._windows(version)
            windows.reference_prompt = _thin(prompt_tokens, self.settings.reference_size)
            windows.reference_response = _thin(completion_tokens, self.settings.reference_size)
            windows.reference_refusal = refusal_rate
            windows.reference_empty = empty_rate

    def has_reference(self, version: str) -> bool:
        """Whether ``version`` holds a supplied reference (:meth:`set_reference`)."""
        with self._lock:
            windows = self._versions.get(version)
            return windows is not None and windows.reference_prompt is not None

    def observe(
        self,
        version: str,
        prompt_tokens: int,
        completion_tokens: int,
        answer: str | None = None,
        *,
        refused: bool | None = None,
        empty: bool | None = None,
        feedback: float | None = None,
    ) -> None:
        """Record one request. ``refused``/``empty`` override what ``answer`` would say."""
        if refused is None:
            refused = answer is not None and is_refusal(answer)
        if empty is None:
            empty = is_empty_answer(answer, completion_tokens)
        with self._lock:
            windows = self._windows(version)
            windows.add((prompt_tokens, completion_tokens, refused, empty))
            if feedback is not None:
                windows.add_feedback(float(feedback))

    def observe_feedback(self, version: str, score: float) -> None:
        """Record a feedback score (1..5) given after the request was answered."""
        with self._lock:
            self._windows(version).add_feedback(float(score))

    def forget(self, version: str) -> None:
        """Drop a version's windows (it is no longer served); promotion starts it afresh."""
        with self._lock:
            self._versions.pop(version, None)

    def signals(self, version: str) -> DriftSignals | None:
        """The version's signals, or None while its windows hold too few requests."""
        with self._lock:
            windows = self._versions.get(version)
            return windows.signals() if windows is not None else None

    def register(self, registry: CollectorRegistry) -> None:
        """Export the drift gauges on ``registry`` (the one behind the gateway's /metrics)."""
        registry.register(self)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        with self._lock:
            snapshot = [
                (version, w.signals(), len(w.recent), w.reference_count())
                for version, w in self._versions.items()
            ]
        for version, signals, recent, reference in snapshot:
            labels = [self.deployment, version]
            families["samples"].add_metric([*labels, "recent"], recent)
            families["samples"].add_metric([*labels, "reference"], reference)
            if signals is None:
                continue
            score = drift_score(signals)
            if score is not None:
                families["score"].add_metric(labels, score)
            psis = (
                ("prompt_length", signals.psi_prompt),
                ("response_length", signals.psi_response),
            )
            for signal, value in psis:
                if value is not None:
                    families["psi"].add_metric([*labels, signal], value)
            means = (("recent", signals.feedback_recent), ("reference", signals.feedback_reference))
            for window, value in means:
                if value is not None:
                    families["feedback"].add_metric([*labels, window], value)
            if signals.refusal_recent is not None:
                families["refusal"].add_metric(labels, signals.refusal_recent)
            if signals.empty_recent is not None:
                families["empty"].add_metric(labels, signals.empty_recent)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        base = ["deployment", "version"]
        extra = {"psi": ["signal"], "feedback": ["window"], "samples": ["window"]}
        return {
            key: GaugeMetricFamily(name, doc, labels=base + extra.get(key, []))
            for key, (name, doc) in _SERIES.items()
        }


def _thin(values: Sequence[int], limit: int) -> list[int]:
    if len(values) <= limit:
        return list(values)
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]
