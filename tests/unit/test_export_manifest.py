"""The integrity manifest: sizes and sha256s recorded, re-checked, and mismatches named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kubetune_trainer.export.manifest import (
    MANIFEST_NAME,
    Artifact,
    Manifest,
    describe_artifact,
    read_manifest,
    sha256_dir,
    sha256_file,
    verify_manifest,
    write_manifest,
)


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    (tmp_path / "model-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"weights")
    (merged / "config.json").write_text("{}")
    artifacts = (
        describe_artifact(
            tmp_path,
            tmp_path / "model-q4_k_m.gguf",
            name="gguf-q4_k_m",
            kind="gguf",
            quantization="q4_k_m",
            llama_cpp_version="llama-cpp-python 0.3.36 (llama.cpp abc1234)",
        ),
        describe_artifact(tmp_path, merged, name="merged", kind="merged-safetensors"),
    )
    write_manifest(tmp_path, Manifest(artifacts=artifacts, tools={"llama.cpp": "x"}))
    return tmp_path


def test_sha256_file_streams_the_same_digest_as_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # several 1 MiB chunks
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_manifest_records_size_sha_kind_quantization_version(export_dir: Path) -> None:
    data = json.loads((export_dir / MANIFEST_NAME).read_text())
    gguf = next(a for a in data["artifacts"] if a["name"] == "gguf-q4_k_m")
    path = export_dir / gguf["path"]
    assert gguf["size_bytes"] == path.stat().st_size
    assert gguf["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (gguf["kind"], gguf["quantization"]) == ("gguf", "q4_k_m")
    assert gguf["llama_cpp_version"].startswith("llama-cpp-python 0.3.36")
    merged = next(a for a in data["artifacts"] if a["name"] == "merged")
    assert "quantization" not in merged  # None fields are left out
    assert merged["size_bytes"] == 7 + 2


def test_roundtrip_and_clean_verification(export_dir: Path) -> None:
    manifest = read_manifest(export_dir)
    assert [a.name for a in manifest.artifacts] == ["gguf-q4_k_m", "merged"]
    assert verify_manifest(export_dir) == []


def test_verification_names_modified_and_missing_files(export_dir: Path) -> None:
    with (export_dir / "model-q4_k_m.gguf").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")  # same size, different bytes
    (export_dir / "merged" / "config.json").unlink()
    problems = verify_manifest(export_dir)
    assert any(p.startswith("gguf-q4_k_m: sha256") for p in problems)
    assert any(p.startswith("merged: size") for p in problems)
    assert verify_manifest(export_dir, names=["gguf-q4_k_m"]) == [
        p for p in problems if p.startswith("gguf-q4_k_m")
    ]
    (export_dir / "model-q4_k_m.gguf").unlink()
    assert "gguf-q4_k_m: model-q4_k_m.gguf is missing" in verify_manifest(export_dir)


def test_directory_hash_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    before = sha256_dir(tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    renamed = sha256_dir(tmp_path)
    (tmp_path / "b").write_text("2")
    assert len({before, renamed, sha256_dir(tmp_path)}) == 3


def test_artifact_uri_and_unknown_manifest_version(tmp_path: Path) -> None:
    artifact = Artifact("gguf-f16", "model-f16.gguf", "gguf", 1, "0" * 64, "f16")
    assert artifact.uri("pvc://models/job-1/") == "pvc://models/job-1/model-f16.gguf"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"version": 99, "artifacts": []}))
    with pytest.raises(ValueError, match="version"):
        read_manifest(tmp_path)
