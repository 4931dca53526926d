"""Bounded polling: every wait in the dev cluster has a timeout and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold in time; the message names it and the last value seen."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns a truthy value; return that value. None, False and
    empty collections mean "not yet" (a list of pods that is still empty is not an answer).

    Exceptions raised by ``probe`` count as "not yet" and the last one is reported on timeout,
    except those in ``fatal`` (e.g. "the process died"), which end the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except fatal:
            raise
        except Exception as error:  # a probe may fail while a component is still starting
            last = error
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
