"""GPU memory a job needs, estimated from the model's geometry and the job's settings.

Used three times: by the operator before the trainer Job is created (a job that cannot fit its
`resources.gpuProduct` fails `WontFit` with the settings that would fit, `kubetune.planning.preflight`),
by `kubetune validate`, and by the trainer's out-of-memory message, which says what each setting
costs and what lowering it would save; the export's verification documents what it adds
(`export.verify.verification_peak_bytes`). Figures are bytes of tensors that live at the
peak; the CUDA context (~0.5 GiB) and allocator fragmentation (often 5-15 %) come on top.

Training, per GPU, for a Llama-shaped decoder (q/k/v/o, gate/up/down, RMSNorm):

- weights: qlora 0.5 byte per linear weight (nf4/fp4) + quantization constants (1/64 byte
  per weight with double quant, 4/64 without), embeddings and output head in 16-bit;
  lora 2 bytes per parameter; full 4 (float32 master weights, as `models.load_model`
  loads them), twice for full DPO (trl's frozen reference copy);
- trainable state: 4-byte weights (adapters only; full counts them above), 4-byte gradients,
  and the optimizer's states: 8 bytes for AdamW, 2 for 8-bit AdamW, ~0 for adafactor and
  sgd. LoRA is counted on the linear layers `lora.targetModules` names (q/k/v/o_proj,
  gate/up/down_proj; `all-linear`, or names that are none of these, count all seven: an upper
  bound);
- activations, saved for the backward pass in 16-bit: per token and layer about
  2·(10·hidden + 2·kv + 4·intermediate) + 8·hidden bytes (the RMSNorm inputs in float32), plus
  3 bytes per adapted linear input when LoRA dropout is on (its output and mask). With gradient
  checkpointing only each layer's 16-bit input is kept and one layer is recomputed at a time,
  in the backward pass, after the logits and their gradient are freed: the peak holds the
  larger of the two, not both;
- logits: tokens × vocab × 12 bytes (16-bit logits, their float32 copy for the loss, the
  log-softmax kept for the backward pass and its gradient). With Llama 3's 128k vocabulary this
  is often the largest term.

Tokens per step = batchSize × maxLength, twice that for DPO (chosen and rejected): every example
at full length, so an upper bound for a dataset of shorter examples.

World size (`resources.gpus` > 1): data parallel (DDP), so each GPU holds a full replica and
trains `batchSize` examples of its own; the figure is per GPU, and DDP adds its gradient buckets,
a second copy of the trainable parameters' gradients. Models that need sharding (FSDP) are not
estimated smaller for more GPUs.

The terms that depend on how an engine runs training (bytes per adapter weight and gradient,
per optimizer state, per logit) are fields of :class:`TrainingSetup`; :func:`training_setup`
fills them as kubetune's trainer runs (transformers + peft + trl), and bench/memory_estimate.py
fills them as torchtune's recipes run, to check the estimate against torchtune's published
peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubetune.api.finetunejob import FineTuneJobSpec

GIB = 1024**3
LOGIT_BYTES = 12  # per logit in training: 16-bit + float32 copy + log-softmax + its gradient
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Hugging Face names of a decoder layer's linear layers, in `ModelGeometry.linear_shapes` order."""
OPTIMIZER_STATE_BYTES = {  # per trainable parameter
    "adamw_torch_fused": 8,
    "adamw_torch": 8,
    "paged_adamw_32bit": 8,
    "adamw_bnb_8bit": 2,
    "paged_adamw_8bit": 2,
    "adafactor": 0,
    "sgd": 0,
}


@dataclass(frozen=True)
class ModelGeometry:
    """The shapes that decide a decoder's memory (Hugging Face `config.json` names)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelGeometry:
        """From a `config.json` dict (Llama, Qwen2, Mistral, Phi-3 and Gemma use these keys)."""
        text = config.get("text_config") or config  # multimodal configs nest the decoder
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        return cls(
            hidden_size=hidden,
            num_layers=int(text["num_hidden_layers"]),
            intermediate_size=int(text["intermediate_size"]),
            vocab_size=int(text["vocab_size"]),
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @classmethod
    def read(cls, model_dir: Path) -> ModelGeometry | None:
        """The geometry of the model in `model_dir`, None when it has no readable config."""
        try:
            return cls.from_config(json.loads((model_dir / "config.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]

    @property
    def linear_parameters(self) -> int:
        """Weights of every decoder layer's linear layers (what QLoRA quantizes)."""
        return self.num_layers * sum(o * i for o, i in self.linear_shapes())

    @property
    def other_parameters(self) -> int:
        """Embeddings, output head (unless tied) and norms: kept in 16-bit by QLoRA."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return embed + head + norms

    @property
    def parameters(self) -> int:
        return self.linear_parameters + self.other_parameters

    def lora_parameters(self, r: int, targets: frozenset[str] = frozenset(LINEAR_NAMES)) -> int:
        """Adapter parameters with rank `r` on the linear layers named in `targets`."""
        shapes = zip(LINEAR_NAMES, self.linear_shapes(), strict=True)
        return self.num_layers * r * sum(o + i for name, (o, i) in shapes if name in targets)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


# Llama 3.1 8B (meta-llama/Llama-3.1-8B config.json): 8,030,261,248 parameters.
LLAMA_3_1_8B = ModelGeometry(
    hidden_size=4096,
    num_layers=32,
    intermediate_size=14336,
    vocab_size=128256,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
)


@dataclass(frozen=True)
class TrainingSetup:
    """Everything besides the model's geometry that decides the training peak on one GPU."""

    method: Literal["qlora", "lora", "full"]
    tokens: int
    """Tokens of one micro-batch on one GPU (batch × length, twice that for DPO)."""
    gradient_checkpointing: bool
    lora_r: int = 16
    lora_targets: frozenset[str] = frozenset(LINEAR_NAMES)
    lora_dropout: bool = False
    double_quant: bool = True
    optimizer_state_bytes: int = 8
    """Per trainable parameter: 8 for AdamW in float32, 4 for AdamW in bf16, 2 for 8-bit."""
    adapter_bytes: int = 8
    """Per adapter parameter, its weight and its gradient: 8 in float32 (peft), 4 in bf16."""
    logit_bytes: float = LOGIT_BYTES
    """Per logit held across the loss (a chunked loss in bf16 holds about 3)."""
    reference_copy: bool = False
    """Full DPO keeps a frozen copy of the model as its reference."""
    world_size: int = 1


def lora_targets(target_modules: list[str]) -> frozenset[str]:
    """The linear layers `lora.targetModules` adapts: all seven for `all-linear` or for names
    that are none of them (a regular expression, another architecture's names), an upper bound."""
    named = frozenset(t for t in target_modules if t in LINEAR_NAMES)
    return named if named and len(named) == len(set(target_modules)) else frozenset(LINEAR_NAMES)


def training_setup(spec: FineTuneJobSpec) -> TrainingSetup:
    """`spec`'s settings as kubetune's trainer runs them (transformers, peft, trl)."""
    t = spec.training
    return TrainingSetup(
        method=spec.method,
        tokens=t.batch_size * t.max_length * (2 if spec.objective == "dpo" else 1),
        gradient_checkpointing=t.gradient_checkpointing,
        lora_r=spec.lora.r,
        lora_targets=lora_targets(spec.lora.target_modules),
        lora_dropout=spec.lora.dropout > 0,
        double_quant=spec.quantization.double_quant,
        optimizer_state_bytes=OPTIMIZER_STATE_BYTES.get(t.optimizer, 8),
        reference_copy=spec.method == "full" and spec.objective == "dpo",
        world_size=max(1, spec.resources.gpus),
    )


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated bytes at the training peak on one GPU, by what holds them."""

    weights: int
    trainable_state: int  # trainable weights (adapters), gradients, optimizer states, DDP buckets
    activations: int  # saved for the backward pass (with checkpointing: each layer's input)
    logits: int
    recomputed: int = 0
    """With gradient checkpointing, the one layer recomputed in the backward pass: held after the
    logits are freed, so the peak counts the larger of the two."""

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + max(self.logits, self.recomputed)

    def describe(self) -> str:
        recomputed = f" + {gib(self.recomputed)} recomputing a layer" if self.recomputed else ""
        return (
            f"≈{gib(self.total)} (weights {gib(self.weights)}, gradients and optimizer "
            f"{gib(self.trainable_state)}, activations {gib(self.activations)}{recomputed}, "
            f"logits {gib(self.logits)})"
        )


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def estimate_memory(setup: TrainingSetup, geometry: ModelGeometry) -> TrainingMemory:
    """Bytes one GPU holds at the peak of a training step of `setup` (module doc)."""
    g = geometry
    if setup.method == "qlora":
        constants = 1 / 64 + 4 / (64 * 256) if setup.double_quant else 4 / 64
        weights = int(g.linear_parameters * (0.5 + constants)) + 2 * g.other_parameters
    elif setup.method == "lora":
        weights = 2 * g.parameters
    else:
        weights = 4 * g.parameters * (2 if setup.reference_copy else 1)

    ddp = setup.world_size > 1
    if setup.method == "full":
        gradient_bytes = 4 * (2 if ddp else 1)
        trainable_state = g.parameters * (gradient_bytes + setup.optimizer_state_bytes)
    else:
        adapters = g.lora_parameters(setup.lora_r, setup.lora_targets)
        buckets = setup.adapter_bytes // 2 if ddp else 0  # a second copy of the gradients
        trainable_state = adapters * (setup.adapter_bytes + buckets + setup.optimizer_state_bytes)

    h, i = g.hidden_size, g.intermediate_size
    kv = g.num_kv_heads * g.head_dim
    per_layer = 2 * (10 * h + 2 * kv + 4 * i) + 8 * h
    if setup.method != "full" and setup.lora_dropout:
        shapes = zip(LINEAR_NAMES, g.linear_shapes(), strict=True)
        per_layer += 3 * sum(inp for name, (_, inp) in shapes if name in setup.lora_targets)
    checkpointing = setup.gradient_checkpointing
    return TrainingMemory(
        weights=weights,
        trainable_state=trainable_state,
        activations=setup.tokens * g.num_layers * (2 * h if checkpointing else per_layer),
        logits=int(setup.tokens * g.vocab_size * setup.logit_bytes),
        recomputed=setup.tokens * per_layer if checkpointing else 0,
    )


def estimate_training_memory(spec: FineTuneJobSpec, geometry: ModelGeometry) -> TrainingMemory:
    """Bytes one GPU holds at the peak of a training step with `spec`'s settings (module doc)."""
    return estimate_memory(training_setup(spec), geometry)


def lower_memory_options(
    spec: FineTuneJobSpec, geometry: ModelGeometry
) -> list[tuple[str, TrainingMemory]]:
    """What each setting that lowers memory would bring the estimate to, most saving first:
    (the change as the user writes it, the estimate with that change alone)."""
    t = spec.training
    options: list[tuple[str, FineTuneJobSpec]] = []

    def with_training(**update: Any) -> FineTuneJobSpec:
        return spec.model_copy(update={"training": t.model_copy(update=update)})

    if t.batch_size > 1:
        smaller = max(1, t.batch_size // 2)
        options.append(
            (
                f"training.batchSize: {smaller} with gradientAccumulationSteps: "
                f"{t.gradient_accumulation_steps * t.batch_size // smaller} (same effective batch)",
                with_training(batch_size=smaller),
            )
        )
    if t.max_length > 512:
        shorter = max(512, t.max_length // 2)
        options.append((f"training.maxLength: {shorter}", with_training(max_length=shorter)))
    if not t.gradient_checkpointing:
        options.append(
            ("training.gradientCheckpointing: true", with_training(gradient_checkpointing=True))
        )
    if spec.method != "qlora":
        options.append(("method: qlora", spec.model_copy(update={"method": "qlora"})))
    if spec.method == "full" and t.optimizer not in (
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "adafactor",
        "sgd",
    ):
        options.append(
            ("training.optimizer: paged_adamw_8bit", with_training(optimizer="paged_adamw_8bit"))
        )
    estimated = [(change, estimate_training_memory(s, geometry)) for change, s in options]
    return sorted(estimated, key=lambda option: option[1].total)
