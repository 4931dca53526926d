"""The GGUF verification report: agreement fractions, strictness and the problems it names;
and the reference model's memory: float32 arithmetic without a float32 copy of the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.planning.memory import GIB, LLAMA_3_1_8B
from kubetune_trainer.export.verify import (
    GgufCheck,
    PromptComparison,
    VerificationReport,
    compute_in_float32,
    reference_generations,
    reference_weights_dtype,
    verification_peak_bytes,
)
from tests.model_configs import LLAMA_3_1_8B_CONFIG


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


# --- the reference model's memory ---------------------------------------------------------------


def test_verification_of_an_8b_model_fits_a_24_gb_gpu() -> None:
    memory = verification_peak_bytes(LLAMA_3_1_8B_CONFIG)
    assert memory == verification_peak_bytes(LLAMA_3_1_8B)
    assert LLAMA_3_1_8B.parameters == 8_030_261_248
    # 16-bit weights (+ float32 norms), one 256 MiB upcast chunk, float32 KV cache for 2048 tokens.
    assert memory.weights == 2 * 8_030_261_248 + 2 * 65 * 4096
    assert memory.upcast_chunk == 256 * 1024**2
    assert memory.kv_cache == 2048 * 32 * 2 * 8 * 128 * 4
    assert 16.5 * GIB < memory.total < 17 * GIB  # the figure in verify.py's docstring
    assert memory.total < 24e9 - 1.5 * GIB  # with the CUDA context and allocator slack
    assert memory.float32_copy > 31 * GIB  # what loading the model in float32 needed


def test_reference_dtype_on_gpu_is_the_checkpoints_16_bit(tmp_path: Path) -> None:
    assert reference_weights_dtype(tmp_path, "cpu") == "float32"
    for saved, held in (("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float16")):
        (tmp_path / "config.json").write_text(json.dumps({"dtype": saved}))
        assert reference_weights_dtype(tmp_path, "cuda") == held


def _tiny_llama(tmp_path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # as merge_adapter saves it
    model.save_pretrained(str(tmp_path / "m"))
    return tmp_path / "m"


def test_16_bit_held_reference_computes_like_the_float32_model(tmp_path: Path) -> None:
    model_dir = _tiny_llama(tmp_path)
    prompts = [[1, 5, 9, 42, 17], [1, 200, 3]]
    exact = reference_generations(
        model_dir, prompts, {299}, 12, device="cpu", weights_dtype="float32"
    )
    held = reference_generations(
        model_dir, prompts, {299}, 12, device="cpu", weights_dtype="bfloat16"
    )
    for a, b in zip(exact, held, strict=True):
        assert a.tokens == b.tokens
        assert abs(a.logits - b.logits).max() < 1e-4


@pytest.mark.parametrize("chunk_bytes", [256 * 1024**2, 4 * 64 * 7])  # whole, and 7-row chunks
def test_compute_in_float32_keeps_weights_16_bit(tmp_path: Path, chunk_bytes: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = _tiny_llama(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    compute_in_float32(model, chunk_bytes=chunk_bytes)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == torch.bfloat16 for m in linear)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.float32
    ids = torch.tensor([[1, 7, 8, 9, 120, 250]])
    with torch.no_grad():
        got = model(ids).logits
        want = reference(ids).logits
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 1e-4
