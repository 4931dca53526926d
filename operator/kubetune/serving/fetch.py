"""Artifacts (GGUFs, Modelfiles) from their source URI into the pod's cache, sha256-checked.

Sources, as :data:`kubetune.api.serving.SourceUri` allows them:

- ``pvc://<claim>/<path>``: the claim is mounted read-only at ``<pvc_root>/<claim>``
  (``PVC_MOUNT_ROOT`` in a pod);
- ``file:///abs/path``;
- ``https://…`` (and ``http://``), with connect and read timeouts; redirects are followed;
- ``s3://bucket/key`` through boto3 when the agent image has it. It is not a kubetune
  dependency and cannot be one today: botocore requires python-dateutil < 3 and the
  kubernetes client 37 requires >= 3, so pip cannot install both. Untested here for that
  reason; use a presigned ``https://`` URL instead. Credentials and endpoint would come from
  boto3's own environment variables.

The bytes are hashed while they are copied; a file whose digest (or size, when known) differs
from the expected one is deleted and refused with a permanent ``checksum`` failure. Verified
files are kept as ``<cache>/sha256-<hex>``: a file of that name was verified before it was
renamed into place, so it is never fetched again. URIs in messages are shown without user
information or query string (presigned URLs carry credentials there).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from kubetune.serving.failures import StepFailure

CHUNK_BYTES = 1 << 20
PARTIAL_PREFIX = ".partial-"
CONNECT_TIMEOUT_S = 10.0


def cached_path(cache_dir: Path, sha256: str) -> Path:
    """Where the verified file of digest ``sha256`` lives in the cache."""
    return cache_dir / f"sha256-{sha256}"


def redact_uri(uri: str) -> str:
    """``uri`` without user information, query or fragment, for messages and logs."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    hidden = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{parts.path}{hidden}"


def fetch_verified(
    uri: str,
    sha256: str,
    cache_dir: Path,
    *,
    pvc_root: Path,
    size_bytes: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """The cached file of digest ``sha256``, fetched from ``uri`` first if it is not cached.

    Raises :class:`StepFailure`: ``fetch`` (transient, except an unsupported source) or
    ``checksum`` (permanent; the partial file is deleted).
    """
    target = cached_path(cache_dir, sha256)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{sha256[:16]}-", dir=cache_dir)
    partial = Path(partial_name)
    try:
        digest, size = _copy_hashing(uri, pvc_root, timeout, fd, size_bytes)
        if size_bytes is not None and size != size_bytes:
            raise StepFailure(
                "checksum",
                f"{redact_uri(uri)} has {size} bytes, expected {size_bytes} (sha256 {sha256})",
                permanent=True,
            )
        if digest != sha256:
            raise StepFailure(
                "checksum",
                f"sha256 mismatch for {redact_uri(uri)}: expected {sha256}, got {digest} "
                f"({size} bytes); the file was not used",
                permanent=True,
            )
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def fetch_unverified(
    uri: str, *, pvc_root: Path, max_bytes: int = 1 << 20, timeout: float = 60.0
) -> bytes:
    """The bytes of a small file that comes without a digest (a Modelfile listed without one)."""
    data = bytearray()
    for chunk in _chunks(uri, pvc_root, timeout):
        data += chunk
        if len(data) > max_bytes:
            raise StepFailure(
                "fetch", f"{redact_uri(uri)} is larger than {max_bytes} bytes", permanent=True
            )
    return bytes(data)


def remove_partials(cache_dir: Path) -> None:
    """Delete partial files a killed agent left behind."""
    if cache_dir.is_dir():
        for path in cache_dir.glob(f"{PARTIAL_PREFIX}*"):
            path.unlink(missing_ok=True)


def _copy_hashing(
    uri: str, pvc_root: Path, timeout: float, fd: int, size_bytes: int | None
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        for chunk in _chunks(uri, pvc_root, timeout):
            size += len(chunk)
            if size_bytes is not None and size > size_bytes:
                raise StepFailure(
                    "checksum",
                    f"{redact_uri(uri)} is larger than the expected {size_bytes} bytes",
                    permanent=True,
                )
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _chunks(uri: str, pvc_root: Path, timeout: float) -> Iterator[bytes]:
    scheme = urlsplit(uri).scheme
    if scheme in ("pvc", "file"):
        return _file_chunks(local_path(uri, pvc_root), uri)
    if scheme in ("http", "https"):
        return _http_chunks(uri, timeout)
    if scheme == "s3":
        return _s3_chunks(uri)
    raise StepFailure("fetch", f"unsupported source {redact_uri(uri)}", permanent=True)


def local_path(uri: str, pvc_root: Path) -> Path:
    """The file a ``pvc://`` or ``file://`` URI names; a path leaving its claim is refused."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StepFailure(
                "fetch", f"{uri}: file:// URIs name a local path (file:///abs/path)", permanent=True
            )
        return Path(unquote(parts.path))
    claim, relative = parts.netloc, unquote(parts.path).lstrip("/")
    root = (pvc_root / claim).resolve()
    path = (root / relative).resolve()
    if not claim or not relative or not path.is_relative_to(root):
        raise StepFailure(
            "fetch", f"{uri}: expected pvc://<claim>/<path inside the claim>", permanent=True
        )
    return path


def _file_chunks(path: Path, uri: str) -> Iterator[bytes]:
    try:
        f = path.open("rb")
    except FileNotFoundError as exc:
        hint = " (is the claim mounted?)" if uri.startswith("pvc://") else ""
        raise StepFailure("fetch", f"{uri}: no such file {path}{hint}") from exc
    except OSError as exc:
        raise StepFailure("fetch", f"{uri}: cannot read {path}: {exc.strerror}") from exc
    with f:
        yield from iter(lambda: f.read(CHUNK_BYTES), b"")


def _http_chunks(uri: str, timeout: float) -> Iterator[bytes]:
    shown = redact_uri(uri)
    limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
    try:
        with httpx.stream("GET", uri, timeout=limits, follow_redirects=True) as response:
            if response.status_code != 200:
                raise StepFailure("fetch", f"GET {shown}: HTTP {response.status_code}")
            yield from response.iter_bytes(CHUNK_BYTES)
    except httpx.HTTPError as exc:
        # The exception text may repeat the URL (with its query): name the type only.
        raise StepFailure("fetch", f"GET {shown}: {type(exc).__name__}") from exc


def _s3_chunks(uri: str) -> Iterator[bytes]:
    if importlib.util.find_spec("boto3") is None:
        raise StepFailure(
            "fetch",
            f"{uri}: s3:// sources need boto3, which this agent image lacks "
            "(pip install boto3 in the image, or serve from pvc:// or https://)",
            permanent=True,
        )
    import boto3

    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    try:
        body: Any = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
        with body:
            yield from body.iter_chunks(CHUNK_BYTES)
    except Exception as exc:  # botocore's errors have no common base worth importing
        raise StepFailure("fetch", f"GET {uri}: {type(exc).__name__}: {exc}") from exc
