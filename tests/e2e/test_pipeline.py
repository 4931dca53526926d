"""The whole pipeline on examples/finetune.yaml, as `kubetune run` runs it: data -> QLoRA on a
tiny model -> evaluation and gate -> GGUF export -> result.json and termination message."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from kubetune.api.constants import TERMINATION_MESSAGE_MAX_BYTES
from kubetune.api.trainer_result import TrainerResult
from kubetune_trainer.local import LocalRunError, load_finetunejob, run_local

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune.yaml"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerResult, Path, str]:
    workdir = tmp_path_factory.mktemp("example") / "run"
    out = io.StringIO()
    result = run_local(EXAMPLE, workdir=workdir, console=Console(file=out, width=140))
    return result, workdir, out.getvalue()


def test_example_succeeds_and_the_model_learns(
    example_run: tuple[TrainerResult, Path, str],
) -> None:
    result, _, output = example_run
    assert result.phase == "Succeeded", f"{result.reason}: {result.message}\n{output[-4000:]}"
    assert result.stage == "done"
    assert result.data is not None and result.data.train > 0 and result.data.test > 0
    ev = result.evaluation
    assert ev is not None and ev.base is not None
    assert ev.base.exact_match is not None and ev.base.exact_match <= 0.1
    assert ev.fine_tuned.exact_match is not None and ev.fine_tuned.exact_match >= 0.6
    # Prompting first, measured: the base with 3 training tickets in the chat does not route.
    assert ev.few_shot is not None and ev.few_shot_examples == 3
    assert ev.few_shot.exact_match is not None and ev.few_shot.exact_match <= 0.1
    assert result.gate is not None and result.gate.passed, result.gate
    assert "improved on few-shot baseline" in result.gate.reason
    assert result.diagnosis is not None and result.diagnosis.verdict in (
        "healthy",
        "unstable",
        "overfitting",
    )


def test_artifacts_are_listed_with_size_and_sha256(
    example_run: tuple[TrainerResult, Path, str],
) -> None:
    result, workdir, _ = example_run
    by_name = {a.name: a for a in result.artifacts}
    assert {"model-f16.gguf", "model-q4_k_m.gguf", "adapter", "manifest.json"} <= set(by_name)
    for name in ("model-f16.gguf", "model-q4_k_m.gguf", "manifest.json"):
        artifact = by_name[name]
        assert artifact.uri.startswith("file:///")
        path = Path(artifact.uri.removeprefix("file://"))
        assert path.is_file() and path.is_relative_to(workdir.resolve())
        assert artifact.size_bytes == path.stat().st_size
        assert artifact.sha256 == sha256(path)
    assert by_name["model-q4_k_m.gguf"].quantization == "q4_k_m"
    assert result.manifest_uri == by_name["manifest.json"].uri


def test_result_json_and_termination_message(example_run: tuple[TrainerResult, Path, str]) -> None:
    result, workdir, _ = example_run
    saved = TrainerResult.model_validate(json.loads((workdir / "result.json").read_text()))
    assert saved == result
    message = result.to_termination_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    parsed = TrainerResult.from_termination_message(message)
    assert parsed.phase == "Succeeded" and parsed.gate == result.gate
    # Many artifacts still fit: all but the GGUFs and Modelfiles go first, the manifest keeps them.
    crowded = result.model_copy(update={"artifacts": result.artifacts * 40})
    assert len(crowded.to_termination_message().encode()) <= TERMINATION_MESSAGE_MAX_BYTES


def test_summary_tells_where_everything_is(example_run: tuple[TrainerResult, Path, str]) -> None:
    _, workdir, output = example_run
    flat = " ".join(output.split())
    for text in (
        "Succeeded",
        "exact match",
        "base, 3-shot",
        "win rate vs few-shot",
        "model-q4_k_m.gguf",
        "diagnosis",
        "gate",
        str(workdir),
    ):
        assert text in flat, text


def test_run_local_rejects_a_file_without_a_finetunejob(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(LocalRunError, match="no FineTuneJob"):
        load_finetunejob(path)
    path.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\n"
        "spec: {method: lora, dataset: {source: {uri: 'pvc://d/x.jsonl'}}}\n"
    )  # baseModel is optional in the schema (backend openai has none) and required for local
    with pytest.raises(LocalRunError, match="baseModel"):
        load_finetunejob(path)
