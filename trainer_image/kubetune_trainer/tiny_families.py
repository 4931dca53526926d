"""Tiny random-weight models of each supported family, with the family's REAL tokenizer and template.

Tests and demos must meet the tokenizers and chat templates users fine-tune with, not idealised
copies. Both ship, offline, in the llama.cpp tree of the pinned llama-cpp-python sdist
(``hack/fetch-llama-cpp.sh``):

- ``models/ggml-vocab-<name>.gguf``: the complete tokenizer of a family (vocabulary, merges or
  SentencePiece scores, special tokens), with ``.inp``/``.out`` tokenization test vectors;
- ``models/templates/<repo>.jinja``: the exact chat template of the instruct release.

:func:`build_family_model` writes a Hugging Face model directory for a family of
:data:`kubetune.api.families.FAMILIES`: the real fast tokenizer (converted from the GGUF
vocabulary by transformers' own GGUF loader, cached by the file's digest since the conversion
of a 128k-token BPE vocabulary takes a minute), the real chat template, the special tokens the
instruct release's ``tokenizer_config.json`` sets (``eos`` is the end-of-turn token), for
SentencePiece families a ``tokenizer.model`` rebuilt from the same vocabulary (llama.cpp's
converter reads that file for Phi-3 and Mistral), and a seeded random model of the family's
architecture, small enough for CPU (hidden 256, 2 layers; vocabulary as the real one).

``builtin://tiny-<family>`` base-model URIs (e.g. ``builtin://tiny-qwen2``) resolve here, so a
FineTuneJob exercises exactly what a user's job of that family does. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.families import FAMILIES, ModelFamily
from kubetune_trainer.export.llamacpp import llama_cpp_dir
from kubetune_trainer.tiny_model import build_cached, default_model_cache_dir

TEST_SEPARATOR = "\n__ggml_vocab_test__\n"
FAMILY_URI_PREFIX = "tiny-"


@dataclass(frozen=True)
class FamilyTokens:
    """What the instruct release sets that the (base) GGUF vocabulary does not say."""

    eos: str
    """End of turn: what generation stops on (tokenizer_config.json ``eos_token``)."""
    pad: str | None = None
    architecture: str = ""


# From each instruct release's tokenizer_config.json / config.json.
_INSTRUCT: dict[str, FamilyTokens] = {
    "llama3": FamilyTokens(eos="<|eot_id|>", architecture="LlamaForCausalLM"),
    "qwen2": FamilyTokens(eos="<|im_end|>", pad="<|endoftext|>", architecture="Qwen2ForCausalLM"),
    "phi3": FamilyTokens(eos="<|endoftext|>", pad="<|endoftext|>", architecture="Phi3ForCausalLM"),
    "mistral": FamilyTokens(eos="</s>", architecture="MistralForCausalLM"),
}
_SPM_FAMILIES = ("phi3", "mistral")


def family(name: str) -> ModelFamily:
    """The supported family called ``name``; ValueError naming the supported ones otherwise."""
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise ValueError(f"unknown model family {name!r}; supported: {[f.name for f in FAMILIES]}")


def models_dir(llama_dir: Path | None = None) -> Path:
    """llama.cpp's ``models/`` folder (vocabularies and templates); FileNotFoundError if absent."""
    root = (llama_dir or llama_cpp_dir()) / "models"
    if not (root / "templates").is_dir():
        raise FileNotFoundError(
            f"{root}/templates is missing: run `bash hack/fetch-llama-cpp.sh` (or `make llama-cpp`)"
        )
    return root


def chat_template(fam: ModelFamily, llama_dir: Path | None = None) -> str:
    """The family's stock chat template, verbatim."""
    return (models_dir(llama_dir) / "templates" / fam.template).read_text(encoding="utf-8")


def tokenization_vectors(
    fam: ModelFamily, llama_dir: Path | None = None
) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors for the family's vocabulary: (text, token ids without BOS)."""
    base = models_dir(llama_dir) / fam.vocab
    raw = base.with_name(base.name + ".inp").read_text(encoding="utf-8")
    outs = base.with_name(base.name + ".out").read_text(encoding="utf-8").splitlines()
    texts = raw.split(TEST_SEPARATOR)
    if raw.endswith(TEST_SEPARATOR):  # llama.cpp's reader ends at the last separator
        texts.pop()
    if len(texts) != len(outs):
        raise ValueError(f"{base}.inp has {len(texts)} tests but .out has {len(outs)}")
    return [(text, [int(t) for t in out.split()]) for text, out in zip(texts, outs, strict=True)]


def load_family_tokenizer(fam: ModelFamily, llama_dir: Path | None = None) -> Any:
    """The family's real fast tokenizer with its stock template and instruct special tokens."""
    from transformers import AutoTokenizer

    saved = _converted_tokenizer_dir(fam, llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(saved))
    return tokenizer


def build_family_model(
    fam: ModelFamily,
    out_dir: Path,
    *,
    hidden_size: int = 256,
    intermediate_size: int = 512,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    llama_dir: Path | None = None,
) -> Path:
    """Write a tiny random ``fam`` model with its real tokenizer and template into ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_family_tokenizer(fam, llama_dir)
    tokenizer.save_pretrained(str(out_dir))
    spm = _converted_tokenizer_dir(fam, llama_dir) / "tokenizer.model"
    if spm.is_file():
        shutil.copyfile(spm, out_dir / "tokenizer.model")

    tokens = _INSTRUCT[fam.name]
    eos_id = tokenizer.convert_tokens_to_ids(tokens.eos)
    config = AutoConfig.for_model(
        fam.model_types[0],
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        # Larger than the families' 0.02 so a random model's logits have clear winners and
        # greedy outputs compare across runtimes (HF vs llama.cpp) without near-ties.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,  # the vocabulary is real-sized; one matrix keeps it small
        architectures=[tokens.architecture],
        dtype="float32",
    )
    if fam.name == "mistral":
        config.sliding_window = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def is_family_uri_name(name: str) -> bool:
    """``tiny-qwen2`` and the like (the part after ``builtin://``)."""
    return name.startswith(FAMILY_URI_PREFIX) and any(
        name == FAMILY_URI_PREFIX + f.name for f in FAMILIES
    )


def resolve_family_model(name: str, *, cache_dir: Path | None = None) -> Path:
    """The directory of ``builtin://tiny-<family>``, built once and cached (atomically)."""
    fam = family(name.removeprefix(FAMILY_URI_PREFIX))
    root = Path(cache_dir) if cache_dir is not None else default_model_cache_dir()
    vocab_digest = _file_digest(models_dir() / fam.vocab)
    template_digest = hashlib.sha256(chat_template(fam).encode()).hexdigest()[:12]
    target = root / f"{name}-{vocab_digest}-{template_digest}"

    def build(staging: Path) -> None:
        build_family_model(fam, staging)
        (staging / "kubetune-builtin.json").write_text(
            json.dumps({"uri": f"builtin://{name}", "family": fam.name}, indent=2) + "\n"
        )

    return build_cached(target, "model.safetensors", build)


# --- conversion from llama.cpp's GGUF vocabularies -------------------------------------------


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _converted_tokenizer_dir(fam: ModelFamily, llama_dir: Path | None) -> Path:
    """The family's tokenizer converted from GGUF and saved, cached by vocabulary+template digest."""
    models = models_dir(llama_dir)
    vocab = models / fam.vocab
    template = chat_template(fam, llama_dir)
    key = f"{_file_digest(vocab)}-{hashlib.sha256(template.encode()).hexdigest()[:12]}"
    target = default_model_cache_dir().parent / "tokenizers" / f"{fam.name}-{key}"

    def build(staging: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(models), gguf_file=fam.vocab)
        tokens = _INSTRUCT[fam.name]
        tokenizer.eos_token = tokens.eos
        if tokens.pad is not None:
            tokenizer.pad_token = tokens.pad
        tokenizer.chat_template = template
        tokenizer.save_pretrained(str(staging))
        _as_released(fam, staging / "tokenizer.json")
        if fam.name in _SPM_FAMILIES:
            (staging / "tokenizer.model").write_bytes(_sentencepiece_model(vocab))

    return build_cached(target, "tokenizer.json", build)


def _as_released(fam: ModelFamily, tokenizer_json: Path) -> None:
    """Two settings of the released tokenizer.json that transformers' GGUF loader does not set.

    Both are checked by llama.cpp's test vectors (tests/unit/test_family_models.py):

    - Llama 3's BPE has ``ignore_merges``: a pre-token that is itself in the vocabulary is one
      token even when no merge path reaches it (``" Việt"`` is 101798), and a post-processor that
      prepends ``<|begin_of_text|>`` (llama.cpp adds BOS for this vocabulary too);
    - Llama/Mistral SentencePiece: the normaliser prepends ``▁`` and replaces spaces, with no
      pre-tokenizer (the loader's Metaspace ``prepend_scheme: first`` drops the dummy prefix of
      a leading space: ``" "`` must be ``▁▁`` = 259).
    """
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if fam.name == "llama3":
        data["model"]["ignore_merges"] = True
        bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                "<|begin_of_text|>": {
                    "id": "<|begin_of_text|>",
                    "ids": [128000],
                    "tokens": ["<|begin_of_text|>"],
                }
            },
        }
    if fam.name in _SPM_FAMILIES and data.get("normalizer") is None:
        data["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            ],
        }
        data["pre_tokenizer"] = None
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _sentencepiece_model(vocab: Path) -> bytes:
    """A SentencePiece ``tokenizer.model`` holding the GGUF vocabulary's base pieces.

    llama.cpp's converter reads Phi-3 and Mistral vocabularies from this file (pieces, scores,
    types) and the added tokens (ids past the base vocabulary) from tokenizer_config.json. The
    normaliser is Llama's SentencePiece one: identity, a dummy prefix, whitespace escaped.
    """
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(str(vocab))
    field = reader.fields["tokenizer.ggml.tokens"]
    pieces = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    scores = [
        float(reader.fields["tokenizer.ggml.scores"].parts[i][0])
        for i in reader.fields["tokenizer.ggml.scores"].data
    ]
    types = [
        int(reader.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in reader.fields["tokenizer.ggml.token_type"].data
    ]
    control, user_defined = 3, 4
    # The base vocabulary ends where the added (control / user-defined) tokens past the bytes begin.
    base = next(
        (i for i in range(259, len(pieces)) if types[i] in (control, user_defined)), len(pieces)
    )
    model = pb.ModelProto()  # type: ignore[attr-defined]
    for piece, score, kind in zip(pieces[:base], scores[:base], types[:base], strict=True):
        model.pieces.add(piece=piece, score=score, type=kind)
    model.trainer_spec.model_type = pb.TrainerSpec.BPE  # type: ignore[attr-defined]
    model.trainer_spec.vocab_size = base
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id = 0
    model.trainer_spec.bos_id = 1
    model.trainer_spec.eos_id = 2
    model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    return bytes(model.SerializeToString())
