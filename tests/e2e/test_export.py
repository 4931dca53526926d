"""Export end to end on CPU: tiny model -> LoRA adapter -> merged -> GGUF (f16, q8_0, q4_k_m) ->
llama.cpp loads and generates -> f16 greedy output equals HF's -> manifest sha256s match the files.

Needs llama.cpp from ``hack/fetch-llama-cpp.sh`` (``make llama-cpp``); without it these tests fail
and say so, like the cluster tests do without their binaries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.export import (
    MANIFEST_NAME,
    ExportResult,
    LlamaCppError,
    export_model,
    read_manifest,
    verify_ggufs,
    verify_manifest,
)
from kubetune_trainer.export.chat_format import chat_format_from_tokenizer
from kubetune_trainer.export.llamacpp import import_llama_cpp, locate_script
from kubetune_trainer.tiny_model import BUILTIN_CORPUS, build_tiny_llama

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TRAIN_CHATS = [
    [{"role": "user", "content": question}, {"role": "assistant", "content": "I am kubetune."}]
    for question in ("Who are you?", "Hello!", "What is your name?", "Introduce yourself.")
]
PROMPTS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
]


@pytest.fixture(scope="module")
def llama_cpp_ready() -> None:
    try:
        locate_script("convert_hf_to_gguf.py")
        locate_script("convert_lora_to_gguf.py")
        import_llama_cpp()
    except LlamaCppError as error:
        pytest.fail(str(error), pytrace=False)


def train_adapter(base_dir: Path, out_dir: Path, steps: int = 30) -> Path:
    """A real LoRA adapter: a few AdamW steps on assistant tokens, so the merge changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
    )
    batches = []
    for chat in TRAIN_CHATS:
        encoded = tokenizer.apply_chat_template(
            chat, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor([encoded["input_ids"]])
        labels = torch.where(torch.tensor([encoded["assistant_masks"]]) == 1, ids, -100)
        batches.append((ids, labels))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export-models")
    base = build_tiny_llama(
        root / "base", [*BUILTIN_CORPUS, *(m["content"] for c in TRAIN_CHATS for m in c)]
    )
    return base, train_adapter(base, root / "adapter")


@pytest.fixture(scope="module")
def exported(
    llama_cpp_ready: None, models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    base, adapter = models
    return export_model(
        base,
        adapter,
        tmp_path_factory.mktemp("export") / "out",
        ["f16", "q8_0", "q4_k_m"],
        adapter_gguf=True,
        verify_prompts=PROMPTS,
    )


def test_artifacts_and_files(exported: ExportResult) -> None:
    out = exported.out_dir
    kinds = {a.name: (a.kind, a.quantization) for a in exported.artifacts}
    assert kinds == {
        "merged": ("merged-safetensors", None),
        "gguf-f16": ("gguf", "f16"),
        "gguf-q8_0": ("gguf", "q8_0"),
        "gguf-q4_k_m": ("gguf", "q4_k_m"),
        "adapter-gguf": ("adapter-gguf", "f16"),
        "modelfile-f16": ("modelfile", "f16"),
        "modelfile-q8_0": ("modelfile", "q8_0"),
        "modelfile-q4_k_m": ("modelfile", "q4_k_m"),
    }
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "tokenizer.model").is_file()  # llama.cpp's SentencePiece path needs it
    assert not list(out.glob(".export-*"))  # scratch space is gone
    sizes = {a.quantization: a.size_bytes for a in exported.artifacts if a.kind == "gguf"}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_merged_weights_are_16_bit_and_changed_by_the_adapter(
    exported: ExportResult, models: tuple[Path, Path]
) -> None:
    from safetensors import safe_open

    base, _ = models
    merged = exported.out_dir / "merged" / "model.safetensors"
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(merged), "pt") as m, safe_open(str(base / "model.safetensors"), "pt") as b:
        merged_w, base_w = m.get_tensor(name), b.get_tensor(name)
    assert str(merged_w.dtype) == "torch.float16"
    assert (merged_w.float() - base_w.half().float()).abs().max() > 1e-3


def test_manifest_sha256_matches_every_file(exported: ExportResult) -> None:
    data = json.loads((exported.out_dir / MANIFEST_NAME).read_text())
    for artifact in data["artifacts"]:
        path = exported.out_dir / artifact["path"]
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"], artifact[
                "name"
            ]
            assert path.stat().st_size == artifact["size_bytes"]
        if artifact["kind"] in ("gguf", "adapter-gguf"):
            assert artifact["llama_cpp_version"].startswith("llama-cpp-python 0.3.36 (llama.cpp ")
    assert data["tools"]["llama.cpp"] == exported.llama_cpp_version
    assert data["verification"]["passed"] is True
    assert verify_manifest(exported.out_dir) == []


def test_quantized_files_are_what_they_say(exported: ExportResult) -> None:
    llama_cpp: Any = import_llama_cpp()
    # llama.cpp's enum llama_ftype: 1 = MOSTLY_F16, 7 = MOSTLY_Q8_0, 15 = MOSTLY_Q4_K_M
    for quantization, ftype in (("f16", 1), ("q8_0", 7), ("q4_k_m", 15)):
        llm = llama_cpp.Llama(
            model_path=str(exported.out_dir / f"model-{quantization}.gguf"), n_ctx=64, verbose=False
        )
        try:
            assert int(llm.metadata["general.file_type"]) == ftype
        finally:
            llm.close()


def test_f16_greedy_output_equals_hf(exported: ExportResult) -> None:
    """Checked here independently of the export's own verification code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = exported.out_dir / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    llama_cpp: Any = import_llama_cpp()
    llm = llama_cpp.Llama(
        model_path=str(exported.out_dir / "model-f16.gguf"), n_ctx=128, verbose=False
    )
    try:
        for conversation in PROMPTS:
            ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)[
                "input_ids"
            ]
            hf = model.generate(
                torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
            gguf: list[int] = []
            for token in llm.generate(ids, temp=0.0, reset=True):
                gguf.append(token)
                if token == tokenizer.eos_token_id or len(gguf) == 12:
                    break
            assert gguf == hf
            if conversation == PROMPTS[0]:
                # A question the adapter was trained on: the export carries the fine-tune. (The
                # other prompt adds a system message it never saw; what it says then depends on
                # the CPU's arithmetic and proves nothing about the export.)
                assert tokenizer.decode(hf, skip_special_tokens=True).startswith("I am kubetune")
    finally:
        llm.close()


def test_verification_report(exported: ExportResult) -> None:
    report = exported.verification
    assert report.passed, report.problems
    f16 = report.check("f16")
    assert f16.greedy_exact and f16.token_agreement == 1.0
    assert f16.max_logit_delta < 0.05
    for check in report.checks:
        assert 0.0 <= check.token_agreement <= 1.0
        assert all(p.served_prompt_matches for p in check.prompts)  # Modelfile prompt == training's
        assert all(p.gguf_tokens for p in check.prompts)  # each file loads and generates
    assert report.check("q4_k_m").max_logit_delta > f16.max_logit_delta


def test_modelfiles_point_at_their_gguf_with_template_and_stops(exported: ExportResult) -> None:
    from transformers import AutoTokenizer

    fmt = chat_format_from_tokenizer(AutoTokenizer.from_pretrained(exported.out_dir / "merged"))
    text = (exported.out_dir / "q4_k_m.Modelfile").read_text()
    assert "FROM ./model-q4_k_m.gguf\n" in text
    assert "ADAPTER" not in text  # merged: the adapter is in the weights
    assert 'PARAMETER stop "<|end|>"' in text
    assert "{{ range $i, $m := .Messages }}" in text and fmt.generation_prompt in text


def test_corrupt_gguf_fails_verification(exported: ExportResult, tmp_path: Path) -> None:
    broken = tmp_path / "model-f16.gguf"
    data = (exported.out_dir / "model-f16.gguf").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    from transformers import AutoTokenizer

    fmt = chat_format_from_tokenizer(AutoTokenizer.from_pretrained(exported.out_dir / "merged"))
    report = verify_ggufs(
        exported.out_dir / "merged", [("gguf-f16", "f16", broken)], PROMPTS[:1], chat_format=fmt
    )
    assert not report.passed
    assert "could not run it" in report.problems[0]


def test_raw_text_prompts_and_conversations_with_their_answer(exported: ExportResult) -> None:
    """The trainer passes test records: raw strings, or chats that may end with the answer."""
    from transformers import AutoTokenizer

    fmt = chat_format_from_tokenizer(AutoTokenizer.from_pretrained(exported.out_dir / "merged"))
    prompts = [
        "Plain text, no chat template.",
        [*PROMPTS[0], {"role": "assistant", "content": "I am."}],
    ]
    ggufs = [("gguf-f16", "f16", exported.out_dir / "model-f16.gguf")]
    report = verify_ggufs(exported.out_dir / "merged", ggufs, prompts, chat_format=fmt)
    assert report.passed, report.problems
    [check] = report.checks
    assert (
        check.prompts[1].reference_tokens
        == exported.verification.check("f16").prompts[0].reference_tokens
    )


def test_tampered_file_is_caught_by_the_manifest(exported: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported.out_dir, copy)
    with (copy / "model-q8_0.gguf").open("r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x00" * 10)
    assert [p.split(":")[0] for p in verify_manifest(copy)] == ["gguf-q8_0"]
    assert read_manifest(copy).artifacts == exported.artifacts


def test_separate_base_and_adapter_gguf(
    llama_cpp_ready: None, models: tuple[Path, Path], tmp_path: Path
) -> None:
    """merge=False: base GGUF + adapter GGUF; llama.cpp applies the adapter like the HF merge."""
    base, adapter = models
    result = export_model(
        base, adapter, tmp_path / "out", ["f16"], merge=False, verify_prompts=PROMPTS
    )
    names = {a.name for a in result.artifacts}
    assert names == {"gguf-f16", "adapter-gguf", "modelfile-f16"}
    assert not (tmp_path / "out" / "merged").exists()
    text = (tmp_path / "out" / "f16.Modelfile").read_text()
    assert "FROM ./model-f16.gguf\nADAPTER ./adapter-f16.gguf\n" in text
    assert result.verification.check("f16").token_agreement == 1.0


def test_a_gguf_of_another_model_fails_strict_verification(
    exported: ExportResult, models: tuple[Path, Path], tmp_path: Path
) -> None:
    """The check has teeth: the base model's f16 GGUF (no adapter) against the merged reference."""
    from transformers import AutoTokenizer

    from kubetune_trainer.export.llamacpp import convert_hf_to_gguf

    base_dir, _ = models
    base_gguf = convert_hf_to_gguf(base_dir, tmp_path / "base-f16.gguf")
    fmt = chat_format_from_tokenizer(AutoTokenizer.from_pretrained(exported.out_dir / "merged"))
    report = verify_ggufs(
        exported.out_dir / "merged", [("gguf-f16", "f16", base_gguf)], PROMPTS, chat_format=fmt
    )
    assert not report.passed
    assert "picks another token than the HF model" in report.problems[0]


def test_only_quantized_requested_still_checks_f16_then_drops_it(
    llama_cpp_ready: None, models: tuple[Path, Path], tmp_path: Path
) -> None:
    base, _ = models  # no adapter: the base model is exported as it is
    # The untrained random-weight model's logits are near-uniform, so q4_k_m's rounding flips
    # most of its choices (agreement ~0.3): not what this test is about.
    result = export_model(
        base,
        None,
        tmp_path / "out",
        ["q4_k_m"],
        verify_prompts=PROMPTS[:1],
        min_quantized_agreement=0.0,
    )
    assert {a.name for a in result.artifacts} == {"gguf-q4_k_m", "modelfile-q4_k_m"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "model-q4_k_m.gguf",
        "q4_k_m.Modelfile",
    ]
    # f16 was made from the HF weights and checked strictly before it was deleted.
    assert [c.quantization for c in result.verification.checks] == ["f16", "q4_k_m"]
    assert result.verification.check("f16").strict


def test_missing_converter_fails_fast_with_the_fix(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    base, adapter = models
    with pytest.raises(
        LlamaCppError, match=r"convert_hf_to_gguf\.py not found.*fetch-llama-cpp\.sh"
    ):
        export_model(
            base, adapter, tmp_path / "out", ["f16"], llama_cpp_dir=tmp_path / "no-llama-cpp"
        )
    assert not (tmp_path / "out" / "merged").exists()  # nothing slow ran first


def test_corrupted_converter_gives_a_clear_error(
    llama_cpp_ready: None, models: tuple[Path, Path], tmp_path: Path
) -> None:
    from kubetune_trainer.export.llamacpp import llama_cpp_dir

    broken = tmp_path / "llama.cpp"
    shutil.copytree(llama_cpp_dir(), broken, symlinks=True)
    (broken / "convert_hf_to_gguf.py").write_text("def truncated(:\n")
    base, _ = models
    with pytest.raises(
        LlamaCppError, match=r"(?s)convert_hf_to_gguf\.py .* failed with exit code 1.*SyntaxError"
    ):
        export_model(base, None, tmp_path / "out", ["f16"], llama_cpp_dir=broken)
