"""The data report: every problem with its file:line, what was removed and why, token stats.

Written as ``<workdir>/data/report.json`` (everything) and ``<workdir>/data/report.txt`` (a
short summary for people); :meth:`DataReport.summary` gives the counts for the FineTuneJob's
status. Excerpts of scan findings are redacted before they get here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.trainer_result import DataReportSummary, TeacherUsage
from kubetune_trainer.data.classes import ClassDistribution
from kubetune_trainer.data.dedup import Duplicate
from kubetune_trainer.data.records import Problem
from kubetune_trainer.data.scan import Finding
from kubetune_trainer.data.split import Leak
from kubetune_trainer.data.stats import TokenStats

if TYPE_CHECKING:
    from kubetune_trainer.distill.generate import TeacherStats
    from kubetune_trainer.distill.teacher import TeacherClient

SHOWN = 5
# How :func:`formats.mappings` names each mapping: the report.json key, and the report.txt words.
MAPPED_KEYS = {"sharegpt": "fromShareGPT", "model-role": "modelRoleAsAssistant"}
MAPPED_WORDS = {
    "sharegpt": "mapped from ShareGPT (conversations/from/value read as messages/role/content)",
    "model-role": "with Gemma's 'model' role read as 'assistant'",
}
EXACT_WORDS = "exact (ignoring case and whitespace)"


@dataclass
class DatasetCheck:
    """What the checks found in one dataset (the task data, or the general data)."""

    source: str
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    mapped: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    kept: int = 0
    overlap: int = 0
    """Synthetic records whose prompt already is in the data (left out)."""

    @property
    def invalid(self) -> int:
        """Records rejected by validation."""
        return len({p.loc for p in self.problems if p.severity == "error"})

    @property
    def flagged(self) -> int:
        """Records caught by at least one scan."""
        return len({f.loc for f in self.findings})

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records": self.rows,
            "invalid": self.invalid,
            "duplicatesRemoved": len(self.duplicates),
            "mapped": {MAPPED_KEYS[k]: n for k, n in sorted(self.mapped.items())},
            "flagged": self.flagged,
            "dropped": self.dropped,
            "kept": self.kept,
            "problemsByCode": dict(Counter(p.code for p in self.problems).most_common()),
            "findingsByRule": dict(
                Counter(f"{f.kind}/{f.rule}" for f in self.findings).most_common()
            ),
            "problems": [p.to_json() for p in self.problems],
            "duplicates": [d.to_json() for d in self.duplicates],
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass
class DataReport:
    """Everything the data stage decided, and why."""

    format: str
    main: DatasetCheck
    action: str = "drop"
    dedup: str = "near"
    max_length: int = 0
    general: DatasetCheck | None = None
    general_ratio: float = 0.0
    general_mixed: int = 0
    train: int = 0
    validation: int = 0
    test: int = 0
    seed: int = 0
    leaks: list[Leak] = field(default_factory=list)
    tokens: TokenStats | None = None
    tokenizer: str | None = None
    classes: ClassDistribution | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    distilled: TeacherStats | None = None
    """The teacher's answers to the dataset's prompts (objective distill)."""
    teacher_rejected: int = 0
    """Records carrying a teacher's answer that validation rejected."""
    augmented: TeacherStats | None = None
    """The teacher's synthetic examples (dataset.augment)."""
    synthetic: DatasetCheck | None = None
    """What the checks found in the synthetic examples."""
    synthetic_mixed: int = 0
    """Synthetic examples in the training split."""
    teacher: TeacherUsage | None = None

    @property
    def truncated(self) -> int:
        """Examples of the final splits longer than maxLength."""
        return self.tokens.truncated if self.tokens else 0

    def summary(self) -> DataReportSummary:
        """The counts for ``status.data``."""
        return DataReportSummary(
            format=self.format,
            total=self.main.rows,
            invalid=self.main.invalid,
            duplicates_removed=len(self.main.duplicates),
            flagged=self.main.flagged,
            dropped=self.main.dropped,
            train=self.train,
            validation=self.validation,
            test=self.test,
            general_mixed=self.general_mixed,
            truncated=self.truncated,
            leakage=len(self.leaks),
            class_balance=None if self.classes is None else self.classes.summary(),
            synthetic=self.synthetic_mixed,
            teacher=self.teacher,
        )

    def to_json(self) -> dict[str, Any]:
        """The full report."""
        return {
            "summary": self.summary().to_wire(),
            "error": self.error,
            "format": self.format,
            "policy": {"dedup": self.dedup, "exactDuplicates": EXACT_WORDS, "action": self.action},
            "data": self.main.to_json(),
            "general": None
            if self.general is None
            else {
                **self.general.to_json(),
                "ratio": self.general_ratio,
                "mixed": self.general_mixed,
            },
            "split": {
                "seed": self.seed,
                "train": self.train,
                "validation": self.validation,
                "test": self.test,
            },
            "leakage": [leak.to_json() for leak in self.leaks],
            "classes": None if self.classes is None else self.classes.to_json(),
            "tokens": None
            if self.tokens is None
            else {**self.tokens.to_json(), "tokenizer": self.tokenizer},
            "teacher": None if self.teacher is None else self.teacher.to_wire(),
            "synthetic": None
            if self.synthetic is None
            else {
                **self.synthetic.to_json(),
                "overlapRemoved": self.synthetic.overlap,
                "mixed": self.synthetic_mixed,
            },
            "warnings": self.warnings,
        }

    def to_text(self) -> str:
        """A short summary for people; the JSON report has the rest."""
        m = self.main
        lines = [
            f"kubetune data report: {m.rows} {self.format or 'unknown-format'} records from {m.source}"
        ]
        if self.error:
            lines.append(f"  FAILED: {self.error}")
        lines.extend(_mapped(m))
        lines.append(f"  invalid     {m.invalid}" + _examples(m.problems, errors_only=True))
        kinds = Counter(d.kind for d in m.duplicates)
        lines.append(
            f"  duplicates  {len(m.duplicates)} removed (dedup {self.dedup}: {EXACT_WORDS} "
            f"{kinds['exact']}, near {kinds['near']})"
        )
        rules = ", ".join(
            f"{rule} {n}"
            for rule, n in Counter(f"{f.kind}/{f.rule}" for f in m.findings).most_common()
        )
        lines.append(
            f"  scans       {m.flagged} record(s) caught{f' ({rules})' if rules else ''}; action {self.action}: {m.dropped} dropped"
        )
        lines.extend(f"              {f}" for f in m.findings[:SHOWN])
        if self.general is not None:
            g = self.general
            lines.append(
                f"  general     {g.rows} read from {g.source}, {g.invalid} invalid, {len(g.duplicates)} duplicate(s), "
                f"{g.flagged} caught; {self.general_mixed} mixed into train (ratio {self.general_ratio})"
            )
            lines.extend(f"  {line}" for line in _mapped(g))
        if self.teacher is not None:
            u = self.teacher
            lines.append(
                f"  teacher     {u.model}: {u.answered} answered ({u.cached} from the cache), "
                f"{u.requests} request(s), {u.failed} unanswered, {u.rejected} answer(s) rejected "
                f"by validation; tokens {u.prompt_tokens} prompt + {u.completion_tokens} completion"
            )
        if self.synthetic is not None:
            sy = self.synthetic
            lines.append(
                f"  synthetic   {sy.rows} written by the teacher, {sy.invalid} invalid, "
                f"{len(sy.duplicates)} duplicate(s), {sy.overlap} repeating a prompt of the data, "
                f"{sy.flagged} caught; {self.synthetic_mixed} in train (flagged synthetic: true)"
            )
        lines.append(
            f"  splits      train {self.train} (incl. {self.general_mixed} general, "
            f"{self.synthetic_mixed} synthetic), validation {self.validation}, "
            f"test {self.test} (seed {self.seed}); leakage: {len(self.leaks)} removed"
        )
        if self.classes is not None:
            lines.append(self.classes.to_text())
        if self.tokens:
            t = self.tokens
            lines.append(
                f"  tokens      min {t.min} / mean {t.mean} / p50 {t.p50} / p95 {t.p95} / max {t.max}; "
                f"{t.truncated} of {t.count} longer than maxLength {t.max_length} (would be truncated)"
            )
        else:
            lines.append("  tokens      not counted (no tokenizer)")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.append("Full report: data/report.json")
        return "\n".join(lines) + "\n"

    def write(self, workdir: Path) -> tuple[Path, Path]:
        """Write ``data/report.json`` and ``data/report.txt`` under ``workdir``."""
        folder = workdir / "data"
        folder.mkdir(parents=True, exist_ok=True)
        json_path, text_path = folder / "report.json", folder / "report.txt"
        json_path.write_text(
            json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        text_path.write_text(self.to_text(), encoding="utf-8")
        return json_path, text_path


def _mapped(check: DatasetCheck) -> list[str]:
    return [
        f"  mapped      {n} record(s) {MAPPED_WORDS[k]}"
        for k, n in sorted(check.mapped.items())
        if n
    ]


def _examples(problems: list[Problem], *, errors_only: bool) -> str:
    chosen = [p for p in problems if p.severity == "error" or not errors_only]
    if not chosen:
        return ""
    shown = "; ".join(str(p) for p in chosen[:SHOWN])
    more = f"; … {len(chosen) - SHOWN} more" if len(chosen) > SHOWN else ""
    return f"  ({shown}{more})"


def teacher_usage(teacher: TeacherClient, report: DataReport) -> TeacherUsage:
    """The teacher's figures for ``status.data.teacher``."""
    stats = [x for x in (report.distilled, report.augmented) if x is not None]
    if report.distilled is not None:
        made = report.distilled.teacher_locations
        report.teacher_rejected = len(
            {p.loc for p in report.main.problems if p.severity == "error" and p.loc in made}
        )
    return TeacherUsage(
        model=teacher.spec.name(),
        answered=sum(x.answered for x in stats),
        cached=teacher.cached,
        requests=teacher.requests,
        failed=sum(x.failed for x in stats),
        rejected=report.teacher_rejected + (report.synthetic.invalid if report.synthetic else 0),
        prompt_tokens=teacher.prompt_tokens,
        completion_tokens=teacher.completion_tokens,
    )
