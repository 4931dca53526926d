"""Quantized GGUF files held to evaluation.gate.minQuantizedAgreement: each file's verdict in the
verification report (and so in manifest.json), and an export that stops with
QuantizationDisagreesError naming the file when one is below the bound. llama.cpp is replaced
here by stand-ins that write files and a report; tests/e2e/test_export.py runs the real one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import GateSpec
from kubetune_trainer.evaluation.gate import quantization_verdicts
from kubetune_trainer.export import llamacpp
from kubetune_trainer.export import pipeline as export_pipeline
from kubetune_trainer.export.pipeline import (
    DEFAULT_MIN_QUANTIZED_AGREEMENT,
    ExportVerificationError,
    QuantizationDisagreesError,
    export_model,
)
from kubetune_trainer.export.verify import GgufCheck, PromptComparison, VerificationReport


def check(quantization: str, matches: int, of: int = 20, *, strict: bool = False) -> GgufCheck:
    """One file whose teacher-forced argmax is the reference token `matches` times in `of`."""
    ref = tuple(range(of))
    return GgufCheck(
        f"gguf-{quantization}",
        quantization,
        strict,
        (
            PromptComparison(
                prompt=0,
                served_prompt_matches=True,
                reference_tokens=ref,
                gguf_tokens=ref,
                matching_prefix=of,
                forced_matches=matches,
                forced_clear_mismatches=0,
                max_logit_delta=0.5,
                gguf_text="",
            ),
        ),
    )


def report(*checks: GgufCheck) -> VerificationReport:
    return VerificationReport(max_new_tokens=16, tie_tolerance=0.01, checks=checks)


def test_the_default_bound_is_the_gates() -> None:
    assert DEFAULT_MIN_QUANTIZED_AGREEMENT == GateSpec().min_quantized_agreement == 0.9


def test_each_files_verdict_is_in_the_report_json() -> None:
    base = report(check("f16", 20, strict=True), check("q8_0", 19), check("q4_k_m", 15))
    assert base.agreements() == {"f16": 1.0, "q8_0": 0.95, "q4_k_m": 0.75}
    judged = base.with_verdicts(quantization_verdicts(GateSpec(), base.agreements()))
    assert base.verdicts == () and base.passed  # with_verdicts returns a copy
    assert [v.quantization for v in judged.disagreeing] == ["q4_k_m"]
    assert judged.problems == [] and not judged.passed
    data = judged.to_json()
    assert data["passed"] is False
    assert data["problems"] == ["q4_k_m: token agreement 0.75 < minQuantizedAgreement 0.9"]
    by_q = {c["quantization"]: c["agreement_verdict"] for c in data["checks"]}
    assert by_q["q8_0"] == {
        "min_agreement": 0.9,
        "passed": True,
        "reason": "q8_0: token agreement 0.95 >= minQuantizedAgreement 0.9",
    }
    assert by_q["q4_k_m"]["passed"] is False and by_q["q4_k_m"]["min_agreement"] == 0.9
    assert by_q["f16"]["min_agreement"] is None and by_q["f16"]["passed"] is True
    assert report(check("q8_0", 1)).to_json()["checks"][0]["agreement_verdict"] is None


def test_a_file_that_did_not_run_has_no_agreement() -> None:
    broken = report(GgufCheck("gguf-q8_0", "q8_0", False, error="llama.cpp could not run it: x"))
    assert broken.agreements() == {"q8_0": None}


# --- export_model with llama.cpp replaced --------------------------------------------------------


@pytest.fixture
def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """llama.cpp's tools write small files; verification reports `agreements` (type -> share)."""
    agreements: dict[str, float] = {"f16": 1.0, "q8_0": 0.95, "q4_k_m": 0.7}

    def convert(source: Path, out: Path, **_: Any) -> Path:
        out.write_bytes(b"GGUF f16")
        return out

    def quantize(f16: Path, out: Path, q: str) -> Path:
        out.write_bytes(f"GGUF {q}".encode())
        return out

    def verify(reference: Path, ggufs: list[tuple[str, str, Path]], *_: Any, **__: Any) -> Any:
        return report(
            *(check(q, round(20 * agreements[q]), strict=q == "f16") for _, q, _ in ggufs)
        )

    monkeypatch.setattr(llamacpp, "locate_script", lambda *a, **k: Path("/bin/true"))
    monkeypatch.setattr(llamacpp, "import_llama_cpp", lambda: None)
    monkeypatch.setattr(llamacpp, "llama_cpp_version", lambda *a: "b0000")
    monkeypatch.setattr(llamacpp, "convert_hf_to_gguf", convert)
    monkeypatch.setattr(llamacpp, "quantize_gguf", quantize)
    monkeypatch.setattr(export_pipeline, "_chat_format", lambda *_: None)
    monkeypatch.setattr(
        export_pipeline, "render_modelfile", lambda name, *a, **k: f"FROM ./{name}\n"
    )
    monkeypatch.setattr(export_pipeline, "verify_ggufs", verify)
    return agreements


def test_a_quantized_file_below_the_bound_stops_the_export_naming_it(
    fake_llama_cpp: dict[str, float], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(QuantizationDisagreesError) as info:
        export_model(tmp_path, None, out, ["q8_0", "q4_k_m"])
    exc = info.value
    assert [v.quantization for v in exc.failed] == ["q4_k_m"]
    assert exc.files == {"q4_k_m": "model-q4_k_m.gguf"}
    assert "model-q4_k_m.gguf: q4_k_m: token agreement 0.7 < minQuantizedAgreement 0.9" in str(exc)
    # The manifest is written first, with every file's verdict.
    manifest = json.loads((out / "manifest.json").read_text())
    verdicts = {
        c["quantization"]: c["agreement_verdict"]["passed"]
        for c in manifest["verification"]["checks"]
    }
    assert verdicts == {"f16": True, "q8_0": True, "q4_k_m": False}
    assert manifest["verification"]["passed"] is False


def test_the_bound_comes_from_the_caller(fake_llama_cpp: dict[str, float], tmp_path: Path) -> None:
    result = export_model(tmp_path, None, tmp_path / "out", ["q4_k_m"], min_quantized_agreement=0.6)
    [verdict] = [v for v in result.verification.verdicts if v.quantization == "q4_k_m"]
    assert verdict.passed and verdict.min_agreement == 0.6
    assert result.verification.passed
    with pytest.raises(ValueError, match="less than or equal to 1"):
        export_model(tmp_path, None, tmp_path / "out2", ["q4_k_m"], min_quantized_agreement=1.5)


def test_a_wrong_file_is_a_verification_failure_before_any_agreement(
    fake_llama_cpp: dict[str, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def verify(*_: Any, **__: Any) -> VerificationReport:
        return report(
            check("f16", 20, strict=True),
            GgufCheck("gguf-q4_k_m", "q4_k_m", False, error="llama.cpp could not run it: x"),
        )

    monkeypatch.setattr(export_pipeline, "verify_ggufs", verify)
    with pytest.raises(ExportVerificationError):
        export_model(tmp_path, None, tmp_path / "out", ["q4_k_m"])
