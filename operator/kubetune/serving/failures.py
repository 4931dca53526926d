"""The one error a version's preparation fails with: which step, why, and whether a retry helps."""

from __future__ import annotations

from kubetune.api.serving import Step


class StepFailure(Exception):
    """A step of preparing a version failed; ``permanent`` when no retry can fix it."""

    def __init__(self, step: Step, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.step: Step = step
        self.message = message
        self.permanent = permanent
