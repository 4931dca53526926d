"""Resolve `spec.baseModel` to a local Hugging Face folder, and load it for training.

URI schemes:

- `file://<path>` and `pvc://<claim>/<path>`: a folder already on disk (see `storage`);
- `builtin://tiny-llama[?…]`: a tiny Llama built here (see `tiny_model`), its tokenizer trained
  on the job's own text;
- `hf://<org>/<name>`: downloaded with `huggingface_hub.snapshot_download` at `revision`, with
  the token from `HF_TOKEN` (the operator mounts `tokenSecretRef` there);
- `s3://`: not read by the trainer yet; the error says what to do instead.

The licence check (`acceptLicense` for gated families) comes before anything is downloaded.
Loading: `qlora` = 4-bit base via bitsandbytes (nf4/fp4, double quant, the spec's compute
dtype; bitsandbytes 0.50 runs this on CPU too), `lora` = 16-bit base on GPU (bf16, or fp16
where the GPU has no bf16) and float32 on CPU, `full` = float32 master weights (mixed precision
on GPU comes from the Trainer).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import BaseModelSpec, FineTuneJobSpec
from kubetune_trainer import storage

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase


class ModelError(RuntimeError):
    """The base model cannot be resolved or loaded; `reason` is a CamelCase status reason."""

    reason = "ModelUnavailable"


class LicenseNotAcceptedError(ModelError):
    """A gated model family without `acceptLicense: true`."""

    reason = "LicenseNotAccepted"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model as a local Hugging Face folder."""

    uri: str
    path: Path
    trust_remote_code: bool = False


def check_license(spec: BaseModelSpec) -> None:
    """Raise LicenseNotAcceptedError for a gated family without acceptLicense (no I/O).

    `builtin://` models are built here from random weights and carry no licence, whatever
    their name says."""
    if is_builtin(spec):
        return
    if spec.requires_license() and not spec.accept_license:
        raise LicenseNotAcceptedError(
            f"baseModel.acceptLicense: {spec.uri} is under a licence you must accept before it is "
            "downloaded; read it on the model's page and set acceptLicense: true"
        )


def is_builtin(spec: BaseModelSpec) -> bool:
    """True for `builtin://` models, which need the job's text before they can be built."""
    return spec.uri.startswith("builtin://")


def resolve_base_model(
    spec: BaseModelSpec,
    *,
    base_dir: Path | None = None,
    download_dir: Path | None = None,
    corpus: Iterable[str] = (),
) -> ResolvedModel:
    """The local folder of `spec.uri`, downloading or building it where the scheme says so.

    `base_dir` resolves relative `file://` paths; `download_dir` receives `hf://` snapshots
    (default: the Hugging Face cache); `corpus` is the text a `builtin://` tokenizer learns from.
    Raises LicenseNotAcceptedError before any download, ModelError for anything else.
    """
    check_license(spec)
    scheme, rest = storage.split_uri(spec.uri)
    if scheme in ("file", "pvc"):
        path = storage.local_path(spec.uri, base_dir)
        if not (path / "config.json").is_file():
            raise ModelError(
                f"baseModel.uri: {spec.uri} -> {path} is not a Hugging Face model folder (no config.json); "
                + (
                    "check that the claim is mounted and the path inside it"
                    if scheme == "pvc"
                    else "check the path"
                )
            )
        return ResolvedModel(uri=spec.uri, path=path, trust_remote_code=spec.trust_remote_code)
    if scheme == "builtin":
        from kubetune_trainer.tiny_families import is_family_uri_name, resolve_family_model
        from kubetune_trainer.tiny_model import resolve_builtin_model

        try:
            if is_family_uri_name(rest.strip("/")):
                # builtin://tiny-qwen2 and the like: the family's real tokenizer and template.
                path = resolve_family_model(rest.strip("/"))
            else:
                path = resolve_builtin_model(spec.uri, corpus)
        except ValueError as exc:
            raise ModelError(f"baseModel.uri: {exc}") from exc
        return ResolvedModel(uri=spec.uri, path=path, trust_remote_code=False)
    if scheme == "hf":
        return ResolvedModel(
            uri=spec.uri,
            path=_download_hf(rest, spec.revision, download_dir),
            trust_remote_code=spec.trust_remote_code,
        )
    if scheme == "s3":
        raise ModelError(
            f"baseModel.uri: {spec.uri}: the trainer does not read s3:// yet; copy the model folder to a "
            "PersistentVolumeClaim and use pvc://<claim>/<path>"
        )
    raise ModelError(f"baseModel.uri: unsupported scheme {scheme}://")


def _download_hf(repo_id: str, revision: str | None, download_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download

    token = os.environ.get(c.ENV_HF_TOKEN) or None
    try:
        path = snapshot_download(
            repo_id=repo_id.strip("/"),
            revision=revision,
            token=token,
            local_dir=str(download_dir) if download_dir is not None else None,
            # Weights in safetensors and the tokenizer; skip duplicate formats of the same weights.
            ignore_patterns=[
                "*.pth",
                "*.pt",
                "*.bin",
                "*.msgpack",
                "*.h5",
                "*.onnx",
                "original/*",
                "*.gguf",
            ],
        )
    except Exception as exc:  # huggingface_hub raises a family of HTTP/OS errors
        hint = (
            "the model is gated or private: give baseModel.tokenSecretRef a token with access"
            if "401" in str(exc) or "403" in str(exc) or "gated" in str(exc).lower()
            else "check baseModel.uri/revision and that the cluster can reach huggingface.co "
            "(or copy the model to a PVC and use pvc://)"
        )
        raise ModelError(f"baseModel.uri: cannot download hf://{repo_id}: {exc}; {hint}") from exc
    return Path(path)


# --- loading ----------------------------------------------------------------------------------


def training_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str) -> torch.dtype:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def half_dtype_name(device: str) -> str:
    """The 16-bit type a GPU trains in: bf16 where supported, else fp16; float32 on CPU (most
    CPUs have no fast bf16 matmul, and tiny CPU models do not need the memory)."""
    import torch

    if device != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def quantization_config(spec: FineTuneJobSpec) -> BitsAndBytesConfig | None:
    """bitsandbytes 4-bit settings for `qlora`, None for the other methods."""
    if spec.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    q = spec.quantization
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type=q.type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_dtype(q.compute_dtype),
    )


def load_tokenizer(model: ResolvedModel) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(model.path), trust_remote_code=model.trust_remote_code
        )
    except Exception as exc:
        raise ModelError(f"baseModel.uri: cannot load the tokenizer of {model.uri}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: ResolvedModel, spec: FineTuneJobSpec, *, device: str | None = None
) -> PreTrainedModel:
    """The base model, loaded as `spec.method` needs it, on `device` (default: GPU if any)."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.distributed import device_map_target
    from kubetune_trainer.train.config import attention_implementation

    device = device or training_device()
    kwargs: dict[str, Any] = {
        "trust_remote_code": model.trust_remote_code,
        # Under DDP each rank holds the whole model on its own GPU (its local rank).
        "device_map": {"": device_map_target(device)},
        "attn_implementation": attention_implementation(spec, device),
    }
    bnb = quantization_config(spec)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        # Norms and embeddings stay unquantized: bf16/fp16 on GPU, float32 on CPU.
        kwargs["dtype"] = _dtype(half_dtype_name(device))
    elif spec.method == "lora":
        kwargs["dtype"] = _dtype(half_dtype_name(device))
    else:  # full: float32 master weights; the Trainer's bf16/fp16 autocast does the rest on GPU
        kwargs["dtype"] = _dtype("float32")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(model.path), **kwargs)
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise ModelError(
            f"baseModel.uri: cannot load {model.uri} for {spec.method}: {exc}"
        ) from exc
    loaded.config.use_cache = (
        False  # the KV cache is useless in training and clashes with checkpointing
    )
    return loaded


def is_4bit(model: Any) -> bool:
    """True when the model's linear layers are bitsandbytes 4-bit (checked on the modules, not
    only the flag, so a silent fallback to 16-bit would show)."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is pinned in the trainer image
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # type: ignore[attr-defined]
