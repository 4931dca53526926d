"""A deduplicating work queue of object keys, as in controller-runtime.

Watch events only add a key; a fixed set of worker threads reconciles each key from the
latest cached state. A burst of events for one object collapses into one reconcile, a key is
never reconciled by two workers at once, and memory stays bounded by the number of objects
rather than the number of events.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    """Keys waiting to be processed, each at most once in the queue and once in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._urgent: deque[Hashable] = deque()  # served first: objects whose children are missing
        self._dirty: set[Hashable] = set()  # queued, or re-added while in flight
        self._processing: set[Hashable] = set()
        self._shutdown = False

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
            if key not in self._processing:
                (self._urgent if urgent else self._queue).append(key)
                self._cond.notify()

    def get(self) -> Hashable | None:
        """The next key to process (blocks); None once the queue is shut down."""
        with self._cond:
            while not self._queue and not self._urgent and not self._shutdown:
                self._cond.wait()
            if self._shutdown:
                return None
            key = self._urgent.popleft() if self._urgent else self._queue.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            return key

    def done(self, key: Hashable) -> None:
        """Mark `key` processed; if it was re-added meanwhile, queue it again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._urgent)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()


def start_workers(queue: WorkQueue, process: Callable[[Hashable], None], count: int) -> list[threading.Thread]:
    """Threads that process keys until the queue shuts down; an exception is logged, not fatal."""

    def work() -> None:
        while (key := queue.get()) is not None:
            try:
                process(key)
            except Exception:
                log.exception("processing %s failed; the next event or resync retries", key)
            finally:
                queue.done(key)

    threads = [threading.Thread(target=work, name=f"kubetune-worker-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads
