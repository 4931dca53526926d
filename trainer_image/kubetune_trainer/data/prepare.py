"""The data stage: read → (teacher answers, objective distill) → validate → length check →
dedup → scan → split → leakage → (synthetic examples from the training split, dataset.augment,
checked the same way) → mix → class balance → report.

:func:`prepare_dataset` is the one entry point. It runs before the student is loaded (a
tokenizer, cheap to load, may be given for the token counts; a `teacher.uri` model is loaded
and freed here, see :mod:`kubetune_trainer.distill`), writes ``<workdir>/data/report.json`` and
``report.txt`` whatever happens, and on success ``<workdir>/data/{train,validation,test}.jsonl``
with the normalised records. It raises, after writing the report:

- :class:`DataSourceError` when a source cannot be read, or the teacher refuses a request
  in a way no retry changes (:class:`kubetune_trainer.distill.TeacherUnavailableError`);
- :class:`DataValidationError` for an empty dataset, mixed formats, a format that does not fit
  the objective, most records invalid (see :mod:`.validate`), or no valid record left;
- :class:`DataPolicyError` when ``dataPolicy.action`` is ``fail`` and a scan caught anything
  (in the task data or the general data).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import DatasetSource, FineTuneJobSpec
from kubetune_trainer.data.classes import class_distribution
from kubetune_trainer.data.dedup import deduplicate
from kubetune_trainer.data.errors import DataError, DataPolicyError, DataValidationError
from kubetune_trainer.data.formats import normalise
from kubetune_trainer.data.records import SHAPES, Format, Location, RawRow, Record
from kubetune_trainer.data.report import DataReport, DatasetCheck, teacher_usage
from kubetune_trainer.data.scan import Finding, rules_for, scan_records
from kubetune_trainer.data.sources import describe_source, read_source
from kubetune_trainer.data.split import mix_general, prompt_key, remove_leakage, split_records
from kubetune_trainer.data.stats import count_tokens, prompt_token_counts, token_stats
from kubetune_trainer.data.validate import (
    check_invalid_share,
    check_lengths,
    check_roles,
    detect_format,
    validate_rows,
)
from kubetune_trainer.distill import (
    AnswerCache,
    TeacherClient,
    augment_rows,
    cache_root,
    distill_rows,
    make_teacher,
)
from kubetune_trainer.distill.generate import SYNTHETIC_MARK

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
SHOWN = 5


@dataclass
class PreparedData:
    """The prepared splits, as lists of normalised records in trl's native shapes."""

    format: Format
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    general_mixed: int
    report: DataReport
    task_train: list[dict[str, Any]] = field(default_factory=list)
    """The training records of the task data alone (no general data mixed in): where the
    few-shot baseline draws its examples."""


def prepare_dataset(
    spec: FineTuneJobSpec,
    workdir: Path,
    *,
    tokenizer: Any | None = None,
    base_dir: Path | None = None,
) -> PreparedData:
    """Prepare ``spec.dataset`` under ``spec.dataPolicy`` into train / validation / test.

    ``tokenizer`` (a ``PreTrainedTokenizerBase``) enables token counts and the length checks;
    ``base_dir`` anchors relative ``file://`` URIs.
    """
    workdir = Path(workdir)
    report = DataReport(
        format="",
        main=DatasetCheck(describe_source(spec.dataset.source)),
        action=spec.data_policy.action,
        dedup=spec.data_policy.dedup,
        max_length=spec.training.max_length,
        seed=spec.dataset.split.seed,
        tokenizer=None
        if tokenizer is None
        else str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
    )
    try:
        prepared = _prepare(spec, workdir, tokenizer, base_dir, report)
    except DataError as exc:
        report.error = str(exc)
        report.write(workdir)
        log.error("data stage failed: %s", exc)
        raise
    report.write(workdir)
    log.info("%s", report.to_text())
    return prepared


def _prepare(
    spec: FineTuneJobSpec,
    workdir: Path,
    tokenizer: Any | None,
    base_dir: Path | None,
    report: DataReport,
) -> PreparedData:
    dataset = spec.dataset
    main = report.main
    rows = read_source(dataset.source, base_dir)
    main.rows = len(rows)
    if not rows:
        raise DataValidationError(
            f"{main.source}: the dataset is empty; point dataset.source at a JSONL or JSON file with records"
        )
    teacher = _teacher(spec, workdir, base_dir)
    try:
        return _prepare_rows(spec, workdir, tokenizer, base_dir, report, rows, teacher)
    finally:
        if teacher is not None:
            report.teacher = teacher_usage(teacher, report)
            teacher.close()


def _prepare_rows(
    spec: FineTuneJobSpec,
    workdir: Path,
    tokenizer: Any | None,
    base_dir: Path | None,
    report: DataReport,
    rows: list[RawRow],
    teacher: TeacherClient | None,
) -> PreparedData:
    dataset, policy = spec.dataset, spec.data_policy
    main = report.main
    originals: dict[Location, Any] = {}
    if spec.objective == "distill" and teacher is not None:
        originals = {row.loc: row.value for row in rows if row.error is None}
        rows, report.distilled = distill_rows(teacher, rows)
    fmt = detect_format(rows, dataset.format, "dataset")
    report.format = fmt
    _check_objective(spec, fmt)

    records = _check(rows, fmt, main, spec, tokenizer, what="dataset")
    findings = main.findings
    records = _apply_action(records, findings, main, policy.action)
    if not records:
        raise DataValidationError(
            f"{main.source}: no valid record remains ({main.rows} read: {main.invalid} invalid, "
            f"{len(main.duplicates)} duplicates, {main.dropped} dropped by the data policy); first problems: "
            + "; ".join(str(p) for p in main.problems[:SHOWN] or main.findings[:SHOWN])
        )

    train, validation, test = split_records(
        records, dataset.split.validation, dataset.split.test, dataset.split.seed
    )
    validation, test, report.leaks = remove_leakage(train, validation, test)
    if originals:
        test = _own_references(test, originals, fmt)
    if dataset.augment is not None and teacher is not None:
        train = train + _augment(spec, teacher, train, validation + test, tokenizer, report)

    if dataset.general is not None:
        general = _prepare_general(dataset.general.source, fmt, spec, tokenizer, report, base_dir)
        held_out = {prompt_key(r) for r in validation + test}
        general = [r for r in general if prompt_key(r) not in held_out]
        report.general_ratio = dataset.general.ratio
        train, report.general_mixed = mix_general(
            train, general, dataset.general.ratio, dataset.split.seed
        )
        task = len(train) - report.general_mixed
        share = report.general_mixed / len(train)
        if share < dataset.general.ratio - 0.05:
            report.warnings.append(
                f"only {len(general)} usable general records for {task} task records: general data "
                f"is {share:.0%} of train, not {dataset.general.ratio:.0%}"
            )

    report.train, report.validation, report.test = len(train), len(validation), len(test)
    report.synthetic_mixed = sum(1 for r in train if r.synthetic)
    task_splits = {
        "train": [r.data for r in train if not r.general],
        "validation": [r.data for r in validation],
        "test": [r.data for r in test],
    }
    report.classes = class_distribution(
        [r.data for r in records], policy.max_class_imbalance, task_splits
    )
    if report.classes is not None and (warning := report.classes.warning()) is not None:
        report.warnings.append(warning)
    if tokenizer is not None:
        report.tokens = token_stats(
            [r.tokens for r in train + validation + test if r.tokens is not None],
            spec.training.max_length,
        )
    else:
        report.warnings.append("no tokenizer given: token counts and length checks were skipped")
    if not test:
        report.warnings.append(
            "the test split is empty: evaluation and the gate have nothing to score; add records or raise dataset.split.test"
        )
    if not validation and dataset.split.validation > 0:
        report.warnings.append("the validation split is empty: no eval loss, no early stopping")

    caught = (
        main.findings
        + (report.general.findings if report.general else [])
        + (report.synthetic.findings if report.synthetic else [])
    )
    if policy.action == "fail" and caught:
        raise DataPolicyError(_policy_message(caught))

    splits = {"train": train, "validation": validation, "test": test}
    _write_splits(workdir, splits)
    return PreparedData(
        format=fmt,
        train=[r.data for r in train],
        validation=[r.data for r in validation],
        test=[r.data for r in test],
        general_mixed=report.general_mixed,
        report=report,
        task_train=task_splits["train"],
    )


def _check(
    rows: list[Any],
    fmt: Format,
    check: DatasetCheck,
    spec: FineTuneJobSpec,
    tokenizer: Any | None,
    *,
    what: str,
) -> list[Record]:
    """Validate, length-check, dedup and scan one dataset's rows, recording it all in ``check``."""
    policy = spec.data_policy
    records, problems, check.mapped = validate_rows(rows, fmt)
    # Roles the chat template cannot render fail here, at their file:line, not in the trainer.
    records, role_problems = check_roles(records, tokenizer)
    check.problems = sorted(problems + role_problems, key=lambda p: p.loc)
    if tokenizer is not None and records:
        for record, n in zip(records, count_tokens(records, tokenizer), strict=True):
            record.tokens = n
        long = [i for i, r in enumerate(records) if (r.tokens or 0) > spec.training.max_length]
        records, length_problems = check_lengths(
            records, prompt_token_counts(records, long, tokenizer), spec.training.max_length
        )
        check.problems = sorted(check.problems + length_problems, key=lambda p: p.loc)
    check_invalid_share(check.rows, check.problems, what)
    records, check.duplicates = deduplicate(records, policy.dedup, policy.near_duplicate_threshold)
    rules = rules_for(
        poisoning=policy.poisoning_scan, secrets=policy.secret_scan, pii=policy.pii_scan
    )
    check.findings = scan_records(records, rules)
    return records


def _teacher(spec: FineTuneJobSpec, workdir: Path, base_dir: Path | None) -> TeacherClient | None:
    """The teacher's client with its cache under ``<workdir>/teacher/cache`` (the artifact
    volume: a retried pod finds every answer it already paid for), or None without a teacher."""
    if spec.teacher is None:
        return None
    cache = AnswerCache(cache_root(workdir), spec.teacher)
    return make_teacher(spec.teacher, cache, base_dir=base_dir)


def _own_references(
    test: list[Record], originals: dict[Location, Any], fmt: Format
) -> list[Record]:
    """Test records with the dataset's own answer as the reference where the record had one
    (the teacher is scored against it too), else the teacher's answer."""
    out = []
    for record in test:
        data, issues = normalise(originals.get(record.loc), fmt)
        own = data is not None and not issues
        out.append(Record(record.loc, data, tokens=record.tokens) if own and data else record)
    return out


def _augment(
    spec: FineTuneJobSpec,
    teacher: TeacherClient,
    train: list[Record],
    held_out: list[Record],
    tokenizer: Any | None,
    report: DataReport,
) -> list[Record]:
    """Synthetic training records from the training split's seeds (never a held-out record,
    so no paraphrase of a test prompt is trained on), checked like the user's data."""
    assert spec.dataset.augment is not None
    seeds = [(r.loc, r.data) for r in train if not r.general]
    rows, report.augmented = augment_rows(teacher, seeds, spec.dataset.augment.per_example)
    check = DatasetCheck(f"{report.main.source}{SYNTHETIC_MARK}")
    report.synthetic = check
    check.rows = len(rows)
    if not rows:
        return []
    fmt: Format = "chat" if all("messages" in r.data for r in train) else "completion"
    records = _check(rows, fmt, check, spec, tokenizer, what="dataset.augment")
    records = _apply_action(records, check.findings, check, spec.data_policy.action)
    seen = {prompt_key(r) for r in train + held_out}
    kept = [r for r in records if prompt_key(r) not in seen]
    check.overlap = len(records) - len(kept)
    check.kept = len(kept)
    for record in kept:
        record.synthetic = True
    return kept


def _apply_action(
    records: list[Record], findings: list[Finding], check: DatasetCheck, action: str
) -> list[Record]:
    if action == "drop" and findings:
        caught = {f.loc for f in findings}
        kept = [r for r in records if r.loc not in caught]
        check.dropped = len(records) - len(kept)
        records = kept
    check.kept = len(records)
    return records


def _prepare_general(
    source: DatasetSource,
    fmt: Format,
    spec: FineTuneJobSpec,
    tokenizer: Any | None,
    report: DataReport,
    base_dir: Path | None,
) -> list[Record]:
    check = DatasetCheck(describe_source(source))
    report.general = check
    rows = read_source(source, base_dir)
    check.rows = len(rows)
    if not rows:
        report.warnings.append(f"general data {check.source} is empty: nothing mixed in")
        return []
    general_fmt = detect_format(rows, "auto", "dataset.general")
    if SHAPES[general_fmt] != SHAPES[fmt]:
        raise DataValidationError(
            f"dataset.general ({check.source}) is {general_fmt} data but the dataset is {fmt}: they cannot be "
            "trained together; convert the general data to the same shape (chat and instruction mix)"
        )
    records = _check(rows, general_fmt, check, spec, tokenizer, what="dataset.general")
    for record in records:
        record.general = True
    return _apply_action(records, check.findings, check, spec.data_policy.action)


def _check_objective(spec: FineTuneJobSpec, fmt: Format) -> None:
    if spec.objective == "dpo" and fmt != "preference":
        raise DataValidationError(
            f"objective dpo needs preference records (prompt/chosen/rejected), but the dataset is {fmt}"
        )
    if spec.objective == "sft" and fmt == "preference":
        raise DataValidationError(
            "the dataset holds preference records (prompt/chosen/rejected): set objective: dpo, or give SFT data"
        )


def _policy_message(findings: list[Finding]) -> str:
    records = len({f.loc for f in findings})
    shown = "; ".join(str(f) for f in findings[:SHOWN])
    more = f"; … {len(findings) - SHOWN} more in data/report.json" if len(findings) > SHOWN else ""
    return (
        f"dataPolicy.action is fail and the scans caught {records} record(s): {shown}{more}. Remove or fix "
        "those records, or set dataPolicy.action: drop to train without them (flag: train with them)"
    )


def _write_splits(workdir: Path, splits: dict[str, list[Record]]) -> None:
    folder = workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for record in splits[name]:
                data = {**record.data, "synthetic": True} if record.synthetic else record.data
                handle.write(json.dumps(data, ensure_ascii=False) + "\n")
