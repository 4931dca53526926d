#!/usr/bin/env bash
# Pin one llama.cpp for GGUF export: the one vendored by llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}.
#
# Usage: hack/fetch-llama-cpp.sh [PYTHON]     (PYTHON defaults to .venv/bin/python, then python3)
#
# What it does, each step skipped when its result is already cached:
#   1. pip-downloads the llama-cpp-python sdist (from PyPI, no binary) into
#      ~/.cache/kubetune/llama.cpp/<version>/ and extracts it. The sdist carries
#      vendor/llama.cpp/ with convert_hf_to_gguf.py, convert_lora_to_gguf.py and the gguf-py they
#      were written against (the PyPI `gguf` package lags behind that script).
#      ~/.cache/kubetune/llama.cpp/<version>/llama.cpp is a link to that vendored tree: it is the
#      default of KUBETUNE_LLAMA_CPP_DIR, where the trainer looks for the converter.
#   2. builds a llama-cpp-python wheel from that same sdist into ~/.cache/kubetune/wheels/, with
#      CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF".
#        GGML_NATIVE=OFF: a portable AVX2 build instead of -march=native. Besides making the
#        cached wheel usable on another CPU, it keeps AMX off: on CPUs with AMX, llama.cpp's
#        extra (AMX) buffer types crash on quantized models.
#        LLAVA_BUILD=OFF: we never use the multimodal library; skipping it shortens the build.
#   3. installs that wheel (with its small deps: numpy, jinja2, diskcache, typing-extensions)
#      into PYTHON's environment.
#
# Environment: KUBETUNE_CACHE (default ~/.cache/kubetune), CMAKE_BUILD_PARALLEL_LEVEL (default nproc).
# Prints the llama.cpp directory on its last line.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python=python3; fi
fi

cache="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
src_root="$cache/llama.cpp/$LLAMA_CPP_PYTHON_VERSION"
wheels="$cache/wheels"
sdist="$src_root/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
tree="$src_root/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
mkdir -p "$src_root" "$wheels"

log() { echo "fetch-llama-cpp: $*" >&2; }

# 1. sdist -> vendored llama.cpp
if [[ ! -f "$sdist" ]]; then
  log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
  "$python" -m pip download --quiet --no-binary :all: --no-deps \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$src_root"
fi
if [[ ! -f "$tree/vendor/llama.cpp/convert_hf_to_gguf.py" ]]; then
  log "extracting $sdist"
  rm -rf "$tree.tmp" && mkdir -p "$tree.tmp"
  tar -xzf "$sdist" -C "$tree.tmp"
  rm -rf "$tree" && mv "$tree.tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" "$tree" && rm -rf "$tree.tmp"
fi
ln -sfn "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" "$src_root/llama.cpp"

# 2. wheel, built once from the same sdist
wheel="$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then
  log "building llama-cpp-python wheel (GGML_NATIVE=OFF; takes minutes on 2 cores)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$python" -m pip wheel --quiet --no-deps -w "$wheels" "$sdist"
  wheel="$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl | head -n1)"
fi

# 3. install (no-op when already installed at this version)
installed="$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
if [[ "$installed" != "$LLAMA_CPP_PYTHON_VERSION" ]]; then
  log "installing $wheel"
  "$python" -m pip install --quiet "$wheel"
fi

echo "$src_root/llama.cpp"
