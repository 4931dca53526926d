"""Teacher vs student, after export: the student's size next to the teacher's "remote".

The evaluation (`kubetune_trainer.evaluation.evaluate`, role `teacher`) scores the teacher and
times both; the student's size is only known once its GGUF files exist, so the export stage
calls :func:`record_student_size` to put it in the evaluation summary (status) and in
`eval/summary.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.common import Artifact
from kubetune.api.trainer_result import EvaluationSummary
from kubetune_trainer.evaluation.report import write_json


def student_size_bytes(artifacts: list[Artifact]) -> int | None:
    """Size of the student's smallest GGUF file, else of its merged weights; None if neither."""
    for kinds in (("gguf",), ("merged",)):
        sizes = [a.size_bytes for a in artifacts if a.kind in kinds and a.size_bytes]
        if sizes:
            return min(sizes)
    return None


def record_student_size(
    evaluation: EvaluationSummary, summary_path: Path, artifacts: list[Artifact]
) -> bool:
    """Set the student's size in `evaluation.teacher` and in `summary_path`'s `teacher`
    section; False (nothing changed) without a teacher comparison or a size."""
    size = student_size_bytes(artifacts)
    if evaluation.teacher is None or size is None:
        return False
    evaluation.teacher.student_size_bytes = size
    report = json.loads(summary_path.read_text(encoding="utf-8"))
    if isinstance(report.get("teacher"), dict):
        report["teacher"]["studentSizeBytes"] = size
    report["summary"] = evaluation.to_wire()
    write_json(summary_path, report)
    return True
