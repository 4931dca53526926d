"""Tiny Llama-architecture models made locally, for tests, demos and CPU-only runs.

Nothing here downloads anything: the tokenizer is a SentencePiece BPE model trained on the fly on
the given text, and the model is a randomly initialised (seeded) ``LlamaForCausalLM``.

The saved directory is a regular Hugging Face model directory that

- ``AutoTokenizer`` / ``AutoModelForCausalLM`` load (``tokenizer.json`` is written next to
  ``tokenizer.model``, so loading needs neither protobuf nor a slow->fast conversion);
- llama.cpp's ``convert_hf_to_gguf.py`` converts through its SentencePiece path
  (``tokenizer.model`` plus ``added_tokens_decoder`` in ``tokenizer_config.json``);
- carries a chat template whose assistant turns sit in ``{% generation %}`` blocks, so trl's
  ``assistant_only_loss`` works.

Tokenizer choices, each so that Hugging Face, SentencePiece and llama.cpp tokenize alike:

- BPE (llama.cpp's SPM tokenizer merges by piece score, which is SentencePiece BPE, not unigram);
- ``byte_fallback`` so any text encodes; identity normalisation; no dummy prefix
  (``add_prefix_space: false``), so no tokenizer has to guess where a leading space goes after a
  special token;
- chat markers ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and the end-of-turn ``<|end|>``
  are control tokens; ``<|end|>`` is also the EOS token, so HF ``generate``, llama.cpp and Ollama
  all stop on it.

Hidden and intermediate sizes must be multiples of 256, the k-quant block size: otherwise
llama.cpp silently falls back to other types and ``q4_k_m`` would not be what it says.

Base-model URIs: ``builtin://tiny-llama`` (optionally ``?hidden_size=512&num_layers=4&seed=1``)
is resolved by :func:`resolve_builtin_model` into a directory built here, cached by a hash of the
config and the corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BUILTIN_SCHEME = "builtin"
TINY_LLAMA_NAME = "tiny-llama"

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "<|end|>"  # end of turn and end of text
PAD_TOKEN = "<pad>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

# `{% generation %}` marks the tokens trl trains on with assistant_only_loss. The end-of-turn
# token is inside it: the model must learn to stop.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# Mixed on purpose: prose, code, numbers, non-ASCII and chat-shaped text, so every byte class the
# jobs' data may hold gets a few merges. Jobs add their own dataset text on top.
BUILTIN_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A FineTuneJob describes a base model, a dataset, LoRA settings, an evaluation gate and exports.",
    "The operator reconciles desired state: it observes, builds children, applies them and reports status.",
    "Kubernetes schedules the trainer pod on a node with a GPU; the pod trains, evaluates and exports.",
    "Question: What is the capital of France? Answer: Paris.",
    "Question: How many legs does a spider have? Answer: Eight.",
    "Summarise the ticket in one sentence, then propose a fix.",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    '{"name": "kubetune", "version": "0.1.0", "ok": true, "items": [1, 2, 3]}',
    "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: demo\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 -7 1e-4 50%",
    "Punctuation: ( ) [ ] { } < > ; : , . ! ? ' \" - _ = + * / \\ | @ # $ % ^ & ~ `",
    "Café, naïve, über, señor, smørrebrød, Ελληνικά, русский, 日本語, 中文, 한국어, emoji 🙂.",
    "<|user|>\nHello! Who are you?<|end|>\n<|assistant|>\nI am a small assistant.<|end|>\n",
    "<|system|>\nYou are concise.<|end|>\n<|user|>\nName a colour.<|end|>\n<|assistant|>\nBlue.<|end|>\n",
    "Thank you. You're welcome. Please try again later. Sorry, I do not know.",
    "The model was trained for three epochs with a learning rate of 0.0002 and a rank of 16.",
)


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Every knob of a tiny model; its JSON form (plus the corpus) is what the cache is keyed on."""

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    # Larger than Llama's 0.02 so that a random model's logits have clear winners: greedy
    # outputs then compare across runtimes (HF vs llama.cpp) without near-ties flipping tokens.
    initializer_range: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        for name in ("hidden_size", "intermediate_size"):
            value = getattr(self, name)
            if value <= 0 or value % 256:
                raise ValueError(
                    f"{name}={value}: must be a positive multiple of 256 (the k-quant block size), "
                    "or llama.cpp's q4_k_m/q5_k_m silently fall back to other types"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}"
            )
        # 256 byte-fallback pieces + 4 specials + 3 role tokens, and some room for merges.
        if self.vocab_size < 300:
            raise ValueError(
                f"vocab_size={self.vocab_size}: must be at least 300 (256 byte pieces + specials)"
            )


def build_tiny_llama(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 256,
    intermediate_size: int = 512,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Train a SentencePiece tokenizer on ``corpus`` and save it with a random, seeded Llama.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors``,
    ``tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json`` and
    ``chat_template.jinja`` into ``out_dir`` (created; existing files are overwritten) and
    returns ``out_dir``. The same arguments give byte-identical weights and tokenizer.

    Raises ``ValueError`` for sizes llama.cpp cannot k-quantize or an empty corpus.
    """
    spec = TinyLlamaSpec(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        seed=seed,
    )
    return _build(spec, list(corpus), Path(out_dir))


def _build(spec: TinyLlamaSpec, corpus: list[str], out_dir: Path) -> Path:
    spec.validate()
    texts = [t for t in corpus if t.strip()]
    if not texts:
        raise ValueError("corpus is empty: the tokenizer needs some text to learn merges from")
    out_dir.mkdir(parents=True, exist_ok=True)

    sp_model = _train_sentencepiece(texts, spec.vocab_size)
    (out_dir / "tokenizer.model").write_bytes(sp_model)
    tokenizer = _hf_tokenizer(sp_model)
    tokenizer.save_pretrained(str(out_dir))
    _write_model(spec, len(tokenizer), tokenizer, out_dir)
    return out_dir


def _train_sentencepiece(texts: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not support vocab_size merges
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=UNK_TOKEN,
        bos_piece=BOS_TOKEN,
        eos_piece=EOS_TOKEN,
        pad_piece=PAD_TOKEN,
        control_symbols=list(ROLE_TOKENS.values()),
        max_sentence_length=1 << 20,
        num_threads=1,  # determinism
        minloglevel=2,
    )
    return buffer.getvalue()


def _hf_tokenizer(sp_model: bytes) -> Any:
    """The HF (tokenizers-backed) LlamaTokenizer equivalent to ``sp_model``.

    Built from the SentencePiece vocabulary with transformers' own merge generation (the one it
    uses when converting a ``tokenizer.model``), read through the sentencepiece API rather than
    the protobuf, so no protobuf package is needed.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    specials = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS.values()]
    merges = generate_merges(vocab, skip_tokens=specials)
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS.values()),
        add_prefix_space=False,
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 30,
    )


def _write_model(spec: TinyLlamaSpec, n_vocab: int, tokenizer: Any, out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)


# --- builtin:// base-model URIs ---------------------------------------------------------------


def is_builtin_model_uri(uri: str) -> bool:
    """True for ``builtin://...`` base-model URIs (resolved locally, never downloaded)."""
    return urlsplit(uri).scheme == BUILTIN_SCHEME


def parse_builtin_model_uri(uri: str) -> TinyLlamaSpec:
    """``builtin://tiny-llama?hidden_size=512&seed=1`` -> its :class:`TinyLlamaSpec`.

    Raises ``ValueError`` for another scheme, an unknown model name or an unknown parameter.
    """
    parts = urlsplit(uri)
    if parts.scheme != BUILTIN_SCHEME:
        raise ValueError(f"{uri!r} is not a {BUILTIN_SCHEME}:// URI")
    name = (parts.netloc + parts.path).strip("/")
    if name != TINY_LLAMA_NAME:
        raise ValueError(f"unknown builtin model {name!r}; known: {TINY_LLAMA_NAME!r}")
    types = {f.name: f.type for f in fields(TinyLlamaSpec)}
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in types:
            raise ValueError(f"unknown parameter {key!r} in {uri!r}; known: {sorted(types)}")
        kwargs[key] = float(value) if types[key] in ("float", float) else int(value)
    spec = TinyLlamaSpec(**kwargs)
    spec.validate()
    return spec


def default_model_cache_dir() -> Path:
    """``$KUBETUNE_CACHE/models`` (default ``~/.cache/kubetune/models``)."""
    root = os.environ.get("KUBETUNE_CACHE") or str(Path.home() / ".cache" / "kubetune")
    return Path(root) / "models"


def resolve_builtin_model(
    uri: str,
    corpus: Iterable[str] = (),
    *,
    cache_dir: Path | None = None,
) -> Path:
    """Build (or reuse) the model a ``builtin://`` URI names and return its directory.

    The tokenizer is trained on ``corpus`` (the job's own dataset text) plus
    :data:`BUILTIN_CORPUS`. Results are cached under ``cache_dir`` (default
    :func:`default_model_cache_dir`) by a hash of the spec and the corpus, and written atomically,
    so concurrent jobs never see half a model.
    """
    spec = parse_builtin_model_uri(uri)
    texts = [*BUILTIN_CORPUS, *corpus]
    key = _cache_key(spec, texts)
    root = Path(cache_dir) if cache_dir is not None else default_model_cache_dir()
    target = root / f"{TINY_LLAMA_NAME}-{key}"

    def build(staging: Path) -> None:
        _build(spec, texts, staging)
        (staging / "kubetune-builtin.json").write_text(
            json.dumps({"uri": uri, "spec": asdict(spec), "cache_key": key}, indent=2) + "\n"
        )

    return build_cached(target, "model.safetensors", build)


def build_cached(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(staging)`` unless ``target/marker`` exists already.

    Built in a staging folder beside it and renamed into place, so concurrent jobs never see
    half a model; when another process wins the race, its (identical) copy is kept.
    """
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cache_key(spec: TinyLlamaSpec, texts: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(spec), sort_keys=True).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]
