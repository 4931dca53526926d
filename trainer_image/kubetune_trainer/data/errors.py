"""Errors of the data stage. Every message is actionable: it names the file:line and the fix.

The pipeline maps :class:`DataPolicyError` to the status reason ``DataPolicyFailed``; the others
fail the job with the message as it is. All of them are raised after the data report has been
written (when there is anything to report) and before any model is loaded.
"""

from __future__ import annotations


class DataError(Exception):
    """Base of every data-stage error."""


class DataSourceError(DataError):
    """A dataset source cannot be read: missing file, unreachable URL, missing package."""


class DataValidationError(DataError):
    """The input is not usable: no valid records, mixed formats, most records invalid."""


class DataPolicyError(DataError):
    """The data policy (``dataPolicy.action: fail``) caught poisoned, secret or personal data."""
