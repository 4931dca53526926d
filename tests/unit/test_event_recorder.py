"""kube.EventRecorder: the operator's Events are posted off the reconcile workers, in order,
and a failing or refused post never reaches the reconcile."""

from __future__ import annotations

import threading
from typing import Any

from kubetune.operator.kube import EventRecorder, NotLeaderError

OWNER = {"metadata": {"name": "bot", "namespace": "ml", "uid": "u"}}


def test_a_post_returns_before_the_event_is_written_and_every_event_is_written_after() -> None:
    release = threading.Event()
    posted: list[str] = []

    def post(owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        release.wait(10)  # a slow apiserver
        posted.append(reason)

    recorder = EventRecorder(post, threads=1)
    for reason in ("Pending", "Training", "Succeeded"):
        recorder.post(OWNER, "Normal", reason, "m")  # returns at once though nothing was written
    assert posted == []
    release.set()
    recorder.flush()
    assert posted == ["Pending", "Training", "Succeeded"]  # one thread: in order
    recorder.stop()


def test_a_refused_or_failing_post_is_dropped_and_the_next_ones_go_out() -> None:
    posted: list[str] = []

    def post(owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if reason == "NotLeader":
            raise NotLeaderError("lost the Lease")
        if reason == "Boom":
            raise RuntimeError("apiserver hiccup")
        posted.append(reason)

    recorder = EventRecorder(post, threads=2)
    for reason in ("NotLeader", "Boom", "Pending"):
        recorder.post(OWNER, "Normal", reason, "m")
    recorder.flush()
    assert posted == ["Pending"]
    recorder.stop()


def test_a_full_backlog_drops_the_event_instead_of_blocking_the_reconcile() -> None:
    release = threading.Event()
    posted: list[str] = []

    def post(owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        release.wait(10)
        posted.append(reason)

    recorder = EventRecorder(post, threads=1, backlog=2)
    recorder.post(OWNER, "Normal", "first", "m")  # taken by the thread, which waits
    for _ in range(100):  # until the thread has taken "first", the backlog holds up to 2 more
        if recorder._queue.qsize() == 0:
            break
        threading.Event().wait(0.01)
    for reason in ("second", "third", "fourth", "fifth"):
        recorder.post(OWNER, "Normal", reason, "m")  # never blocks
    release.set()
    recorder.flush()
    assert posted == ["first", "second", "third"]
    recorder.stop()
