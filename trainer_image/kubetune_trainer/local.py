"""`kubetune run FILE`: the same FineTuneJob YAML users `kubectl apply`, run on this machine.

Runs the pipeline in-process with a progress bar and ends with a summary: data counts, losses,
diagnosis, base vs fine-tuned scores, gate, and the artifacts with size and sha256. Relative
`file://` URIs are resolved against the YAML's folder; `resources` is ignored (the job runs on
whatever this machine has: a GPU if torch sees one, else the CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.trainer_result import ModelScores, TrainerResult
from kubetune.api.trainer_result import Progress as TrainProgress

DEFAULT_RUNS_DIR = "kubetune-runs"


class LocalRunError(ValueError):
    """The YAML holds no usable FineTuneJob."""


def load_finetunejob(yaml_path: Path) -> FineTuneJob:
    """The first FineTuneJob in a YAML stream (other kinds in the file are ignored)."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(yaml_path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise LocalRunError(f"{yaml_path}: {exc}") from exc
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == c.FINETUNEJOB_KIND:
            from pydantic import ValidationError

            try:
                return FineTuneJob.model_validate(
                    {k: v for k, v in doc.items() if k != "apiVersion"}
                )
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()
                )
                raise LocalRunError(f"{yaml_path}: {problems}") from exc
    raise LocalRunError(f"{yaml_path}: no {c.FINETUNEJOB_KIND} document in this file")


def run_local(
    yaml_path: Path, *, workdir: Path | None = None, console: Console | None = None
) -> TrainerResult:
    """Run the FineTuneJob in `yaml_path` here; `workdir` defaults to
    `./kubetune-runs/<metadata.name>`. Raises LocalRunError for a file without a valid job;
    a job that fails returns a Failed result (and the summary says why)."""
    from kubetune_trainer.pipeline import run_pipeline

    console = console or Console()
    yaml_path = Path(yaml_path)
    job = load_finetunejob(yaml_path)
    name = str(job.metadata.get("name") or yaml_path.stem)
    workdir = Path(workdir) if workdir is not None else Path.cwd() / DEFAULT_RUNS_DIR / name
    console.print(f"[bold]kubetune run[/] {yaml_path} -> {workdir}")

    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[stage]:<8}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task("", total=None, stage="data")

        def on_progress(stage: str, progress: TrainProgress | None) -> None:
            if progress is None:
                bar.update(task, stage=stage, description="", total=None, completed=0)
                return
            loss = "" if progress.loss is None else f"loss {progress.loss:.4f}"
            eval_loss = "" if progress.eval_loss is None else f"  eval {progress.eval_loss:.4f}"
            eta = "" if progress.eta_seconds is None else f"  eta {progress.eta_seconds}s"
            bar.update(
                task,
                stage=stage,
                total=progress.total_steps,
                completed=progress.step,
                description=loss + eval_loss + eta,
            )

        result = run_pipeline(
            job.spec, workdir, base_dir=yaml_path.resolve().parent, on_progress=on_progress
        )
        bar.update(
            task, stage="done" if result.phase == "Succeeded" else "failed", total=1, completed=1
        )
    console.print(summary(result, workdir))
    return result


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _training_figures(workdir: Path) -> dict[str, Any]:
    path = workdir / "train_outcome.json"
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    evals = [e["eval_loss"] for e in data.get("log_history", []) if "eval_loss" in e]
    data["last_eval_loss"] = evals[-1] if evals else None
    return data


def summary(result: TrainerResult, workdir: Path) -> Group:
    """The end-of-run report: what happened at each stage and where the artifacts are."""
    parts: list[Any] = []
    if result.phase == "Failed":
        parts.append(
            f"[bold red]Failed[/] in stage {result.stage}: {result.reason}\n{result.message}"
        )
    else:
        parts.append("[bold green]Succeeded[/]")

    overview = Table(title="Run", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    if result.data is not None:
        d = result.data
        overview.add_row(
            "data",
            f"{d.total} records ({d.format}): train {d.train}, validation {d.validation}, test {d.test}; "
            f"invalid {d.invalid}, duplicates {d.duplicates_removed}, flagged {d.flagged}, dropped {d.dropped}"
            + (f", general mixed {d.general_mixed}" if d.general_mixed else ""),
        )
        if d.teacher is not None:
            t = d.teacher
            overview.add_row(
                "teacher",
                f"{t.model}: {t.answered} answered ({t.cached} cached, {t.requests} requests, "
                f"{t.failed} unanswered, {t.rejected} rejected by validation); tokens "
                f"{t.prompt_tokens} prompt + {t.completion_tokens} completion"
                + (f"; {d.synthetic} synthetic examples in train" if d.synthetic else ""),
            )
        if d.class_balance is not None:
            cb = d.class_balance
            warn = f" [yellow]> maxClassImbalance {cb.max_ratio:g}[/]" if cb.imbalanced else ""
            overview.add_row(
                "classes",
                f"{cb.classes} labels; {cb.majority} {cb.majority_count} : {cb.minority} "
                f"{cb.minority_count} = {cb.ratio:g}:1{warn}",
            )
    figures = _training_figures(workdir)
    if figures:
        overview.add_row(
            "training",
            f"{figures['global_step']} steps in {figures['seconds']:.0f}s"
            + (
                f" (resumed at step {figures['resumed_from_step']})"
                if figures.get("resumed_from_step")
                else ""
            )
            + f"; train loss {_num(figures.get('final_train_loss'))}, eval loss {_num(figures.get('last_eval_loss'))}"
            + f" (best {_num(figures.get('best_eval_loss'))})"
            + (
                f"; {figures['tokens_per_second']:.0f} tokens/s"
                if figures.get("tokens_per_second")
                else ""
            ),
        )
    if result.diagnosis is not None:
        dg = result.diagnosis
        overview.add_row(
            "diagnosis",
            f"{dg.verdict}: {dg.message}" + (f"\n→ {dg.suggestion}" if dg.suggestion else ""),
        )
    if result.gate is not None:
        colour = "green" if result.gate.passed else "red"
        verdict = "passed" if result.gate.passed else "failed"
        reason = result.gate.reason.removeprefix(f"{verdict}:").strip()
        overview.add_row("gate", f"[{colour}]{verdict}[/]: {reason}")
    parts.append(overview)

    if result.evaluation is not None:
        ev = result.evaluation
        scores = Table(title=f"Scores on {ev.examples} held-out examples", title_justify="left")
        scores.add_column("metric")
        scores.add_column("base", justify="right")
        few_shot = ev.few_shot
        if few_shot is not None:
            scores.add_column(f"base, {ev.few_shot_examples}-shot", justify="right")
        scores.add_column("fine-tuned", justify="right")
        scores.add_column("Δ", justify="right")
        base = ev.base or ModelScores()
        for field, label, fmt in (
            ("exact_match", "exact match", ".3f"),
            ("rouge_l", "ROUGE-L", ".3f"),
            ("bleu", "BLEU", ".1f"),
            ("perplexity", "perplexity", ".2f"),
            ("judge_score", "judge (1–5)", ".2f"),
            ("general_score", "general set", ".3f"),
        ):
            tuned, before = getattr(ev.fine_tuned, field), getattr(base, field)
            if tuned is None and before is None:
                continue
            delta = f"{tuned - before:+{fmt}}" if tuned is not None and before is not None else ""
            shots = [] if few_shot is None else [_num(getattr(few_shot, field), fmt)]
            scores.add_row(label, _num(before, fmt), *shots, _num(tuned, fmt), delta)
        blank = [] if few_shot is None else [""]
        if ev.win_rate is not None:
            scores.add_row("win rate", "", *blank, _num(ev.win_rate, ".2f"), "")
        if ev.few_shot_win_rate is not None:
            scores.add_row("win rate vs few-shot", "", *blank, _num(ev.few_shot_win_rate, ".2f"), "")
        if ev.teacher is not None:
            tc = ev.teacher
            overview.add_row(
                "teacher vs student",
                f"{tc.model}: exact match {_num(tc.scores.exact_match, '.3f')} vs "
                f"{_num(ev.fine_tuned.exact_match, '.3f')}, ROUGE-L "
                f"{_num(tc.scores.rouge_l, '.3f')} vs {_num(ev.fine_tuned.rouge_l, '.3f')}; "
                f"s/answer {_num(tc.seconds_per_answer, '.3f')} vs "
                f"{_num(tc.student_seconds_per_answer, '.3f')}; size {tc.teacher_size} vs "
                f"{_size(tc.student_size_bytes) if tc.student_size_bytes else '-'}",
            )
        parts.append(scores)

    if result.artifacts:
        table = Table(title="Artifacts", title_justify="left")
        table.add_column("name")
        table.add_column("kind")
        table.add_column("size", justify="right")
        table.add_column("sha256", overflow="fold")
        for a in result.artifacts:
            table.add_row(
                a.name,
                a.kind + (f" {a.quantization}" if a.quantization else ""),
                _size(a.size_bytes),
                a.sha256,
            )
        parts.append(table)
    parts.append(f"Everything is in {workdir} (result: {workdir / 'result.json'})")
    if result.manifest_uri:
        parts.append(f"Manifest: {result.manifest_uri}")
    return Group(*parts)
