"""Data sources: JSONL / JSON arrays with file:line, folders, pvc://, ConfigMaps, http(s),
hf:// (a local folder through datasets.load_dataset, offline) and the s3:// code path."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.finetunejob import DatasetSource
from kubetune_trainer.data.errors import DataSourceError
from kubetune_trainer.data.sources import (
    parse_bytes,
    read_fsspec,
    read_source,
    safe_uri,
)


def _jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _values(rows: list) -> list:  # type: ignore[type-arg]
    return [(str(r.loc), r.value, r.error) for r in rows]


def test_jsonl_lines_are_numbered_blank_lines_skipped_and_bad_json_reported() -> None:
    data = b'{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 3}\n'
    rows = parse_bytes(data, "d.jsonl")
    assert [(str(r.loc), r.value) for r in rows if r.error is None] == [
        ("d.jsonl:1", {"a": 1}),
        ("d.jsonl:3", {"a": 2}),
        ("d.jsonl:5", {"a": 3}),
    ]
    bad = [r for r in rows if r.error]
    assert [str(r.loc) for r in bad] == ["d.jsonl:4"]
    assert "invalid JSON" in (bad[0].error or "")


def test_utf8_bom_and_non_utf8_lines() -> None:
    rows = parse_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "\xff"}\n', "d.jsonl")
    assert rows[0].value == {"a": 1}
    assert rows[1].error is not None and "UTF-8" in rows[1].error


def test_json_array_elements_carry_the_line_they_start_on() -> None:
    text = '[\n  {"a": 1},\n  {"a": 2,\n   "b": 3},\n\n  {"a": 4}\n]\n'
    rows = parse_bytes(text.encode(), "d.json")
    assert [(str(r.loc), r.value) for r in rows] == [
        ("d.json:2", {"a": 1}),
        ("d.json:3", {"a": 2, "b": 3}),
        ("d.json:6", {"a": 4}),
    ]
    assert parse_bytes(b"[]", "e.json") == []


def test_json_array_syntax_error_keeps_what_came_before_and_names_the_line() -> None:
    rows = parse_bytes(b'[\n{"a": 1},\n{"a": ,}\n]', "d.json")
    assert rows[0].value == {"a": 1}
    assert str(rows[1].loc) == "d.json:3" and "invalid JSON" in (rows[1].error or "")


def test_folder_reads_every_jsonl_and_json_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "b.jsonl").write_text(_jsonl({"n": 2}))
    (folder / "a.json").write_text(json.dumps([{"n": 1}]))
    (folder / "notes.txt").write_text("ignored")
    rows = read_source(DatasetSource(uri="file://ds"), base_dir=tmp_path)
    assert [(str(r.loc), r.value) for r in rows] == [
        ("file://ds/a.json:1", {"n": 1}),
        ("file://ds/b.jsonl:1", {"n": 2}),
    ]


def test_empty_folder_and_missing_file_are_actionable(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match=r"no \*\.jsonl or \*\.json"):
        read_source(DatasetSource(uri="file://empty"), base_dir=tmp_path)
    with pytest.raises(DataSourceError, match="no such file"):
        read_source(DatasetSource(uri="file://missing.jsonl"), base_dir=tmp_path)


def test_pvc_uri_reads_under_the_pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    (tmp_path / "datasets" / "support").mkdir(parents=True)
    (tmp_path / "datasets" / "support" / "train.jsonl").write_text(_jsonl({"x": 1}))
    rows = read_source(DatasetSource(uri="pvc://datasets/support/train.jsonl"))
    assert [(str(r.loc), r.value) for r in rows] == [
        ("pvc://datasets/support/train.jsonl:1", {"x": 1})
    ]
    with pytest.raises(DataSourceError, match="is the claim mounted"):
        read_source(DatasetSource(uri="pvc://datasets/other.jsonl"))


def test_configmap_key_reads_under_the_configmap_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CONFIGMAP_ROOT", str(tmp_path))
    (tmp_path / "small-set").mkdir()
    (tmp_path / "small-set" / "train.jsonl").write_text(_jsonl({"x": 1}, {"x": 2}))
    source = DatasetSource.model_validate(
        {"configMap": {"name": "small-set", "key": "train.jsonl"}}
    )
    rows = read_source(source)
    assert [str(r.loc) for r in rows] == [
        "configMap:small-set/train.jsonl:1",
        "configMap:small-set/train.jsonl:2",
    ]
    missing = DatasetSource.model_validate(
        {"configMap": {"name": "small-set", "key": "nope.jsonl"}}
    )
    with pytest.raises(DataSourceError, match="ConfigMap key not found"):
        read_source(missing)


def test_size_cap_applies_to_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.jsonl").write_text(_jsonl(*[{"x": i} for i in range(100)]))
    monkeypatch.setenv("KUBETUNE_DATA_MAX_BYTES", "50")
    with pytest.raises(DataSourceError, match="KUBETUNE_DATA_MAX_BYTES"):
        read_source(DatasetSource(uri="file://big.jsonl"), base_dir=tmp_path)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path``."""
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_http_source_downloads_and_names_the_url(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "data.jsonl").write_text(_jsonl({"x": 1}, {"x": 2}))
    rows = read_source(DatasetSource(uri=f"{base}/data.jsonl?sig=secret-token"))
    assert [r.value for r in rows] == [{"x": 1}, {"x": 2}]
    assert (
        str(rows[1].loc) == f"{base}/data.jsonl:2"
    )  # the query string (pre-signed token) is not shown


def test_http_errors_and_size_cap(
    http_root: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = http_root
    with pytest.raises(DataSourceError, match="HTTP 404"):
        read_source(DatasetSource(uri=f"{base}/missing.jsonl"))
    (root / "big.jsonl").write_text(_jsonl(*[{"x": i} for i in range(1000)]))
    monkeypatch.setenv("KUBETUNE_DATA_MAX_BYTES", "1000")
    with pytest.raises(DataSourceError, match="more than 1000 bytes"):
        read_source(DatasetSource(uri=f"{base}/big.jsonl"))


def test_unreachable_url_is_a_source_error() -> None:
    with pytest.raises(DataSourceError, match="download failed"):
        read_source(DatasetSource(uri="http://127.0.0.1:9/nothing.jsonl"))


def test_safe_uri_hides_credentials_and_query() -> None:
    assert (
        safe_uri("https://user:pw@host.example/a.jsonl?X-Amz-Signature=abc")
        == "https://host.example/a.jsonl"
    )


def test_hf_uri_goes_through_load_dataset(tmp_path: Path) -> None:
    import datasets  # noqa: F401  (a missing dependency fails, never skips)
    folder = tmp_path / "hfdata"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        _jsonl({"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"})
    )
    rows = read_source(DatasetSource(uri=f"hf://{folder}?split=train"))
    assert [r.value for r in rows] == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c", "completion": "d"},
    ]
    assert str(rows[0].loc) == f"hf://{folder}[train]:1"


def test_hf_failure_is_a_source_error(tmp_path: Path) -> None:
    import datasets  # noqa: F401  (a missing dependency fails, never skips)
    with pytest.raises(DataSourceError, match="cannot load"):
        read_source(DatasetSource(uri=f"hf://{tmp_path}/does-not-exist"))


def test_s3_without_s3fs_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs -> ImportError
    with pytest.raises(DataSourceError, match="pip install s3fs"):
        read_source(DatasetSource(uri="s3://bucket/data.jsonl"))


def test_fsspec_reader_used_for_s3_reads_files_and_prefixes(tmp_path: Path) -> None:
    import fsspec  # noqa: F401  (a missing dependency fails, never skips)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "b.jsonl").write_text(_jsonl({"n": 2}))
    (tmp_path / "p" / "a.jsonl").write_text(_jsonl({"n": 1}))
    rows = read_fsspec(f"file://{tmp_path}/p")
    assert [r.value for r in rows] == [{"n": 1}, {"n": 2}]
    assert str(rows[0].loc).endswith("/p/a.jsonl:1")
    assert [r.value for r in read_fsspec(f"file://{tmp_path}/p/b.jsonl")] == [{"n": 2}]
