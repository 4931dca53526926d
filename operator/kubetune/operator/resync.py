"""The periodic resync and the progress scrapes, kept off the reconcile workers.

A scrape is an HTTP request to a trainer pod; an unreachable pod costs the whole scrape timeout.
Done inline in a reconcile worker, 1000 running jobs with unreachable pods would hold every
worker for seconds at a time, and events of other jobs would wait. Here scrapes run on their own
small pool (at most `concurrency` at once, at most one per job in flight); a finished scrape
leaves its result for the job's next reconcile and queues that reconcile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubetune.api.trainer_contract import Progress

log = logging.getLogger(__name__)


def run_periodically(step: Callable[[], None], interval: Callable[[], float], stop: threading.Event,
                     what: str) -> None:
    """Call `step` every `interval()` seconds until `stop` is set. An exception in one pass is
    logged and the next pass runs as usual: one bad object never ends the resync."""
    while not stop.wait(interval()):
        try:
            step()
        except Exception:
            log.exception("%s: this pass failed; the next one runs in %.0f s", what, interval())


class ProgressScraper:
    """Scrapes trainer pods on a bounded pool of threads; results wait for the job's reconcile."""

    def __init__(self, scrape: Callable[[dict[str, Any]], Progress | None], concurrency: int,
                 on_result: Callable[[Hashable], None]) -> None:
        self._scrape = scrape
        self._on_result = on_result
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="kubetune-scrape")
        self._lock = threading.Lock()
        self._in_flight: set[Hashable] = set()
        self._results: dict[Hashable, Progress] = {}

    def request(self, key: Hashable, pod: dict[str, Any]) -> bool:
        """Scrape `pod` for the job `key` soon; False when a scrape of that job is still running
        (a slow pod is never asked twice at once)."""
        with self._lock:
            if key in self._in_flight:
                return False
            self._in_flight.add(key)
        try:
            self._pool.submit(self._run, key, pod)
        except RuntimeError:  # shut down
            with self._lock:
                self._in_flight.discard(key)
            return False
        return True

    def _run(self, key: Hashable, pod: dict[str, Any]) -> None:
        try:
            progress = self._scrape(pod)
        except Exception:
            log.exception("progress scrape for %s failed", key)
            progress = None
        with self._lock:
            self._in_flight.discard(key)
            if progress is not None:
                self._results[key] = progress
        if progress is not None:
            self._on_result(key)

    def take(self, key: Hashable) -> Progress | None:
        """The latest scraped progress of job `key` not yet taken, if any."""
        with self._lock:
            return self._results.pop(key, None)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._results.pop(key, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
