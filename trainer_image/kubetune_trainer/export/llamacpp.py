"""llama.cpp's own tools, pinned: ``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py`` and the quantizer.

One llama.cpp is used everywhere: the one vendored by llama-cpp-python |PINNED|. Its sdist carries
the converter scripts with the ``gguf-py`` they were written against (the PyPI ``gguf`` package is
older than the script expects); ``hack/fetch-llama-cpp.sh`` unpacks it and builds the bindings
(whose ``llama_model_quantize`` is llama.cpp's quantizer) from the same sdist.

The converters run as subprocesses of this Python with ``PYTHONPATH=<llama.cpp>/gguf-py``; they
need numpy, torch, sentencepiece, transformers, pyyaml, tqdm and requests, all trainer deps.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

PINNED_LLAMA_CPP_PYTHON: Final = "0.3.36"
ENV_LLAMA_CPP_DIR: Final = "KUBETUNE_LLAMA_CPP_DIR"
FETCH_HINT: Final = "run `bash hack/fetch-llama-cpp.sh` (or `make llama-cpp`)"

# llama.cpp's `enum llama_ftype` values for the types we export (include/llama.h).
QUANTIZATION_FTYPES: Final[dict[str, int]] = {
    "f16": 1,  # LLAMA_FTYPE_MOSTLY_F16
    "q8_0": 7,  # LLAMA_FTYPE_MOSTLY_Q8_0
    "q4_k_m": 15,  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    "q5_k_m": 17,  # LLAMA_FTYPE_MOSTLY_Q5_K_M
}

_TAIL = 3000  # characters of a failed tool's output kept in the error


class LlamaCppError(RuntimeError):
    """llama.cpp's converter or quantizer is missing, broken, or failed; the message says why."""


def default_llama_cpp_dir() -> Path:
    """``$KUBETUNE_CACHE/llama.cpp/<pin>/llama.cpp`` (default cache ``~/.cache/kubetune``)."""
    cache = os.environ.get("KUBETUNE_CACHE") or str(Path.home() / ".cache" / "kubetune")
    return Path(cache) / "llama.cpp" / PINNED_LLAMA_CPP_PYTHON / "llama.cpp"


def llama_cpp_dir() -> Path:
    """Where llama.cpp's scripts are: ``$KUBETUNE_LLAMA_CPP_DIR``, else :func:`default_llama_cpp_dir`."""
    configured = os.environ.get(ENV_LLAMA_CPP_DIR)
    return Path(configured) if configured else default_llama_cpp_dir()


def locate_script(name: str, llama_dir: Path | None = None) -> Path:
    """Path of ``name`` (e.g. ``convert_hf_to_gguf.py``) in llama.cpp, checked for ``gguf-py``.

    Raises :class:`LlamaCppError` naming the directory, how it was chosen and the fix.
    """
    root = llama_dir if llama_dir is not None else llama_cpp_dir()
    how = (
        f"${ENV_LLAMA_CPP_DIR}"
        if llama_dir is None and os.environ.get(ENV_LLAMA_CPP_DIR)
        else "default"
    )
    script = root / name
    if not script.is_file():
        raise LlamaCppError(
            f"llama.cpp's {name} not found in {root} ({how}; set {ENV_LLAMA_CPP_DIR} to a llama.cpp "
            f"checkout): {FETCH_HINT}"
        )
    if not (root / "gguf-py" / "gguf" / "__init__.py").is_file():
        raise LlamaCppError(
            f"{root}/gguf-py is missing: {name} needs the gguf-py vendored beside it, not the PyPI "
            f"gguf package; {FETCH_HINT}"
        )
    return script


def llama_cpp_version(llama_dir: Path | None = None) -> str:
    """``llama-cpp-python <v> (llama.cpp <commit>)`` for the pinned tree, as far as it can be told.

    The sdist's CHANGELOG names the llama.cpp commit each release vendors.
    """
    root = llama_dir if llama_dir is not None else llama_cpp_dir()
    version = PINNED_LLAMA_CPP_PYTHON
    commit = "unknown"
    changelog = root.resolve().parent.parent / "CHANGELOG.md"
    if changelog.is_file():
        text = changelog.read_text(encoding="utf-8", errors="replace")
        release = re.search(r"^## \[(\d+\.\d+\.\d+)\](.*?)(?=^## \[)", text, re.M | re.S)
        if release:
            version = release.group(1)
            found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", release.group(2))
            if found:
                commit = found.group(1)
    return f"llama-cpp-python {version} (llama.cpp {commit})"


def _run(args: list[str], *, llama_dir: Path, what: str, timeout: float | None) -> None:
    env = dict(os.environ)
    gguf_py = str(llama_dir / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (gguf_py, env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the converters must never reach for a hub
    try:
        proc = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise LlamaCppError(f"{what} timed out after {timeout}s") from e
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-_TAIL:]
        hint = ""
        if "ModuleNotFoundError" in output or "ImportError" in output:
            hint = f" (a Python module the converter imports is missing; {FETCH_HINT} and install the trainer extra)"
        raise LlamaCppError(f"{what} failed with exit code {proc.returncode}{hint}:\n{output}")


def convert_hf_to_gguf(
    model_dir: Path,
    out_file: Path,
    *,
    outtype: str = "f16",
    llama_dir: Path | None = None,
    timeout: float | None = None,
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on a Hugging Face model directory."""
    root = llama_dir if llama_dir is not None else llama_cpp_dir()
    script = locate_script("convert_hf_to_gguf.py", root)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(script), str(model_dir), "--outfile", str(out_file)]
    _run(
        [*args, "--outtype", outtype],
        llama_dir=root,
        what=f"{script.name} {model_dir}",
        timeout=timeout,
    )
    if not out_file.is_file():
        raise LlamaCppError(f"{script.name} exited 0 but wrote no {out_file}")
    return out_file


def convert_lora_to_gguf(
    adapter_dir: Path,
    base_dir: Path,
    out_file: Path,
    *,
    outtype: str = "f16",
    llama_dir: Path | None = None,
    timeout: float | None = None,
) -> Path:
    """Run llama.cpp's ``convert_lora_to_gguf.py`` (an adapter GGUF for Ollama's ADAPTER).

    ``base_dir`` is always passed, so the script never looks the base model up on a hub.
    """
    root = llama_dir if llama_dir is not None else llama_cpp_dir()
    script = locate_script("convert_lora_to_gguf.py", root)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(script), "--base", str(base_dir), "--outfile", str(out_file)]
    _run(
        [*args, "--outtype", outtype, str(adapter_dir)],
        llama_dir=root,
        what=f"{script.name} {adapter_dir}",
        timeout=timeout,
    )
    if not out_file.is_file():
        raise LlamaCppError(f"{script.name} exited 0 but wrote no {out_file}")
    return out_file


def import_llama_cpp() -> object:
    """The ``llama_cpp`` module (llama-cpp-python), or :class:`LlamaCppError` with the fix."""
    try:
        import llama_cpp
    except ImportError as e:  # also OSError from a broken shared library, below
        raise LlamaCppError(f"llama-cpp-python is not installed ({e}); {FETCH_HINT}") from e
    except OSError as e:
        raise LlamaCppError(f"llama-cpp-python cannot load libllama ({e}); {FETCH_HINT}") from e
    return llama_cpp


def quantize_gguf(src: Path, dst: Path, quantization: str, *, threads: int | None = None) -> Path:
    """Quantize a GGUF file with llama.cpp's quantizer (``llama_model_quantize``)."""
    if quantization not in QUANTIZATION_FTYPES:
        raise ValueError(
            f"unknown quantization {quantization!r}; known: {sorted(QUANTIZATION_FTYPES)}"
        )
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = QUANTIZATION_FTYPES[quantization]
    params.nthread = threads if threads is not None else (os.cpu_count() or 1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(  # type: ignore[attr-defined]
        str(src).encode(), str(dst).encode(), ctypes.byref(params)
    )
    if rc != 0 or not dst.is_file():
        raise LlamaCppError(f"llama_model_quantize({src.name} -> {quantization}) failed with {rc}")
    return dst
