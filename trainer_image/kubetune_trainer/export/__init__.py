"""Export: merge the adapter in 16-bit, convert to GGUF with llama.cpp's own converter, quantize
with its quantizer, write Ollama Modelfiles, verify every file with llama.cpp, and record sha256s.

The entry point is :func:`export_model`; each stage is also usable alone.
"""

from kubetune_trainer.export.chat_format import (
    ChatFormat,
    UnsupportedChatTemplate,
    chat_format_from_tokenizer,
    ollama_template,
    render_like_ollama,
)
from kubetune_trainer.export.llamacpp import (
    ENV_LLAMA_CPP_DIR,
    PINNED_LLAMA_CPP_PYTHON,
    LlamaCppError,
    convert_hf_to_gguf,
    convert_lora_to_gguf,
    llama_cpp_dir,
    llama_cpp_version,
    quantize_gguf,
)
from kubetune_trainer.export.manifest import (
    MANIFEST_NAME,
    Artifact,
    Manifest,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from kubetune_trainer.export.merge import merge_adapter
from kubetune_trainer.export.modelfile import render_modelfile
from kubetune_trainer.export.pipeline import (
    QUANTIZATIONS,
    ExportResult,
    ExportVerificationError,
    export_model,
)
from kubetune_trainer.export.verify import (
    DEFAULT_VERIFY_PROMPTS,
    GgufCheck,
    VerificationReport,
    verify_ggufs,
)

__all__ = [
    "DEFAULT_VERIFY_PROMPTS",
    "ENV_LLAMA_CPP_DIR",
    "MANIFEST_NAME",
    "PINNED_LLAMA_CPP_PYTHON",
    "QUANTIZATIONS",
    "Artifact",
    "ChatFormat",
    "ExportResult",
    "ExportVerificationError",
    "GgufCheck",
    "LlamaCppError",
    "Manifest",
    "UnsupportedChatTemplate",
    "VerificationReport",
    "chat_format_from_tokenizer",
    "convert_hf_to_gguf",
    "convert_lora_to_gguf",
    "export_model",
    "llama_cpp_dir",
    "llama_cpp_version",
    "merge_adapter",
    "ollama_template",
    "quantize_gguf",
    "read_manifest",
    "render_like_ollama",
    "render_modelfile",
    "sha256_file",
    "verify_ggufs",
    "verify_manifest",
    "write_manifest",
]
