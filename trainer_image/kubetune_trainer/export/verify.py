"""Check exported GGUF files against the Hugging Face model they came from, with llama.cpp itself.

For each test conversation:

- the prompt tokens training saw (``tokenizer.apply_chat_template``) are compared with what
  llama.cpp's tokenizer makes of the prompt Ollama would render from the Modelfile TEMPLATE
  (served prompts must match training token for token);
- HF decodes greedily (float32 arithmetic on the merged 16-bit weights), stopping at EOS or
  ``max_new_tokens``: the reference continuation;
- llama.cpp decodes greedily too (``temp=0``): the file loads and generates, and we report how
  many leading tokens agree;
- llama.cpp then reads prompt + reference continuation (teacher forcing) and we compare its
  argmax at every position with the reference token, and its logits with HF's.

Teacher forcing makes agreement a per-position fraction instead of "until the first divergence",
and lets a strict check (f16 by default) tell a real difference from a near-tie: f16 weights are
the merged weights exactly, but the two runtimes round differently (|delta logit| ~ 0.01 on the
tiny test models), so where HF's top two logits are closer than ``tie_tolerance`` (a fraction of
the logit range at that position, 1% by default) either choice is right. A strict file fails if it picks another token anywhere HF's choice is clear. Quantized
files report their agreement fraction and largest logit delta, and are held to
``evaluation.gate.minQuantizedAgreement`` (:meth:`VerificationReport.with_verdicts`, one
:class:`~kubetune_trainer.evaluation.gate.QuantizationVerdict` per file, in the manifest's
report). A file that does not load or generate fails.

Memory. The reference computes in float32 without a float32 copy of the model: on a GPU the
weights stay in 16-bit (the checkpoint's own bf16/fp16, so exactly the merged weights; fp16 for
a float32 checkpoint, as in the f16 GGUF) and each linear layer upcasts its weight to float32
at most ``REFERENCE_CHUNK_BYTES`` (256 MiB) at a time, while norms, activations, the KV cache
and logits are float32. The results are float32 results (the upcast is exact); only the
summation order of a chunked output head differs (~1e-6). On CPU the model is loaded in
float32 as a whole (host memory is the cheaper one, and float32 matmuls are faster there).

:func:`verification_peak_bytes` computes what this holds on the GPU. For Llama-3.1-8B
(hidden 4096, 32 layers, intermediate 14336, vocab 128256, 8 KV heads: 8,030,261,248
parameters) and 2048 tokens of prompt + continuation:

- weights 14.96 GiB (2 bytes per parameter; the 65 norms in float32 add 1 MiB);
- one upcast chunk 0.25 GiB (16384 rows of the output head; the largest other layer is 224 MiB);
- KV cache 0.50 GiB (2048 tokens x 32 layers x 2 x 8 heads x 128 x 4 bytes);
- prefill activations 0.95 GiB (MLP gate/up/product 0.33, attention scores 0.50 should SDPA
  fall back to its math kernel, hidden states 0.13) and logits 0.01 GiB;

about 16.7 GiB (17.9 GB) at the peak, against 31.4 GiB (33.7 GB) for the float32 copy this
replaces (29.9 GiB of weights alone). Training's memory is released before export, so it fits
the 24 GB GPU an 8B QLoRA job runs on; the CUDA context (~0.5 GiB) comes on top.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubetune.planning.memory import ModelGeometry
from kubetune_trainer.export.chat_format import ChatFormat, render_like_ollama
from kubetune_trainer.export.llamacpp import import_llama_cpp
from kubetune_trainer.train.masking import runtime_bos

if TYPE_CHECKING:
    from kubetune_trainer.evaluation.gate import QuantizationVerdict

WeightsDtype = Literal["float32", "bfloat16", "float16"]
# Most of a weight upcast to float32 at once by the reference (see the module doc).
REFERENCE_CHUNK_BYTES = 256 * 1024**2

Conversation = Sequence[Mapping[str, str]]
Prompt = str | Conversation  # a conversation for the chat template, or raw text

DEFAULT_VERIFY_PROMPTS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hello! Who are you?"}],
    [
        {"role": "system", "content": "You are concise."},
        {"role": "user", "content": "Name a colour."},
    ],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
    ],
)


@dataclass(frozen=True)
class PromptComparison:
    """One conversation: prompt tokenization and the continuations of both runtimes."""

    prompt: int  # index into the verification prompts
    served_prompt_matches: bool  # llama.cpp's tokens for the Ollama-rendered prompt == training's
    reference_tokens: tuple[int, ...]  # HF greedy continuation (up to and including EOS)
    gguf_tokens: tuple[int, ...]  # llama.cpp greedy continuation
    matching_prefix: int  # leading tokens both free-running continuations agree on
    forced_matches: int  # positions where llama.cpp's argmax (teacher-forced) is HF's token
    forced_clear_mismatches: int  # ... differs although HF's choice is not a near-tie
    max_logit_delta: float  # largest |llama.cpp logit - HF logit| over the teacher-forced positions
    gguf_text: str


@dataclass(frozen=True)
class GgufCheck:
    """The verification of one GGUF file."""

    artifact: str
    quantization: str
    strict: bool  # must agree with HF wherever HF's choice is not a near-tie
    prompts: tuple[PromptComparison, ...] = ()
    error: str | None = None  # the file did not load or generate

    @property
    def token_agreement(self) -> float:
        """Fraction of reference tokens llama.cpp predicts itself under teacher forcing."""
        total = sum(len(p.reference_tokens) for p in self.prompts)
        return 1.0 if total == 0 else sum(p.forced_matches for p in self.prompts) / total

    @property
    def greedy_exact(self) -> bool:
        """Free-running greedy outputs identical to HF's on every prompt."""
        return self.error is None and all(p.gguf_tokens == p.reference_tokens for p in self.prompts)

    @property
    def max_logit_delta(self) -> float:
        return max((p.max_logit_delta for p in self.prompts), default=0.0)

    def problems(self) -> list[str]:
        if self.error is not None:
            return [f"{self.artifact}: {self.error}"]
        out = [
            f"{self.artifact}: prompt {p.prompt}: llama.cpp tokenizes the served prompt differently from training"
            for p in self.prompts
            if not p.served_prompt_matches
        ]
        out += [
            f"{self.artifact}: prompt {p.prompt}: generated nothing"
            for p in self.prompts
            if not p.gguf_tokens
        ]
        clear = sum(p.forced_clear_mismatches for p in self.prompts)
        if self.strict and clear:
            out.append(
                f"{self.artifact}: llama.cpp picks another token than the HF model at {clear} "
                f"position(s) where HF's choice is clear (token agreement {self.token_agreement:.3f}, "
                f"max |delta logit| {self.max_logit_delta:.4f}); {self.quantization} must agree"
            )
        return out


@dataclass(frozen=True)
class VerificationReport:
    """All GGUF checks of one export."""

    max_new_tokens: int
    tie_tolerance: float
    checks: tuple[GgufCheck, ...]
    verdicts: tuple[QuantizationVerdict, ...] = ()
    """Each file held to minQuantizedAgreement (:meth:`with_verdicts`); () until then."""

    @property
    def problems(self) -> list[str]:
        """Files that are wrong: did not run, tokenize the served prompt differently, generate
        nothing, or (strict files) pick another token where the model's choice is clear."""
        return [problem for check in self.checks for problem in check.problems()]

    @property
    def disagreeing(self) -> list[QuantizationVerdict]:
        """The verdicts of files below minQuantizedAgreement."""
        return [v for v in self.verdicts if not v.passed]

    @property
    def passed(self) -> bool:
        return not self.problems and not self.disagreeing

    def agreements(self) -> dict[str, float | None]:
        """GGUF type -> token agreement; None for a file that did not run."""
        return {c.quantization: None if c.error else c.token_agreement for c in self.checks}

    def with_verdicts(self, verdicts: Sequence[QuantizationVerdict]) -> VerificationReport:
        """This report with `verdicts` (``gate.quantization_verdicts`` of :meth:`agreements`)."""
        return replace(self, verdicts=tuple(verdicts))

    def check(self, quantization: str) -> GgufCheck:
        for c in self.checks:
            if c.quantization == quantization:
                return c
        raise KeyError(quantization)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the manifest: per file agreement, exactness, problems and the
        verdict on its agreement (`agreement_verdict`, null before :meth:`with_verdicts`)."""
        verdicts = {v.quantization: v for v in self.verdicts}
        return {
            "passed": self.passed,
            "max_new_tokens": self.max_new_tokens,
            "tie_tolerance": self.tie_tolerance,
            "problems": self.problems + [v.reason for v in self.disagreeing],
            "checks": [
                {
                    "artifact": c.artifact,
                    "quantization": c.quantization,
                    "strict": c.strict,
                    "greedy_exact": c.greedy_exact,
                    "token_agreement": round(c.token_agreement, 4),
                    "agreement_verdict": _verdict_json(verdicts.get(c.quantization)),
                    "max_logit_delta": round(c.max_logit_delta, 4),
                    "error": c.error,
                    "prompts": [
                        {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}
                        for p in c.prompts
                    ],
                }
                for c in self.checks
            ],
        }


def _verdict_json(verdict: QuantizationVerdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "min_agreement": verdict.min_agreement,
        "passed": verdict.passed,
        "reason": verdict.reason,
    }


@dataclass(frozen=True)
class PreparedPrompt:
    training_ids: list[int]  # what the model saw in training for this conversation
    served_text: str  # what Ollama renders from the Modelfile TEMPLATE (without BOS)


def prepare_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], chat_format: ChatFormat
) -> list[PreparedPrompt]:
    """Training-side prompt tokens and the served prompt text for each prompt.

    A conversation is rendered with the chat template (trailing assistant messages, i.e. the
    expected answer, are dropped: the model is asked for it); a string is raw text, encoded as
    it is, as trl treats non-conversational records and Ollama serves ``raw`` prompts. Without
    a chat template a conversation's last message is used as raw text.
    """
    prepared = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prepared.append(PreparedPrompt(list(tokenizer(prompt)["input_ids"]), prompt))
            continue
        messages = [dict(m) for m in prompt]
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        if not messages:
            raise ValueError("a verification prompt needs at least one non-assistant message")
        if chat_format.from_template:
            # The ids training used (train/masking.py): the template's rendering, plus the BOS
            # the runtime adds when the template writes none (Phi-3.5).
            rendered = str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
            ids = runtime_bos(tokenizer, rendered) + list(
                tokenizer(rendered, add_special_tokens=False)["input_ids"]
            )
            prepared.append(PreparedPrompt(ids, render_like_ollama(chat_format, messages)))
        else:
            text = messages[-1]["content"]
            prepared.append(PreparedPrompt(list(tokenizer(text)["input_ids"]), text))
    return prepared


def eos_token_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """Token ids that end generation: the generation config's, else the tokenizer's EOS."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:
        eos = None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@dataclass(frozen=True)
class Reference:
    tokens: list[int]  # greedy continuation, up to and including EOS
    logits: Any  # numpy array [len(tokens), vocab]: HF's logits before each token


def reference_generations(
    model_dir: Path,
    prompts: Sequence[list[int]],
    eos_ids: set[int],
    max_new_tokens: int,
    *,
    device: str | None = None,
    weights_dtype: WeightsDtype | None = None,
) -> list[Reference]:
    """Greedy continuations, with their logits, from the HF model in ``model_dir`` in float32.

    On the GPU when there is one (the trainer pod's), else on CPU. ``weights_dtype``: how the
    weights are held while the arithmetic is float32 (see the module doc); default
    :func:`reference_weights_dtype`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    held = weights_dtype or reference_weights_dtype(model_dir, device)
    model: Any
    if held == "float32":
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        model.to(device)
    else:  # loaded straight onto the device in 16-bit: no float32 copy anywhere
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=getattr(torch, held), device_map={"": device}
        )
        compute_in_float32(model)
    model.eval()
    pad = model.generation_config.pad_token_id
    outputs = []
    with torch.no_grad():
        for ids in prompts:
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            generated = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(eos_ids),
                pad_token_id=pad if pad is not None else min(eos_ids),
                output_logits=True,
                return_dict_in_generate=True,
            )
            tokens = _until_eos(generated.sequences[0, len(ids) :].tolist(), eos_ids)
            logits = torch.cat(generated.logits[: len(tokens)]).float().cpu().numpy()
            outputs.append(Reference(tokens, logits))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return outputs


def reference_weights_dtype(model_dir: Path, device: str) -> WeightsDtype:
    """float32 on CPU (as a whole); on a GPU the checkpoint's own 16-bit type, float16 for a
    float32 checkpoint (the rounding the f16 GGUF applies too)."""
    if device == "cpu":
        return "float32"
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    saved = config.get("dtype") or config.get("torch_dtype")
    return "bfloat16" if saved == "bfloat16" else "float16"


def compute_in_float32(model: Any, chunk_bytes: int = REFERENCE_CHUNK_BYTES) -> None:
    """Make a model held in 16-bit compute in float32, without a float32 copy of its weights.

    Linear layers upcast their weight at most ``chunk_bytes`` at a time (whole output rows) and
    return float32; embeddings look up 16-bit rows and return them as float32; every other
    parameter and buffer (norms, biases, rotary frequencies: a few MiB) becomes float32.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            if module.bias is not None:
                module.bias.data = module.bias.data.float()
            module.forward = _float32_linear(module, chunk_bytes)  # type: ignore[method-assign]
        elif isinstance(module, torch.nn.Embedding):
            module.register_forward_hook(lambda _m, _args, out: out.float())
        else:
            for param in module.parameters(recurse=False):
                param.data = param.data.float()
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point():
                    setattr(module, name, buffer.float())


def _float32_linear(module: Any, chunk_bytes: int) -> Any:
    import torch

    rows = max(1, chunk_bytes // (4 * module.in_features))

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        weight, bias = module.weight, module.bias
        if weight.shape[0] <= rows:
            return torch.nn.functional.linear(x, weight.float(), bias)
        return torch.cat(
            [
                torch.nn.functional.linear(
                    x,
                    weight[start : start + rows].float(),
                    None if bias is None else bias[start : start + rows],
                )
                for start in range(0, weight.shape[0], rows)
            ],
            dim=-1,
        )

    return forward


@dataclass(frozen=True)
class VerificationMemory:
    """Bytes the reference model adds on the GPU at its peak, by what holds them."""

    weights: int  # 16-bit linear and embedding weights, float32 norms
    upcast_chunk: int  # one linear layer's weight rows in float32
    kv_cache: int  # float32 keys and values of every layer
    activations: int  # prefill: MLP intermediates, attention scores, hidden states
    logits: int  # float32 logits of the kept positions
    float32_copy: int  # the same peak with the whole model in float32 (before this module's design)

    @property
    def total(self) -> int:
        return self.weights + self.upcast_chunk + self.kv_cache + self.activations + self.logits


def verification_peak_bytes(
    config: Mapping[str, Any] | ModelGeometry,
    *,
    tokens: int = 2048,
    max_new_tokens: int = 16,
    chunk_bytes: int = REFERENCE_CHUNK_BYTES,
) -> VerificationMemory:
    """What :func:`reference_generations` holds on a GPU for a model with this geometry
    (a ``config.json`` dict or a :class:`~kubetune.planning.memory.ModelGeometry`), for a
    prompt + continuation of ``tokens`` tokens. The CUDA context and allocator slack come on
    top. See the module doc for the Llama-3.1-8B figure."""
    g = config if isinstance(config, ModelGeometry) else ModelGeometry.from_config(dict(config))
    norms = (2 * g.num_layers + 1) * g.hidden_size
    weights = 2 * (g.parameters - norms) + 4 * norms
    upcast = max(
        4 * min(rows, max(1, chunk_bytes // (4 * cols))) * cols
        for rows, cols in [*g.linear_shapes(), (g.vocab_size, g.hidden_size)]
    )
    kv_cache = tokens * g.kv_bytes_per_token(4)
    mlp = 3 * tokens * g.intermediate_size * 4  # gate, up and their product
    scores = g.num_heads * tokens * tokens * 4  # SDPA's math kernel; fused kernels keep none
    hidden = 4 * tokens * max(g.hidden_size, g.num_heads * g.head_dim) * 4
    activations = mlp + scores + hidden
    logits = (max_new_tokens + 1) * g.vocab_size * 4
    float32_copy = 4 * g.parameters + kv_cache + activations + logits
    return VerificationMemory(weights, upcast, kv_cache, activations, logits, float32_copy)


def compare_with_gguf(
    gguf_path: Path,
    prompts: Sequence[PreparedPrompt],
    references: Sequence[Reference],
    eos_ids: set[int],
    *,
    tie_tolerance: float,
    lora_path: Path | None = None,
) -> list[PromptComparison]:
    """Run one GGUF with llama.cpp on every prompt and compare it with the references."""
    import numpy as np

    llama_cpp: Any = import_llama_cpp()
    longest = max(
        (len(p.training_ids) + len(r.tokens) for p, r in zip(prompts, references, strict=True)),
        default=0,
    )
    llm = llama_cpp.Llama(
        model_path=str(gguf_path),
        lora_path=str(lora_path) if lora_path is not None else None,
        n_ctx=max(128, longest + 8),
        n_threads=os.cpu_count() or 1,
        logits_all=True,  # teacher forcing reads the logits at every position
        seed=0,
        verbose=False,
    )
    try:
        results = []
        for index, (prompt, ref) in enumerate(zip(prompts, references, strict=True)):
            served_ids = llm.tokenize(
                prompt.served_text.encode("utf-8"), add_bos=True, special=True
            )
            tokens: list[int] = []
            for token in llm.generate(
                prompt.training_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True
            ):
                tokens.append(int(token))
                if token in eos_ids or len(tokens) >= max(1, len(ref.tokens)):
                    break
            matches = clear_mismatches = 0
            max_delta = 0.0
            if ref.tokens:
                llm.reset()
                llm.eval(prompt.training_ids + ref.tokens[:-1])
                start = len(prompt.training_ids) - 1
                scores = np.array(llm.scores[start : start + len(ref.tokens)], dtype=np.float32)
                hf = ref.logits[:, : scores.shape[1]]
                max_delta = float(np.abs(scores - hf).max())
                for position, expected in enumerate(ref.tokens):
                    chosen = int(scores[position].argmax())
                    if chosen == expected:
                        matches += 1
                        continue
                    gap = hf[position, expected] - hf[position, chosen]
                    span = hf[position].max() - hf[position].min()
                    if gap > tie_tolerance * span:
                        clear_mismatches += 1
            text = llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")
            results.append(
                PromptComparison(
                    prompt=index,
                    served_prompt_matches=list(served_ids) == prompt.training_ids,
                    reference_tokens=tuple(ref.tokens),
                    gguf_tokens=tuple(tokens),
                    matching_prefix=_common_prefix(ref.tokens, tokens),
                    forced_matches=matches,
                    forced_clear_mismatches=clear_mismatches,
                    max_logit_delta=round(max_delta, 6),
                    gguf_text=text,
                )
            )
        return results
    finally:
        llm.close()


def verify_ggufs(
    reference_dir: Path,
    ggufs: Sequence[tuple[str, str, Path]],
    conversations: Sequence[Prompt],
    *,
    chat_format: ChatFormat,
    max_new_tokens: int = 16,
    strict_quantizations: Sequence[str] = ("f16",),
    tie_tolerance: float = 0.01,
    lora_path: Path | None = None,
) -> VerificationReport:
    """Load and run each ``(artifact name, quantization, path)`` and compare with ``reference_dir``.

    ``tie_tolerance``: where HF's logit for its token beats llama.cpp's choice by at most this
    fraction of HF's logit range at that position, the two count as a near-tie.

    ``lora_path``: an adapter GGUF applied on top of each file (when the base and adapter are
    exported separately); ``reference_dir`` is then the HF model with the adapter merged.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(reference_dir))
    prompts = prepare_prompts(tokenizer, conversations, chat_format)
    eos_ids = eos_token_ids(reference_dir, tokenizer)
    references = reference_generations(
        reference_dir, [p.training_ids for p in prompts], eos_ids, max_new_tokens
    )
    checks = []
    for name, quantization, path in ggufs:
        strict = quantization in strict_quantizations
        try:
            comparisons = compare_with_gguf(
                path, prompts, references, eos_ids, tie_tolerance=tie_tolerance, lora_path=lora_path
            )
        except Exception as e:  # llama.cpp raises ValueError/RuntimeError/OSError on bad files
            checks.append(
                GgufCheck(name, quantization, strict, error=f"llama.cpp could not run it: {e}")
            )
            continue
        checks.append(GgufCheck(name, quantization, strict, tuple(comparisons)))
    return VerificationReport(
        max_new_tokens=max_new_tokens, tie_tolerance=tie_tolerance, checks=tuple(checks)
    )


def _until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
