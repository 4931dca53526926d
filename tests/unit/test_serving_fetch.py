"""Fetching artifacts into the serve-agent's cache: sha256 computed while copying, a mismatch
refused and its partial file deleted, for pvc://, file:// and https:// (a real local server)."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.serving.failures import StepFailure
from kubetune.serving.fetch import (
    cached_path,
    fetch_unverified,
    fetch_verified,
    local_path,
    redact_uri,
    remove_partials,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 4096  # ~1 MiB: more than one chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()


@pytest.fixture
def pvc_root(tmp_path: Path) -> Path:
    root = tmp_path / "pvc"
    (root / "models" / "support").mkdir(parents=True)
    (root / "models" / "support" / "v1.gguf").write_bytes(PAYLOAD)
    return root


def test_pvc_source_is_copied_and_verified(pvc_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch_verified("pvc://models/support/v1.gguf", SHA, cache, pvc_root=pvc_root)
    assert path == cached_path(cache, SHA)
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == [f"sha256-{SHA}"]


def test_file_source(tmp_path: Path) -> None:
    source = tmp_path / "v1.gguf"
    source.write_bytes(PAYLOAD)
    path = fetch_verified(source.as_uri(), SHA, tmp_path / "cache", pvc_root=tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_mismatch_is_refused_permanently_and_leaves_nothing(pvc_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(StepFailure) as caught:
        fetch_verified("pvc://models/support/v1.gguf", OTHER_SHA, cache, pvc_root=pvc_root)
    failure = caught.value
    assert failure.step == "checksum"
    assert failure.permanent
    assert OTHER_SHA in failure.message and SHA in failure.message  # expected and actual
    assert list(cache.iterdir()) == []  # the partial file is gone


def test_size_known_in_advance_stops_a_longer_file_early(pvc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(StepFailure, match="larger than the expected 10 bytes") as caught:
        fetch_verified(
            "pvc://models/support/v1.gguf", SHA, tmp_path / "c", pvc_root=pvc_root, size_bytes=10
        )
    assert caught.value.step == "checksum" and caught.value.permanent
    with pytest.raises(StepFailure, match="has 1048580 bytes, expected 99999999"):
        fetch_verified(
            "pvc://models/support/v1.gguf",
            SHA,
            tmp_path / "c",
            pvc_root=pvc_root,
            size_bytes=99_999_999,
        )


def test_a_cached_file_is_not_fetched_again(pvc_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch_verified("pvc://models/support/v1.gguf", SHA, cache, pvc_root=pvc_root)
    (pvc_root / "models" / "support" / "v1.gguf").unlink()
    assert fetch_verified("pvc://models/support/v1.gguf", SHA, cache, pvc_root=pvc_root).is_file()


def test_missing_file_is_a_transient_fetch_failure(pvc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(StepFailure, match=r"no such file.*is the claim mounted") as caught:
        fetch_verified("pvc://models/support/v9.gguf", SHA, tmp_path / "c", pvc_root=pvc_root)
    assert caught.value.step == "fetch" and not caught.value.permanent
    assert list((tmp_path / "c").iterdir()) == []


@pytest.mark.parametrize(
    "uri", ["pvc://models/../etc/passwd", "pvc://models/", "pvc:///support/v1.gguf"]
)
def test_pvc_paths_stay_inside_their_claim(uri: str, pvc_root: Path) -> None:
    with pytest.raises(StepFailure, match="inside the claim") as caught:
        local_path(uri, pvc_root)
    assert caught.value.permanent


def test_partial_files_of_a_killed_agent_are_removed(tmp_path: Path) -> None:
    (tmp_path / f".partial-{SHA[:16]}-x").write_bytes(b"half")
    (tmp_path / f"sha256-{SHA}").write_bytes(PAYLOAD)
    remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"sha256-{SHA}"]


def test_s3_without_boto3_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An image without boto3 (ours: pip cannot install it beside kubernetes 37), wherever this runs.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a))
    with pytest.raises(StepFailure, match="pip install boto3") as caught:
        fetch_verified("s3://bucket/support/v1.gguf", SHA, tmp_path / "c", pvc_root=tmp_path)
    assert caught.value.step == "fetch" and caught.value.permanent


def test_uris_in_messages_lose_credentials() -> None:
    uri = "https://user:secret@bucket.example:8443/v1.gguf?X-Amz-Signature=abc#frag"
    assert redact_uri(uri) == "https://bucket.example:8443/v1.gguf?…"
    assert redact_uri("pvc://models/support/v1.gguf") == "pvc://models/support/v1.gguf"


# --- https:// against a real HTTP server ------------------------------------------------------


@pytest.fixture
def http_base() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/v1.gguf"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)
            elif self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/v1.gguf")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_source_verified_and_redirects_followed(http_base: str, tmp_path: Path) -> None:
    path = fetch_verified(f"{http_base}/moved", SHA, tmp_path / "c", pvc_root=tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_http_mismatch_refused(http_base: str, tmp_path: Path) -> None:
    with pytest.raises(StepFailure, match=f"expected {OTHER_SHA}, got {SHA}") as caught:
        fetch_verified(f"{http_base}/v1.gguf", OTHER_SHA, tmp_path / "c", pvc_root=tmp_path)
    assert caught.value.step == "checksum" and caught.value.permanent
    assert list((tmp_path / "c").iterdir()) == []


def test_http_error_status_is_transient_and_hides_the_query(http_base: str, tmp_path: Path) -> None:
    with pytest.raises(StepFailure) as caught:
        fetch_verified(f"{http_base}/gone?token=s3cr3t", SHA, tmp_path / "c", pvc_root=tmp_path)
    assert caught.value.step == "fetch" and not caught.value.permanent
    assert "HTTP 404" in caught.value.message
    assert "s3cr3t" not in caught.value.message


def test_unreachable_server_is_a_transient_fetch_failure(tmp_path: Path) -> None:
    with pytest.raises(StepFailure, match="ConnectError") as caught:
        fetch_verified("http://127.0.0.1:9/v1.gguf", SHA, tmp_path / "c", pvc_root=tmp_path)
    assert caught.value.step == "fetch" and not caught.value.permanent


def test_small_files_without_digest_are_read_with_a_size_limit(
    http_base: str, tmp_path: Path
) -> None:
    assert fetch_unverified(f"{http_base}/v1.gguf", pvc_root=tmp_path, max_bytes=2 << 20) == PAYLOAD
    with pytest.raises(StepFailure, match="larger than 100 bytes"):
        fetch_unverified(f"{http_base}/v1.gguf", pvc_root=tmp_path, max_bytes=100)
