"""The tiny model factory: loads with Auto* classes, tokenizes like SentencePiece, is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sentencepiece  # noqa: F401  (a missing dependency fails, never skips)
import torch
import transformers  # noqa: F401  (a missing dependency fails, never skips)

from kubetune_trainer.tiny_model import (
    BUILTIN_CORPUS,
    EOS_TOKEN,
    ROLE_TOKENS,
    TinyLlamaSpec,
    build_tiny_llama,
    is_builtin_model_uri,
    parse_builtin_model_uri,
    resolve_builtin_model,
)

PLAIN_TEXTS = [
    *[t for t in BUILTIN_CORPUS if "<|" not in t],
    "Hello wörld 123 ünï ✓\n  two  spaces",
    " leading space",
    "trailing space ",
    "\t\ttabs\r\nand CRLF",
    "\U0001d525\U0001d522 \u2014 unseen characters fall back to bytes",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", BUILTIN_CORPUS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_has_what_transformers_and_llama_cpp_need(tiny_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (tiny_dir / name).is_file(), name


def test_loads_with_auto_classes(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size % 256 == 0 and model.config.intermediate_size % 256 == 0
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == EOS_TOKEN and model.config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("Hello", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tokenizer))


def test_encode_decode_roundtrip_and_agreement_with_sentencepiece(tiny_dir: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    for text in PLAIN_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        # llama.cpp tokenizes from tokenizer.model: HF and SentencePiece must agree.
        assert ids == sp.encode(text), text


def test_chat_markers_are_single_special_tokens(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for marker in [*ROLE_TOKENS.values(), EOS_TOKEN]:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        assert len(ids) == 1, marker
        assert marker in tokenizer.all_special_tokens


def test_chat_template_renders_and_masks_assistant_turns(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"

    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    # Only the assistant's answer and its end-of-turn token are trained on.
    assert tokenizer.decode(masked) == "Hello.<|end|>"

    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_llama(tmp_path / "again", BUILTIN_CORPUS)
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json"):
        assert _sha(again / name) == _sha(tiny_dir / name), name
    other = build_tiny_llama(tmp_path / "other", BUILTIN_CORPUS, seed=1)
    assert _sha(other / "model.safetensors") != _sha(tiny_dir / "model.safetensors")
    assert _sha(other / "tokenizer.model") == _sha(tiny_dir / "tokenizer.model")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 200}, "multiple of 256"),
        ({"intermediate_size": 300}, "multiple of 256"),
        ({"num_heads": 3}, "divisible"),
        ({"vocab_size": 100}, "at least"),
    ],
)
def test_rejects_sizes_llama_cpp_cannot_k_quantize(
    tmp_path: Path, kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_tiny_llama(tmp_path, BUILTIN_CORPUS, **kwargs)


def test_rejects_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        build_tiny_llama(tmp_path, ["", "  "])


def test_builtin_uri_parsing() -> None:
    assert is_builtin_model_uri("builtin://tiny-llama")
    assert not is_builtin_model_uri("hf://meta-llama/Llama-3.2-1B")
    assert parse_builtin_model_uri("builtin://tiny-llama") == TinyLlamaSpec()
    spec = parse_builtin_model_uri(
        "builtin://tiny-llama?hidden_size=512&seed=3&initializer_range=0.05"
    )
    assert (spec.hidden_size, spec.seed, spec.initializer_range) == (512, 3, 0.05)
    with pytest.raises(ValueError, match="unknown builtin model"):
        parse_builtin_model_uri("builtin://huge-llama")
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_builtin_model_uri("builtin://tiny-llama?layers=3")
    with pytest.raises(ValueError, match="multiple of 256"):
        parse_builtin_model_uri("builtin://tiny-llama?hidden_size=100")


def test_resolve_builtin_caches_by_spec_and_corpus(tmp_path: Path) -> None:
    first = resolve_builtin_model("builtin://tiny-llama", ["job text one"], cache_dir=tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert (
        resolve_builtin_model("builtin://tiny-llama", ["job text one"], cache_dir=tmp_path) == first
    )
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = resolve_builtin_model("builtin://tiny-llama", ["job text two"], cache_dir=tmp_path)
    assert other != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])
