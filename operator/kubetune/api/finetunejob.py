"""The FineTuneJob resource: what to fine-tune, on which data, how, and what it produced.

The models here are the single source of truth: the CRD in `crds/` is generated from them
(`kubetune crds`), the operator validates and resolves specs with them, and the trainer reads
the resolved spec through them. Defaults are the ones that work in practice for an 8B model on
one GPU with QLoRA (r=16, alpha=32, dropout=0.05, lr=2e-4, 3 epochs, nf4 + double quant, bf16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import ConfigDict, Field, HttpUrl, model_validator

from kubetune.api.common import (
    ApiModel,
    Artifact,
    Condition,
    ConfigMapKeyRef,
    LongText,
    Name,
    Ratio,
    SecretKeyRef,
    ShortText,
    Toleration,
)
from kubetune.api.families import FAMILIES, unsupported_family_problem
from kubetune.api.provider import ProviderSpec
from kubetune.api.teacher import AugmentSpec, TeacherSpec
from kubetune.api.trainer_result import (
    DataReportSummary,
    Diagnosis,
    EvaluationSummary,
    GateResult,
    Progress,
    TrainingSummary,
)

ModelUri = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=r"^(hf|pvc|file|s3|builtin)://.+$",
        examples=["hf://meta-llama/Llama-3.1-8B-Instruct", "pvc://models/llama-3.1-8b"],
    ),
]
DataUri = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=r"^(hf|pvc|file|s3|https?)://.+$",
        examples=["pvc://datasets/support/train.jsonl", "https://example.com/data.jsonl"],
    ),
]
MetricName = Literal["exact_match", "rouge_l", "bleu", "perplexity"]
Baseline = Literal["zeroShot", "fewShot"]
GgufType = Literal["f16", "q8_0", "q5_k_m", "q4_k_m"]


def _all_metrics() -> list[MetricName]:
    return ["exact_match", "rouge_l", "bleu", "perplexity"]


def _default_gguf() -> list[GgufType]:
    return ["q4_k_m"]


Quantity = Annotated[
    str,
    Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"),
]

# Model families whose weights come under a licence the user must accept explicitly.
LICENSED_FAMILIES = ("llama", "gemma", "mistral-large", "codestral")

# Spec fields that may change after creation; every other spec field is frozen by a CEL rule.
MUTABLE_SPEC_FIELDS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


def _cel(rule: str, message: str) -> ConfigDict:
    """Model config carrying one CEL rule into the generated CRD schema."""
    return ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": rule, "message": message}]}
    )


M = TypeVar("M")


@dataclass(frozen=True)
class Rule(Generic[M]):
    """A rule checked twice with one message: by the apiserver (`cel`, on the model's object in
    the CRD) and by pydantic (`holds`), so `kubetune validate`, the apiserver, the operator and
    the trainer reject the same specs with the same words."""

    cel: str
    message: str
    holds: Callable[[M], bool]


def _cel_rules(rules: Sequence[Rule[Any]]) -> ConfigDict:
    """Model config carrying `rules` into the generated CRD schema."""
    return ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": r.cel, "message": r.message} for r in rules]
        }
    )


def broken_rules(obj: M, rules: Sequence[Rule[M]]) -> list[str]:
    """Messages of the `rules` that `obj` breaks."""
    return [r.message for r in rules if not r.holds(obj)]


class BaseModelSpec(ApiModel):
    """The model to start from."""

    model_config = _cel(
        "self.acceptLicense || self.uri.startsWith('builtin://') || !(self.uri.lowerAscii().contains('llama') || self.uri.lowerAscii().contains('gemma') || self.uri.lowerAscii().contains('mistral-large') || self.uri.lowerAscii().contains('codestral'))",
        "acceptLicense: this model family is under a licence you must accept; set acceptLicense: true after reading it",
    )

    uri: ModelUri
    """Where the base model is: `hf://org/name` (a Hugging Face id, needs cluster network),
    `pvc://<claim>/<path>` or `file://<path>` (a local/mounted folder in Hugging Face format),
    `s3://bucket/prefix`, or `builtin://tiny-llama` / `builtin://tiny-<family>` (tiny models
    built locally, for demos and tests; tiny-llama3, tiny-qwen2, tiny-phi3 and tiny-mistral carry
    their family's real tokenizer and chat template). Supported families: llama3, qwen2, phi3,
    mistral; a Hugging Face name of another family (Gemma, Falcon, …) is rejected."""
    revision: ShortText | None = None
    """Git revision (branch, tag or commit) for `hf://` models; pin a commit for reproducibility."""
    accept_license: bool = False
    """Set to true to accept the licence of gated model families (e.g. Llama, Gemma). Required
    for those families; the job fails before anything is downloaded otherwise."""
    trust_remote_code: bool = False
    """Allow the model repository's own Python code to run. Off by default: it executes code
    from the model's authors inside the trainer pod."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hugging Face token for gated or private `hf://` models."""

    @model_validator(mode="after")
    def _supported_family(self) -> BaseModelSpec:
        # Before anything is downloaded: a Hugging Face name that announces an unsupported
        # family, or a builtin:// model that does not exist. Names that say nothing pass; the
        # trainer checks config.json's model_type before loading weights.
        scheme, _, rest = self.uri.partition("://")
        if scheme == "hf":
            problem = unsupported_family_problem(rest.split("?", 1)[0])
            if problem is not None:
                raise ValueError(f"baseModel.uri: {problem}")
        if scheme == "builtin":
            name = rest.split("?", 1)[0].strip("/")
            known = ["tiny-llama", *(f"tiny-{f.name}" for f in FAMILIES)]
            if name not in known:
                raise ValueError(
                    f"baseModel.uri: unknown builtin model {name!r}; known: {', '.join(known)} "
                    "(tiny-<family> carries that family's real tokenizer and chat template)"
                )
        return self

    def requires_license(self) -> bool:
        """True when the model's id names a family whose licence must be accepted
        (`builtin://` models are built locally from a config and carry no weights' licence)."""
        scheme, _, ident = self.uri.lower().partition("://")
        if scheme == "builtin":
            return False
        return any(family in ident for family in LICENSED_FAMILIES)


class DatasetSource(ApiModel):
    """Where examples come from: exactly one of `uri` or `configMap`."""

    model_config = _cel(
        "has(self.uri) != has(self.configMap)", "set exactly one of uri or configMap"
    )

    uri: DataUri | None = None
    """JSONL (or JSON array) file or folder: `pvc://<claim>/<path>`, `file://<path>`,
    `https://…`, `hf://<dataset>` or `s3://…` (the last two need cluster network)."""
    config_map: ConfigMapKeyRef | None = None
    """A ConfigMap key holding JSONL, for small datasets kept beside the FineTuneJob."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSource:
        if (self.uri is None) == (self.config_map is None):
            raise ValueError("set exactly one of uri or configMap")
        return self


class SplitSpec(ApiModel):
    """How the dataset is split into train / validation / test (seeded, leakage-checked)."""

    model_config = _cel(
        "self.validation + self.test < 0.9",
        "validation + test must leave at least 10% for training",
    )

    validation: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Fraction held out for evaluation during training (eval loss, early stopping)."""
    test: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Fraction held out for the final evaluation and the quality gate."""
    seed: int = 42
    """Seed of the shuffle, so the same data always gives the same split."""


class GeneralDataSpec(ApiModel):
    """General-purpose data mixed into training to limit forgetting of general skills."""

    source: DatasetSource
    """Where the general examples are."""
    ratio: Ratio = 0.2
    """Share of general examples in the training mix (0.2 = one general example in five)."""


class DatasetSpec(ApiModel):
    """The training data."""

    source: DatasetSource
    """Where the examples are."""
    format: Literal["auto", "chat", "instruction", "completion", "preference"] = "auto"
    """Record format: chat (`messages`), instruction (`instruction`/`input`/`output`),
    completion (`prompt`/`completion`), preference (`prompt`/`chosen`/`rejected`), or auto-detected."""
    split: SplitSpec = Field(default_factory=SplitSpec)
    """Train / validation / test split."""
    general: GeneralDataSpec | None = None
    """Optional general data to mix in."""
    augment: AugmentSpec | None = None
    """Synthetic examples from `spec.teacher`, `perExample` per seed example (SFT data only)."""


class DataPolicySpec(ApiModel):
    """Checks run on the data before any GPU time is spent."""

    dedup: Literal["none", "exact", "near"] = "near"
    """Remove exact duplicates (`exact`), or exact and near duplicates (`near`)."""
    near_duplicate_threshold: Annotated[float, Field(ge=0.5, le=1.0)] = 0.9
    """Jaccard similarity of word shingles above which two examples are near duplicates."""
    poisoning_scan: bool = True
    """Look for instruction-override phrases ("ignore previous instructions", …)."""
    secret_scan: bool = True
    """Look for API keys, tokens, private keys, passwords and credentials in URLs."""
    pii_scan: bool = True
    """Look for e-mail addresses and phone numbers."""
    action: Literal["flag", "drop", "fail"] = "drop"
    """What to do with examples the scans catch: report them (`flag`), remove them (`drop`),
    or stop the job before training (`fail`)."""
    max_class_imbalance: Annotated[float, Field(ge=1.0, le=1000000.0)] = 10.0
    """When the answers are labels (at most 20 distinct answers of at most 64 characters, at
    least two records per label on average, as in classification or routing data), the data
    report and `status.data.classBalance` give the class distribution, and the report warns
    when the most common label has more than this many records per record of the rarest (10:
    a 10:1 majority:minority ratio). A warning, not a failure: a skewed routing
    task is still a task; read it next to the few-shot baseline and per-label answers."""


class LoraSpec(ApiModel):
    """LoRA adapter settings (used by `qlora` and `lora`)."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank of the adapter matrices."""
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator; usually 2 × r."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the adapter's input."""
    target_modules: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(min_length=1, max_length=64)
    ] = Field(default_factory=lambda: ["all-linear"])
    """Modules to adapt; `all-linear` adapts every linear layer but the output head."""


class QuantizationSpec(ApiModel):
    """4-bit quantization of the frozen base weights (`qlora` only)."""

    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; nf4 suits normally distributed weights."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bit per parameter)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Data type of the matrix multiplications."""


class EarlyStoppingSpec(ApiModel):
    """Stop when the eval loss stops improving."""

    enabled: bool = True
    """Turn early stopping on."""
    patience: Annotated[int, Field(ge=1, le=100)] = 3
    """Evaluations without improvement before stopping."""
    threshold: Annotated[float, Field(ge=0.0)] = 0.0
    """Minimum decrease of eval loss that counts as an improvement."""


TRAINING_RULES: tuple[Rule[TrainingSpec], ...] = (
    Rule(
        "!self.packing || (has(self.attentionImplementation) && self.attentionImplementation == 'flash_attention_2')",
        "training.packing: packed examples would attend to each other unless "
        "training.attentionImplementation is flash_attention_2 (the only kernel that keeps each "
        "packed example to itself, on a CUDA GPU with flash-attn); set attentionImplementation: "
        "flash_attention_2, or packing: false",
        lambda t: not t.packing or t.attention_implementation == "flash_attention_2",
    ),
)


class TrainingSpec(ApiModel):
    """Optimisation settings. Unset `learningRate` takes the default of the job's method and
    objective (see `learningRate`); the other defaults are transformers' own unless noted."""

    model_config = _cel_rules(TRAINING_RULES)

    epochs: Annotated[float, Field(gt=0, le=100)] = 3
    """Passes over the training data."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    """Peak learning rate. Unset: the default of the method and objective. sft with lora/qlora:
    2e-4 (QLoRA paper, Dettmers et al. 2023, for 7B-13B models; peft's examples). sft with full:
    2e-5 (Stanford Alpaca's and Vicuna's full fine-tuning of LLaMA). dpo with full: 5e-7 (Zephyr-7B-beta,
    alignment-handbook recipe dpo/config_full.yaml; the DPO paper used 1e-6). dpo with
    lora/qlora: 5e-6 (alignment-handbook recipe dpo/config_qlora.yaml): adapters need about 10x
    the full fine-tuning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""
    optimizer: Literal[
        "adamw_torch_fused",
        "adamw_torch",
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
        "adafactor",
        "sgd",
    ] = "adamw_torch_fused"
    """Optimizer (transformers' `optim` names). adamw_torch_fused: transformers' default, AdamW in
    one fused kernel; adamw_torch: the unfused reference; adamw_bnb_8bit: 8-bit AdamW states
    from bitsandbytes (about 6 bytes per trainable parameter less, matters for method full);
    paged_adamw_8bit / paged_adamw_32bit: bitsandbytes AdamW whose states page to CPU memory on
    GPU memory spikes (the QLoRA paper's optimizer); adafactor: factored second moments, least
    memory; sgd: plain SGD. bitsandbytes 0.50 runs its optimizers on CPU too (paging then does
    nothing)."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Decoupled weight decay (AdamW), not applied to biases and norms. 0 as in transformers,
    the QLoRA repository and Stanford Alpaca; LLaMA's pretraining used 0.1."""
    max_grad_norm: Annotated[float, Field(ge=0.0, le=1000.0)] = 1.0
    """Clip the gradient norm to this value; 0 turns clipping off. 1.0 as in transformers and
    trl; the QLoRA paper used 0.3."""
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    """Examples per device per step."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 4
    """Steps whose gradients are summed before an update (effective batch = batch × this × GPUs)."""
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    """Share of steps spent warming the learning rate up."""
    max_length: Annotated[int, Field(ge=16, le=131072)] = 2048
    """Tokens per example; longer examples are truncated (the data report counts them)."""
    packing: bool = False
    """Pack several short examples into one sequence. Needs `attentionImplementation:
    flash_attention_2`: trl packs without padding and tells examples apart by their position
    ids, which only flash_attention_2 honours; with sdpa or eager each packed example would
    attend to the ones before it."""
    eval_steps: Annotated[int, Field(ge=1)] = 50
    """Evaluate on the validation split every this many steps."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """Early stopping on eval loss; the best checkpoint is kept."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    attention_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    """Attention kernel of the model. Unset: transformers chooses (sdpa, PyTorch's fused
    scaled-dot-product attention, where the architecture supports it, else eager).
    flash_attention_2 needs a CUDA GPU and the flash-attn package in the trainer image; eager
    is the plain implementation some architectures (e.g. Gemma 2's logit soft-capping) need."""
    dpo_beta: Annotated[float, Field(gt=0, le=10)] = 0.1
    """DPO temperature (objective `dpo` only): how far the policy may move from the reference
    model; lower moves further. 0.1 as in the DPO paper (Rafailov et al. 2023) and trl."""
    seed: int = 42
    """Seed for initialisation, shuffling and dropout."""

    def effective_learning_rate(self, method: str, objective: str) -> float:
        """`learningRate`, or when unset the default for `method` and `objective` (the sources
        are in the field's description). The one place the default is decided."""
        if self.learning_rate is not None:
            return self.learning_rate
        adapter = method != "full"
        if objective == "dpo":
            return 5e-6 if adapter else 5e-7
        return 2e-4 if adapter else 2e-5

    def device_problems(self, device: str) -> list[str]:
        """Settings that cannot run on `device` ("cuda" or "cpu"), each naming the field and the
        fix; [] when all can. Checked by the trainer when it starts, and knowable at admission
        for `resources.gpus: 0` (device "cpu")."""
        # The bitsandbytes optimizers are not here: bitsandbytes 0.50 runs them on CPU.
        if device != "cuda" and self.attention_implementation == "flash_attention_2":
            return [
                "training.attentionImplementation: flash_attention_2 needs a CUDA GPU; "
                "leave it unset (sdpa) on CPU, or ask for a GPU (resources.gpus)"
            ]
        return []

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        problems = broken_rules(self, TRAINING_RULES)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class JudgeSpec(ApiModel):
    """An LLM judge behind any OpenAI-compatible endpoint."""

    endpoint: Annotated[HttpUrl, Field(max_length=2048)]
    """Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Judge model name."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key (mounted as an environment variable, never logged)."""
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    """Requests in flight at once."""
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60
    """Timeout of one request."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Retries for rate limits, timeouts and unparseable answers."""


# Gate thresholds on test-split scores: (GateSpec attribute, name in YAML).
GATE_THRESHOLDS = (
    ("min_judge_score", "minJudgeScore"),
    ("min_exact_match", "minExactMatch"),
    ("min_rouge_l", "minRougeL"),
    ("min_bleu", "minBleu"),
    ("max_perplexity", "maxPerplexity"),
)


class GateSpec(ApiModel):
    """When a fine-tuned model is marked deployable (`status.gate.passed`), judged on the
    held-out test split. The gate never passes without a check:

    - nothing set (the default): the fine-tuned model must beat the base model on ROUGE-L
      (else the first computed of exact match, BLEU and perplexity), which needs
      `evaluation.compareWithBase: true`;
    - a judge and no threshold: the mean judge score must be at least 4.0;
    - every threshold given must hold; a threshold on a metric that was not measured fails;
    - `requireImprovementOverFewShot: true`: the fine-tuned model must also beat the base model
      prompted with training examples (`evaluation.baselines: [fewShot]`) on the same metric;
      it is a check of its own, so the default comparison with the base is then off unless
      `requireImprovementOverBase: true`;
    - `requireImprovementOverBase: false` with no threshold and no judge: the gate fails with
      "no gate configured" (the model is exported, marked ungated, unless onGateFailure: skip).

    Every quantized GGUF file must also reach `minQuantizedAgreement` at export."""

    min_judge_score: Annotated[float, Field(ge=1, le=5)] | None = None
    """Minimum mean judge score (1–5). Needs `evaluation.judge`."""
    min_exact_match: Ratio | None = None
    """Minimum exact-match rate on the test split."""
    min_rouge_l: Ratio | None = None
    """Minimum ROUGE-L F1."""
    min_bleu: Annotated[float, Field(ge=0, le=100)] | None = None
    """Minimum BLEU (0–100)."""
    max_perplexity: Annotated[float, Field(gt=0)] | None = None
    """Maximum perplexity on the test split."""
    max_forgetting_drop: Ratio | None = None
    """Largest allowed relative drop of the general-set score after fine-tuning (0.1: at most
    10% worse than the base). Needs `evaluation.forgettingSet`, the general set scored before
    and after; unset, a measured drop is reported but not gated."""
    require_improvement_over_base: bool | None = None
    """Fail the gate unless the fine-tuned model beats the base model on the primary metric:
    the judge score with a judge, else the first thresholded of ROUGE-L, exact match, BLEU and
    perplexity, else the first of them computed. Needs `evaluation.compareWithBase:
    true`. Unset: on when no threshold and no judge is set (the default gate), off otherwise."""
    require_improvement_over_few_shot: bool | None = None
    """Fail the gate unless the fine-tuned model beats the few-shot baseline (the base model
    with `evaluation.fewShotExamples` training examples before each test prompt) on the same
    primary metric as `requireImprovementOverBase`: when prompting does as well, fine-tuning
    did not pay. Needs `evaluation.baselines` to list `fewShot`. Unset: off."""
    min_quantized_agreement: Ratio = 0.9
    """Minimum top-1 token agreement of each quantized GGUF file (q8_0, q5_k_m, q4_k_m) with
    the merged 16-bit model, on the verification prompts (the first test examples) under teacher
    forcing: the share of reference tokens where llama.cpp's most likely next token is the
    model's. A file below it fails export verification, named with its agreement and this
    bound. f16 is not held to it: f16 must agree wherever the model's choice is clear. 0.9
    leaves room for q4_k_m's rounding on 7B-8B models and still catches a broken conversion
    or quantization; tiny random-weight test models need less."""

    def thresholds_set(self) -> list[str]:
        """YAML names of the test-split thresholds that are set, in GATE_THRESHOLDS order."""
        return [yaml for attr, yaml in GATE_THRESHOLDS if getattr(self, attr) is not None]

    def requires_improvement(self, judge_configured: bool) -> bool:
        """Whether the fine-tuned model must beat the base: `requireImprovementOverBase`, or
        when unset, whether the gate has nothing else to check (no threshold, no judge)."""
        if self.require_improvement_over_base is not None:
            return self.require_improvement_over_base
        return (
            not self.thresholds_set()
            and not judge_configured
            and not self.require_improvement_over_few_shot
        )

    def checks_nothing(self, judge_configured: bool) -> bool:
        """True when the gate has no check at all, so it fails with "no gate configured"."""
        return (
            not judge_configured
            and not self.thresholds_set()
            and not self.requires_improvement(judge_configured)
            and not self.require_improvement_over_few_shot
            and self.max_forgetting_drop is None
        )


class EvaluationSpec(ApiModel):
    """How the fine-tuned model is evaluated on the held-out test split."""

    metrics: Annotated[list[MetricName], Field(max_length=8)] = Field(default_factory=_all_metrics)
    """Reference-based metrics to compute (those a gate threshold needs are added). Without a
    judge, the default gate compares the base and the fine-tuned model on one of them."""
    judge: JudgeSpec | None = None
    """Optional LLM-as-judge scoring (1–5 rubric against the reference). Needed by
    `gate.minJudgeScore`; the trainer checks that the endpoint answers before it trains."""
    gate: GateSpec = Field(default_factory=GateSpec)
    """Quality gate; by default the fine-tuned model must beat the base model."""
    compare_with_base: bool = True
    """Also evaluate the base model, for deltas and win rate. Needed by the gate's comparison
    with the base (`gate.requireImprovementOverBase`, on by default)."""
    baselines: Annotated[list[Baseline], Field(max_length=2)] = Field(default_factory=list)
    """Baselines evaluated next to the fine-tuned model on the same test split, with the same
    metrics and judge, to answer "should we fine-tune at all?". `zeroShot`: the base model asked
    each test prompt as it is (the base comparison `compareWithBase` runs; listing it says so).
    `fewShot`: the base model with `fewShotExamples` examples from the training split (never the
    test split) placed before each test prompt as earlier user/assistant turns of the chat,
    rendered with the model's own chat template (raw-text prompts get them as prompt+answer
    blocks). Needed by `gate.requireImprovementOverFewShot`."""
    few_shot_examples: Annotated[int, Field(ge=1, le=32)] = 3
    """k of the few-shot baseline: training examples placed before each test prompt (the same
    ones for every prompt, drawn with `dataset.split.seed`)."""
    forgetting_set: DatasetSource | None = None
    """Small general set scored before and after fine-tuning (forgetting check). Needed by
    `gate.maxForgettingDrop`."""
    max_examples: Annotated[int, Field(ge=1, le=100000)] = 200
    """Cap on evaluated test examples."""
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 256
    """Generation budget per answer."""


class ExportOutput(ApiModel):
    """Where artifacts are written."""

    pvc_name: Name = "kubetune-artifacts"
    """PersistentVolumeClaim (ReadWriteOnce or ReadWriteMany) that receives the artifacts."""
    path: Annotated[str, Field(max_length=1024, pattern=r"^[A-Za-z0-9._/-]*$")] = ""
    """Folder inside the claim; default `<namespace>/<job name>`."""


class OllamaExportSpec(ApiModel):
    """Hand-written Ollama prompt format, for a chat template kubetune cannot translate itself."""

    template: Annotated[str, Field(min_length=1, max_length=16384)] | None = None
    """Go template for the Modelfile's TEMPLATE (Ollama's `.Messages`, `.System`, …), used
    instead of the one derived from the model's chat template. Checked before training: Ollama's
    own template engine renders a set of conversations with it, and the token ids must equal what
    the model's Jinja chat template renders for the same conversations, or the job fails."""
    system: Annotated[str, Field(min_length=1, max_length=16384)] | None = None
    """Modelfile SYSTEM: the system prompt Ollama sends when a request has none. Checked with
    `template` (or the derived one) the same way; by default, the chat template's own default
    system prompt, if it has one."""


EXPORT_RULES: tuple[Rule[ExportSpec], ...] = (
    Rule(
        "size(self.gguf) > 0",
        "export.gguf: list at least one GGUF type (f16, q8_0, q5_k_m or q4_k_m), e.g. gguf: [q4_k_m]: "
        "every job exports its merged model as GGUF",
        lambda e: bool(e.gguf),
    ),
    Rule(
        "size(self.gguf) == 0 || self.merge",
        "export.merge: gguf export needs merge: true (llama.cpp converts the merged model)",
        lambda e: not e.gguf or e.merge,
    ),
    Rule(
        "!self.output.path.matches('(^|/)[.][.](/|$)')",
        "export.output.path: '..' may not appear in it: artifacts stay inside the claim "
        "export.output.pvcName; give a folder such as team-a/run-1",
        lambda e: ".." not in e.output.path.split("/"),
    ),
)


class ExportSpec(ApiModel):
    """What the job exports after evaluation."""

    model_config = _cel_rules(EXPORT_RULES)

    merge: bool = True
    """Merge the adapter into the base reloaded in 16-bit and save merged safetensors. Must be
    true: the GGUF files are converted from the merged model (`adapterGguf` adds the adapter
    alone)."""
    gguf: Annotated[list[GgufType], Field(max_length=4)] = Field(default_factory=_default_gguf)
    """GGUF files to produce with llama.cpp's converter and quantizer; at least one. Each
    quantized file is held to `evaluation.gate.minQuantizedAgreement`."""
    adapter_gguf: bool = False
    """Also export the adapter alone as GGUF (for Ollama's ADAPTER); methods lora and qlora."""
    on_gate_failure: Literal["export", "skip"] = "export"
    """Export even when the gate fails (the version is then marked ungated)."""
    output: ExportOutput = Field(default_factory=ExportOutput)
    """Artifact location."""
    ollama: OllamaExportSpec | None = None
    """Overrides for the Ollama Modelfile's TEMPLATE and SYSTEM (checked before training)."""

    @model_validator(mode="after")
    def _exportable(self) -> ExportSpec:
        problems = broken_rules(self, EXPORT_RULES)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ResourcesSpec(ApiModel):
    """What the trainer pod asks of the cluster."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """`nvidia.com/gpu` limit; 0 trains on CPU (small models only)."""
    gpu_product: Annotated[str, Field(max_length=253)] | None = None
    """Required value of the node label `nvidia.com/gpu.product`, e.g. `NVIDIA-A100-SXM4-80GB`."""
    node_selector: dict[str, Annotated[str, Field(max_length=253)]] = Field(
        default_factory=dict, max_length=32
    )
    """Extra node labels the pod requires."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Tolerations, e.g. for tainted GPU pools."""
    memory: Quantity | None = None
    """Memory request and limit of the trainer container, e.g. `64Gi`."""
    cpu: Quantity | None = None
    """CPU request of the trainer container, e.g. `8`."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """PriorityClass of the trainer pod."""


_GATE = "self.evaluation.gate"
_NO_THRESHOLD = " && ".join(f"!has({_GATE}.{yaml})" for _, yaml in GATE_THRESHOLDS)
# GateSpec.requires_improvement in CEL.
_FEW_SHOT_GATE = (
    f"(has({_GATE}.requireImprovementOverFewShot) && {_GATE}.requireImprovementOverFewShot)"
)
_IMPROVEMENT = (
    f"(has({_GATE}.requireImprovementOverBase) ? {_GATE}.requireImprovementOverBase"
    f" : ({_NO_THRESHOLD} && !has(self.evaluation.judge) && !{_FEW_SHOT_GATE}))"
)
_BASELINES = "(has(self.evaluation.baselines) ? self.evaluation.baselines : [])"
_REFERENCE_THRESHOLD = " || ".join(f"has({_GATE}.{yaml})" for _, yaml in GATE_THRESHOLDS[1:])


def _improvement(spec: FineTuneJobSpec) -> bool:
    return spec.evaluation.gate.requires_improvement(spec.evaluation.judge is not None)


# backend: local | openai, and what each needs.
PROVIDER_RULES: tuple[Rule[FineTuneJobSpec], ...] = (
    Rule(
        "self.backend != 'local' || has(self.baseModel)",
        "baseModel: backend local fine-tunes baseModel; set baseModel.uri (or backend: openai "
        "with a provider block)",
        lambda s: s.backend != "local" or s.base_model_spec is not None,
    ),
    Rule(
        "self.backend != 'openai' || has(self.provider)",
        "provider: backend openai needs a provider block with model and apiKeySecretRef "
        "(the Secret holding the API key)",
        lambda s: s.backend != "openai" or s.provider is not None,
    ),
    Rule(
        "self.backend == 'openai' || !has(self.provider)",
        "provider: only read with backend: openai; set backend: openai, or remove provider",
        lambda s: s.backend == "openai" or s.provider is None,
    ),
    Rule(
        "self.backend != 'openai' || !has(self.baseModel)",
        "baseModel: backend openai fine-tunes provider.model on the provider's machines; "
        "remove baseModel",
        lambda s: s.backend != "openai" or s.base_model_spec is None,
    ),
    Rule(
        "self.backend != 'openai' || !has(self.provider) || "
        "((self.objective == 'dpo') == (self.provider.method == 'dpo'))",
        "provider.method: objective dpo trains with provider.method dpo, objective sft with "
        "supervised; make them agree",
        lambda s: s.provider is None or (s.objective == "dpo") == (s.provider.method == "dpo"),
    ),
    Rule(
        "!has(self.provider) || !has(self.provider.hyperparameters) || "
        "!has(self.provider.hyperparameters.beta) || self.provider.method == 'dpo'",
        "provider.hyperparameters.beta: only used by method dpo; remove it, or set method: dpo",
        lambda s: (
            s.provider is None
            or s.provider.hyperparameters.beta is None
            or s.provider.method == "dpo"
        ),
    ),
    Rule(
        f"self.backend != 'openai' || (!has({_GATE}.maxPerplexity)"
        f" && !has({_GATE}.maxForgettingDrop) && !has(self.evaluation.forgettingSet)"
        f" && size({_BASELINES}) == 0 && !{_FEW_SHOT_GATE})",
        "evaluation: backend openai scores the provider's model through its chat API, which "
        "gives no perplexity and runs no forgetting set or few-shot baseline; remove "
        "gate.maxPerplexity, gate.maxForgettingDrop, forgettingSet and baselines",
        lambda s: (
            s.backend != "openai"
            or (
                s.evaluation.gate.max_perplexity is None
                and s.evaluation.gate.max_forgetting_drop is None
                and s.evaluation.forgetting_set is None
                and not s.evaluation.baselines
                and not s.evaluation.gate.require_improvement_over_few_shot
            )
        ),
    ),
    Rule(
        "self.backend != 'openai' || (self.resources.gpus <= 1 && !has(self.resources.gpuProduct))",
        "resources: backend openai trains on the provider's machines and its pod asks for no GPU; "
        "remove resources.gpus and resources.gpuProduct (or set gpus: 0)",
        lambda s: (
            s.backend != "openai" or (s.resources.gpus <= 1 and s.resources.gpu_product is None)
        ),
    ),
)

# objective: distill and dataset.augment, and the teacher both read.
TEACHER_RULES: tuple[Rule[FineTuneJobSpec], ...] = (
    Rule(
        "!has(self.teacher) || has(self.teacher.endpoint) != has(self.teacher.uri)",
        "teacher: set exactly one of endpoint (an OpenAI-compatible chat API, with model) or "
        "uri (a model the trainer loads, e.g. hf://Qwen/Qwen2.5-7B-Instruct)",
        lambda s: s.teacher is None or (s.teacher.endpoint is None) != (s.teacher.uri is None),
    ),
    Rule(
        "!has(self.teacher) || !has(self.teacher.endpoint) || has(self.teacher.model)",
        "teacher.model: an endpoint teacher needs the model name to ask for, e.g. gpt-4o",
        lambda s: s.teacher is None or s.teacher.endpoint is None or s.teacher.model is not None,
    ),
    Rule(
        "self.objective != 'distill' || has(self.teacher)",
        "teacher: objective distill needs a teacher (endpoint and model of an OpenAI-compatible "
        "chat API) to answer the dataset's prompts",
        lambda s: s.objective != "distill" or s.teacher is not None,
    ),
    Rule(
        "!has(self.dataset.augment) || has(self.teacher)",
        "dataset.augment: synthetic examples are written by the teacher; add a teacher block "
        "(endpoint and model), or remove augment",
        lambda s: s.dataset.augment is None or s.teacher is not None,
    ),
    Rule(
        "!has(self.teacher) || self.objective == 'distill' || has(self.dataset.augment)",
        "teacher: only read with objective: distill or dataset.augment; set one of them, or "
        "remove teacher",
        lambda s: s.teacher is None or s.objective == "distill" or s.dataset.augment is not None,
    ),
    Rule(
        "!has(self.dataset.augment) || self.objective != 'dpo'",
        "dataset.augment: the teacher writes SFT examples (a question and its answer), which "
        "objective dpo cannot train on; remove augment, or use objective sft or distill",
        lambda s: s.dataset.augment is None or s.objective != "dpo",
    ),
    Rule(
        "self.backend != 'openai' || (self.objective != 'distill' && !has(self.dataset.augment))",
        "objective: backend openai does not distill or augment yet; use backend: local, or "
        "objective sft without dataset.augment",
        lambda s: s.backend != "openai" or (s.objective != "distill" and s.dataset.augment is None),
    ),
)

# Cross-field rules of the spec that depend on nothing but the spec: each one is a failure the
# trainer would otherwise meet after the GPU was spent (or a gate that could never pass).
SPEC_RULES: tuple[Rule[FineTuneJobSpec], ...] = (
    Rule(
        "self.objective != 'dpo' || self.dataset.format in ['auto', 'preference']",
        "dataset.format: objective dpo needs preference data (prompt/chosen/rejected)",
        lambda s: s.objective != "dpo" or s.dataset.format in ("auto", "preference"),
    ),
    Rule(
        "self.objective == 'dpo' || self.dataset.format != 'preference'",
        "dataset.format: preference records (prompt/chosen/rejected) train with objective: dpo; "
        "set objective: dpo, or give chat, instruction or completion data",
        lambda s: s.objective == "dpo" or s.dataset.format != "preference",
    ),
    Rule(
        "self.dataset.split.test > 0.0",
        "dataset.split.test: 0 holds no examples out, so evaluation has nothing to score and the "
        "quality gate cannot pass; set it above 0, e.g. 0.1",
        lambda s: s.dataset.split.test > 0,
    ),
    Rule(
        "!has(self.baseModel) || !self.baseModel.uri.startsWith('s3://')",
        "baseModel.uri: the trainer does not read s3:// models yet; copy the model folder to a "
        "PersistentVolumeClaim and use pvc://<claim>/<path>",
        lambda s: s.base_model_spec is None or not s.base_model_spec.uri.startswith("s3://"),
    ),
    Rule(
        f"!has({_GATE}.minJudgeScore) || has(self.evaluation.judge)",
        "evaluation.gate.minJudgeScore needs evaluation.judge: configure a judge (endpoint and "
        "model) or remove minJudgeScore",
        lambda s: s.evaluation.gate.min_judge_score is None or s.evaluation.judge is not None,
    ),
    Rule(
        f"!has({_GATE}.maxForgettingDrop) || has(self.evaluation.forgettingSet)",
        "evaluation.gate.maxForgettingDrop needs evaluation.forgettingSet: add a general set that "
        "is scored before and after fine-tuning, or remove maxForgettingDrop",
        lambda s: (
            s.evaluation.gate.max_forgetting_drop is None or s.evaluation.forgetting_set is not None
        ),
    ),
    Rule(
        f"self.evaluation.compareWithBase || !{_IMPROVEMENT}",
        "evaluation.compareWithBase: the gate compares the fine-tuned model with the base model "
        "(gate.requireImprovementOverBase, on by default when no threshold and no judge is set), "
        "so the base must be evaluated; set compareWithBase: true, or set "
        "gate.requireImprovementOverBase: false and give a threshold such as gate.minRougeL",
        lambda s: s.evaluation.compare_with_base or not _improvement(s),
    ),
    Rule(
        f"has(self.evaluation.judge) || size(self.evaluation.metrics) > 0 || {_REFERENCE_THRESHOLD}"
        f" || !{_IMPROVEMENT}",
        "evaluation.metrics: the gate compares the fine-tuned model with the base model, but no "
        "metric is computed (the list is empty and there is no judge); list one, e.g. "
        "metrics: [rouge_l]",
        lambda s: (
            s.evaluation.judge is not None
            or bool(s.evaluation.metrics)
            or any(t != "minJudgeScore" for t in s.evaluation.gate.thresholds_set())
            or not _improvement(s)
        ),
    ),
    Rule(
        f"!{_FEW_SHOT_GATE} || 'fewShot' in {_BASELINES}",
        "evaluation.gate.requireImprovementOverFewShot needs evaluation.baselines to list fewShot "
        "(the base model prompted with evaluation.fewShotExamples training examples is the "
        "baseline to beat); add baselines: [fewShot], or remove requireImprovementOverFewShot",
        lambda s: (
            not s.evaluation.gate.require_improvement_over_few_shot
            or "fewShot" in s.evaluation.baselines
        ),
    ),
    Rule(
        f"self.evaluation.compareWithBase || !('zeroShot' in {_BASELINES})",
        "evaluation.baselines: zeroShot is the base model asked the test prompts as they are, "
        "which compareWithBase: false turns off; remove zeroShot from baselines, or set "
        "compareWithBase: true",
        lambda s: s.evaluation.compare_with_base or "zeroShot" not in s.evaluation.baselines,
    ),
    Rule(
        f"has(self.evaluation.judge) || size(self.evaluation.metrics) > 0 || {_REFERENCE_THRESHOLD}"
        f" || !{_FEW_SHOT_GATE} || {_IMPROVEMENT}",
        "evaluation.metrics: the gate compares the fine-tuned model with the few-shot baseline "
        "(gate.requireImprovementOverFewShot), but no metric is computed (the list is empty and "
        "there is no judge); list one, e.g. metrics: [rouge_l]",
        lambda s: (
            s.evaluation.judge is not None
            or bool(s.evaluation.metrics)
            or any(t != "minJudgeScore" for t in s.evaluation.gate.thresholds_set())
            or not s.evaluation.gate.require_improvement_over_few_shot
            or _improvement(s)
        ),
    ),
    Rule(
        f"self.export.onGateFailure != 'skip' || has(self.evaluation.judge) || !({_NO_THRESHOLD})"
        f" || has({_GATE}.maxForgettingDrop) || {_IMPROVEMENT} || {_FEW_SHOT_GATE}",
        "export.onGateFailure: skip, but evaluation.gate checks nothing (requireImprovementOverBase: "
        "false, no threshold, no judge, no maxForgettingDrop), so the gate always fails and nothing "
        "would be exported; give a threshold such as gate.minRougeL, or set onGateFailure: export",
        lambda s: (
            s.export.on_gate_failure != "skip"
            or not s.evaluation.gate.checks_nothing(s.evaluation.judge is not None)
        ),
    ),
    Rule(
        "!has(self.evaluation.judge) || !(self.evaluation.judge.endpoint.endsWith('/completions')"
        " || self.evaluation.judge.endpoint.endsWith('/completions/'))",
        "evaluation.judge.endpoint: give the API's base URL (e.g. https://api.openai.com/v1), not "
        "the /chat/completions route: the client appends it",
        lambda s: (
            s.evaluation.judge is None
            or not str(s.evaluation.judge.endpoint).rstrip("/").endswith("/completions")
        ),
    ),
    Rule(
        "self.method != 'full' || !self.export.adapterGguf",
        "export.adapterGguf: method full trains every weight and leaves no adapter to export; set "
        "adapterGguf: false, or use method lora or qlora",
        lambda s: s.method != "full" or not s.export.adapter_gguf,
    ),
    *PROVIDER_RULES,
    *TEACHER_RULES,
)


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob. Everything but `suspend`, `activeDeadlineSeconds` and
    `ttlSecondsAfterFinished` is frozen once the job is created: create a new job instead."""

    model_config = _cel_rules(SPEC_RULES)

    base_model_spec: BaseModelSpec | None = Field(default=None, alias="baseModel")
    """The model to fine-tune (backend local; required there). With backend openai the
    provider fine-tunes `provider.model` instead."""
    backend: Literal["local", "openai"] = "local"
    """Where training runs: `local` (the trainer pod trains on the cluster's GPUs) or `openai`
    (a small CPU pod prepares and scans the data, then fine-tunes `provider.model` through
    OpenAI's fine-tuning API and records the resulting model id)."""
    provider: ProviderSpec | None = None
    """The provider's model, API key Secret and hyperparameters (backend openai only)."""
    method: Literal["qlora", "lora", "full"] = "qlora"
    """qlora: 4-bit base + LoRA (least memory); lora: 16-bit base + LoRA; full: all weights."""
    objective: Literal["sft", "dpo", "distill"] = "sft"
    """sft: supervised fine-tuning on answers; dpo: preference optimisation (needs preference
    data); distill: the teacher (`teacher`) answers the dataset's prompts (records need no
    answer) and the model is trained with SFT on its answers (docs/distillation.md)."""
    teacher: TeacherSpec | None = None
    """The model that answers the prompts for `objective: distill` and writes
    `dataset.augment`'s synthetic examples: an OpenAI-compatible endpoint and model."""
    dataset: DatasetSpec
    """Training data."""
    data_policy: DataPolicySpec = Field(default_factory=DataPolicySpec)
    """Data checks before training."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """Adapter settings."""
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """4-bit settings for qlora."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Optimisation settings."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation and quality gate."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Exported artifacts."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Trainer pod resources and placement."""
    image: Annotated[str, Field(max_length=1024)] | None = None
    """Trainer image override (default: the operator's configured trainer image)."""
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 2
    """Pod restarts before the job fails; a restarted pod resumes from its last checkpoint."""
    active_deadline_seconds: Annotated[int, Field(ge=60)] | None = None
    """Wall-clock limit of the whole job."""
    suspend: bool = False
    """Suspend the job (its pod is removed; resuming continues from the last checkpoint)."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Delete the trainer Job (not the FineTuneJob) this long after it finishes."""

    @model_validator(mode="after")
    def _consistent(self) -> FineTuneJobSpec:
        problems = spec_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def base_model(self) -> BaseModelSpec:
        """`baseModel`; with backend openai, a stand-in naming the provider's model
        (`openai://<provider.model>`, no licence, no token) so data preparation, references
        and the pod's environment read one shape for both backends."""
        if self.base_model_spec is not None:
            return self.base_model_spec
        if self.provider is not None:
            return BaseModelSpec.model_construct(uri=f"{self.backend}://{self.provider.model}")
        raise ValueError("baseModel: backend local fine-tunes baseModel; set baseModel.uri")


def spec_problems(spec: FineTuneJobSpec) -> list[str]:
    """Cross-field rules (SPEC_RULES and those whose message names the values); each message
    names the field and the fix."""
    problems = broken_rules(spec, SPEC_RULES)
    if spec.dataset.split.validation + spec.dataset.split.test >= 0.9:
        problems.append("dataset.split: validation + test must leave at least 10% for training")
    if (
        spec.method == "qlora"
        and spec.backend == "local"
        and spec.resources.gpus == 0
        and spec.quantization.compute_dtype == "float16"
    ):
        problems.append(
            "quantization.computeDtype: float16 is not supported on CPU; use bfloat16 or float32"
        )
    if spec.resources.gpus == 0 and spec.backend == "local":
        problems.extend(spec.training.device_problems("cpu"))
    base = spec.base_model_spec
    if base is not None and base.requires_license() and not base.accept_license:
        problems.append(
            f"baseModel.acceptLicense: {base.uri} is under a licence you must accept; "
            "set acceptLicense: true after reading it"
        )
    return problems


def secret_refs(spec: FineTuneJobSpec) -> list[tuple[str, SecretKeyRef]]:
    """(field path, reference) of every Secret key the trainer pod reads, for checks that
    need the cluster (the operator before it creates the Job, `kubetune validate`)."""
    refs = [("baseModel.tokenSecretRef", spec.base_model.token_secret_ref)]
    if spec.provider is not None:
        refs.append(("provider.apiKeySecretRef", spec.provider.api_key_secret_ref))
    if spec.evaluation.judge is not None:
        refs.append(("evaluation.judge.apiKeySecretRef", spec.evaluation.judge.api_key_secret_ref))
    if spec.teacher is not None:
        refs.append(("teacher.apiKeySecretRef", spec.teacher.api_key_secret_ref))
    return [(field, ref) for field, ref in refs if ref is not None]


# ---------------------------------------------------------------------------------------------
# Status


class PreflightStatus(ApiModel):
    """Memory and time estimated before the trainer Job was created (docs/preflight.md):
    estimates, not measurements."""

    model: ShortText | None = None
    """Where the base model's shapes came from (kubetune's table of supported models)."""
    estimated_memory_gib: Annotated[float, Field(ge=0)] | None = None
    """Estimated training peak per GPU (GiB), every example at full maxLength."""
    gpu_product: ShortText | None = None
    """The GPU the estimate was compared with (resources.gpuProduct)."""
    gpu_memory_gib: Annotated[float, Field(ge=0)] | None = None
    """That GPU's memory (GiB)."""
    gpu_memory_source: Literal["table", "nodeLabel"] | None = None
    """`nodeLabel`: the nodes' `nvidia.com/gpu.memory`; `table`: kubetune's GPU table."""
    fits: bool | None = None
    """Whether the estimate and the CUDA context fit that GPU; unset when not checked."""
    estimated_gpu_hours: Annotated[float, Field(ge=0)] | None = None
    """Estimated GPU-hours of training (needs training.maxSteps; evaluation and export not
    counted)."""
    message: LongText | None = None
    """The estimate's breakdown, or why nothing was estimated."""


class CostStatus(ApiModel):
    """GPU-hours and their cost, at the prices of the operator's price ConfigMap."""

    currency: Annotated[str, Field(max_length=16)] | None = None
    """Currency of the prices (the ConfigMap's `currency`, default USD)."""
    price_per_gpu_hour: Annotated[float, Field(ge=0)] | None = None
    """Price of one GPU-hour of resources.gpuProduct (or the ConfigMap's `default`)."""
    estimated: Annotated[float, Field(ge=0)] | None = None
    """preflight.estimatedGpuHours × pricePerGpuHour, before the job started."""
    gpu_hours: Annotated[float, Field(ge=0)] | None = None
    """GPU-hours used: resources.gpus × the trainer's wall time (startTime to completionTime)."""
    actual: Annotated[float, Field(ge=0)] | None = None
    """gpuHours × pricePerGpuHour, when the job finished."""


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob, kept true by the operator."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] | None = None
    """Pending → Running → Succeeded | Failed; Suspended while spec.suspend is true."""
    observed_generation: int | None = None
    """metadata.generation the status describes."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)
    """Accepted, Scheduled, Running, Suspended, GatePassed, Complete, Failed."""
    job_name: Annotated[str, Field(max_length=253)] | None = None
    """Name of the batch/v1 Job running the trainer."""
    start_time: str | None = None
    """When the trainer started running (RFC 3339)."""
    completion_time: str | None = None
    """When the job succeeded or failed (RFC 3339)."""
    progress: Progress | None = None
    """Live training progress."""
    data: DataReportSummary | None = None
    """Data preparation summary."""
    training: TrainingSummary | None = None
    """How training went (steps, losses, throughput)."""
    evaluation: EvaluationSummary | None = None
    """Evaluation summary."""
    diagnosis: Diagnosis | None = None
    """Loss-curve diagnosis."""
    gate: GateResult | None = None
    """Quality gate verdict."""
    artifacts: Annotated[list[Artifact], Field(max_length=64)] = Field(default_factory=list)
    """Exported artifacts, each with sha256."""
    manifest_uri: Annotated[str, Field(max_length=2048)] | None = None
    """The full artifact manifest."""
    preflight: PreflightStatus | None = None
    """Memory and time estimated before the trainer Job was created."""
    cost: CostStatus | None = None
    """Estimated and actual GPU-hours and cost."""
    reason: ShortText | None = None
    """CamelCase reason of the current phase (e.g. OOMKilled)."""
    message: LongText | None = None
    """Actionable explanation of the current phase."""


class FineTuneJob(ApiModel):
    """A FineTuneJob object as stored in Kubernetes."""

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
