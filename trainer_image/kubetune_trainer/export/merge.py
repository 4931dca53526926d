"""Merge a LoRA adapter into its base model reloaded in 16-bit, and save merged safetensors.

The base is reloaded from its original weights in float16/bfloat16, never merged into the 4-bit
weights QLoRA trained against: merging into quantized weights would bake the quantization error
into every exported file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

MergeDtype = Literal["float16", "bfloat16"]

# Files that make a directory a loadable tokenizer for transformers and llama.cpp's converter.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def default_merge_dtype(base_model_dir: Path) -> MergeDtype:
    """bfloat16 when the base was saved in bfloat16, else float16 (exact for llama.cpp's f16)."""
    config = json.loads((base_model_dir / "config.json").read_text())
    saved = config.get("dtype") or config.get("torch_dtype")
    return "bfloat16" if saved == "bfloat16" else "float16"


def merge_adapter(
    base_model_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    dtype: MergeDtype | None = None,
) -> Path:
    """Load ``base_model_dir`` in 16-bit, merge ``adapter_dir`` into it and save to ``out_dir``.

    Writes ``model*.safetensors``, ``config.json``, ``generation_config.json`` and the tokenizer
    files (the base's, overlaid with the adapter's own copies where trl saved them). Returns
    ``out_dir``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    chosen = dtype or default_merge_dtype(base_model_dir)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[chosen]
    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch_dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    # The base's files first: trl saves the adapter's tokenizer without tokenizer.model, which
    # llama.cpp's converter reads for SentencePiece vocabularies.
    copy_tokenizer_files(base_model_dir, out_dir)
    copy_tokenizer_files(adapter_dir, out_dir)
    return out_dir


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files verbatim (re-saving could drop ``tokenizer.model``)."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
