"""Locate the pinned binaries that hack/install-tools.sh builds into the cache.

Versions come from hack/versions.env, the single place they are pinned; binaries live in
``~/.cache/kubetune/bin/<name>-<version>/``. Nothing here builds or downloads anything: a
missing binary is an error that names the script to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"
INSTALL_HINT = "run hack/install-tools.sh"


class ToolchainError(RuntimeError):
    """A binary the dev cluster needs is missing; the message says how to get it."""


def cache_dir() -> Path:
    """Root of kubetune's tool cache (``$KUBETUNE_CACHE`` or ``~/.cache/kubetune``)."""
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the ``KEY=value`` lines of hack/versions.env (quotes stripped, comments skipped)."""
    if not path.is_file():
        raise ToolchainError(f"{path} not found: kubetune_dev needs the repository checkout")
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        versions[key.strip()] = value.strip().strip('"')
    return versions


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of every binary the dev cluster runs (helm is apart: find_helm)."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    openssl: Path
    unshare: Path
    kubernetes_version: str


def _cached(name: str, version: str, binary: str) -> Path:
    folder = cache_dir() / "bin" / f"{name}-{version}"
    path = folder / binary
    if not (folder / ".complete").is_file() or not os.access(path, os.X_OK):
        raise ToolchainError(
            f"{binary} {version} is not built (looked in {folder}): {INSTALL_HINT}"
        )
    return path


def _system(binary: str, package: str) -> Path:
    found = shutil.which(binary)
    if found is None:
        raise ToolchainError(
            f"{binary} not found on PATH (Debian package {package}): {INSTALL_HINT}"
        )
    return Path(found)


def find_toolchain() -> Toolchain:
    """Return the pinned binaries, or raise ToolchainError naming hack/install-tools.sh."""
    versions = read_versions()
    k8s = versions["KUBERNETES_VERSION"]
    return Toolchain(
        kube_apiserver=_cached("kubernetes", k8s, "kube-apiserver"),
        kube_controller_manager=_cached("kubernetes", k8s, "kube-controller-manager"),
        kube_scheduler=_cached("kubernetes", k8s, "kube-scheduler"),
        kubectl=_cached("kubernetes", k8s, "kubectl"),
        etcd=_cached("etcd", versions["ETCD_VERSION"], "etcd"),
        kwok=_cached("kwok", versions["KWOK_VERSION"], "kwok"),
        openssl=_system("openssl", "openssl"),
        unshare=_system("unshare", "util-linux"),
        kubernetes_version=k8s,
    )


def find_helm() -> Path:
    """The pinned helm binary, or raise ToolchainError naming hack/install-tools.sh."""
    return _cached("helm", read_versions()["HELM_VERSION"], "helm")


def find_ollama_template() -> Path:
    """The pinned renderer built on Ollama's own template package (hack/build-ollama-template.sh)."""
    return _cached("ollama-template", read_versions()["OLLAMA_VERSION"], "ollama-template")


def find_ollama() -> Path:
    """The pinned Ollama server built from its Go module (hack/build-ollama.sh); the serving
    tests run it as ModelDeployment pods' Ollama container."""
    return _cached("ollama", read_versions()["OLLAMA_VERSION"], "ollama")


def find_promtool() -> Path:
    """Debian's promtool (package prometheus), or raise ToolchainError."""
    return _system("promtool", "prometheus")


KUBETUNE_CHECK_SOURCE = REPO_ROOT / "hack" / "kubetune-check"


def kubetune_check_version(source: Path = KUBETUNE_CHECK_SOURCE) -> str:
    """Cache key of kubetune-check: a hash of its source, as hack/build-kubetune-check.sh computes it
    (sha256 over ``name NUL content NUL`` of go.mod, go.sum and *.go in name order)."""
    files = sorted([source / "go.mod", source / "go.sum", *source.glob("*.go")], key=lambda p: p.name)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return "src-" + digest.hexdigest()[:12]


def find_kubetune_check() -> Path:
    """The kstatus / Argo CD health / kind-config checker built from hack/kubetune-check
    (hack/build-kubetune-check.sh), or raise ToolchainError naming the script."""
    return _cached("kubetune-check", kubetune_check_version(), "kubetune-check")
