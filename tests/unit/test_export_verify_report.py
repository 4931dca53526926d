"""The GGUF verification report: agreement fractions, strictness and the problems it names."""

from __future__ import annotations

from kubetune_trainer.export.verify import GgufCheck, PromptComparison, VerificationReport


def comparison(
    ref: tuple[int, ...],
    got: tuple[int, ...],
    *,
    forced: int,
    clear: int = 0,
    served: bool = True,
    delta: float = 0.01,
) -> PromptComparison:
    prefix = next(
        (i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b),
        min(len(ref), len(got)),
    )
    return PromptComparison(
        prompt=0,
        served_prompt_matches=served,
        reference_tokens=ref,
        gguf_tokens=got,
        matching_prefix=prefix,
        forced_matches=forced,
        forced_clear_mismatches=clear,
        max_logit_delta=delta,
        gguf_text="",
    )


def test_identical_outputs_pass_strict() -> None:
    check = GgufCheck("gguf-f16", "f16", True, (comparison((1, 2, 3), (1, 2, 3), forced=3),))
    assert check.greedy_exact and check.token_agreement == 1.0 and check.problems() == []


def test_near_tie_divergence_passes_strict_but_is_reported() -> None:
    # Free-running output diverged at a near-tie; teacher-forced, one token differs, not clearly.
    check = GgufCheck("gguf-f16", "f16", True, (comparison((1, 2, 3, 4), (1, 5, 6, 7), forced=3),))
    assert not check.greedy_exact
    assert check.token_agreement == 0.75
    assert check.problems() == []


def test_clear_mismatch_fails_strict_only() -> None:
    prompts = (comparison((1, 2, 3, 4), (1, 9, 9, 9), forced=2, clear=2, delta=3.5),)
    strict = GgufCheck("gguf-f16", "f16", True, prompts)
    loose = GgufCheck("gguf-q4_k_m", "q4_k_m", False, prompts)
    assert loose.problems() == []
    [problem] = strict.problems()
    assert "2 position(s)" in problem and "0.500" in problem and "3.5000" in problem


def test_served_prompt_mismatch_and_empty_output_fail_any_file() -> None:
    check = GgufCheck(
        "gguf-q8_0",
        "q8_0",
        False,
        (comparison((1,), (), forced=1, served=False),),
    )
    problems = check.problems()
    assert any("tokenizes the served prompt differently" in p for p in problems)
    assert any("generated nothing" in p for p in problems)


def test_report_json_and_load_errors() -> None:
    report = VerificationReport(
        max_new_tokens=8,
        tie_tolerance=0.01,
        checks=(
            GgufCheck("gguf-f16", "f16", True, (comparison((1, 2), (1, 2), forced=2),)),
            GgufCheck(
                "gguf-q4_k_m", "q4_k_m", False, error="llama.cpp could not run it: bad magic"
            ),
        ),
    )
    assert not report.passed
    assert report.problems == ["gguf-q4_k_m: llama.cpp could not run it: bad magic"]
    data = report.to_json()
    assert data["passed"] is False
    assert [c["token_agreement"] for c in data["checks"]] == [1.0, 1.0]
    assert data["checks"][0]["prompts"][0]["reference_tokens"] == [1, 2]
    assert report.check("q4_k_m").error is not None
