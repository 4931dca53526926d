"""The drift reference a FineTuneJob exports (`eval/drift-reference.json`), built with a real
family tokenizer and chat template, read back by the serve-agent with its sha256 checked, and
used by the gateway's drift tracker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.serving import DriftReference, ServingVersion
from kubetune.serving.failures import StepFailure
from kubetune.serving.versions import Sources, read_drift_reference
from kubetune_trainer import tiny_families
from kubetune_trainer.evaluation.drift_reference import build_drift_reference, write_drift_reference
from kubetune_trainer.evaluation.evaluate import ExampleResult
from kubetune_trainer.evaluation.examples import EvalExample


@pytest.fixture(scope="module")
def qwen2_tokenizer() -> Any:
    return tiny_families.load_family_tokenizer(tiny_families.family("qwen2"))


def _rows(answers: list[str | None]) -> list[ExampleResult]:
    rows = []
    for i, answer in enumerate(answers):
        example = EvalExample(
            messages=[{"role": "user", "content": f"How do I reset password number {i}?"}],
            text=None, reference="Open settings.")
        row = ExampleResult(i, example)
        if answer is not None:
            row.answers["fine_tuned"] = answer
        rows.append(row)
    return rows


def test_reference_counts_prompts_with_the_chat_template_and_answers_without(qwen2_tokenizer: Any) -> None:
    rows = _rows(["Open settings, then Security.", "I'm sorry, I can't help with that.", "  ", None])
    reference = build_drift_reference(qwen2_tokenizer, rows)
    assert reference is not None
    templated = qwen2_tokenizer.apply_chat_template(
        rows[0].example.messages, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant" in templated  # the real Qwen2 template, generation prompt on
    assert reference.prompt_tokens[0] == len(qwen2_tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert reference.completion_tokens[0] == len(
        qwen2_tokenizer("Open settings, then Security.", add_special_tokens=False)["input_ids"])
    assert len(reference.prompt_tokens) == 3  # the row without a fine-tuned answer is left out
    assert reference.refusal_rate == pytest.approx(1 / 3)
    assert reference.empty_rate == pytest.approx(1 / 3)


def test_too_few_answers_give_no_reference(qwen2_tokenizer: Any, tmp_path: Path) -> None:
    assert write_drift_reference(qwen2_tokenizer, _rows(["only one"]), tmp_path) is None
    assert not (tmp_path / "drift-reference.json").exists()


def _version(path: Path, sha: str) -> ServingVersion:
    return ServingVersion(name="v1", gguf_uri="file:///m.gguf", sha256="0" * 64,
                          drift_reference_uri=f"file://{path}", drift_reference_sha256=sha)


def test_agent_reads_back_the_reference_the_trainer_wrote(qwen2_tokenizer: Any, tmp_path: Path) -> None:
    path = write_drift_reference(qwen2_tokenizer, _rows(["a", "bb bb", "ccc ccc ccc"]), tmp_path / "eval")
    assert path is not None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    sources = Sources(cache_dir=tmp_path / "cache", pvc_root=tmp_path / "pvc")
    reference = read_drift_reference(_version(path, sha), sources)
    assert reference == DriftReference.model_validate(json.loads(path.read_text()))
    assert reference is not None and len(reference.completion_tokens) == 3


def test_a_reference_that_does_not_match_its_sha256_fails_the_version(tmp_path: Path) -> None:
    path = tmp_path / "drift-reference.json"
    path.write_text(json.dumps({"promptTokens": [1, 2], "completionTokens": [3, 4]}))
    sources = Sources(cache_dir=tmp_path / "cache", pvc_root=tmp_path / "pvc")
    with pytest.raises(StepFailure) as failure:
        read_drift_reference(_version(path, "f" * 64), sources)
    assert failure.value.step == "checksum" and failure.value.permanent


def test_an_unusable_reference_only_costs_the_reference(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "drift-reference.json"
    path.write_text(json.dumps({"promptTokens": [1], "completionTokens": "nope"}))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    sources = Sources(cache_dir=tmp_path / "cache", pvc_root=tmp_path / "pvc")
    assert read_drift_reference(_version(path, sha), sources) is None
    assert "drift reference" in caplog.text and "first requests" in caplog.text


def test_a_reference_needs_its_sha256() -> None:
    with pytest.raises(ValueError, match="driftReferenceSha256"):
        ServingVersion(name="v1", gguf_uri="file:///m.gguf", sha256="0" * 64,
                       drift_reference_uri="file:///r.json")


def test_answer_lengths_are_the_generated_token_counts_not_a_re_encoding(qwen2_tokenizer: Any) -> None:
    """An undertrained model's byte pieces decode to text that re-encodes to other tokens: the
    reference takes the count generation reported (what Ollama's completion_tokens counts)."""
    rows = _rows(["��k techn", "es| eu"])
    for row in rows:
        row.answer_tokens["fine_tuned"] = 4
    reference = build_drift_reference(qwen2_tokenizer, rows)
    assert reference is not None and reference.completion_tokens == [4, 4]
    assert len(qwen2_tokenizer("��k techn", add_special_tokens=False)["input_ids"]) != 4
