"""Data stage of the trainer: sources, formats, validation, dedup, scans, split, mixing, report.

Entry point: :func:`prepare_dataset`. Each transform is a pure function in its own module.
"""

from kubetune_trainer.data.errors import (
    DataError,
    DataPolicyError,
    DataSourceError,
    DataValidationError,
)
from kubetune_trainer.data.prepare import PreparedData, prepare_dataset
from kubetune_trainer.data.report import DataReport, DatasetCheck

__all__ = [
    "DataError",
    "DataPolicyError",
    "DataReport",
    "DataSourceError",
    "DataValidationError",
    "DatasetCheck",
    "PreparedData",
    "prepare_dataset",
]
