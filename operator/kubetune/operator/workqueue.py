"""A deduplicating work queue of object keys, as in controller-runtime.

Watch events only add a key; a fixed set of worker threads reconciles each key from the
latest cached state. A burst of events for one object collapses into one reconcile, a key is
never reconciled by two workers at once, and memory stays bounded by the number of objects
rather than the number of events.

The queue and its workers report client-go's and controller-runtime's metrics under the
queue's `name` (the controller's name): depth, adds, time waiting, time processing, and each
reconcile's result.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from kubetune.operator.metrics import (
    ACTIVE_WORKERS,
    MAX_CONCURRENT_RECONCILES,
    RECONCILE_ERRORS_TOTAL,
    RECONCILE_TIME,
    RECONCILE_TOTAL,
    WORKQUEUE_ADDS,
    WORKQUEUE_DEPTH,
    WORKQUEUE_LONGEST_RUNNING,
    WORKQUEUE_QUEUE_DURATION,
    WORKQUEUE_RETRIES,
    WORKQUEUE_UNFINISHED_WORK,
    WORKQUEUE_WORK_DURATION,
)

log = logging.getLogger(__name__)


class Abandon(Exception):
    """Raised by a process function to give a key up without it counting as a failed reconcile
    (this replica lost the leader Lease mid-reconcile): the key is queued again, and the
    leader, whichever replica that is, reconciles it."""


class WorkQueue:
    """Keys waiting to be processed, each at most once in the queue and once in flight."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._urgent: deque[Hashable] = deque()  # served first: objects whose children are missing
        self._dirty: set[Hashable] = set()  # queued, or re-added while in flight
        self._processing: dict[Hashable, float] = {}  # in flight, since (monotonic)
        self._added_at: dict[Hashable, float] = {}  # when a dirty key was (first) added
        self._shutdown = False
        # add_after: (due, tie-break, key), served by one timer thread started on first use; its
        # own condition, so that an add() never wakes the timer instead of a worker
        self._delayed_cond = threading.Condition()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._delayed_seq = itertools.count()
        self._delayed_due: dict[Hashable, float] = {}  # the earliest time each delayed key is due
        self._timer: threading.Thread | None = None
        self._depth = WORKQUEUE_DEPTH.labels(name)
        self._adds = WORKQUEUE_ADDS.labels(name)
        self._waited = WORKQUEUE_QUEUE_DURATION.labels(name)
        self._retries = WORKQUEUE_RETRIES.labels(name)
        self._depth.set(0)
        WORKQUEUE_UNFINISHED_WORK.labels(name).set_function(lambda: sum(self._busy_for()))
        WORKQUEUE_LONGEST_RUNNING.labels(name).set_function(lambda: max(self._busy_for(), default=0.0))

    def _busy_for(self) -> list[float]:
        """Seconds each in-flight key has been processed (read at scrape time)."""
        now = time.monotonic()
        with self._cond:
            return [now - since for since in self._processing.values()]

    def add(self, key: Hashable, *, urgent: bool = False) -> None:
        """Ask for `key` to be processed (again) soon; `urgent` keys go before the others."""
        with self._cond:
            if self._shutdown:
                return
            if key in self._dirty:
                if urgent and key in self._queue:
                    self._queue.remove(key)
                    self._urgent.append(key)
                return
            self._dirty.add(key)
            self._added_at[key] = time.monotonic()
            self._adds.inc()
            if key not in self._processing:
                (self._urgent if urgent else self._queue).append(key)
                self._depth.set(len(self._queue) + len(self._urgent))
                self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Add `key` once `delay` seconds have passed (client-go's AddAfter); a key already due
        sooner is left as it is. One thread serves every delayed key, however many there are."""
        if delay <= 0:
            self.add(key)
            return
        with self._delayed_cond:
            if self._shutdown:
                return
            due = time.monotonic() + delay
            if self._delayed_due.get(key, float("inf")) <= due:
                return
            self._delayed_due[key] = due
            heapq.heappush(self._delayed, (due, next(self._delayed_seq), key))
            if self._timer is None:
                self._timer = threading.Thread(target=self._serve_delayed, daemon=True,
                                               name=f"kubetune-{self.name}-delayed")
                self._timer.start()
            self._delayed_cond.notify()

    def _serve_delayed(self) -> None:
        while True:
            with self._delayed_cond:
                while not self._shutdown and (
                        not self._delayed or self._delayed[0][0] > time.monotonic()):
                    self._delayed_cond.wait(self._delayed[0][0] - time.monotonic() if self._delayed else None)
                if self._shutdown:
                    return
                due = []
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    when, _, key = heapq.heappop(self._delayed)
                    if self._delayed_due.get(key) == when:  # else superseded by an earlier one
                        del self._delayed_due[key]
                        due.append(key)
            for key in due:
                self.add(key)

    def get(self) -> Hashable | None:
        """The next key to process (blocks); None once the queue is shut down."""
        with self._cond:
            while not self._queue and not self._urgent and not self._shutdown:
                self._cond.wait()
            if self._shutdown:
                return None
            key = self._urgent.popleft() if self._urgent else self._queue.popleft()
            self._dirty.discard(key)
            self._processing[key] = time.monotonic()
            added = self._added_at.pop(key, None)
            if added is not None:
                self._waited.observe(time.monotonic() - added)
            self._depth.set(len(self._queue) + len(self._urgent))
            return key

    def done(self, key: Hashable) -> None:
        """Mark `key` processed; if it was re-added meanwhile, queue it again."""
        with self._cond:
            self._processing.pop(key, None)
            if key in self._dirty:
                self._queue.append(key)
                self._depth.set(len(self._queue) + len(self._urgent))
                self._cond.notify()

    def requeue(self, key: Hashable) -> None:
        """Mark `key` processed without having processed it: it goes back, first in line."""
        with self._cond:
            self._processing.pop(key, None)
            self._retries.inc()
            if self._shutdown:
                return
            if key not in self._dirty:
                self._dirty.add(key)
                self._added_at.setdefault(key, time.monotonic())
            if key not in self._urgent and key not in self._queue:
                self._urgent.appendleft(key)
            self._depth.set(len(self._queue) + len(self._urgent))
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._urgent)

    @property
    def is_shut_down(self) -> bool:
        return self._shutdown

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
        with self._delayed_cond:
            self._delayed_cond.notify_all()


def start_workers(
    queue: WorkQueue,
    process: Callable[[Hashable], None],
    count: int,
    *,
    active: threading.Event | None = None,
) -> list[threading.Thread]:
    """Threads that process keys until the queue shuts down; an exception is logged, not fatal.

    With `active`, workers take keys only while it is set (this replica leads); keys added
    meanwhile wait in the queue, deduplicated.
    """
    controller = queue.name
    reconciles_ok = RECONCILE_TOTAL.labels(controller, "success")
    reconciles_failed = RECONCILE_TOTAL.labels(controller, "error")
    errors = RECONCILE_ERRORS_TOTAL.labels(controller)
    took = RECONCILE_TIME.labels(controller)
    worked = WORKQUEUE_WORK_DURATION.labels(queue.name)
    busy = ACTIVE_WORKERS.labels(controller)
    MAX_CONCURRENT_RECONCILES.labels(controller).set(count)

    def work() -> None:
        while not queue.is_shut_down:
            if active is not None and not active.wait(0.5):
                continue
            key = queue.get()
            if key is None:
                return
            if active is not None and not active.is_set():
                queue.requeue(key)
                continue
            busy.inc()
            start = time.monotonic()
            try:
                process(key)
                reconciles_ok.inc()
            except Abandon as exc:
                log.info("gave %s up: %s", key, exc)
                queue.requeue(key)
                time.sleep(0.5)  # until the election notices too; not a busy loop meanwhile
                continue
            except Exception:
                reconciles_failed.inc()
                errors.inc()
                log.exception("processing %s failed; the next event or resync retries", key)
            finally:
                elapsed = time.monotonic() - start
                took.observe(elapsed)
                worked.observe(elapsed)
                busy.dec()
            queue.done(key)

    threads = [threading.Thread(target=work, name=f"kubetune-{controller}-worker-{i}", daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    return threads
