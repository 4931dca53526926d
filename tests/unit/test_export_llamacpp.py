"""Locating the pinned llama.cpp: clear errors naming the fix when its tools are missing or broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer.export import llamacpp
from kubetune_trainer.export.llamacpp import (
    ENV_LLAMA_CPP_DIR,
    LlamaCppError,
    convert_hf_to_gguf,
    llama_cpp_dir,
    llama_cpp_version,
    locate_script,
    quantize_gguf,
)


def fake_llama_cpp(root: Path, converter: str = "raise SystemExit(0)\n") -> Path:
    """A directory shaped like llama-cpp-python's sdist: CHANGELOG + vendor/llama.cpp."""
    tree = root / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    (tree / "gguf-py" / "gguf").mkdir(parents=True)
    (tree / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (tree / "convert_hf_to_gguf.py").write_text(converter)
    (root / "llama_cpp_python-0.3.36" / "CHANGELOG.md").write_text(
        "# Changelog\n\n## [Unreleased]\n\n## [0.3.36]\n\n"
        "- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098\n\n## [0.3.35]\n\n"
        "- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f\n"
    )
    return tree


def test_directory_comes_from_env_then_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_LLAMA_CPP_DIR, raising=False)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    assert llama_cpp_dir() == tmp_path / "cache" / "llama.cpp" / "0.3.36" / "llama.cpp"
    monkeypatch.setenv(ENV_LLAMA_CPP_DIR, str(tmp_path / "mine"))
    assert llama_cpp_dir() == tmp_path / "mine"


def test_missing_converter_names_the_env_var_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_LLAMA_CPP_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(LlamaCppError) as error:
        locate_script("convert_hf_to_gguf.py")
    message = str(error.value)
    assert "convert_hf_to_gguf.py not found" in message
    assert ENV_LLAMA_CPP_DIR in message
    assert "hack/fetch-llama-cpp.sh" in message


def test_missing_gguf_py_is_its_own_error(tmp_path: Path) -> None:
    tree = fake_llama_cpp(tmp_path)
    (tree / "gguf-py" / "gguf" / "__init__.py").unlink()
    with pytest.raises(LlamaCppError, match="gguf-py is missing"):
        locate_script("convert_hf_to_gguf.py", tree)


def test_broken_converter_reports_exit_code_and_output(tmp_path: Path) -> None:
    tree = fake_llama_cpp(
        tmp_path, "import sys\nprint('boom: bad tensor', file=sys.stderr)\nsys.exit(3)\n"
    )
    with pytest.raises(LlamaCppError, match=r"(?s)exit code 3.*boom: bad tensor"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf", llama_dir=tree)


def test_converter_with_missing_module_hints_at_install(tmp_path: Path) -> None:
    tree = fake_llama_cpp(tmp_path, "import no_such_module_kubetune\n")
    with pytest.raises(LlamaCppError, match="module the converter imports is missing"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf", llama_dir=tree)


def test_converter_gets_vendored_gguf_py_on_its_path(tmp_path: Path) -> None:
    script = (
        "import sys, gguf, pathlib\n"
        "assert gguf.__file__.startswith(sys.argv[0].rsplit('/', 1)[0]), gguf.__file__\n"
        "pathlib.Path(sys.argv[sys.argv.index('--outfile') + 1]).write_text('ok')\n"
    )
    tree = fake_llama_cpp(tmp_path, script)
    out = convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf", llama_dir=tree)
    assert out.read_text() == "ok"


def test_converter_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    tree = fake_llama_cpp(tmp_path)
    with pytest.raises(LlamaCppError, match="wrote no"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf", llama_dir=tree)


def test_version_names_the_vendored_llama_cpp_commit(tmp_path: Path) -> None:
    tree = fake_llama_cpp(tmp_path)
    assert llama_cpp_version(tree) == "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098)"
    assert (
        llama_cpp_version(tmp_path / "elsewhere") == "llama-cpp-python 0.3.36 (llama.cpp unknown)"
    )


def test_unknown_quantization_is_rejected_before_llama_cpp_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown quantization 'q3_k'"):
        quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "q3_k")


def test_missing_bindings_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LlamaCppError, match=r"llama-cpp-python is not installed.*fetch-llama-cpp"):
        llamacpp.import_llama_cpp()
