"""The resync loop survives an exception in a pass, and progress scrapes run on a bounded pool
(at most N at once, one per job in flight), off the reconcile workers (#11)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

from kubetune.api.trainer_result import Progress
from kubetune.operator.resync import ProgressScraper, run_periodically
from kubetune_dev.waiting import wait_until


def test_the_resync_loop_survives_an_exception_in_one_pass() -> None:
    stop = threading.Event()
    passes: list[int] = []

    def step() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("injected: a malformed object in the index")
        if len(passes) == 3:
            stop.set()

    thread = threading.Thread(target=run_periodically, args=(step, lambda: 0.0, stop, "resync"))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and passes == [0, 1, 2]


def test_scrapes_are_bounded_and_one_per_job_in_flight() -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0
    ready: list[Hashable] = []
    all_started = threading.Semaphore(0)

    def scrape(pod: dict[str, Any]) -> Progress | None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        all_started.release()
        release.wait(30)  # an unreachable pod: the scrape hangs until its timeout
        with lock:
            running -= 1
        return Progress(step=pod["step"])

    scraper = ProgressScraper(scrape, 4, ready.append)
    asked = [scraper.request(("ns", f"job-{i}"), {"step": i}) for i in range(20)]
    assert all(asked)
    for _ in range(4):
        assert all_started.acquire(timeout=30)
    # The 4 threads are busy; the other 16 jobs wait in the pool's queue, and nothing else is
    # blocked (the caller here is a reconcile worker or the resync loop).
    assert scraper.request(("ns", "job-0"), {"step": 0}) is False  # still in flight
    assert scraper.in_flight() == 20
    release.set()
    for _ in range(16):
        assert all_started.acquire(timeout=30)
    wait_until(lambda: scraper.in_flight() == 0, timeout=30, what="every scrape done")
    scraper.shutdown()
    assert most <= 4
    assert sorted(ready) == sorted(("ns", f"job-{i}") for i in range(20))
    assert scraper.take(("ns", "job-7")) == Progress(step=7)
    assert scraper.take(("ns", "job-7")) is None  # taken once


def test_a_failing_scrape_leaves_no_job_stuck_in_flight() -> None:
    def scrape(pod: dict[str, Any]) -> Progress | None:
        raise ValueError("not the exposition format")

    done = threading.Event()
    scraper = ProgressScraper(scrape, 1, lambda key: done.set())
    assert scraper.request("k", {})
    wait_until(lambda: scraper.in_flight() == 0, timeout=30, what="the scrape done")
    assert scraper.request("k", {})  # may be asked again
    scraper.shutdown()
    assert scraper.take("k") is None and not done.is_set()
