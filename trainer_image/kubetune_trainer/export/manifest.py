"""Artifacts and their integrity manifest (``manifest.json``): path, size, sha256, kind, quantization.

The manifest is what a ModelDeployment checks before it serves a version, so hashing is streamed
(GGUF files are gigabytes) and verification names each mismatch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

ArtifactKind = Literal["merged-safetensors", "gguf", "adapter-gguf", "modelfile"]

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: Path) -> str:
    """Hex sha256 over a directory's files: relative path, size and sha256 of each, sorted.

    A merged model is a directory (weights, config, tokenizer); this is its single checksum.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@dataclass(frozen=True)
class Artifact:
    """One exported file (or directory), relative to the export directory."""

    name: str  # unique within one export, e.g. "gguf-q4_k_m"
    path: str  # relative to the export directory, POSIX separators
    kind: ArtifactKind
    size_bytes: int
    sha256: str
    quantization: str | None = None  # "f16", "q8_0", ... for GGUF files
    llama_cpp_version: str | None = None  # the llama.cpp that wrote it, for GGUF files

    def uri(self, base_uri: str) -> str:
        """This artifact's URI under the export directory's URI (e.g. ``pvc://models/job-1``)."""
        return f"{base_uri.rstrip('/')}/{self.path}"


def describe_artifact(
    out_dir: Path,
    path: Path,
    *,
    name: str,
    kind: ArtifactKind,
    quantization: str | None = None,
    llama_cpp_version: str | None = None,
) -> Artifact:
    """Measure and hash ``path`` (inside ``out_dir``) into an :class:`Artifact`."""
    return Artifact(
        name=name,
        path=path.relative_to(out_dir).as_posix(),
        kind=kind,
        size_bytes=size_of(path),
        sha256=sha256_dir(path) if path.is_dir() else sha256_file(path),
        quantization=quantization,
        llama_cpp_version=llama_cpp_version,
    )


@dataclass(frozen=True)
class Manifest:
    """Contents of ``manifest.json``."""

    artifacts: tuple[Artifact, ...]
    tools: dict[str, str] = field(default_factory=dict)  # tool -> version used for the export
    verification: dict[str, Any] | None = None  # the verification report, as plain JSON
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "tools": dict(self.tools),
            "artifacts": [
                {k: v for k, v in asdict(a).items() if v is not None} for a in self.artifacts
            ],
            **({"verification": self.verification} if self.verification is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {data.get('version')!r}")
        return cls(
            artifacts=tuple(Artifact(**a) for a in data["artifacts"]),
            tools=dict(data.get("tools", {})),
            verification=data.get("verification"),
        )


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    """Write ``out_dir/manifest.json`` (atomically) and return its path."""
    path = out_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_manifest(out_dir: Path) -> Manifest:
    """Read ``out_dir/manifest.json``."""
    return Manifest.from_json(json.loads((out_dir / MANIFEST_NAME).read_text()))


def verify_manifest(out_dir: Path, names: Sequence[str] | None = None) -> list[str]:
    """Re-hash artifacts (all, or those named) and return one line per problem; [] when intact."""
    problems: list[str] = []
    for artifact in read_manifest(out_dir).artifacts:
        if names is not None and artifact.name not in names:
            continue
        path = out_dir / artifact.path
        if not path.exists():
            problems.append(f"{artifact.name}: {artifact.path} is missing")
            continue
        size = size_of(path)
        if size != artifact.size_bytes:
            problems.append(f"{artifact.name}: size {size} != {artifact.size_bytes} in manifest")
        digest = sha256_dir(path) if path.is_dir() else sha256_file(path)
        if digest != artifact.sha256:
            problems.append(f"{artifact.name}: sha256 {digest} != {artifact.sha256} in manifest")
    return problems
