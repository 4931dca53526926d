"""Export a trained model: merge -> GGUF (llama.cpp's converter) -> quantize -> Modelfile -> verify -> manifest.

Files written to ``out_dir``:

- ``merged/``: base + adapter merged in 16-bit, safetensors (when there is an adapter and
  ``merge``);
- ``model-<q>.gguf`` for each requested quantization (f16 straight from
  ``convert_hf_to_gguf.py``, the others from f16 with ``llama_model_quantize``);
- ``adapter-f16.gguf`` with ``adapter_gguf`` (and always when ``merge`` is false);
- ``<q>.Modelfile`` for each GGUF model: FROM it (plus ADAPTER when not merged), TEMPLATE and
  stops from the chat template;
- ``manifest.json``: size, sha256, kind, quantization and llama.cpp version of every artifact,
  tool versions and the verification report.

Every GGUF is loaded and run by llama.cpp before the export succeeds; an f16 file must reproduce
the HF model's greedy output token for token (f16 is always made, and checked, even when only
quantized files are requested; it is then deleted), and each quantized file must agree with the
HF model on at least ``min_quantized_agreement`` of the reference tokens
(``evaluation.gate.minQuantizedAgreement``; each file's verdict is in the report). A failed check
raises :class:`ExportVerificationError`, a file below the agreement
:class:`QuantizationDisagreesError`, after the manifest (with the report) is written.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import GateSpec, OllamaExportSpec
from kubetune_trainer.export import llamacpp
from kubetune_trainer.export.chat_format import (
    ChatFormat,
)
from kubetune_trainer.export.manifest import Artifact, Manifest, describe_artifact, write_manifest
from kubetune_trainer.export.merge import MergeDtype, merge_adapter
from kubetune_trainer.export.modelfile import render_modelfile
from kubetune_trainer.export.verify import (
    DEFAULT_VERIFY_PROMPTS,
    Prompt,
    VerificationReport,
    verify_ggufs,
)

QUANTIZATIONS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
DEFAULT_MIN_QUANTIZED_AGREEMENT: float = GateSpec.model_fields["min_quantized_agreement"].default


class ExportVerificationError(RuntimeError):
    """An exported GGUF failed verification; ``result`` holds the files and the report."""

    def __init__(self, result: ExportResult) -> None:
        self.result = result
        super().__init__(
            "GGUF verification failed:\n  " + "\n  ".join(result.verification.problems)
        )


class QuantizationDisagreesError(RuntimeError):
    """Quantized GGUF files agree with the model on fewer tokens than the bound; every file
    ran and the strict checks passed. ``failed``: their verdicts; ``files``: GGUF type -> file
    name in ``result.out_dir``."""

    def __init__(self, result: ExportResult) -> None:
        self.result = result
        self.failed = result.verification.disagreeing
        self.files = {q: f"model-{q}.gguf" for q in (v.quantization for v in self.failed)}
        super().__init__(
            "quantized GGUF files below minQuantizedAgreement:\n  "
            + "\n  ".join(f"{self.files[v.quantization]}: {v.reason}" for v in self.failed)
        )


@dataclass(frozen=True)
class ExportResult:
    """What an export produced."""

    out_dir: Path
    artifacts: tuple[Artifact, ...]
    manifest_path: Path
    verification: VerificationReport
    llama_cpp_version: str
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)


def export_model(
    base_model_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    quantizations: Sequence[str],
    *,
    merge: bool = True,
    adapter_gguf: bool = False,
    verify_prompts: Sequence[Prompt] = (),
    max_new_tokens: int = 16,
    tie_tolerance: float = 0.01,
    merge_dtype: MergeDtype | None = None,
    llama_cpp_dir: Path | None = None,
    min_quantized_agreement: float = DEFAULT_MIN_QUANTIZED_AGREEMENT,
    ollama: OllamaExportSpec | None = None,
) -> ExportResult:
    """Export ``base_model_dir`` (+ the LoRA ``adapter_dir``) to ``out_dir``; see the module doc.

    ``verify_prompts``: conversations (lists of ``{"role", "content"}``; a trailing assistant
    answer is dropped) or raw-text strings to compare greedy outputs on; default
    :data:`DEFAULT_VERIFY_PROMPTS`. ``tie_tolerance``: HF top-2 logit gap, as
    a fraction of the logit range, under which an f16 file may pick the other token (see
    :mod:`~kubetune_trainer.export.verify`). ``min_quantized_agreement``: the share of
    reference tokens each quantized file must predict (``evaluation.gate.minQuantizedAgreement``).

    Raises ``ValueError`` for an unknown quantization or ``merge=False`` without an adapter,
    :class:`~kubetune_trainer.export.llamacpp.LlamaCppError` when llama.cpp's tools are missing
    or fail, :class:`~kubetune_trainer.export.chat_format.UnsupportedChatTemplate` when the chat
    template cannot become an Ollama TEMPLATE, :class:`ExportVerificationError` and
    :class:`QuantizationDisagreesError`.
    """
    wanted = _check_quantizations(quantizations)
    gate = GateSpec(min_quantized_agreement=min_quantized_agreement)  # validates the bound
    if not merge and adapter_dir is None:
        raise ValueError("merge=False exports base and adapter separately, so it needs adapter_dir")
    llama_dir = llama_cpp_dir if llama_cpp_dir is not None else llamacpp.llama_cpp_dir()
    # Fail before the slow steps if llama.cpp is not there.
    llamacpp.locate_script("convert_hf_to_gguf.py", llama_dir)
    if adapter_dir is not None and (adapter_gguf or not merge):
        llamacpp.locate_script("convert_lora_to_gguf.py", llama_dir)
    llamacpp.import_llama_cpp()
    version = llamacpp.llama_cpp_version(llama_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    artifacts: list[Artifact] = []

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as scratch:
        work = Path(scratch)
        # 1. The HF model the GGUF is made from, and the one verification compares with.
        if adapter_dir is not None and merge:
            with _timed(timings, "merge"):
                merged = merge_adapter(
                    base_model_dir, adapter_dir, out_dir / "merged", dtype=merge_dtype
                )
            source = reference = merged
            artifacts.append(
                describe_artifact(out_dir, merged, name="merged", kind="merged-safetensors")
            )
        elif adapter_dir is not None:
            source = base_model_dir
            with _timed(timings, "merge"):  # the reference only; not an artifact
                reference = merge_adapter(
                    base_model_dir, adapter_dir, work / "reference", dtype=merge_dtype
                )
        else:
            source = reference = base_model_dir

        # 2. f16 GGUF with llama.cpp's converter, then each quantization with its quantizer.
        f16 = out_dir / "model-f16.gguf"
        with _timed(timings, "convert"):
            llamacpp.convert_hf_to_gguf(source, f16, outtype="f16", llama_dir=llama_dir)
        ggufs: dict[str, Path] = {"f16": f16}
        for q in wanted:
            if q != "f16":
                with _timed(timings, f"quantize_{q}"):
                    ggufs[q] = llamacpp.quantize_gguf(f16, out_dir / f"model-{q}.gguf", q)

        adapter_file: Path | None = None
        if adapter_dir is not None and (adapter_gguf or not merge):
            with _timed(timings, "convert_adapter"):
                adapter_file = llamacpp.convert_lora_to_gguf(
                    adapter_dir, base_model_dir, out_dir / "adapter-f16.gguf", llama_dir=llama_dir
                )

        # 3. Ollama Modelfiles from the chat template.
        chat_format = _chat_format(reference, ollama)
        for q, path in ggufs.items():
            if q in wanted:
                text = render_modelfile(
                    path.name,
                    chat_format,
                    adapter=adapter_file.name if adapter_file is not None and not merge else None,
                )
                (out_dir / f"{q}.Modelfile").write_text(text)

        # 4. Verification with llama.cpp against the HF model.
        with _timed(timings, "verify"):
            report = verify_ggufs(
                reference,
                [(f"gguf-{q}", q, path) for q, path in ggufs.items()],
                list(verify_prompts) or list(DEFAULT_VERIFY_PROMPTS),
                chat_format=chat_format,
                max_new_tokens=max_new_tokens,
                tie_tolerance=tie_tolerance,
                lora_path=adapter_file if not merge else None,
            )
            # Imported here: kubetune_trainer.evaluation pulls in openai and nltk.
            from kubetune_trainer.evaluation.gate import quantization_verdicts

            report = report.with_verdicts(quantization_verdicts(gate, report.agreements()))

    # 5. Manifest.
    if "f16" not in wanted:
        f16.unlink()
        del ggufs["f16"]
    with _timed(timings, "hash"):
        for q, path in ggufs.items():
            artifacts.append(
                describe_artifact(
                    out_dir,
                    path,
                    name=f"gguf-{q}",
                    kind="gguf",
                    quantization=q,
                    llama_cpp_version=version,
                )
            )
        if adapter_file is not None:
            artifacts.append(
                describe_artifact(
                    out_dir,
                    adapter_file,
                    name="adapter-gguf",
                    kind="adapter-gguf",
                    quantization="f16",
                    llama_cpp_version=version,
                )
            )
        for q in ggufs:
            artifacts.append(
                describe_artifact(
                    out_dir,
                    out_dir / f"{q}.Modelfile",
                    name=f"modelfile-{q}",
                    kind="modelfile",
                    quantization=q,
                )
            )
    manifest_path = write_manifest(
        out_dir,
        Manifest(
            artifacts=tuple(artifacts), tools=_tool_versions(version), verification=report.to_json()
        ),
    )
    result = ExportResult(out_dir, tuple(artifacts), manifest_path, report, version, timings)
    if report.problems:
        raise ExportVerificationError(result)
    if report.disagreeing:
        raise QuantizationDisagreesError(result)
    return result


def _check_quantizations(quantizations: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(quantizations))
    unknown = [q for q in wanted if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(f"unknown quantization(s) {unknown}; choose from {list(QUANTIZATIONS)}")
    if not wanted:
        raise ValueError(f"no quantization requested; choose from {list(QUANTIZATIONS)}")
    return wanted


def _chat_format(model_dir: Path, ollama: OllamaExportSpec | None = None) -> ChatFormat:
    """The model's chat format, with `export.ollama` overrides (checked as before training)."""
    from transformers import AutoTokenizer

    from kubetune_trainer.model_support import chat_format_for_export

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return chat_format_for_export(tokenizer, ollama)


def _tool_versions(llama_cpp_version: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tools = {"llama.cpp": llama_cpp_version}
    for package in ("torch", "transformers", "peft", "llama_cpp_python"):
        with contextlib.suppress(PackageNotFoundError):
            tools[package] = version(package)
    return tools


class _timed:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.stage] = (
            self.timings.get(self.stage, 0.0) + time.perf_counter() - self.start
        )
