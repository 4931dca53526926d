"""The operator's work queue: deduplication, no concurrent processing of one key, re-queue."""

from __future__ import annotations

import threading
import time

from kubetune.operator.workqueue import WorkQueue, start_workers


def test_a_burst_for_one_key_is_processed_once() -> None:
    queue = WorkQueue()
    for _ in range(100):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert queue.get() == "a" and queue.get() == "b"


def test_a_key_readded_while_in_flight_runs_again_after_not_during() -> None:
    queue = WorkQueue()
    queue.add("a")
    key = queue.get()
    queue.add("a")  # an event arrives while "a" is being reconciled
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert queue.get() == "a"


def test_workers_never_overlap_on_one_key_and_survive_errors() -> None:
    queue = WorkQueue()
    active: dict[str, int] = {}
    overlaps: list[str] = []
    processed: list[str] = []
    lock = threading.Lock()

    def process(key: object) -> None:
        with lock:
            active[str(key)] = active.get(str(key), 0) + 1
            if active[str(key)] > 1:
                overlaps.append(str(key))
        time.sleep(0.001)
        with lock:
            active[str(key)] -= 1
            processed.append(str(key))
        if key == "boom":
            raise RuntimeError("reconcile failed")

    threads = start_workers(queue, process, 4)
    for i in range(300):
        queue.add(f"k{i % 7}")
        queue.add("boom")
    deadline = time.monotonic() + 10
    while (len(queue) or any(active.values())) and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.add("last")
    while "last" not in processed and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.shutdown()
    for t in threads:
        t.join(timeout=5)
    assert not overlaps
    assert "last" in processed and "boom" in processed
    assert len(processed) < 600  # bursts collapsed


def test_urgent_keys_go_first_even_if_already_queued() -> None:
    queue = WorkQueue()
    queue.add("status-refresh")
    queue.add("new-job")
    queue.add("new-job", urgent=True)
    queue.add("another-new", urgent=True)
    assert [queue.get(), queue.get(), queue.get()] == ["new-job", "another-new", "status-refresh"]


def _sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_workers_wait_while_inactive_and_report_controller_runtime_metrics() -> None:
    queue = WorkQueue("unit-gated")
    active = threading.Event()
    processed: list[str] = []

    def process(key: object) -> None:
        if key == "bad":
            raise RuntimeError("reconcile failed")
        processed.append(str(key))

    threads = start_workers(queue, process, 2, active=active)
    queue.add("a")
    queue.add("bad")
    queue.add("a")  # deduplicated
    time.sleep(0.3)
    assert processed == []  # a standby takes no key
    assert _sample("workqueue_depth", {"name": "unit-gated"}) == 2
    assert _sample("workqueue_adds_total", {"name": "unit-gated"}) == 2
    active.set()
    deadline = time.monotonic() + 5
    while _sample("controller_runtime_reconcile_total", {"controller": "unit-gated", "result": "error"}) < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    while not processed and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.shutdown()
    for t in threads:
        t.join(timeout=5)
    assert processed == ["a"]
    labels = {"controller": "unit-gated"}
    assert _sample("controller_runtime_reconcile_total", {**labels, "result": "success"}) == 1
    assert _sample("controller_runtime_reconcile_errors_total", labels) == 1
    assert _sample("controller_runtime_reconcile_time_seconds_count", labels) == 2
    assert _sample("workqueue_queue_duration_seconds_count", {"name": "unit-gated"}) == 2
    assert _sample("workqueue_work_duration_seconds_count", {"name": "unit-gated"}) == 2
    assert _sample("workqueue_depth", {"name": "unit-gated"}) == 0


def test_an_abandoned_key_goes_back_to_the_queue_without_counting_as_an_error() -> None:
    from kubetune.operator.workqueue import Abandon

    queue = WorkQueue("unit-abandon")
    active = threading.Event()
    active.set()
    calls: list[str] = []

    def process(key: object) -> None:
        calls.append(str(key))
        active.clear()  # leadership lost mid-reconcile
        raise Abandon("not the leader")

    threads = start_workers(queue, process, 1, active=active)
    queue.add("k")
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.7)
    assert calls == ["k"] and len(queue) == 1  # waiting for the next leader term
    assert _sample("workqueue_retries_total", {"name": "unit-abandon"}) == 1
    assert _sample("controller_runtime_reconcile_errors_total", {"controller": "unit-abandon"}) == 0
    queue.shutdown()
    for t in threads:
        t.join(timeout=5)


def test_a_busy_worker_shows_in_unfinished_work_and_longest_running() -> None:
    queue = WorkQueue("unit-busy")
    release = threading.Event()
    threads = start_workers(queue, lambda key: release.wait(5), 1)
    queue.add("slow")
    deadline = time.monotonic() + 5
    while _sample("workqueue_longest_running_processor_seconds", {"name": "unit-busy"}) < 0.2 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = _sample("workqueue_longest_running_processor_seconds", {"name": "unit-busy"})
    assert busy >= 0.2  # the slow key is in flight
    assert _sample("workqueue_unfinished_work_seconds", {"name": "unit-busy"}) >= busy
    release.set()
    while _sample("workqueue_work_duration_seconds_count", {"name": "unit-busy"}) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sample("workqueue_longest_running_processor_seconds", {"name": "unit-busy"}) == 0
    queue.shutdown()
    for t in threads:
        t.join(timeout=5)


def test_a_key_added_after_a_delay_is_queued_then_once_and_the_earliest_delay_wins() -> None:
    queue = WorkQueue()
    queue.add_after("a", 0.6)
    queue.add_after("a", 0.2)  # sooner: replaces the later one
    queue.add_after("a", 0.4)  # later than the one pending: ignored
    queue.add_after("b", 0)  # no delay: queued at once
    assert len(queue) == 1 and queue.get() == "b"
    time.sleep(0.1)
    assert len(queue) == 0
    deadline = time.monotonic() + 5
    while len(queue) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.get() == "a"
    queue.done("a")
    time.sleep(0.7)  # past the superseded 0.4 s and 0.6 s: "a" is not queued again
    assert len(queue) == 0
    queue.shutdown()
