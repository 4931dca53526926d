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
