"""Do progress scrapes of unreachable trainer pods stall reconciles? (#11, "Robust loops")

    .venv/bin/python bench/scrape_isolation.py --jobs 1000 --inline-jobs 64

Every "pod" here points at 127.0.0.2:9400, where a socket listens and never answers, so each
scrape costs the whole scrape timeout, as a pod on an unreachable node does. With the operator's
real WorkQueue (8 workers), the real scrape_progress and the real ProgressScraper:

  - off-worker (the operator now): a resync asks for N scrapes; then one event of another job
    is queued, and the time until a worker reconciles it is measured;
  - inline (the operator before): the workers scrape inside the reconcile, as handlers.py did;
    with M jobs queued for a scrape, the same event's wait is measured.

No cluster is needed. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Hashable
from typing import Any

from kubetune.api import constants as c
from kubetune.operator.progress import scrape_progress
from kubetune.operator.resync import ProgressScraper
from kubetune.operator.workqueue import WorkQueue, start_workers

HOST = "127.0.0.2"


def _silent_endpoint() -> socket.socket:
    """A socket that accepts connections (the kernel does) and never answers a request."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((HOST, c.METRICS_PORT))
    server.listen(4096)
    return server


def _pod() -> dict[str, Any]:
    return {"status": {"phase": "Running", "podIP": HOST}}


def off_worker(jobs: int, timeout: float, workers: int) -> tuple[float, float]:
    """(seconds the resync pass took to ask for every scrape, seconds an unrelated event waited)."""
    queue = WorkQueue("bench")
    handled: dict[Hashable, float] = {}
    scraper = ProgressScraper(lambda pod: scrape_progress(pod, timeout), workers, queue.add)

    def process(key: Hashable) -> None:
        scraper.take(key)  # what _reconcile does with the scrape's result
        handled[key] = time.monotonic()

    start_workers(queue, process, workers)
    begun = time.monotonic()
    for i in range(jobs):  # the resync pass
        queue.add(("ns", f"job-{i}"))
        scraper.request(("ns", f"job-{i}"), _pod())
    asked = time.monotonic() - begun
    time.sleep(0.5)  # the scrapes are in flight
    sent = time.monotonic()
    queue.add(("ns", "event"))
    while ("ns", "event") not in handled:
        time.sleep(0.001)
    waited = handled[("ns", "event")] - sent
    scraper.shutdown()
    queue.shutdown()
    return asked, waited


def inline(jobs: int, timeout: float, workers: int) -> float:
    """Seconds an unrelated event waited behind `jobs` reconciles that each scraped inline."""
    queue = WorkQueue("bench-inline")
    handled: dict[Hashable, float] = {}

    def process(key: Hashable) -> None:
        if key != ("ns", "event"):
            scrape_progress(_pod(), timeout)
        handled[key] = time.monotonic()

    for i in range(jobs):
        queue.add(("ns", f"job-{i}"))
    sent = time.monotonic()
    queue.add(("ns", "event"))
    start_workers(queue, process, workers)
    while ("ns", "event") not in handled:
        time.sleep(0.001)
    waited = handled[("ns", "event")] - sent
    queue.shutdown()
    return waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="running jobs whose pods do not answer")
    parser.add_argument("--inline-jobs", type=int, default=64, help="the same, for the inline measurement")
    parser.add_argument("--timeout", type=float, default=2.0, help="scrape timeout (KUBETUNE_SCRAPE_TIMEOUT)")
    parser.add_argument("--workers", type=int, default=8, help="reconcile workers (KUBETUNE_WORKERS)")
    args = parser.parse_args()
    server = _silent_endpoint()
    try:
        asked, waited = off_worker(args.jobs, args.timeout, args.workers)
        print(f"off-worker: {args.jobs} unreachable pods: resync pass {asked * 1000:.1f} ms, "
              f"an unrelated event reconciled after {waited * 1000:.1f} ms")
        waited_inline = inline(args.inline_jobs, args.timeout, args.workers)
        print(f"inline (before): {args.inline_jobs} unreachable pods: the event waited {waited_inline:.1f} s "
              f"(about jobs / workers x timeout = {args.inline_jobs / args.workers * args.timeout:.1f} s; "
              f"{args.jobs} jobs would be {args.jobs / args.workers * args.timeout:.0f} s)")
    finally:
        server.close()


if __name__ == "__main__":
    main()
